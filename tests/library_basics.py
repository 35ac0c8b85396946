"""Mutant library (tests/library.py) for notebooks 01-05: dot_product_scores, softmax,
scaled_dot_product_attention, causal_mask, padding_mask, split_heads, merge_heads,
multi_head_attention.

Every mutant is a mistake learners make, written the way a learner would write it; its hint is
a substring the first line of the checker's AssertionError must contain. Every correct
implementation is written in a style the reference does not use.
"""

import math

import torch
import torch.nn.functional as F

import attnkit
from attnkit import checks
from library import Exercise, Mutant

NEG_INF = float("-inf")


def _softmax(x, dim=-1):
    """A learner's stable softmax from notebook 02 (zeros for an all -inf slice)."""
    m = x.amax(dim, keepdim=True)
    e = torch.exp(x - torch.where(torch.isneginf(m), torch.zeros_like(m), m))
    s = e.sum(dim, keepdim=True)
    return e / torch.where(s == 0, torch.ones_like(s), s)


# ====================================================================== dot_product_scores


def dot_einsum(q, k):
    return torch.einsum("...id,...jd->...ij", q, k)


def dot_mT(q, k):
    return torch.matmul(q, k.mT)


def dot_broadcast_sum(q, k):
    return (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1)  # (..., Nq, 1, d) * (..., 1, Nk, d)


def dot_float64_inside(q, k, scale: float = 1.0):
    return (scale * q.double() @ k.double().transpose(-2, -1)).to(q.dtype)


def dot_non_contiguous(q, k):
    return (k @ q.transpose(-2, -1)).transpose(-2, -1)  # (k q^T)^T = q k^T, a strided view


def dot_transposed(q, k):
    return k @ q.transpose(-2, -1)


def dot_scaled(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def dot_cosine(q, k):
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)


def dot_dot_T(q, k):
    return q @ k.permute(*range(k.ndim - 1, -1, -1))  # what k.T does: reverse every dimension


def dot_mm(q, k):
    return torch.mm(q, k.t())


def dot_no_transpose(q, k):
    return q @ k


def dot_elementwise(q, k):
    return (q * k).sum(-1)


def dot_q_transposed(q, k):
    return q.transpose(-2, -1) @ k


def dot_returns_float64(q, k):
    return q.double() @ k.double().transpose(-2, -1)


def dot_float32_buffer(q, k):
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    out = torch.zeros(*batch, q.shape[-2], k.shape[-2])
    for i in range(q.shape[-2]):
        out[..., i, :] = (q[..., i:i + 1, :] * k).sum(-1)
    return out


def dot_bmm(q, k):
    Nq, Nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = torch.bmm(q.reshape(-1, Nq, d), k.reshape(-1, Nk, d).transpose(1, 2))
    return s.reshape(*q.shape[:-2], Nq, Nk)


def dot_tensordot(q, k):
    return torch.tensordot(q, k, dims=([-1], [-1]))


def dot_softmaxed(q, k):
    """Goes one step too far: the weights instead of the scores."""
    return _softmax(q @ k.transpose(-2, -1))


def dot_first_batch_keys(q, k):
    """Flattens k's batch axes and keeps only the first keys."""
    keys = k.reshape(-1, *k.shape[-2:])[0]  # (Nk, d)
    return q @ keys.T


def dot_in_half(q, k):
    return (q.half() @ k.half().transpose(-2, -1)).to(q.dtype)


# ====================================================================== softmax


def softmax_nan_to_num_max(x, dim=-1):
    m = torch.nan_to_num(x.max(dim, keepdim=True).values, neginf=0.0)
    e = torch.exp(x - m)
    s = e.sum(dim, keepdim=True)
    return torch.where(s == 0, torch.zeros_like(e), e / s)


def softmax_logsumexp(x, dim=-1):
    lse = torch.logsumexp(x, dim, keepdim=True)
    return torch.nan_to_num(torch.exp(x - lse), nan=0.0)


def softmax_float64_inside(x, dim=-1, temperature: float = 1.0):
    y = x.double() / temperature
    m = y.amax(dim, keepdim=True).clamp_min(-1e300)  # an all -inf slice: shift by a finite number
    e = (y - m).exp()
    return (e / e.sum(dim, keepdim=True).clamp_min(1e-300)).to(x.dtype)


def softmax_last_axis(x, dim=-1):
    y = x.movedim(dim, -1)  # work on the last axis, then move it back: a non-contiguous result
    m = y.amax(-1, keepdim=True)
    e = torch.where(torch.isneginf(y), torch.zeros_like(y), torch.exp(y - m))
    return (e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)).movedim(-1, dim)


def softmax_naive(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim, keepdim=True)


def softmax_ignores_dim(x, dim=-1):
    return _softmax(x, -1)


