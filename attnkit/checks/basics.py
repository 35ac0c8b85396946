"""Checkers for notebooks 01-03: dot-product scores, softmax, scaled dot-product attention."""

from __future__ import annotations

import math

import torch

from .. import attention, similarity
from ..softmax import softmax as reference_softmax
from ._harness import TOLERANCE, Ban, Checker, gen, randn

F = "torch.nn.functional."
SOFTMAX_FUNCTIONS = {name: None for name in (
    "torch.softmax", "torch.Tensor.softmax", F + "softmax", "torch.special.softmax",
    "torch.log_softmax", "torch.Tensor.log_softmax", F + "log_softmax", "torch.special.log_softmax",
    "torch._softmax", "torch._log_softmax", "torch._safe_softmax", F + "softmin", F + "gumbel_softmax")}
SOFTMAX_ATEN = ("aten._softmax", "aten._log_softmax", "aten._safe_softmax", "aten.softmax", "aten.log_softmax")
ATTENTION_FUNCTIONS = {name: None for name in (
    F + "scaled_dot_product_attention", F + "multi_head_attention_forward", "torch._native_multi_head_attention",
    "torch._fused_sdp_choice")}
ATTENTION_ATEN = ("aten._scaled_dot_product", "aten.scaled_dot_product", "aten._fused_sdp")


# ---------------------------------------------------------------- helpers the checkers of 01-05 share


def _allclose(got, want, tol=None) -> bool:
    if not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)) or got.shape != want.shape:
        return False
    if got.dtype == torch.bool or want.dtype == torch.bool:
        return torch.equal(got.bool(), want.bool())
    tol = tol or TOLERANCE.get(got.dtype, TOLERANCE[torch.float32])
    return torch.allclose(got.detach().double(), want.detach().double(), equal_nan=True, **tol)


def _matching(got, wrong, tol=None) -> str | None:
    """The hint of the first known mistake whose output ``got`` reproduces."""
    if not isinstance(got, torch.Tensor):
        return None
    got = got.detach().cpu()
    for candidate, hint in wrong:
        if candidate is not None and _allclose(got, candidate, tol):
            return hint
    return None


def _dtype_hint(what: str, got: torch.dtype, want: torch.dtype, arg: str) -> str:
    if got == torch.float64 and want in (torch.float32, torch.float16, torch.bfloat16):
        return (f"the {what} came out float64 for {str(want)[6:]} inputs: the result must keep the inputs' dtype. "
                f"If you compute in float64 inside, cast back at the end with .to({arg}.dtype)")
    if got == torch.float32 and want == torch.float64:
        return (f"the {what} came out float32 for float64 inputs: a tensor made with torch.zeros, torch.empty or "
                f"torch.tensor is float32 unless you pass dtype={arg}.dtype (or use torch.zeros_like / "
                f"{arg}.new_zeros); the result must keep the inputs' dtype")
    return f"wrong dtype for the {what}: got {got}, expected {want} (the inputs' dtype)"


_NOT_SHAPE_ERRORS = {"NameError", "UnboundLocalError", "AttributeError", "ImportError", "ModuleNotFoundError",
                     "SyntaxError", "KeyError", "RecursionError", "ZeroDivisionError"}


def _call(c: Checker, label: str, *args, hint: str = "", **kwargs):
    """``c.call`` with the likely mistake first when the learner's function raises: the first line
    reads "<hint> (your function raised <error>)", so the hint survives where a long message is
    cut (the grader keeps 300 characters). The learner's exception stays chained."""
    try:
        return c.call(label, *args, **kwargs)
    except AssertionError as e:
        first, _, rest = str(e).partition("\n")
        raised = f"{c.name}: your function raised "
        if not hint or not first.startswith(raised):
            raise
        error = first[len(raised):]
        if error.split(":", 1)[0] in _NOT_SHAPE_ERRORS:  # a typo or a missing name: no shape hint helps
            raise
        raise AssertionError(f"{c.name}: {hint} (your function raised {error})" + (f"\n{rest}" if rest else "")) \
            from (e.__cause__ or e)


