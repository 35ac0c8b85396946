#!/usr/bin/env bash
# The one-shot GPU check (bench/gpu_check.py says what it runs): on a machine with an NVIDIA
# GPU, the GPU tests, notebooks 10-13 and the Triton benchmark in under 8 minutes, written to
# results/gpu-check-<gpu>-<date>/. `--dry-run` runs the same stages on a CPU at toy sizes.
#
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--notebooks 10 11 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" PIP_DISABLE_PIP_VERSION_CHECK=1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