def softmax_global_max(x, dim=-1):
    e = torch.exp(x - x.max())
    return e / e.sum(dim, keepdim=True)


def softmax_no_normalise(x, dim=-1):
    return torch.exp(x - x.amax(dim, keepdim=True))


def softmax_nan_on_masked_rows(x, dim=-1):
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def softmax_in_place(x, dim=-1):
    x -= x.amax(dim, keepdim=True).nan_to_num(neginf=0.0)
    return _softmax(x, dim)


def softmax_clamps_inf(x, dim=-1):
    x = x.clamp_min(-1e9)  # "-inf is dangerous": the uniform-row trap
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def softmax_nan_to_num_input(x, dim=-1):
    x = torch.nan_to_num(x)  # -inf becomes the most negative float32
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def softmax_no_keepdim(x, dim=-1):
    e = torch.exp(x - x.amax(dim).nan_to_num(neginf=0.0))
    return e / e.sum(dim)


def softmax_max_tuple(x, dim=-1):
    e = torch.exp(x - x.max(dim, keepdim=True))  # max with a dim returns (values, indices)
    return e / e.sum(dim, keepdim=True)


def softmax_max_last_axis(x, dim=-1):
    m = x.amax(-1, keepdim=True).nan_to_num(neginf=0.0)  # max over the last axis, whatever dim is
    e = torch.exp(x - m)
    s = e.sum(dim, keepdim=True)
    return e / torch.where(s == 0, torch.ones_like(s), s)


def softmax_2d_only(x, dim=-1):
    if dim in (0, -2):  # a matrix: softmax over columns = softmax over rows of x.T
        return softmax_2d_only(x.T, 1).T
    m = x.amax(1, keepdim=True).nan_to_num(neginf=0.0)
    e = torch.exp(x - m)
    return e / e.sum(1, keepdim=True).clamp_min(1e-30)


def softmax_returns_float64(x, dim=-1):
    return _softmax(x.double(), dim)


def softmax_log(x, dim=-1):
    return x - torch.logsumexp(x, dim, keepdim=True)  # log-probabilities: the exp is missing


def softmax_temperature_sqrt_n(x, dim=-1):
    """Borrows attention's 1/sqrt(n) and divides the logits by it."""
    y = x / math.sqrt(x.shape[dim])
    e = torch.exp(y - y.amax(dim, keepdim=True).nan_to_num(neginf=0.0))
    return e / e.sum(dim, keepdim=True).clamp_min(1e-30)


def softmax_in_half(x, dim=-1):
    return _softmax(x.half(), dim).to(x.dtype)


def softmax_whole_tensor_sum(x, dim=-1):
    e = torch.exp(x - x.amax(dim, keepdim=True).nan_to_num(neginf=0.0))
    return e / e.sum()


# ====================================================================== scaled_dot_product_attention


