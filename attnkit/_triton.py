"""Where attnkit's Triton kernels run: on a CUDA GPU when there is one, otherwise on the CPU
through Triton's interpreter.

Triton decides at *definition* time (``@triton.jit``) whether a kernel is compiled or
interpreted, by reading ``TRITON_INTERPRET``. Every kernel module calls :func:`prepare` before
defining its kernels, so ``import attnkit.<kernels>`` works on a laptop without a GPU. A
learner who defines kernels in a notebook calls :func:`prepare` (or sets the variable) first.
"""

from __future__ import annotations

import os

import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def interpreting() -> bool:
    """True when ``@triton.jit`` kernels defined from now on run in the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off", "no")


def prepare() -> bool:
    """Switch Triton to its interpreter when there is no CUDA GPU (and the user did not choose).

    Returns :func:`interpreting`. Call before any ``@triton.jit`` definition.
    """
    if not has_cuda() and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
    return interpreting()


def device() -> torch.device:
    """Where tensors for the kernels must live: the GPU, or the CPU under the interpreter."""
    return torch.device("cpu" if interpreting() or not has_cuda() else "cuda")


def capability() -> tuple[int, int] | None:
    """``(major, minor)`` compute capability of the current GPU, or ``None`` on the interpreter."""
    if interpreting() or not has_cuda():
        return None
    return torch.cuda.get_device_capability()
