"""Named sizes and seeded random tensors shared by the tests (imported as ``from sizes import ...``;
a module named ``conftest`` would be ambiguous, since tests/browser has its own)."""

import torch

# 12 queries against 16 keys, so a transposed score matrix cannot hide.
NQ, NK = 12, 16


def rand(g, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