def _expect(c: Checker, label: str, got, want: torch.Tensor, *, what: str, wrong=(), dtype=None, arg: str = "x",
            shape_hint: str = "", tol=None, otherwise: str | None = None) -> None:
    """``c.expect`` with the checks of notebooks 01-05 in front: a wrong shape is explained by a
    known mistake or by ``shape_hint``, a wrong dtype by what usually causes it. A known mistake
    given as None (not reproducible on this case) is skipped."""
    wrong = [(candidate, hint) for candidate, hint in wrong if candidate is not None]
    if isinstance(got, torch.Tensor):
        if got.shape != want.shape:
            hint = _matching(got, wrong, tol)
            if hint:
                c.fail(label, hint)
            if shape_hint:
                c.fail(label, f"wrong shape for the {what}: got {tuple(got.shape)}, expected {tuple(want.shape)}: "
                              f"{shape_hint}")
        elif dtype is not None and got.dtype != dtype:
            c.fail(label, _dtype_hint(what, got.dtype, dtype, arg))
    c.expect(label, got, want, what=what, wrong=wrong, dtype=dtype, tol=tol, otherwise=otherwise)


# ---------------------------------------------------------------- 01: dot-product scores


def _low_precision(c: Checker, label: str, got, want: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    """Name a result that is right only to float16 / bfloat16 precision (computed in half precision)."""
    if not (isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == dtype
            and dtype in (torch.float32, torch.float64)):
        return
    g = got.detach().cpu()
    if _allclose(g, want) or torch.isnan(g).any():
        return
    if torch.allclose(g.double(), want.double(), rtol=1e-2, atol=1e-3):
        c.fail(label, f"the {what} are right to about 3 digits only: you computed in float16 or bfloat16. Keep "
                      f"the input's dtype ({str(dtype).replace('torch.', '')}) throughout (no .half())")



def _ref_scores(q, k):
    return q.double() @ k.double().transpose(-2, -1)


BATCHED_HINT = ("your function works on 2-D inputs but not on batched ones (..., N, d): k.T reverses every axis of "
                "a batched tensor and torch.mm / torch.dot take only matrices and vectors; use "
                "q @ k.transpose(-2, -1) (or k.mT), which treats the leading axes as a batch")
BROADCAST_HINT = ("leading axes must broadcast (k of shape (2, 1, Nk, d) is shared by every head of q): @ "
                  "broadcasts, torch.bmm and reshape(-1, N, d) do not; use q @ k.transpose(-2, -1)")


def check_dot_product_scores(fn) -> str:
    """Check ``fn(q (..., Nq, d), k (..., Nk, d)) -> (..., Nq, Nk)``, raw unscaled dot products."""
    c = Checker("dot_product_scores", fn, Ban(python=(similarity.dot_product_scores,),
                                              hint="Write it with a matrix product (@ or torch.matmul)."))
    g = gen(1)
    plain_hint = "the scores are q @ k.transpose(-2, -1): (Nq, d) @ (d, Nk) gives (Nq, Nk)"
    cases = [
        ("8 queries x 8 keys, d=8", randn(g, 8, 8), randn(g, 8, 8), plain_hint),
        ("12 queries x 16 keys, d=8", randn(g, 12, 8), randn(g, 16, 8), plain_hint),
        ("one query, d=1", randn(g, 1, 1), randn(g, 5, 1), plain_hint),
        ("3-D: q (4, 12, 5), k (4, 16, 5)", randn(g, 4, 12, 5), randn(g, 4, 16, 5), BATCHED_HINT),
        ("batched (B=2, H=3), 12 queries x 16 keys", randn(g, 2, 3, 12, 8), randn(g, 2, 3, 16, 8), BATCHED_HINT),
        ("keys shared across heads: q (2, 3, 12, 8), k (2, 1, 16, 8)", randn(g, 2, 3, 12, 8), randn(g, 2, 1, 16, 8),
         BROADCAST_HINT),
        ("5-D, leading axes broadcast both ways: q (2, 1, 3, 12, 8), k (1, 2, 3, 16, 8)", randn(g, 2, 1, 3, 12, 8),
         randn(g, 1, 2, 3, 16, 8), BROADCAST_HINT),
        ("float64 inputs", randn(g, 4, 6, dtype=torch.float64), randn(g, 3, 6, dtype=torch.float64), plain_hint),
    ]
    for label, q, k, if_raises in cases:
        with c.case(label):
            got = _call(c, label, q, k, hint=if_raises)
            want = _ref_scores(q, k)
            Nq, Nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
            qd, kd = q.double(), k.double()
            qu, ku = qd / qd.norm(dim=-1, keepdim=True), kd / kd.norm(dim=-1, keepdim=True)
            wrong = [
                (_ref_scores(k, q), "the scores are transposed: row i must hold query i's score with every "
                                    "key, shape (..., Nq, Nk), so compute q @ k^T, not k @ q^T"),
                (want / math.sqrt(d), "your scores are divided by sqrt(d); this exercise asks for the raw, "
                                      "unscaled dot product (the scaling comes in notebook 02)"),
                (qu @ ku.transpose(-2, -1), "you normalised q and k, which gives cosine similarity; the dot "
                                            "product keeps the vector lengths"),
            ]
            wrong.append((reference_softmax(want, -1), "these are softmax weights: this exercise asks for the raw "
                                                       "scores q @ k^T, before any softmax"))
            if q.ndim > 2 and k.reshape(-1, Nk, d).shape[0] > 1:
                wrong.append((qd @ kd.reshape(-1, Nk, d)[0].transpose(-2, -1), "every batch element used the keys "
                              "of the first one (k[0]): the leading axes of q and k must line up, so use "
                              "q @ k.transpose(-2, -1) on the whole tensors"))
            if Nk == d:
                wrong.append((qd @ kd, "q @ k multiplies the rows of q with the columns of k, which are not "
                                       "keys: transpose k first, q @ k.transpose(-2, -1)"))
            if Nq == Nk:
                wrong.append((qd.transpose(-2, -1) @ kd, "you computed q^T @ k, which sums over the tokens and "
                              "gives a (d, d) matrix; the score of query i with key j sums over the features: "
                              "q @ k^T"))
            if q.shape == k.shape:
                wrong.append(((qd * kd).sum(-1), "you multiplied q and k elementwise, which pairs query i with "
                              "key i only; every query needs a score with every key: q @ k^T has shape "
                              "(..., Nq, Nk)"))
            if q.ndim > 2:
                wrong.append((torch.tensordot(qd, kd, dims=([-1], [-1])),
                              "you paired every query with the keys of every batch element (tensordot / inner "
                              "contract only d): the leading batch axes must line up, so use "
                              "q @ k.transpose(-2, -1)"))
            if not _matching(got, wrong):
                _low_precision(c, label, got, want, "scores", q.dtype)
            _expect(c, label, got, want, what="scores", wrong=wrong, dtype=q.dtype, arg="q",
                    shape_hint=if_raises if q.ndim > 2 else "the scores of q (..., Nq, d) and k (..., Nk, d) "
                                                            "have shape (..., Nq, Nk)")
    return c.passed("2-D, 3-D, 4-D, 5-D, broadcast leading axes, d=1, float64")


# ---------------------------------------------------------------- 02: softmax


def _ref_softmax(x, dim):
    return reference_softmax(x.double(), dim)


KEEPDIM_HINT = ("did you reduce with keepdim=True? The max and the sum along dim must keep that axis to broadcast "
                "against x: x.amax(dim, keepdim=True) (x.max(dim) returns a pair (values, indices))")
STABLE_HINT = ("not numerically stable: exp overflows to inf for large inputs and inf/inf is NaN. "
               "Subtract the maximum along dim (keepdim=True) before taking exp")
UNIFORM_HINT = ("an all -inf row gave uniform weights 1/n instead of zeros: replacing -inf by a large finite "
                "number (-1e9, clamp, nan_to_num) makes a row with nothing to attend to spread its weight "
                "evenly. Keep -inf (exp(-inf) is 0) and give such a row zeros")


def check_softmax(fn) -> str:
    """Check ``fn(x, dim=-1)``: a numerically stable softmax; -inf entries give 0."""
    c = Checker("softmax", fn, Ban(SOFTMAX_FUNCTIONS, SOFTMAX_ATEN, (reference_softmax,),
                                   hint="Build it from torch.exp, a max and a sum."))
    g = gen(2)
    big = randn(g, 4, 9) * 1000
    big[1] += 5000
    big[2] -= 5000
    masked = randn(g, 3, 7)
    masked[0, [1, 4]] = float("-inf")
    masked[2, :6] = float("-inf")
    all_masked = randn(g, 3, 5)
    all_masked[1] = float("-inf")
    cases = [
        ("x (4, 10), default dim", randn(g, 4, 10), None),
        ("1-D x (7,), default dim", randn(g, 7), None),
        ("x (2, 3, 5), dim=1", randn(g, 2, 3, 5), 1),
        ("x (6, 4), dim=0", randn(g, 6, 4), 0),
        ("x (3, 4, 5), dim=-2", randn(g, 3, 4, 5), -2),
        ("5-D x (2, 1, 3, 2, 4), dim=2", randn(g, 2, 1, 3, 2, 4), 2),
        ("one element", randn(g, 1), -1),
        ("large logits (|x| ~ 1000, rows shifted by +/-5000)", big, -1),
        ("some -inf (masked) entries", masked, -1),
        ("float64 input", randn(g, 3, 8, dtype=torch.float64), -1),
        ("a row that is entirely -inf (a query with nothing to attend to)", all_masked, -1),
    ]
    for label, x, dim in cases:
        with c.case(label):
            if_raises = KEEPDIM_HINT if x.ndim in (2, 3) else (
                f"softmax must work for any number of axes (this x is {x.ndim}-D): reduce along dim "
                f"(x.amax(dim, keepdim=True), e.sum(dim, keepdim=True)), not along a fixed axis such as 1, "
                f"and do not assume a matrix (x.T)")
            got = _call(c, label, x, hint=if_raises) if dim is None else _call(c, label, x, dim, hint=if_raises)
            dim = -1 if dim is None else dim
            axis = dim % x.ndim
            want = _ref_softmax(x, dim)
            xd = x.double()
            e = torch.exp(xd - torch.nan_to_num(xd.amax(dim, keepdim=True), neginf=0.0))
            global_max = torch.exp(x - x.max())  # in the learner's dtype, to reproduce its underflow
            global_max = (global_max / global_max.sum(dim, keepdim=True), "subtract the maximum of each "
                          "row (x.amax(dim, keepdim=True)), not of the whole tensor: a row far below the "
                          "global maximum underflows to all zeros")
            wrong = [(_ref_softmax(x, other), f"the result sums to 1 along dim {other}, not along dim={dim}: "
                                              f"did you ignore the dim argument or normalise over the wrong axis?")
                     for other in range(x.ndim) if other != axis]
            wrong += [
                (e, "the result does not sum to 1 along dim: divide the exponentials by their sum"),
                global_max,
                *[(_ref_softmax(xd / t, dim), f"you divided the logits by {name} (a temperature): softmax is "
                                              f"exp(x - max) / sum, with x as it is")
                  for t, name in ((math.sqrt(x.shape[axis]), "sqrt(n)"), (x.shape[axis], "n")) if t > 1],
                (e / e.sum(), "the whole tensor sums to 1, not each slice along dim: sum along dim with "
                              "keepdim=True, e.sum(dim, keepdim=True)"),
                (xd - torch.logsumexp(xd, dim, keepdim=True), "these are log-probabilities (x - logsumexp): "
                 "softmax returns probabilities, exp of that, which sum to 1 along dim"),
            ]
            if axis != x.ndim - 1:
                m = torch.nan_to_num(xd.amax(-1, keepdim=True), neginf=0.0)
                shifted = torch.exp(xd - m)
                wrong.append((shifted / shifted.sum(dim, keepdim=True), "subtract the maximum along dim, the same "
                              "axis you sum over: a maximum taken along another axis shifts the entries of one "
                              "slice by different amounts"))
            dead = torch.isneginf(x).all(dim, keepdim=True)
            if dead.any():
                wrong.append((_ref_softmax(x.double().clamp_min(-1e9), dim), UNIFORM_HINT))
            if isinstance(got, torch.Tensor) and got.shape == want.shape and not _allclose(got.detach().cpu(), want):
                nan = torch.isnan(got.detach().cpu())
                if dead.any() and nan.logical_and(dead.expand_as(nan)).any():
                    c.fail(label, "an all -inf row gave NaN: its maximum is -inf and -inf - (-inf) is NaN. "
                                  "Every entry is -inf, so every probability must be 0: return zeros for such "
                                  "rows (e.g. replace a -inf maximum by 0, and divide by 1 where the sum is 0)")
                if nan.any() and torch.isinf(x).any():
                    c.fail(label, "NaN where an entry is -inf: a masked entry must get probability 0. "
                                  "Take the maximum over the row and subtract it; exp(-inf) is 0")
                hint = _matching(got, wrong)
                if hint:
                    c.fail(label, hint)
                if not torch.isfinite(got.detach().cpu()).all() and x.abs().max() > 80:
                    c.fail(label, STABLE_HINT)
            _low_precision(c, label, got, want, "probabilities", x.dtype)
            _expect(c, label, got, want, what="softmax", wrong=wrong, dtype=x.dtype,
                    shape_hint="softmax keeps the shape of x")
    return c.passed("1-D to 5-D, several axes, huge logits, -inf entries, all -inf rows, float64")


# ---------------------------------------------------------------- 03: scaled dot-product attention


def _sdpa(q, k, v, mask=None, scale=None, mask_after=False, fill=float("-inf"), softmax_dim=-1):
    """A float64 attention with knobs to reproduce common mistakes."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if mask is not None and not mask_after:
        s = s.masked_fill(~mask, fill)
    w = reference_softmax(s, softmax_dim)  # an all -inf row gives zeros, as the contract asks
    if mask is not None and mask_after:
        w = w * mask
    return w @ v, w


def _runs(fn, *args) -> bool:
    """Whether ``fn(*args)`` returns without raising (on copies of the inputs, output unused)."""
    try:
        fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    except Exception:
        return False
    return True


def _axes_hint(ndim: int) -> str:
    return ("attention must work for any number of leading axes (..., N, d): transpose only the last two axes "
            "of k (k.transpose(-2, -1) or k.mT); k.T reverses every axis and k.transpose(2, 3) assumes 4-D "
            f"inputs (this case is {ndim}-D)")


def check_scaled_dot_product_attention(fn) -> str:
    """Check ``fn(q, k, v, mask=None) -> (out, weights)`` against softmax(q k^T / sqrt(d)) v."""
    c = Checker("scaled_dot_product_attention", fn,
                Ban(ATTENTION_FUNCTIONS, ATTENTION_ATEN, (attention.scaled_dot_product_attention,),
                    hint="Compute the scores, the softmax and the weighted sum yourself."))
    g = gen(3)
    B, H, Nq, Nk, d, dv = 2, 3, 12, 16, 8, 6
    qb, kb, vb = randn(g, B, H, Nq, d), randn(g, B, H, Nk, d), randn(g, B, H, Nk, dv)
    causal = torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + (Nk - Nq)  # (Nq, Nk)
    lengths = torch.tensor([Nk, 5])
    pad = (torch.arange(Nk)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Nk)
    holes = causal.clone()
    holes[3] = False  # one query that may attend to nothing
    causal_3d = torch.arange(9)[None, :] <= torch.arange(5)[:, None] + 4  # (5, 9)
    scattered = torch.rand(4, 6, generator=g) > 0.5  # (4, 6)
    scattered[:, 0] = True
    pad64 = (torch.arange(7)[None, :] < torch.tensor([7, 3])[:, None])[:, None, :]  # (2, 1, 7)
    cases = [
        ("12 queries x 16 keys, d=8, dv=6, no mask", randn(g, Nq, d), randn(g, Nk, d), randn(g, Nk, dv), None),
        ("d=64 (the scale matters)", randn(g, 5, 64), randn(g, 7, 64), randn(g, 7, 4), None),
        ("3-D: 3 heads, 5 queries x 9 keys, d=4, causal mask (5, 9)", randn(g, 3, 5, 4), randn(g, 3, 9, 4),
         randn(g, 3, 9, 4), causal_3d),
        ("batched (B=2, H=3), causal mask (12, 16) broadcast over B and H", qb, kb, vb, causal),
        ("padding mask (B, 1, 1, Nk), lengths 16 and 5", qb, kb, vb, pad),
        ("a fully masked row (query 3 may attend to nothing)", qb, kb, vb, holes),
        ("5-D: q (2, 2, 3, 4, 8), k and v (2, 1, 3, 6, 8/5) shared over axis 1, mask (4, 6)",
         randn(g, 2, 2, 3, 4, 8), randn(g, 2, 1, 3, 6, 8), randn(g, 2, 1, 3, 6, 5), scattered),
        ("d=1, one key", randn(g, 3, 1), randn(g, 1, 1), randn(g, 1, 2), None),
        ("float64 inputs, padding mask (2, 1, 7)", randn(g, 2, 4, 3, dtype=torch.float64),
         randn(g, 2, 7, 3, dtype=torch.float64), randn(g, 2, 7, 2, dtype=torch.float64), pad64),
    ]
    four_d_ok = False  # a 4-D case passed: an error on a later 4-D case is about its mask, not k.T
    for label, q, k, v, mask in cases:
        with c.case(label):
            if_raises = _axes_hint(q.ndim) if q.ndim != 4 else \
                "k.T reverses every axis of a batched tensor: transpose only the last two (k.transpose(-2, -1))"
            mask_hint = "" if mask is None else (
                f"the mask {tuple(mask.shape)} broadcasts against the scores (..., Nq, Nk) as it is: use it without "
                f"transposing or reshaping it, scores.masked_fill(~mask, -inf)")
            if mask is not None and q.ndim == 4 and four_d_ok:
                if_raises = mask_hint
            elif mask is not None:
                if_raises += f"; the mask {tuple(mask.shape)} broadcasts against the scores (..., Nq, Nk)"
            try:
                got = _call(c, label, q, k, v, mask, hint=if_raises)
            except AssertionError as e:
                first, _, rest = str(e).partition("\n")
                _, raised, error = first.partition("(your function raised ")
                if mask is None or not raised or if_raises == mask_hint or not _runs(c.fn, q, k, v, None):
                    raise
                # the same inputs without the mask run: the mask's handling is what raised
                raise AssertionError(f"{c.name}: {mask_hint} (your function raised {error}"
                                     + (f"\n{rest}" if rest else "")) from (e.__cause__ or e)
            if not (isinstance(got, tuple) and len(got) == 2):
                c.fail(label, f"return a pair (out, weights); got {type(got).__name__}"
                              + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
            out, weights = got
            want_out, want_w = _sdpa(q, k, v, mask)
            if (isinstance(out, torch.Tensor) and isinstance(weights, torch.Tensor) and want_w.shape != want_out.shape
                    and out.shape == want_w.shape and weights.shape == want_out.shape):
                c.fail(label, "you returned (weights, out): return the pair in the order (out, weights)")
            if mask is not None and isinstance(weights, torch.Tensor) and weights.shape == want_w.shape:
                leaked = (weights.detach().abs() > 0) & ~mask.expand_as(weights)
                if leaked.any() and not torch.isnan(weights).any():
                    inverted = _sdpa(q, k, v, ~mask)[1]
                    if torch.allclose(weights.detach().double(), inverted, atol=1e-5):
                        c.fail(label, "your weights are non-zero exactly where the mask is False: True "
                                      "means 'may attend', so fill the scores with -inf where mask is False (~mask)")
            dead = None if mask is None else ~mask.expand_as(want_w).any(-1, keepdim=True)  # (..., Nq, 1)
            full_row = dead is not None and bool(dead.any())
            if full_row and isinstance(weights, torch.Tensor) and torch.isnan(weights).any():
                c.fail(label, "a fully masked row gave NaN weights: with every score -inf, softmax is 0/0 "
                              "(torch.softmax does that). Such a query must get all-zero weights and a zero output: "
                              "use your softmax from notebook 02, or zero those rows")
            d_, Nk_ = q.shape[-1], k.shape[-2]
            wrong_w = [
                (_sdpa(q, k, v, mask, softmax_dim=-2)[1],
                 "weights do not sum to 1 over keys: did you take softmax over the query axis? Use dim=-1"),
                (_sdpa(q, k, v, mask, scale=1.0)[1], "weights are too peaked: did you forget to divide the "
                                                     "scores by sqrt(d)?"),
                (_sdpa(q, k, v, mask, scale=1 / d_)[1], "you divided the scores by d; the scale is 1/sqrt(d)"),
                (_sdpa(q, k, v, mask, scale=math.sqrt(d_))[1], "you multiplied the scores by sqrt(d); divide instead"),
            ]
            if v.shape[-1] != d_:
                wrong_w.append((_sdpa(q, k, v, mask, scale=1 / math.sqrt(v.shape[-1]))[1],
                                "d in 1/sqrt(d) is the query/key dimension q.shape[-1], not v's"))
            if Nk_ not in (d_, v.shape[-1]):
                wrong_w.append((_sdpa(q, k, v, mask, scale=1 / math.sqrt(Nk_))[1],
                                "you scaled the scores by 1/sqrt(Nk), the number of keys; d in 1/sqrt(d) is the "
                                "head dimension q.shape[-1]"))
            if mask is not None:
                wrong_w += [
                    (_sdpa(q, k, v, mask, mask_after=True)[1],
                     "the mask was applied after the softmax, so rows no longer sum to 1: mask the scores "
                     "(fill with -inf) before the softmax"),
                    (_sdpa(q, k, v, ~mask)[1], "the mask is inverted: True means 'may attend'"),
                    (_sdpa(q, k, v)[1], "the mask was ignored: fill the scores with -inf where the mask is False, "
                                        "before the softmax"),
                    (_sdpa(q, k, v, mask, fill=0.0)[1],
                     "multiplying the scores by the mask sets forbidden scores to 0, not -inf, and exp(0) = 1: "
                     "forbidden keys still get weight. Use scores.masked_fill(~mask, float('-inf'))"),
                ]
            zero_rows_hint = ("a fully masked row must give zeros, not weights that sum to 1: with a large "
                              "negative number (-1e9) instead of -inf, a query with no allowed key spreads its "
                              "weight over forbidden keys. Fill with -inf, and give such a row zero weights")
            if full_row:
                wrong_w.append((_sdpa(q, k, v, mask, fill=-1e9)[1], zero_rows_hint))
                if (isinstance(weights, torch.Tensor) and weights.shape == want_w.shape
                        and not _matching(weights, wrong_w)):
                    w_got = weights.detach().cpu().double()
                    rest = torch.where(dead.expand_as(want_w), w_got, want_w)
                    tol = TOLERANCE.get(weights.dtype, TOLERANCE[torch.float32])  # the learner's dtype, not float64
                    if _allclose(w_got, rest, tol) and (w_got.abs() > 1e-6).logical_and(dead.expand_as(want_w)).any():
                        c.fail(label, zero_rows_hint)
            _expect(c, label, weights, want_w, what="weights", wrong=wrong_w, dtype=q.dtype, arg="q",
                    shape_hint="the weights of q (..., Nq, d) and k (..., Nk, d) have shape (..., Nq, Nk)")
            if (isinstance(out, torch.Tensor) and out.shape == want_out.shape and out.dtype == q.dtype
                    and not _allclose(out.detach().cpu(), want_out)):
                c.fail(label, "the weights are right but the output is not: out = weights @ v, the weighted "
                              "average of the values")
            _expect(c, label, out, want_out, what="output", dtype=q.dtype, arg="q",
                    shape_hint="the output is weights @ v, shape (..., Nq, dv)")
            four_d_ok = four_d_ok or q.ndim == 4
    return c.passed("2-D to 5-D, masks broadcast over batch and heads, padding, fully masked rows, Nq != Nk, "
                    "dv != d, float64")
