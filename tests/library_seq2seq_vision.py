"""The checkers' library for the encoder-decoder (07b: cross_attention) and the ViT (07c: patchify,
attention_rollout): mistakes learners make, each with the hint its checker must name, and correct
implementations in different styles (see tests/library.py).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

import attnkit
from attnkit.checks import CHECKS
from library import Exercise, Mutant

# ============================================================================ cross_attention


def _split(t, H):
    B, N, D = t.shape
    return t.reshape(B, N, H, D // H).transpose(1, 2)  # (B, H, N, d)


def _merge(t):
    B, H, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, H * d)  # (B, N, D)


def _attend(q, k, v, mask, *, scale=None, dim=-1, fill=float("-inf"), safe=True):
    s = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, fill)
    if not safe:
        return torch.softmax(s, dim) @ v
    m = s.amax(dim, keepdim=True).nan_to_num(neginf=0.0)
    e = torch.exp(s - m)
    total = e.sum(dim, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-30), torch.zeros_like(e))
    return w @ v


def _xattn_with(x, memory, w_q, w_k, w_v, w_o, H, mask=None, *, q_src=None, k_src=None, v_src=None, **attend):
    q = _split((x if q_src is None else q_src) @ w_q.T, H)
    k = _split((memory if k_src is None else k_src) @ w_k.T, H)
    v = _split((memory if v_src is None else v_src) @ w_v.T, H)
    return _merge(_attend(q, k, v, mask, **attend)) @ w_o.T


# ---------------------------------------------------------------- correct styles


def xattn_attnkit_parts(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """attnkit's split/merge and notebook 03's attention: what a learner of this course writes."""
    q = attnkit.split_heads(x @ w_q.T, n_heads)  # (B, H, Nq, d)
    k = attnkit.split_heads(memory @ w_k.T, n_heads)  # (B, H, Nk, d)
    v = attnkit.split_heads(memory @ w_v.T, n_heads)
    out, _ = attnkit.scaled_dot_product_attention(q, k, v, mask)
    return attnkit.merge_heads(out) @ w_o.T


def xattn_einsum(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """Per-head weight views and einsum; F.linear for the output."""
    B, Nq, D = x.shape
    d = D // n_heads
    q = torch.einsum("bnD,hdD->bhnd", x, w_q.reshape(n_heads, d, D))
    k = torch.einsum("bmD,hdD->bhmd", memory, w_k.reshape(n_heads, d, D))
    v = torch.einsum("bmD,hdD->bhmd", memory, w_v.reshape(n_heads, d, D))
    s = torch.einsum("bhnd,bhmd->bhnm", q, k) / d ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0)  # rows with no key allowed: 0/0 -> 0
    out = torch.einsum("bhnm,bhmd->bnhd", w, v).reshape(B, Nq, D)
    return F.linear(out, w_o)


def xattn_head_loop(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """One head at a time with F.linear, concatenated; float64 inside, cast back."""
    D = x.shape[-1]
    d = D // n_heads
    heads = []
    for h in range(n_heads):
        rows = slice(h * d, (h + 1) * d)
        q = F.linear(x.double(), w_q[rows].double())  # (B, Nq, d)
        k = F.linear(memory.double(), w_k[rows].double())  # (B, Nk, d)
        v = F.linear(memory.double(), w_v[rows].double())
        m = None if mask is None else mask.expand(x.shape[0], n_heads, x.shape[1], memory.shape[1])[:, h]
        heads.append(_attend(q, k, v, m))
    return (torch.cat(heads, -1) @ w_o.double().T).to(x.dtype)


def xattn_torch_sdpa(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """PyTorch's fused attention for the inner step (it gives zeros to a query that sees nothing)."""
    q, k, v = _split(x @ w_q.T, n_heads), _split(memory @ w_k.T, n_heads), _split(memory @ w_v.T, n_heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _merge(out) @ w_o.T


# ---------------------------------------------------------------- mistakes


def xattn_self(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """Self-attention on x: memory never used."""
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, None, k_src=x, v_src=x)


def xattn_swapped(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """The encoder asks the decoder: queries from memory, keys and values from x."""
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, None, q_src=memory, k_src=x, v_src=x)


def xattn_values_from_x(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, mask, v_src=x)


def xattn_no_transpose(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q.T, w_k.T, w_v.T, w_o.T, n_heads, mask)


def xattn_no_out_proj(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    D = x.shape[-1]
    return _xattn_with(x, memory, w_q, w_k, w_v, torch.eye(D, dtype=x.dtype), n_heads, mask)


def xattn_no_scale(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, mask, scale=1.0)


def xattn_scale_model_dim(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, mask, scale=1 / math.sqrt(x.shape[-1]))


def xattn_query_axis(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, mask, dim=-2)


def xattn_causal(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """A decoder habit: the causal mask of self-attention carried over."""
    causal = torch.ones(x.shape[1], memory.shape[1], dtype=torch.bool).tril()
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, causal if mask is None else mask & causal)


def xattn_mask_ignored(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, None)


def xattn_mask_inverted(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, None if mask is None else ~mask)


def xattn_big_negative(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, mask, fill=-1e9)


def xattn_plain_softmax(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """torch.softmax over rows that may be all -inf: NaN for an empty source."""
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, n_heads, mask, safe=False)


def xattn_straight_reshape(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    def split(t):
        B, N, D = t.shape
        return t.reshape(B, n_heads, N, D // n_heads)

    q, k, v = split(x @ w_q.T), split(memory @ w_k.T), split(memory @ w_v.T)
    out = _attend(q, k, v, mask)
    B, H, N, d = out.shape
    return out.reshape(B, N, H * d) @ w_o.T


def xattn_keys_with_w_q(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return _xattn_with(x, memory, w_q, w_q, w_v, w_o, n_heads, mask)


def xattn_one_head(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """n_heads ignored: one head over all D features."""
    m = None if mask is None else mask.any(-3, keepdim=True)
    return _xattn_with(x, memory, w_q, w_k, w_v, w_o, 1, m)


def xattn_with_weights(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    out = xattn_attnkit_parts(x, memory, w_q, w_k, w_v, w_o, n_heads, mask)
    return out, None


def xattn_attnkit(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return attnkit.cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, mask)


def xattn_torch_module(x, memory, w_q, w_k, w_v, w_o, n_heads, mask=None):
    D = x.shape[-1]
    m = torch.nn.MultiheadAttention(D, n_heads, bias=False, batch_first=True).to(x.dtype)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat((w_q, w_k, w_v)))
        m.out_proj.weight.copy_(w_o)
    return m(x, memory, memory, need_weights=False)[0]


ROLES = "the queries come from x (the decoder) and the keys and values from memory"

CROSS_ATTENTION = Exercise("cross_attention", CHECKS["cross_attention"], [
    Mutant("self-attention on x, memory unused", xattn_self, ROLES),
    Mutant("queries from memory, keys and values from x", xattn_swapped, "queries and keys swapped places"),
    Mutant("values from x", xattn_values_from_x, "keys and values from memory"),
    Mutant("x @ w instead of x @ w.T", xattn_no_transpose, "x @ w.T"),
    Mutant("no output projection", xattn_no_out_proj, "output projection"),
    Mutant("no 1/sqrt(d)", xattn_no_scale, "divide the scores by sqrt(d)"),
    Mutant("scaled by 1/sqrt(D)", xattn_scale_model_dim, "1/sqrt(D)"),
    Mutant("softmax over the query axis", xattn_query_axis, "query axis"),
    Mutant("a causal mask in cross-attention", xattn_causal, "no causal mask"),
    Mutant("mask ignored", xattn_mask_ignored, "mask was ignored"),
    Mutant("mask inverted", xattn_mask_inverted, "mask is inverted"),
    Mutant("-1e9 instead of -inf: an empty source averages the padding", xattn_big_negative, "-1e9"),
    Mutant("torch.softmax over an all -inf row: NaN", xattn_plain_softmax, "gave NaN"),
    Mutant("straight reshape into heads and back", xattn_straight_reshape, "mixes positions and heads"),
    Mutant("keys projected with w_q", xattn_keys_with_w_q, "projected with w_q"),
    Mutant("one head over all D features", xattn_one_head, "single-head attention"),
    Mutant("returns (out, weights)", xattn_with_weights, "not (out, weights)"),
    Mutant("calls attnkit.cross_attention", xattn_attnkit, "calls"),
    Mutant("calls torch.nn.MultiheadAttention", xattn_torch_module, "calls"),
], [xattn_attnkit_parts, xattn_einsum, xattn_head_loop, xattn_torch_sdpa])

# ============================================================================ patchify


def patchify_reshape_permute(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
    return x.reshape(B, -1, C * p * p)


def patchify_tensor_unfold(images, patch_size):
    """Tensor.unfold twice (a sliding window with step = size), then flatten."""
    p = patch_size
    B, C = images.shape[:2]
    x = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, rows, cols, p, p)
    return x.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # (B, N, C*p*p)


def patchify_loops(images, patch_size):
    """Two loops over the grid, slicing each patch."""
    p = patch_size
    B, C, H, W = images.shape
    patches = [images[:, :, r:r + p, c:c + p].reshape(B, C * p * p)
               for r in range(0, H, p) for c in range(0, W, p)]
    return torch.stack(patches, 1)


def patchify_split(images, patch_size):
    """torch.split into row strips, then each strip into patches."""
    B, C = images.shape[:2]
    rows = images.split(patch_size, dim=2)
    return torch.stack([patch.flatten(1) for strip in rows for patch in strip.split(patch_size, dim=3)], 1)


def patchify_only_reshape(images, patch_size):
    B, C, H, W = images.shape
    return images.reshape(B, (H // patch_size) * (W // patch_size), C * patch_size ** 2)


def patchify_column_major(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 1, 3, 5)
    return x.reshape(B, -1, C * p * p)


def patchify_channels_last(images, patch_size):
    """The einops recipe 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' of popular ViT code."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, -1, C * p * p)


def patchify_patch_transposed(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 5, 3)
    return x.reshape(B, -1, C * p * p)


def patchify_unfold_layout(images, patch_size):
    """Patches as columns, (B, C*p*p, N), the layout F.unfold returns."""
    return patchify_reshape_permute(images, patch_size).transpose(1, 2)


def patchify_view(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.view(B, -1, C * p * p)


def patchify_count(images, patch_size):
    """patch_size read as the number of patches per side."""
    return patchify_reshape_permute(images, images.shape[-1] // patch_size)


def patchify_overlapping(images, patch_size):
    p = patch_size
    B, C = images.shape[:2]
    x = images.unfold(2, p, 1).unfold(3, p, 1)  # every p x p window
    return x.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)


def patchify_token_per_channel(images, patch_size):
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 1, 2, 4, 3, 5)  # (B, C, rows, cols, p, p)
    return x.reshape(B, -1, p * p)


def patchify_width_first(images, patch_size):
    """The image read transposed: x.transpose(-2, -1) before cutting."""
    return patchify_reshape_permute(images.transpose(-2, -1), patch_size)


def patchify_one_channel(images, patch_size):
    """Written for grey images: the channel axis dropped."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, H // p, p, W // p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(B, -1, p * p)


def patchify_f_unfold(images, patch_size):
    return F.unfold(images, patch_size, stride=patch_size).transpose(1, 2)


def patchify_attnkit(images, patch_size):
    return attnkit.patchify(images, patch_size)


PATCHIFY = Exercise("patchify", CHECKS["patchify"], [
    Mutant("a reshape alone", patchify_only_reshape, "a reshape alone does not cut patches"),
    Mutant("patches in column-major order", patchify_column_major, "column-major"),
    Mutant("features (p, p, C), the einops recipe", patchify_channels_last, "(channel, row, column)"),
    Mutant("each patch transposed", patchify_patch_transposed, "each patch came out transposed"),
    Mutant("(B, C*p*p, N), F.unfold's layout", patchify_unfold_layout, "F.unfold"),
    Mutant(".view after permute", patchify_view, "view needs contiguous memory"),
    Mutant("patch_size as the number of patches per side", patchify_count, "not the number of patches per side"),
    Mutant("overlapping patches, stride 1", patchify_overlapping, "overlap"),
    Mutant("one token per channel and patch", patchify_token_per_channel, "one token per channel"),
    Mutant("the image read width first", patchify_width_first, "transposed (width before height)"),
    Mutant("written for one channel", patchify_one_channel, "any number of channels"),
    Mutant("calls F.unfold", patchify_f_unfold, "calls"),
    Mutant("calls attnkit.patchify", patchify_attnkit, "calls"),
], [patchify_reshape_permute, patchify_tensor_unfold, patchify_loops, patchify_split])

# ============================================================================ attention_rollout


def rollout_loop(attentions):
    N = attentions[0].shape[-1]
    eye = torch.eye(N, dtype=attentions[0].dtype)
    r = None
    for a in attentions:
        a = a.mean(1) + eye
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return r


def rollout_half_reduce(attentions):
    """The paper's 0.5 W + 0.5 I (rows of softmax weights sum to 1), folded with functools.reduce."""
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    mats = [0.5 * a.mean(1) + 0.5 * eye for a in attentions]
    return functools.reduce(lambda r, a: a @ r, mats)


def rollout_stacked(attentions):
    """All layers stacked, preprocessed at once; multiplied from the top down (R @ A')."""
    a = torch.stack(list(attentions)).mean(2)  # (L, B, N, N)
    a = a + torch.eye(a.shape[-1], dtype=a.dtype)
    a = a / a.sum(-1, keepdim=True)
    r = torch.eye(a.shape[-1], dtype=a.dtype).expand_as(a[0])
    for layer in reversed(range(a.shape[0])):
        r = torch.bmm(r, a[layer])
    return r


def rollout_float64_einsum(attentions):
    """float64 inside, identity added per head (the same after averaging), einsum products."""
    r = None
    for a in attentions:
        a = a.double() + torch.eye(a.shape[-1], dtype=torch.float64)
        a = a.mean(1)
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else torch.einsum("bij,bjk->bik", a, r)
    return r.to(attentions[0].dtype)


def _prep(attentions, *, identity=True, renorm=-1, fuse=lambda a: a.mean(1)):
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    out = []
    for a in attentions:
        a = fuse(a) + (eye if identity else 0)
        out.append(a / a.sum(renorm, keepdim=True) if renorm is not None else a)
    return out


def _chain(mats):
    r = mats[0]
    for a in mats[1:]:
        r = a @ r
    return r


def rollout_no_identity(attentions):
    return _chain(_prep(attentions, identity=False))


def rollout_no_renorm(attentions):
    return _chain(_prep(attentions, renorm=None))


def rollout_column_norm(attentions):
    return _chain(_prep(attentions, renorm=-2))


def rollout_max_heads(attentions):
    return _chain(_prep(attentions, fuse=lambda a: a.amax(1)))


def rollout_elementwise(attentions):
    mats = _prep(attentions)
    r = mats[0]
    for a in mats[1:]:
        r = r * a
    return r


def rollout_layer_average(attentions):
    return sum(_prep(attentions)) / len(attentions)


def rollout_per_head(attentions):
    """Every head's chain multiplied on its own, averaged at the end."""
    mats = _prep(attentions, fuse=lambda a: a)  # (B, H, N, N) each
    return _chain(mats).mean(1)


def rollout_wrong_order(attentions):
    mats = _prep(attentions)
    r = mats[0]
    for a in mats[1:]:
        r = r @ a
    return r


def rollout_last_layer(attentions):
    return _prep(attentions)[-1]


def rollout_skip_first(attentions):
    """range(1, L): the first layer dropped."""
    mats = _prep(attentions)
    return _chain(mats[1:]) if len(mats) > 1 else mats[0]


def rollout_transposed(attentions):
    return rollout_loop(attentions).transpose(-2, -1)


def rollout_batch_mean(attentions):
    return _chain(_prep(attentions, fuse=lambda a: a.mean(0)))


def rollout_in_place(attentions):
    """Adds the identity into the caller's tensors."""
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    r = None
    for a in attentions:
        a += eye
        m = a.mean(1)
        m = m / m.sum(-1, keepdim=True)
        r = m if r is None else m @ r
    return r


def rollout_attnkit(attentions):
    return attnkit.attention_rollout(attentions)


ROLLOUT = Exercise("attention_rollout", CHECKS["attention_rollout"], [
    Mutant("no identity for the residual", rollout_no_identity, "residual connection"),
    Mutant("identity added, rows not renormalised", rollout_no_renorm, "sums to 2"),
    Mutant("columns normalised", rollout_column_norm, "normalised the columns"),
    Mutant("max over heads", rollout_max_heads, "fused with max"),
    Mutant("layers multiplied element by element", rollout_elementwise, "element by element"),
    Mutant("layers averaged", rollout_layer_average, "averaged the layers"),
    Mutant("one chain per head, averaged at the end", rollout_per_head, "before multiplying the layers"),
    Mutant("first layer on the left", rollout_wrong_order, "wrong order"),
    Mutant("last layer only", rollout_last_layer, "only the last layer"),
    Mutant("first layer skipped", rollout_skip_first, "first layer is missing"),
    Mutant("the transpose returned", rollout_transposed, "transpose"),
    Mutant("averaged over the batch axis", rollout_batch_mean, "batch"),
    Mutant("identity added in place into the input", rollout_in_place, "in place"),
    Mutant("calls attnkit.attention_rollout", rollout_attnkit, "calls"),
], [rollout_loop, rollout_half_reduce, rollout_stacked, rollout_float64_einsum])

EXERCISES = [CROSS_ATTENTION, PATCHIFY, ROLLOUT]
