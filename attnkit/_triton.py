"""Where attnkit's Triton kernels run: on a CUDA GPU when there is one, otherwise on the CPU
through Triton's interpreter; and the Triton versions they run on.

Triton decides at *definition* time (``@triton.jit``) whether a kernel is compiled or
interpreted, by reading ``TRITON_INTERPRET``. Every kernel module calls :func:`prepare` before
defining its kernels, so ``import attnkit.<kernels>`` works on a laptop without a GPU. A
learner who defines kernels in a notebook calls :func:`prepare` (or sets the variable) first.

Versions. Learners run the Triton that comes with their torch: 3.6 on Colab (with NumPy 2.0),
3.7.1 with our pins, the newest release (3.9) elsewhere. Two differences between them are
handled here, in one place, so that no kernel needs a version switch:

* Triton 3.6's interpreter turns a loop bound that is a kernel argument
  (``for start in range(0, N, BLOCK)``) into an int with ``int()`` of a one-element array,
  which NumPy 2.4 made an error. :func:`fix_interpreter` (run by :func:`prepare`) installs
  Triton 3.7's one-line fix for the duration of each launch, and :func:`version_problem`
  turns that error, or a kernel built on the block pointers Triton 3.9 removed, into one
  sentence for the learner.
* FP fusion: ``a * b + c`` computed as one fused multiply-add, rounded once. Every Triton up to
  3.9 fuses by default, and 3.9 warns that 3.10 will not. The course's kernels and their test
  tolerances assume fusion **on** when compiled for a GPU (:data:`FP_FUSION`, passed
  explicitly to every launch and compile), and :func:`prepare` sets
  ``TRITON_DEFAULT_FP_FUSION=1`` when it is unset, so that a learner's kernel compiles the same
  way on Triton 3.6 and on 3.10. The interpreter never fuses (NumPy rounds every operation), so
  the CPU tests check the unfused arithmetic; the tolerances, set relative to a plain
  implementation's error, hold for both.
"""

from __future__ import annotations

import os
import re

import torch

FP_FUSION = True  # fused multiply-add on a GPU: Triton's default up to 3.9, kept for 3.10 and later


def has_cuda() -> bool:
    return torch.cuda.is_available()


