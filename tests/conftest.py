import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def g():
    """A fresh seeded generator per test."""
    return torch.Generator().manual_seed(0)