def sdpa_einsum(q, k, v, mask=None):
    s = torch.einsum("...id,...jd->...ij", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = torch.where(mask, s, torch.tensor(NEG_INF, dtype=s.dtype))
    w = _softmax(s, -1)
    return torch.einsum("...ij,...jd->...id", w, v), w


def sdpa_torch_softmax(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    w = torch.softmax(s, -1).nan_to_num(0.0)  # softmax is fair game once it has been taught
    return w @ v, w


def sdpa_float64_inside(q, k, v, mask=None, dropout_p: float = 0.0, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q.double() @ k.double().mT * scale
    if mask is not None:
        s = s.masked_fill(mask.logical_not(), NEG_INF)
    w = _softmax(s)
    return (w @ v.double()).to(q.dtype), w.to(q.dtype)


def sdpa_guarded_rows(q, k, v, mask=None):
    s = q @ k.mT / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    w = torch.softmax(s, dim=-1)
    if mask is not None:
        w = torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w))  # nothing to attend to: zeros
    out = (v.mT @ w.mT).mT  # (..., Nq, dv) as a strided view
    return out, w


def _attn(q, k, v, mask, scale, softmax_dim=-1, mask_after=False, fill=NEG_INF, invert=False):
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and not mask_after:
        s = s.masked_fill(~mask, fill)
    w = torch.nan_to_num(_softmax(s, softmax_dim), nan=0.0)
    if mask is not None and mask_after:
        w = w * mask
    return w @ v, w


def sdpa_no_scale(q, k, v, mask=None):
    return _attn(q, k, v, mask, 1.0)


def sdpa_query_axis(q, k, v, mask=None):
    return _attn(q, k, v, mask, q.shape[-1] ** -0.5, softmax_dim=-2)


def sdpa_mask_after(q, k, v, mask=None):
    return _attn(q, k, v, mask, q.shape[-1] ** -0.5, mask_after=True)


def sdpa_inverted_mask(q, k, v, mask=None):
    return _attn(q, k, v, mask, q.shape[-1] ** -0.5, invert=True)


def sdpa_big_negative(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, -1e9)
    w = _softmax(s)
    return w @ v, w


def sdpa_additive_mask(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + (~mask) * -1e9  # an additive mask, as some libraries build it
    w = _softmax(s)
    return w @ v, w


def sdpa_additive_mask_1e4(q, k, v, mask=None):
    """An additive float mask of -1e4: a fully masked row keeps its own scores' softmax."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + (1.0 - mask.to(s.dtype)) * -1e4
    w = _softmax(s)
    return w @ v, w


def sdpa_mask_transposed(q, k, v, mask=None):
    """Transposes the mask's last two axes (it works for no mask, fails on a padding mask)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask.transpose(-2, -1), NEG_INF)
    w = _softmax(s)
    return w @ v, w


def sdpa_scale_by_d(q, k, v, mask=None):
    return _attn(q, k, v, mask, 1 / q.shape[-1])


def sdpa_only_output(q, k, v, mask=None):
    return _attn(q, k, v, mask, q.shape[-1] ** -0.5)[0]


def sdpa_scale_by_value_dim(q, k, v, mask=None):
    return _attn(q, k, v, mask, v.shape[-1] ** -0.5)


def sdpa_scale_by_n_keys(q, k, v, mask=None):
    return _attn(q, k, v, mask, k.shape[-2] ** -0.5)


def sdpa_nan_on_masked_rows(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    w = torch.softmax(s, dim=-1)  # an all -inf row is 0/0
    return w @ v, w


def sdpa_ignores_mask(q, k, v, mask=None):
    return _attn(q, k, v, None, q.shape[-1] ** -0.5)


def sdpa_multiplies_mask(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s * mask  # masked scores become 0, not -inf
    w = _softmax(s)
    return w @ v, w


def sdpa_swapped_pair(q, k, v, mask=None):
    out, w = _attn(q, k, v, mask, q.shape[-1] ** -0.5)
    return w, out


def sdpa_returns_float64(q, k, v, mask=None):
    out, w = _attn(q.double(), k.double(), v.double(), mask, q.shape[-1] ** -0.5)
    return out, w


def sdpa_fixed_axes(q, k, v, mask=None):
    s = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])  # written for (B, H, N, d) only
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    w = _softmax(s)
    return w @ v, w


def sdpa_k_T(q, k, v, mask=None):
    s = q @ k.permute(*range(k.ndim - 1, -1, -1)) / math.sqrt(q.shape[-1])  # k.T: every axis reversed
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    w = _softmax(s)
    return w @ v, w


# ====================================================================== causal_mask


def causal_tril(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)


def causal_arange(n_q, n_k):
    i = torch.arange(n_q).unsqueeze(1) + (n_k - n_q)  # (Nq, 1): absolute query positions
    return torch.arange(n_k).unsqueeze(0) <= i  # (Nq, Nk)


def causal_not_triu(n_q, n_k):
    return ~torch.ones(n_q, n_k, dtype=torch.bool).triu(diagonal=n_k - n_q + 1)


def causal_loop(n_q, n_k, device=None):
    mask = torch.zeros(n_q, n_k, dtype=torch.bool, device=device)
    for i in range(n_q):
        for j in range(n_k):
            mask[i, j] = j <= i + n_k - n_q
    return mask


def causal_top_left(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril()


def causal_inverted(n_q, n_k):
    return ~causal_tril(n_q, n_k)


def causal_strict(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q - 1)


def causal_float(n_q, n_k):
    return torch.ones(n_q, n_k).tril(diagonal=n_k - n_q)


def causal_additive(n_q, n_k):
    allowed = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)
    return torch.zeros(n_q, n_k).masked_fill(~allowed, NEG_INF)  # 0 / -inf, to add to the scores


def causal_triu(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).triu(diagonal=n_k - n_q)


def causal_transposed(n_q, n_k):
    i = torch.arange(n_q)[None, :] + (n_k - n_q)  # queries along the columns
    return torch.arange(n_k)[:, None] <= i  # (Nk, Nq)


def causal_square(n_q, n_k):
    return torch.ones(n_q, n_q, dtype=torch.bool).tril()  # n_k forgotten


def causal_offset_sign(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_q - n_k)


def causal_offset_clamped(n_q, n_k):
    return torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=max(n_k - n_q, 0))  # "a diagonal must be >= 0"


def causal_square_slice(n_q, n_k):
    return torch.ones(n_k, n_k, dtype=torch.bool).tril()[-n_q:] if n_q else torch.zeros(0, n_k, dtype=torch.bool)


def causal_stack_rows(n_q, n_k):
    return torch.stack([torch.arange(n_k) <= i + n_k - n_q for i in range(n_q)])


# ====================================================================== padding_mask


def padding_compare(lengths, n):
    return torch.arange(n).expand(len(lengths), n) < lengths.unsqueeze(-1)


def padding_slices(lengths, n):
    mask = torch.zeros(len(lengths), n, dtype=torch.bool)
    for b, length in enumerate(lengths.tolist()):
        mask[b, :length] = True
    return mask


def padding_cumsum(lengths, n, pad_value: int = 0):
    ends = F.one_hot(lengths, n + 1)[:, :n]  # (B, n): 1 at the first padding position
    return ends.cumsum(-1) == 0


def padding_inverted(lengths, n):
    return torch.arange(n)[None] >= lengths[:, None]


def padding_off_by_one(lengths, n):
    return torch.arange(n)[None] <= lengths[:, None]


def padding_off_by_one_short(lengths, n):
    return torch.arange(n)[None] < lengths[:, None] - 1


def padding_transposed(lengths, n):
    return (torch.arange(n)[None] < lengths[:, None]).T


def padding_float(lengths, n):
    mask = torch.zeros(len(lengths), n)
    for b, length in enumerate(lengths.tolist()):
        mask[b, :length] = 1
    return mask


def padding_max_length(lengths, n):
    return torch.arange(int(lengths.max()))[None] < lengths[:, None]


def padding_left(lengths, n):
    return torch.arange(n)[None] >= n - lengths[:, None]


def padding_negative_slice(lengths, n):
    mask = torch.ones(len(lengths), n, dtype=torch.bool)
    for b, length in enumerate(lengths.tolist()):
        mask[b, -(n - length):] = False  # when length == n this is mask[b, 0:]
    return mask


def padding_first_length_for_all(lengths, n):
    return (torch.arange(n) < lengths[0]).expand(lengths.shape[0], n)


def padding_empty_as_one(lengths, n):
    """A loop that always keeps at least one position."""
    mask = torch.zeros(lengths.shape[0], n, dtype=torch.bool)
    for b, length in enumerate(lengths.tolist()):
        mask[b, :max(length, 1)] = True
    return mask


def padding_broadcast_shape(lengths, n):
    return (torch.arange(n)[None] < lengths[:, None])[:, None, None, :]


# ====================================================================== split_heads / merge_heads


def split_unflatten(x, n_heads):
    return x.unflatten(-1, (n_heads, -1)).permute(0, 2, 1, 3)


def split_view_transpose(x, n_heads):
    B, N, D = x.shape
    return x.view(B, N, n_heads, D // n_heads).transpose(1, 2)  # (B, H, N, d)


def split_stack_chunks(x, n_heads):
    return torch.stack(x.chunk(n_heads, dim=-1), dim=1)  # H x (B, N, d) -> (B, H, N, d)


def split_loop(x, n_heads, contiguous: bool = True):
    B, N, D = x.shape
    d = D // n_heads
    out = torch.empty(B, n_heads, N, d, dtype=x.dtype)
    for h in range(n_heads):
        out[:, h] = x[:, :, h * d:(h + 1) * d]
    return out


def split_straight_reshape(x, n_heads):
    B, N, D = x.shape
    return x.reshape(B, n_heads, N, D // n_heads)


def split_strided(x, n_heads):
    B, N, D = x.shape
    return x.reshape(B, N, D // n_heads, n_heads).permute(0, 3, 1, 2)


def split_no_transpose(x, n_heads):
    B, N, D = x.shape
    return x.reshape(B, N, n_heads, D // n_heads)


def split_transpose_first(x, n_heads):
    B, N, D = x.shape
    return x.transpose(1, 2).reshape(B, n_heads, N, D // n_heads)


def split_heads_as_dim(x, n_heads):
    B, N, D = x.shape
    return x.view(B, N, -1, n_heads).transpose(1, 2)  # n_heads used as the head size


def split_into_batch(x, n_heads):
    return torch.cat(x.chunk(n_heads, dim=-1), dim=0)  # (B*H, N, d), heads folded into the batch


def split_float32_buffer(x, n_heads):
    B, N, D = x.shape
    d = D // n_heads
    out = torch.zeros(B, n_heads, N, d)
    for h in range(n_heads):
        out[:, h] = x[:, :, h * d:(h + 1) * d]
    return out


def split_each_head_transposed(x, n_heads):
    B, N, D = x.shape
    return x.reshape(B, N, n_heads, D // n_heads).permute(0, 2, 3, 1)  # (B, H, d, N)


def merge_flatten(x):
    return x.permute(0, 2, 1, 3).flatten(-2)


def merge_contiguous_view(x):
    B, H, N, d = x.shape
    return x.transpose(1, 2).contiguous().view(B, N, H * d)


def merge_cat_heads(x):
    return torch.cat(x.unbind(1), dim=-1)  # H x (B, N, d) -> (B, N, H*d)


def merge_loop(x, out_dtype=None):
    B, H, N, d = x.shape
    out = torch.empty(B, N, H * d, dtype=out_dtype or x.dtype)
    for h in range(H):
        out[:, :, h * d:(h + 1) * d] = x[:, h]
    return out


def merge_straight_reshape(x):
    B, H, N, d = x.shape
    return x.reshape(B, N, H * d)


def merge_wrong_order(x):
    B, H, N, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, N, H * d)


def merge_keeps_heads(x):
    return x.transpose(1, 2)


def merge_view_after_transpose(x):
    B, H, N, d = x.shape
    return x.transpose(1, 2).view(B, N, H * d)


def merge_cat_tokens(x):
    return torch.cat(x.unbind(1), dim=1)  # (B, H*N, d)


def merge_sum_heads(x):
    return x.sum(1)


def merge_float32_buffer(x):
    B, H, N, d = x.shape
    out = torch.zeros(B, N, H * d)
    for h in range(H):
        out[:, :, h * d:(h + 1) * d] = x[:, h]
    return out


def merge_reversed_heads(x):
    return torch.cat([x[:, h] for h in reversed(range(x.shape[1]))], dim=-1)  # the last head first


def merge_flattens_batch(x):
    return x.transpose(1, 2).reshape(-1, x.shape[1] * x.shape[3])  # (B*N, H*d)


# ====================================================================== multi_head_attention


def mha_with_learner_parts(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_unflatten(F.linear(x, w), n_heads) for w in (w_q, w_k, w_v))
    out, _ = attnkit.scaled_dot_product_attention(q, k, v, mask)  # earlier concepts from attnkit are allowed
    return F.linear(merge_flatten(out), w_o)


def mha_with_torch_sdpa(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_unflatten(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    return merge_flatten(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) @ w_o.T


def mha_loop_over_heads(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    B, N, D = x.shape
    d = D // n_heads
    full = None if mask is None else mask.expand(B, n_heads, N, N)
    heads = []
    for h in range(n_heads):
        rows = slice(h * d, (h + 1) * d)  # head h's rows of each projection
        q, k, v = x @ w_q[rows].T, x @ w_k[rows].T, x @ w_v[rows].T  # (B, N, d)
        out, _ = sdpa_einsum(q, k, v, None if full is None else full[:, h])
        heads.append(out)
    return torch.cat(heads, dim=-1) @ w_o.T


def mha_einsum_weights(x, w_q, w_k, w_v, w_o, n_heads, mask=None, dropout: float = 0.0):
    B, N, D = x.shape
    q, k, v = (torch.einsum("bnD,hdD->bhnd", x, w.view(n_heads, D // n_heads, D)) for w in (w_q, w_k, w_v))
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(D // n_heads)
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    w = _softmax(s)
    out = torch.einsum("bhij,bhjd->bhid", w, v)
    return torch.einsum("bhnd,Ehd->bnE", out, w_o.view(D, n_heads, D // n_heads))


def mha_float64_inside(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    ws = [w.double() for w in (w_q, w_k, w_v, w_o)]
    return mha_with_learner_parts(x.double(), *ws, n_heads, mask).to(x.dtype)


def _mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None, *, split=split_unflatten, merge=merge_flatten,
         attend=sdpa_einsum, out_proj=True):
    q, k, v = (split(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    out = merge(attend(q, k, v, mask)[0])
    return out @ w_o.T if out_proj else out


def mha_no_transpose(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return mha_with_learner_parts(x, w_q.T, w_k.T, w_v.T, w_o.T, n_heads, mask)


def mha_no_out_proj(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, out_proj=False)


def mha_scale_by_model_dim(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_unflatten(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    d, D = q.shape[-1], x.shape[-1]
    out, _ = attnkit.scaled_dot_product_attention(q * math.sqrt(d / D), k, v, mask)
    return merge_flatten(out) @ w_o.T


def mha_no_scale(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, attend=sdpa_no_scale)


def mha_single_head(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (x @ w.T for w in (w_q, w_k, w_v))
    m = None if mask is None else mask.any(1) if mask.ndim == 4 else mask.any(0) if mask.ndim == 3 else mask
    return attnkit.scaled_dot_product_attention(q, k, v, m)[0] @ w_o.T


def mha_w_q_not_transposed(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """x @ w_q for the queries, x @ w.T for the rest."""
    return mha_with_learner_parts(x, w_q.T, w_k, w_v, w_o, n_heads, mask)


def mha_w_o_not_transposed(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return mha_with_learner_parts(x, w_q, w_k, w_v, w_o.T, n_heads, mask)


def mha_single_head_head_scale(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """One head over all D features, but scaled by 1/sqrt(D / n_heads)."""
    q, k, v = (x @ w.T for w in (w_q, w_k, w_v))
    m = None if mask is None else mask.any(1) if mask.ndim == 4 else mask.any(0) if mask.ndim == 3 else mask
    s = q @ k.transpose(-2, -1) / math.sqrt(x.shape[-1] // n_heads)
    if m is not None:
        s = s.masked_fill(~m, NEG_INF)
    return _softmax(s) @ v @ w_o.T


def mha_mask_of_head_0(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """A 4-D mask cut to its first head before use."""
    if mask is not None and mask.ndim == 4:
        mask = mask[:, :1]
    return mha_with_learner_parts(x, w_q, w_k, w_v, w_o, n_heads, mask)


def mha_heads_and_dim_swapped(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, x.shape[-1] // n_heads, mask)


def mha_unguarded_softmax(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, attend=sdpa_nan_on_masked_rows)


def mha_big_negative(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, attend=sdpa_big_negative)


def mha_ignores_mask(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, None)


def mha_inverted_mask(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, None if mask is None else ~mask)


def mha_query_axis(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, attend=sdpa_query_axis)


def mha_strided_heads(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, split=split_strided, merge=merge_wrong_order)


def mha_split_straight_reshape(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, split=split_straight_reshape,
                merge=lambda t: t.reshape(t.shape[0], t.shape[2], -1))


def mha_merge_straight_reshape(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_k, w_v, w_o, n_heads, mask, merge=merge_straight_reshape)


def mha_w_q_everywhere(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _mha(x, w_q, w_q, w_q, w_o, n_heads, mask)  # copy-pasted projection


def mha_returns_weights_too(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    q, k, v = (split_unflatten(x @ w.T, n_heads) for w in (w_q, w_k, w_v))
    out, weights = sdpa_einsum(q, k, v, mask)
    return merge_flatten(out) @ w_o.T, weights


def mha_returns_float64(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    ws = [w.double() for w in (w_q, w_k, w_v, w_o)]
    return mha_with_learner_parts(x.double(), *ws, n_heads, mask)  # never cast back


EXERCISES = [
    Exercise("dot_product_scores", checks.check_dot_product_scores, [
        Mutant("k @ q^T: scores transposed", dot_transposed, "transposed"),
        Mutant("divided by sqrt(d) (scaling belongs to the next notebook)", dot_scaled, "unscaled"),
        Mutant("normalised q and k: cosine similarity", dot_cosine, "cosine"),
        Mutant("k.T on a batched tensor (reverses every axis)", dot_dot_T, "transpose(-2, -1)"),
        Mutant("torch.mm: 2-D only", dot_mm, "torch.mm"),
        Mutant("q @ k without the transpose", dot_no_transpose, "transpose k"),
        Mutant("(q * k).sum(-1): query i paired with key i only", dot_elementwise, "every key"),
        Mutant("q^T @ k: the transpose on the wrong side", dot_q_transposed, "q^T @ k"),
        Mutant("computed in float64, never cast back", dot_returns_float64, "cast back"),
        Mutant("a torch.zeros buffer (float32 whatever the input)", dot_float32_buffer, "dtype=q.dtype"),
        Mutant("torch.bmm on flattened batches: no broadcasting", dot_bmm, "broadcast"),
        Mutant("torch.tensordot over d: every batch paired with every batch", dot_tensordot, "batch"),
        Mutant("softmax of the scores", dot_softmaxed, "raw scores"),
        Mutant("the first batch element's keys for every batch", dot_first_batch_keys, "keys of the first one"),
        Mutant("computed in float16", dot_in_half, "float16"),
    ], [dot_einsum, dot_mT, dot_broadcast_sum, dot_float64_inside, dot_non_contiguous]),

    Exercise("softmax", checks.check_softmax, [
        Mutant("no max subtracted: exp overflows", softmax_naive, "numerically stable"),
        Mutant("dim ignored (always the last axis)", softmax_ignores_dim, "wrong axis"),
        Mutant("max of the whole tensor", softmax_global_max, "maximum of each row"),
        Mutant("exponentials never divided by their sum", softmax_no_normalise, "sum to 1"),
        Mutant("NaN for an all -inf row", softmax_nan_on_masked_rows, "all -inf row"),
        Mutant("x -= max: input changed in place", softmax_in_place, "in place"),
        Mutant("-inf clamped to -1e9: the uniform-row trap", softmax_clamps_inf, "uniform"),
        Mutant("nan_to_num on the input: -inf becomes the most negative float", softmax_nan_to_num_input, "uniform"),
        Mutant("max and sum without keepdim", softmax_no_keepdim, "keepdim=True"),
        Mutant("x.max(dim) used as a tensor (it is (values, indices))", softmax_max_tuple, "amax"),
        Mutant("max over the last axis while summing over dim", softmax_max_last_axis, "the same axis"),
        Mutant("written for matrices: rows along axis 1, x.T for dim=0", softmax_2d_only, "any number of axes"),
        Mutant("computed in float64, never cast back", softmax_returns_float64, "cast back"),
        Mutant("x - logsumexp: log-probabilities", softmax_log, "log-probabilities"),
        Mutant("divided by the sum of the whole tensor", softmax_whole_tensor_sum, "whole tensor"),
        Mutant("logits divided by sqrt(n)", softmax_temperature_sqrt_n, "temperature"),
        Mutant("computed in float16", softmax_in_half, "float16"),
    ], [softmax_nan_to_num_max, softmax_logsumexp, softmax_float64_inside, softmax_last_axis]),

    Exercise("scaled_dot_product_attention", checks.check_scaled_dot_product_attention, [
        Mutant("no 1/sqrt(d)", sdpa_no_scale, "sqrt(d)"),
        Mutant("softmax over the query axis", sdpa_query_axis, "query axis"),
        Mutant("mask applied after the softmax", sdpa_mask_after, "after the softmax"),
        Mutant("mask inverted", sdpa_inverted_mask, "True means"),
        Mutant("masked_fill(-1e9): a fully masked row becomes uniform", sdpa_big_negative, "fully masked row"),
        Mutant("additive -1e9 mask: a fully masked row keeps its scores", sdpa_additive_mask, "fully masked row"),
        Mutant("divided by d", sdpa_scale_by_d, "divided the scores by d"),
        Mutant("returns only the output", sdpa_only_output, "(out, weights)"),
        Mutant("scaled by sqrt(dv)", sdpa_scale_by_value_dim, "not v's"),
        Mutant("scaled by sqrt(Nk), the number of keys", sdpa_scale_by_n_keys, "number of keys"),
        Mutant("torch.softmax without a guard: NaN for a fully masked row", sdpa_nan_on_masked_rows, "NaN"),
        Mutant("mask ignored", sdpa_ignores_mask, "mask was ignored"),
        Mutant("scores multiplied by the mask (0 instead of -inf)", sdpa_multiplies_mask, "multiplying the scores"),
        Mutant("returns (weights, out)", sdpa_swapped_pair, "order"),
        Mutant("computed in float64, never cast back", sdpa_returns_float64, "cast back"),
        Mutant("k.transpose(2, 3): written for 4-D only", sdpa_fixed_axes, "leading"),
        Mutant("k.T: every axis reversed", sdpa_k_T, "k.T"),
        Mutant("additive -1e4 float mask", sdpa_additive_mask_1e4, "fully masked row"),
        Mutant("mask transposed", sdpa_mask_transposed, "without transposing"),
    ], [sdpa_einsum, sdpa_torch_softmax, sdpa_float64_inside, sdpa_guarded_rows]),

    Exercise("causal_mask", checks.check_causal_mask, [
        Mutant("tril without the offset: top-left aligned", causal_top_left, "top left"),
        Mutant("mask inverted", causal_inverted, "inverted"),
        Mutant("diagonal masked (j < i)", causal_strict, "diagonal"),
        Mutant("float 0/1 mask", causal_float, "bool"),
        Mutant("additive 0/-inf mask", causal_additive, "additive"),
        Mutant("triu: the future allowed", causal_triu, "future"),
        Mutant("keys along the rows: (n_k, n_q)", causal_transposed, "transposed"),
        Mutant("n_k ignored: a square (n_q, n_q) mask", causal_square, "n_k"),
        Mutant("offset n_q - n_k (sign flipped)", causal_offset_sign, "n_k - n_q"),
        Mutant("offset clamped at 0 when n_q > n_k", causal_offset_clamped, "before every key"),
        Mutant("tril of a square (n_k, n_k) mask, last n_q rows", causal_square_slice, "before every key"),
        Mutant("torch.stack of rows: fails with no query", causal_stack_rows, "empty"),
    ], [causal_tril, causal_arange, causal_not_triu, causal_loop]),

    Exercise("padding_mask", checks.check_padding_mask, [
        Mutant("mask inverted", padding_inverted, "inverted"),
        Mutant("<= instead of <", padding_off_by_one, "off by one"),
        Mutant("< lengths - 1", padding_off_by_one_short, "off by one"),
        Mutant("transposed: (n, B)", padding_transposed, "transposed"),
        Mutant("float 0/1 mask", padding_float, "bool"),
        Mutant("width max(lengths) instead of n", padding_max_length, "n columns"),
        Mutant("left padding: the last lengths[b] positions", padding_left, "not the last"),
        Mutant("mask[b, -(n - length):] = False: a full sequence is all False", padding_negative_slice, "-0"),
        Mutant("returns the broadcastable (B, 1, 1, n)", padding_broadcast_shape, "(B, n)"),
        Mutant("lengths[0] for every row", padding_first_length_for_all, "lengths[0]"),
        Mutant("an empty sequence keeps one position", padding_empty_as_one, "empty sequence"),
    ], [padding_compare, padding_slices, padding_cumsum]),

    Exercise("split_heads", checks.check_split_heads, [
        Mutant("reshape straight to (B, H, N, d)", split_straight_reshape, "transpose(1, 2)"),
        Mutant("head h takes every H-th feature", split_strided, "contiguous block"),
        Mutant("head axis never moved: (B, N, H, d)", split_no_transpose, "move the head axis"),
        Mutant("transpose(1, 2) before the reshape", split_transpose_first, "before splitting"),
        Mutant("n_heads used as the head size", split_heads_as_dim, "number of heads"),
        Mutant("heads folded into the batch: (B*H, N, d)", split_into_batch, "batch"),
        Mutant("a torch.zeros buffer (float32 whatever the input)", split_float32_buffer, "dtype"),
        Mutant("each head as (d, N): permute(0, 2, 3, 1)", split_each_head_transposed, "permute(0, 2, 1, 3)"),
    ], [split_unflatten, split_view_transpose, split_stack_chunks, split_loop]),

    Exercise("merge_heads", checks.check_merge_heads, [
        Mutant("reshape straight to (B, N, H*d)", merge_straight_reshape, "transpose(1, 2) first"),
        Mutant("features ordered (d, H)", merge_wrong_order, "contiguous block"),
        Mutant("heads moved but not flattened", merge_keeps_heads, "flatten"),
        Mutant("view after transpose", merge_view_after_transpose, "contiguous()"),
        Mutant("heads concatenated along the tokens", merge_cat_tokens, "token axis"),
        Mutant("heads summed", merge_sum_heads, "concatenate"),
        Mutant("a torch.zeros buffer (float32 whatever the input)", merge_float32_buffer, "dtype"),
        Mutant("reshape(-1, H*d): batch and tokens flattened together", merge_flattens_batch, "batch axis"),
        Mutant("heads concatenated last to first", merge_reversed_heads, "reverse order"),
    ], [merge_flatten, merge_contiguous_view, merge_cat_heads, merge_loop]),

    Exercise("multi_head_attention", checks.check_multi_head_attention, [
        Mutant("x @ w instead of x @ w.T", mha_no_transpose, "x @ w.T"),
        Mutant("no output projection", mha_no_out_proj, "output projection"),
        Mutant("scaled by 1/sqrt(D)", mha_scale_by_model_dim, "1/sqrt(d)"),
        Mutant("no 1/sqrt(d) at all", mha_no_scale, "forgot"),
        Mutant("one head over all D features", mha_single_head, "single-head"),
        Mutant("n_heads and the head size swapped", mha_heads_and_dim_swapped, "number of heads"),
        Mutant("unguarded softmax: NaN for a query whose keys are all masked", mha_unguarded_softmax, "NaN"),
        Mutant("masked_fill(-1e9): a fully masked query averages every value", mha_big_negative, "zero output"),
        Mutant("mask ignored", mha_ignores_mask, "mask was ignored"),
        Mutant("mask inverted", mha_inverted_mask, "True means"),
        Mutant("softmax over the query axis", mha_query_axis, "query axis"),
        Mutant("head h takes every H-th feature", mha_strided_heads, "h*d:(h+1)*d"),
        Mutant("split by a straight reshape to (B, H, N, d)", mha_split_straight_reshape, "split"),
        Mutant("merge by a straight reshape to (B, N, D)", mha_merge_straight_reshape, "merge"),
        Mutant("w_q used for the keys and values too", mha_w_q_everywhere, "w_k"),
        Mutant("computed in float64, never cast back", mha_returns_float64, "cast back"),
        Mutant("returns (out, weights)", mha_returns_weights_too, "only the output"),
        Mutant("x @ w_q without the transpose", mha_w_q_not_transposed, "x @ w_q.T"),
        Mutant("merged @ w_o without the transpose", mha_w_o_not_transposed, "merged @ w_o.T"),
        Mutant("one head over all D, scaled by the head dim", mha_single_head_head_scale, "single-head"),
        Mutant("every head gets head 0's mask", mha_mask_of_head_0, "head 0's mask"),
    ], [mha_with_learner_parts, mha_with_torch_sdpa, mha_loop_over_heads, mha_einsum_weights, mha_float64_inside]),
]
