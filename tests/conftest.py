import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Named sizes: 12 queries against 16 keys, so a transposed score matrix cannot hide.
NQ, NK = 12, 16


@pytest.fixture
def g():
    """A fresh seeded generator per test."""
    return torch.Generator().manual_seed(0)


def rand(g, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
