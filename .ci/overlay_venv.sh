#!/usr/bin/env bash
# An overlay environment: a virtual environment that sees every package of the *active* Python
# environment and installs a few pinned packages over them, so that its copies shadow the
# active ones. The Colab-parity venv (.ci/colab_env.sh) and the version-compatibility venvs
# (.ci/compat_env.sh) are built this way.
#
# "Active" means the interpreter named by $PYTHON (default: python3 on PATH), whatever it is:
# the system Python, a pyenv Python, or a virtualenv. `python -m venv --system-site-packages`
# would not do: it sees the *base* interpreter's site-packages, never the packages of the
# virtualenv it was started from, so inside a contributor's venv the overlay had no torch.
# Instead a .pth file in the overlay's site-packages adds, after the overlay's own packages,
# each site directory on the active interpreter's sys.path, in the same order, through
# site.addsitedir (so the .pth files there run too: editable installs, setuptools' hooks).
#
# Usage: .ci/overlay_venv.sh VENV KERNEL_NAME DISPLAY_NAME PIN [PIN ...]
# Prints the overlay's python on stdout. Idempotent: a venv built from the same interpreter,
# the same site directories, the same pins and this same script is kept as it is; anything
# else rebuilds it. A Jupyter kernelspec KERNEL_NAME lives inside the venv
# (VENV/share/jupyter/kernels/KERNEL_NAME), so nothing is installed outside it.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 VENV KERNEL_NAME DISPLAY_NAME PIN [PIN ...]" >&2
    exit 2
fi
venv=$1 kernel=$2 display=$3
shift 3
pins="$*"
python="${PYTHON:-python3}"

# The active environment's site directories, in sys.path order (a venv's own first).
sites="$("$python" -c 'import json, os, sys
print(json.dumps([p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]))')"
version="$("$python" -c 'import sys; print(sys.version.split()[0])')"
want="python $version; sites $sites; pins $pins; script $(cksum <"$0" | cut -d' ' -f1)"
stamp="$venv/overlay.txt"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$venv/bin/python"
    exit 0
fi

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
own="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# One line; .pth lines that start with "import" are executed by site.py at start-up (with exec
# in a function: no comprehension may refer to a name the line defines, hence map).
echo "import site; list(map(site.addsitedir, $sites))" >"$own/_attn_active_env.pth"

log="$venv/pip.log"
# shellcheck disable=SC2086
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q $pins >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
    echo "$0: could not install $pins into $venv (log: $log)" >&2
    exit 1
fi

# Jupyter's data (nbconvert's templates, JupyterLab's assets, ...) is looked up under
# {sys.prefix}/share/jupyter, which for the overlay is its own empty folder: link in the active
# environment's entries. Kernelspecs are the overlay's own: "python3" (what nbconvert, nbclient
# and the grader start by default) and KERNEL_NAME, both on the overlay's python.
"$python" - "$venv/share/jupyter" <<'PY'
import os, sys
target = sys.argv[1]
os.makedirs(os.path.join(target, "kernels"), exist_ok=True)
for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
    source = os.path.join(prefix, "share", "jupyter")
    if os.path.isdir(source):
        for entry in sorted(os.listdir(source)):
            if entry != "kernels" and not os.path.lexists(os.path.join(target, entry)):
                os.symlink(os.path.join(source, entry), os.path.join(target, entry))
PY
for name in python3 "$kernel"; do
    label="$display"
    [ "$name" = python3 ] && label="Python 3 ($kernel)"
    mkdir -p "$venv/share/jupyter/kernels/$name"
    cat >"$venv/share/jupyter/kernels/$name/kernel.json" <<EOF
{
 "argv": ["$venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "$label",
 "language": "python",
 "metadata": {"debugger": false}
}
EOF
done
echo "$want" >"$stamp"
echo "$venv/bin/python"
