"""What is this notebook running on? One call for the first cell of every notebook."""

from __future__ import annotations

import platform
import sys

# The one place that names the course repository (badges and the Colab install use it).
COURSE_REPO = "attention-course/attention-course"


def device() -> str:
    """``"cuda"`` when a CUDA GPU is usable, else ``"cpu"``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def report(print_it: bool = True) -> dict:
    """Versions and hardware, printed as a short table; returns the same facts as a dict."""
    import torch

    from . import __version__
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "attnkit": __version__,
        "device": device(),
        "cpu threads": torch.get_num_threads(),
        "colab": "google.colab" in sys.modules,
    }
    # The version without importing triton: an import here would fix, before a notebook can
    # choose it, whether @triton.jit kernels compile or run in the interpreter (attnkit._triton).
    from importlib import metadata
    try:
        facts["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        facts["triton"] = "not installed"
    if facts["device"] == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts["gpu"] = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    if print_it:
        width = max(map(len, facts))
        for key, value in facts.items():
            print(f"{key:>{width}}: {value}")
    return facts
