#!/usr/bin/env bash
# The Colab-parity environment: this machine's Python and torch with Colab's widget stack.
#
# A virtual environment that sees the main environment's packages (--system-site-packages:
# torch, triton, numpy, matplotlib, ipykernel, ... exactly as requirements.txt pins them) and
# installs over them the packages whose Colab version differs from ours, so that its copy
# shadows the main one. Its kernelspec ("colab-parity") lives inside the venv; the tests in
# tests/test_colab_parity.py run every notebook on that kernel. docs/colab-parity.md says
# what is mirrored, what cannot be, and when the versions were read.
#
# Usage: .ci/colab_env.sh [VENV]   (default $ATTN_COLAB_VENV, else ~/.cache/attention-course/colab-venv)
# Prints the venv's python. Idempotent: an existing venv with the same pins is kept as it is.
set -euo pipefail

# Colab's versions of what differs from requirements.txt (read 2026-11-24, docs/colab-parity.md).
COLAB_PINS="ipywidgets==7.7.1 widgetsnbextension==3.6.10"

venv="${1:-${ATTN_COLAB_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/attention-course/colab-venv}}"
python="${PYTHON:-python3}"
stamp="$venv/colab-pins.txt"
want="$("$python" -c 'import sys; print(sys.version.split()[0])') $COLAB_PINS"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv --system-site-packages "$venv"
    log="$venv/pip.log"
    # shellcheck disable=SC2086
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q $COLAB_PINS >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
        exit 1
    fi
    kernel="$venv/share/jupyter/kernels/colab-parity"
    mkdir -p "$kernel"
    cat >"$kernel/kernel.json" <<EOF
{
 "argv": ["$venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (Colab parity: ipywidgets 7.7.1)",
 "language": "python",
 "metadata": {"debugger": false}
}
EOF
    echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
