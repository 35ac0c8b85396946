"""Input validation shared by every public function.

Each helper raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or
value) with a message that names the argument and its shape, so that a learner who passes
``(B, N, D)`` where ``(B, H, N, d)`` was expected reads which is which instead of a
broadcasting error from deep inside a matmul.
"""

from __future__ import annotations

import numbers

import torch


def shape_str(x: torch.Tensor) -> str:
    """``(2, 3, 4)``: a shape as Python prints a tuple."""
    return str(tuple(x.shape))


def tensor(name: str, x, *, min_ndim: int = 0, ndim: int | None = None,
           floating: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check that ``x`` is a tensor with the stated rank and dtype; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape_str(x)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {shape_str(x)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype} "
                        f"with shape {shape_str(x)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype} with shape {shape_str(x)}")
    return x


def integer_tensor(name: str, x, *, ndim: int | None = None) -> torch.Tensor:
    """A tensor of integer dtype (not bool)."""
    tensor(name, x, ndim=ndim)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype} with shape {shape_str(x)}")
    return x


def same_dtype(**named: torch.Tensor) -> None:
    """All the named tensors share one dtype."""
    dtypes = {t.dtype for t in named.values()}
    if len(dtypes) > 1:
        described = ", ".join(f"{n} {t.dtype} {shape_str(t)}" for n, t in named.items())
        raise TypeError(f"dtypes differ: {described}; cast them to one dtype first")


def broadcast_batch(what: str, *shapes: tuple[str, torch.Size]) -> torch.Size:
    """Broadcast leading (batch) shapes, naming them when they do not broadcast."""
    try:
        return torch.broadcast_shapes(*(s for _, s in shapes))
    except RuntimeError:
        described = ", ".join(f"{n} {tuple(s)}" for n, s in shapes)
        raise ValueError(f"{what}: batch dimensions do not broadcast: {described}") from None


def positive_int(name: str, value, *, allow_zero: bool = False) -> int:
    """A Python (or 0-d tensor) integer, > 0 (or >= 0)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def bool_mask(name: str, mask, target: tuple[int, ...], target_desc: str) -> torch.Tensor:
    """A boolean mask broadcastable to ``target`` (True = may attend)."""
    tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = may attend), got dtype {mask.dtype} "
                        f"with shape {shape_str(mask)}")
    try:
        shape = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        shape = None
    if shape != torch.Size(target):
        raise ValueError(f"{name} of shape {shape_str(mask)} does not broadcast to {target_desc} "
                         f"= {tuple(target)}")
    return mask