def interpreting() -> bool:
    """True when ``@triton.jit`` kernels defined from now on run in the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off", "no")


def prepare() -> bool:
    """Switch Triton to its interpreter when there is no CUDA GPU (and the user did not choose).

    Also keeps FP fusion on for kernels compiled from now on when the user did not choose
    (``TRITON_DEFAULT_FP_FUSION``, read by Triton at each compile) and, under the interpreter,
    applies :func:`fix_interpreter`. Returns :func:`interpreting`. Call before any
    ``@triton.jit`` definition.
    """
    if not has_cuda() and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1" if FP_FUSION else "0")
    if interpreting():
        fix_interpreter()
    return interpreting()


def device() -> torch.device:
    """Where tensors for the kernels must live: the GPU, or the CPU under the interpreter."""
    return torch.device("cpu" if interpreting() or not has_cuda() else "cuda")


def capability() -> tuple[int, int] | None:
    """``(major, minor)`` compute capability of the current GPU, or ``None`` on the interpreter."""
    if interpreting() or not has_cuda():
        return None
    return torch.cuda.get_device_capability()


# --------------------------------------------------------------------------- versions


def _version(text: str) -> tuple[int, ...]:
    """``"3.6.0"`` -> ``(3, 6, 0)``; a local tag is dropped (``"2.13.0+cpu"`` -> ``(2, 13, 0)``)."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def versions() -> dict[str, str]:
    """The versions that decide how kernels behave: python, torch, triton and numpy
    (``""`` for a package that is not installed). Imports neither Triton nor NumPy."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = ""
    return found


def interpreter_index_broken(found: dict[str, str] | None = None) -> bool:
    """True for the pair whose interpreter fails at loop bounds: Triton before 3.7 with NumPy
    2.4 or later (unless :func:`fix_interpreter` has run). ``found``: :func:`versions` of the
    environment in question (default: this one)."""
    found = found or versions()
    return bool(found["triton"] and found["numpy"]) and _version(found["triton"]) < (3, 7) \
        and _version(found["numpy"]) >= (2, 4)


def _index(self) -> int:
    return int(self.handle.data.squeeze())  # Triton 3.7's line: a scalar is a one-element array here


def fix_interpreter() -> bool:
    """Make the interpreter of Triton before 3.7 work with NumPy 2.4 and later; idempotent.

    Before 3.7 the interpreter gives its tensors ``__index__ = int(data)``, where ``data`` is a
    one-element array for a scalar; NumPy 2.4 refuses that conversion, so every ``range(lo, N,
    BLOCK)`` whose bound is a kernel argument failed with ``TypeError: only 0-dimensional arrays
    can be converted to Python scalars``. Triton 3.7 squeezes the array first. This wraps the
    interpreter's per-launch patch so that it installs 3.7's ``__index__`` as well (undone with
    the launch's other patches when the launch ends). It is looked up at every launch, so
    kernels defined before the call benefit too. The result is the same integer for every NumPy,
    so any Triton before 3.7 gets it, whatever its NumPy.

    Returns True when this Triton's interpreter needed the fix (and now has it), False otherwise
    (Triton 3.7 or later, or no Triton).
    """
    try:
        import triton
        from triton.runtime import interpreter
    except ImportError:
        return False
    if _version(triton.__version__) >= (3, 7):
        return False
    current = getattr(interpreter, "_patch_lang_tensor", None)
    if current is None:
        return False
    if getattr(current, "attnkit_fixed", False):
        return True

    def _patch_lang_tensor(tensor, *scope):
        current(tensor, *scope)
        if scope:  # 3.5 and later record each patch in a scope and undo it after the launch
            scope[0].set_attr(tensor, "__index__", _index)
        else:
            tensor.__index__ = _index

    _patch_lang_tensor.attnkit_fixed = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True


def _chain(error: BaseException):
    """``error`` and every exception it was raised from or while handling, each once."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def version_problem(error: BaseException, found: dict[str, str] | None = None) -> str | None:
    """One sentence naming the versions and the fix when ``error``, raised while a learner's
    Triton kernel ran, comes from their Triton/NumPy versions rather than from a mistake the
    exercise is about; ``None`` otherwise.

    The whole chain of ``error`` is searched (``__cause__``, ``__context__``), so a checker's
    AssertionError raised ``from`` the kernel's error is understood as well as the kernel's
    own; only the exceptions' type names and messages are read, so an error rebuilt from a
    message that crossed a process boundary works as well. ``found``: :func:`versions` of the
    environment the kernel ran in, when that is not this process's. Recognised:

    * Triton before 3.7 with NumPy 2.4 or later under the interpreter (``TypeError: only
      0-dimensional arrays can be converted to Python scalars`` at a loop bound), which happens
      only when :func:`fix_interpreter` was not in place;
    * block pointers (``tl.make_block_ptr``, ``tl.advance``) on Triton 3.9 or later, which
      removed them (3.8 deprecated them). Triton 3.9 raises ``NotImplementedError`` for them,
      which a checker must not report as an exercise stub that was never filled in.
    """
    found = found or versions()
    triton_v, numpy_v = found["triton"] or "?", found["numpy"] or "?"
    for e in _chain(error):
        text = f"{type(e).__name__}: {e}"
        if "only 0-dimensional arrays can be converted to Python scalars" in text and interpreter_index_broken(found):
            return (f"Triton {triton_v}'s interpreter cannot run with NumPy {numpy_v} (it fails at every loop "
                    f"whose bound is a kernel argument, whatever the kernel does; Triton 3.7 fixed it), so this "
                    f"error comes from your versions, not from your kernel: run `from attnkit import _triton; "
                    f"_triton.prepare()` before defining your kernels (it patches the interpreter), or "
                    f"`pip install \"numpy<2.4\"` or `pip install \"triton>=3.7\"` and restart the runtime.")
        if "Block pointers have been removed" in text or (
                isinstance(e, AttributeError) and re.search(r"'(make_block_ptr|advance)'", str(e))):
            return (f"Triton {triton_v} has no block pointers (tl.make_block_ptr and tl.advance, deprecated in "
                    f"Triton 3.8, were removed in 3.9 in favour of tensor descriptors), so a kernel written with "
                    f"them cannot run here: "
                    f"build each tile's pointers with arithmetic instead, e.g. "
                    f"X + rows[:, None] * stride_xm + cols[None, :] * stride_xn, as the notebook does.")
    return None
