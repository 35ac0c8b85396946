#!/usr/bin/env bash
# Build the course website: bash site/build.sh [--jobs N] [--fresh] [--lenient]
# Output: site/_build/html (serve it offline: python -m http.server -d site/_build/html 8000).
# Every solution notebook is executed (cached by content in site/_build/executed); see site/build.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
exec nice -n 10 "$PYTHON" site/build.py "$@"
