#!/usr/bin/env bash
# Version-compatibility environments: the active environment with one part swapped for the
# version learners actually have, or for the newest release. Each is an overlay venv
# (.ci/overlay_venv.sh) under ~/.cache/attention-course/, built once and kept.
#
#   triton-3.6      Triton 3.6.0 (Colab's) over our pins: NumPy 2.4, the pair that broke
#                   Triton 3.6's interpreter
#   colab-triton    Triton 3.6.0 with NumPy 2.0.2: Colab's Triton and NumPy together
#   triton-3.9      Triton 3.9.0, the newest on PyPI (2026-11-29)
#   torch-2.14      torch 2.14.1 with the Triton it pins (3.8.0): the newest torch this
#                   machine's package sources serve without a multi-GB download (a CUDA build,
#                   which runs on the CPU); torch 2.15.0 is on PyPI, see docs/colab-parity.md
#
# torch stays 2.13.0+cpu, the only CPU build served here, in the three Triton environments:
# the CPU build does not depend on Triton, so any Triton installs beside it.
#
# Usage: .ci/compat_env.sh NAME [VENV]   (default VENV: ~/.cache/attention-course/compat-NAME)
#        .ci/compat_env.sh --list        (the names, one a line)
# $PYTHON names the active interpreter (default python3). Prints the venv's python.
set -euo pipefail

pins_for() {
    case "$1" in
        triton-3.6) echo "triton==3.6.0" ;;
        colab-triton) echo "triton==3.6.0 numpy==2.0.2" ;;
        triton-3.9) echo "triton==3.9.0" ;;
        torch-2.14) echo "torch==2.14.1" ;;
        *) return 1 ;;
    esac
}

if [ "${1:-}" = "--list" ]; then
    printf '%s\n' triton-3.6 colab-triton triton-3.9 torch-2.14
    exit 0
fi
name="${1:?usage: $0 NAME [VENV] (or --list)}"
if ! pins="$(pins_for "$name")"; then
    echo "$0: unknown environment '$name'; one of: $("$0" --list | tr '\n' ' ')" >&2
    exit 2
fi
venv="${2:-${XDG_CACHE_HOME:-$HOME/.cache}/attention-course/compat-$name}"
# shellcheck disable=SC2086
exec bash "$(dirname "$0")/overlay_venv.sh" "$venv" "attn-$name" "Python 3 (attention course, $name)" $pins
