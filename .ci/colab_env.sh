#!/usr/bin/env bash
# The Colab-parity environment: the active environment's Python and torch with Colab's widget
# stack.
#
# An overlay venv (.ci/overlay_venv.sh): it sees every package of the environment that runs
# this script (the system Python or a virtualenv alike: torch, triton, numpy, matplotlib,
# ipykernel, ... as requirements.txt pins them) and installs over them the packages whose
# Colab version differs from ours, so that its copy shadows the active one. Its kernelspec
# ("colab-parity") lives inside the venv; tests/test_colab_parity.py runs every notebook on
# that kernel. docs/colab-parity.md says what is mirrored, what cannot be, and when the
# versions were read.
#
# Usage: .ci/colab_env.sh [VENV]   (default $ATTN_COLAB_VENV, else ~/.cache/attention-course/colab-venv)
# $PYTHON names the active interpreter (default python3). Prints the venv's python.
# Idempotent: an existing venv with the same pins over the same environment is kept as it is.
set -euo pipefail

# Colab's versions of what differs from requirements.txt (read 2026-11-24, docs/colab-parity.md).
COLAB_PINS="ipywidgets==7.7.1 widgetsnbextension==3.6.10"

venv="${1:-${ATTN_COLAB_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/attention-course/colab-venv}}"
# shellcheck disable=SC2086
exec bash "$(dirname "$0")/overlay_venv.sh" "$venv" colab-parity "Python 3 (Colab parity: ipywidgets 7.7.1)" $COLAB_PINS
