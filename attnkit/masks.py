"""Boolean attention masks: ``True`` means "this query may attend to this key".

*Causal* masks stop a token from looking at the future (Vaswani et al. 2017, section 3.2.3);
*padding* masks stop every token from looking at the padding that makes a batch of
sentences one rectangle. Masks combine with ``&``: a key is allowed only when every mask
allows it.

When there are fewer queries than keys (``n_q < n_k``, as when decoding with a KV cache)
the queries are the *last* ``n_q`` tokens: query ``i`` sits at absolute position
``i + n_k - n_q``. The masks here are aligned to that bottom-right corner.
"""

from __future__ import annotations

import torch

from . import _validate as chk


def causal_mask(n_q: int, n_k: int) -> torch.Tensor:
    """``(n_q, n_k)`` bool: key ``j`` allowed iff ``j <= i + n_k - n_q`` (bottom-right aligned).

    With ``n_q > n_k`` the first ``n_q - n_k`` queries precede every key: their rows are
    all ``False`` (fully masked).
    """
    n_q = chk.positive_int("n_q", n_q, allow_zero=True)
    n_k = chk.positive_int("n_k", n_k, allow_zero=True)
    i = torch.arange(n_q).unsqueeze(1)  # (Nq, 1)
    j = torch.arange(n_k).unsqueeze(0)  # (1, Nk)
    return j <= i + (n_k - n_q)  # (Nq, Nk)


def padding_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, n)`` bool: ``True`` for the first ``lengths[b]`` positions of sequence ``b``.

    Use it as a key mask for a batch of sequences padded to length ``n``:
    ``mask[:, None, None, :]`` broadcasts to ``(B, H, Nq, n)``.
    """
    chk.integer_tensor("lengths", lengths, ndim=1)
    n = chk.positive_int("n", n, allow_zero=True)
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > n):
        raise ValueError(f"lengths must lie in [0, n={n}], got min {int(lengths.min())} "
                         f"and max {int(lengths.max())} for lengths of shape {chk.shape_str(lengths)}")
    positions = torch.arange(n, device=lengths.device)  # (n,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, n)


def sliding_window_mask(n_q: int, n_k: int, window: int) -> torch.Tensor:
    """``(n_q, n_k)`` bool: key ``j`` allowed iff ``i' - window < j <= i'``, ``i' = i + n_k - n_q``.

    Each query sees itself and the ``window - 1`` keys before it (Longformer, Beltagy et al.
    2020; Mistral's sliding-window attention).
    """
    window = chk.positive_int("window", window)
    allowed = causal_mask(n_q, n_k)  # (Nq, Nk): j <= i'
    i = torch.arange(n_q).unsqueeze(1) + (n_k - n_q)  # (Nq, 1) absolute query positions
    j = torch.arange(n_k).unsqueeze(0)  # (1, Nk)
    return allowed & (j > i - window)  # (Nq, Nk)
