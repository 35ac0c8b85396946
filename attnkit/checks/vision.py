"""Checkers for notebook 07c: patch embedding and attention rollout."""

from __future__ import annotations

import torch

from .. import vit
from ._harness import Ban, Checker, gen, randn
from .basics import _call, _expect

VIEW_HINT = ("view needs contiguous memory, and the permute that orders the patches (or a permuted image like "
             "this one) makes a tensor non-contiguous: use .reshape")
SHAPE_HINT = ("take every size from images.shape (B, C, H, W) and patch_size: reshape to (B, C, H/p, p, W/p, p), "
              "for any number of channels and any H and W that p divides")


def _call_patchify(c: Checker, label: str, images, p):
    """``_call`` with the hint chosen by what went wrong: a .view of a non-contiguous tensor, or sizes."""
    try:
        return c.call(label, images, p)
    except AssertionError as e:
        first, _, rest = str(e).partition("\n")
        raised = f"{c.name}: your function raised RuntimeError: "
        if not first.startswith(raised):
            raise
        hint = VIEW_HINT if "view size is not compatible" in first else SHAPE_HINT
        error = first[len(raised) - len("RuntimeError: "):]
        raise AssertionError(f"{c.name}: {hint} (your function raised {error})" + (f"\n{rest}" if rest else "")) \
            from (e.__cause__ or e)


def _blocks(images, p):
    B, C, H, W = images.shape
    return images.reshape(B, C, H // p, p, W // p, p)  # (B, C, rows, p, cols, p)


def _order(images, p, perm):
    """Patches cut correctly, their axes put in the order ``perm`` of (B, C, rows, pr, cols, pc),
    then flattened to (B, first two non-batch groups ..., rest): tokens = the two grid axes."""
    B = images.shape[0]
    x = _blocks(images.double(), p).permute(*perm)
    return x.reshape(B, x.shape[1] * x.shape[2], -1)


def _ref_patchify(images, p):
    return _order(images, p, (0, 2, 4, 1, 3, 5))  # (B, N, C*p*p): rows, cols | C, pr, pc


def _patchify_cases(g):
    cases = []
    for B, C, H, W, p, kind in [(2, 1, 8, 8, 4, ""), (2, 3, 12, 8, 4, ""), (1, 3, 6, 9, 3, ""),
                                (3, 2, 10, 10, 5, ""), (2, 3, 4, 6, 1, ""), (2, 2, 4, 4, 4, ""),
                                (2, 3, 8, 12, 2, "float64"), (2, 3, 12, 6, 3, "channels-last")]:
        if kind == "channels-last":
            images = randn(g, B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), a non-contiguous view
            what = ", a non-contiguous (channels-last) view"
        else:
            images = randn(g, B, C, H, W, dtype=torch.float64 if kind else torch.float32)
            what = ", float64" if kind else ""
        cases.append((f"images {tuple(images.shape)} (B, C, H, W), patch_size={p}{what}", images, p))
    return cases


def check_patchify(fn) -> str:
    """Check ``fn(images (B, C, H, W), patch_size) -> (B, N, C*p*p)``, patches row-major, features (C, p, p)."""
    c = Checker("patchify", fn, Ban({"torch.nn.functional.unfold": None, "torch._C._nn.im2col": None},
                                    aten=("aten.im2col",), python=(vit.patchify, torch.nn.Unfold.forward),
                                    hint="Cut the patches with reshape and permute."))
    g = gen(72)
    for label, images, p in _patchify_cases(g):
        B, C, H, W = images.shape
        rows, cols = H // p, W // p
        with c.case(label):
            got = _call_patchify(c, label, images, p)
            want = _ref_patchify(images, p)
            x = images.double()
            wrong = [
                (x.reshape(B, rows * cols, C * p * p), "a reshape alone does not cut patches (it takes runs of "
                 "consecutive pixels): reshape to (B, C, H/p, p, W/p, p), permute to (B, H/p, W/p, C, p, p), "
                 "then flatten to (B, N, C*p*p)"),
                (_order(images, p, (0, 4, 2, 1, 3, 5)), "the patches are in column-major order (down the first "
                 "column first): read them row by row like text, patch n = r * (W/p) + c, so the patch-row axis "
                 "comes before the patch-column axis"),
                (_order(images, p, (0, 2, 4, 3, 5, 1)), "the features of a patch are ordered (row, column, "
                 "channel): order them (channel, row, column), the order of a Conv2d weight (D, C, p, p) "
                 "flattened, so that the channel axis comes first within a patch"),
                (_order(images, p, (0, 2, 4, 1, 5, 3)), "each patch came out transposed: flatten a patch "
                 "(channel, row in the patch, column in the patch), rows before columns"),
                (_order(images, p, (0, 4, 2, 1, 5, 3)), "you cut the image transposed (width before height): "
                 "patches go row by row and each patch is flattened row by row"),
                (_ref_patchify(images, p).transpose(1, 2), "the result is (B, N, C*p*p), one row per patch: "
                 "you returned (B, C*p*p, N), the layout of F.unfold; transpose(1, 2)"),
                (_order(images, p, (0, 1, 2, 4, 3, 5)).reshape(B, C * rows * cols, p * p),
                 "one token per patch carrying all its channels, (B, N, C*p*p): you made one token per channel "
                 "and patch"),
            ]
            if H == W and rows != p:  # read patch_size as the number of patches per side: patches of H/p pixels
                wrong.append((_ref_patchify(images, rows), "patch_size is the side of a patch in pixels, not the "
                              "number of patches per side: N = (H/p)(W/p) patches of p x p pixels"))
            if p > 1 and H > p and W > p:
                over = images.double().unfold(2, p, 1).unfold(3, p, 1)  # (B, C, H-p+1, W-p+1, p, p)
                over = over.permute(0, 2, 3, 1, 4, 5).reshape(B, (H - p + 1) * (W - p + 1), C * p * p)
                wrong.append((over, "the patches overlap (a stride of 1): step by patch_size so that the patches "
                                    "tile the image, N = (H/p)(W/p)"))
            _expect(c, label, got, want, wrong=wrong, dtype=images.dtype, what="patches", arg="images",
                    tol=dict(rtol=0, atol=0),
                    shape_hint="patchify returns (B, N, C*p*p) with N = (H/p)(W/p) patches")
    return c.passed("square and oblong images, 1 and 3 channels, p = 1 and p = H, float64, a non-contiguous view")


# ---------------------------------------------------------------------------------- rollout


def _softmax_rows(g, B, H, N, causal=False):
    s = torch.randn(B, H, N, N, generator=g, dtype=torch.float64) * 2
    if causal:
        s = s.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1)


def _rollout(layers, *, identity=True, renorm=-1, heads="mean", combine="matmul", order="last-left",
             per_head=False):
    """A float64 rollout with knobs that reproduce common mistakes."""
    N = layers[0].shape[-1]
    eye = torch.eye(N, dtype=torch.float64)
    mats = []
    for a in layers:
        a = a.double()
        if not per_head:
            a = a.amax(1) if heads == "max" else a.mean(0) if heads == "batch" else a.mean(1)
        if identity:
            a = a + eye
        if renorm is not None:
            a = a / a.sum(renorm, keepdim=True)
        mats.append(a)
    r = mats[0]
    for a in mats[1:]:
        if combine == "sum":
            r = r + a
        elif combine == "mul":
            r = r * a
        else:
            r = a @ r if order == "last-left" else r @ a
    if combine == "sum":
        r = r / len(mats)
    return r.mean(1) if per_head else r


def _rollout_cases(g):
    cases = []
    for L, B, H, N, kind in [(3, 2, 4, 9, ""), (1, 1, 3, 5, ""), (4, 2, 1, 7, ""), (3, 3, 2, 17, "causal"),
                             (3, 2, 3, 6, "float64"), (2, 2, 2, 8, "tuple")]:
        layers = [_softmax_rows(g, B, H, N, causal=kind == "causal") for _ in range(L)]
        if kind != "float64":
            layers = [a.float() for a in layers]
        what = {"causal": ", causal weights", "float64": ", float64", "tuple": ", passed as a tuple"}.get(kind, "")
        if kind == "tuple":
            layers = tuple(layers)
        cases.append((f"{L} layer{'s' if L > 1 else ''} of weights ({B}, {H}, {N}, {N}) (B, H, N, N){what}", layers))
    return cases


def check_attention_rollout(fn) -> str:
    """Check ``fn(attentions: list of (B, H, N, N), first layer first) -> (B, N, N)``."""
    c = Checker("attention_rollout", fn, Ban(python=(vit.attention_rollout,),
                                             hint="Average the heads, add the identity, renormalise, multiply."))
    g = gen(73)
    for label, layers in _rollout_cases(g):
        L = len(layers)
        B, H, N, _ = layers[0].shape
        with c.case(label):
            got = _call(c, label, layers, hint="attentions is a list with one (B, H, N, N) tensor per layer, "
                                               "first layer first")
            want = _rollout(layers)
            wrong = [
                (_rollout(layers, identity=False), "you left out the residual connection: add the identity to "
                 "each layer's head-averaged weights (each token also keeps its own state), then renormalise"),
                (_rollout(layers, renorm=None), "after adding the identity a row sums to 2, and the product of L "
                 "layers to 2^L: divide each layer's rows by their sum (here: by 2) before multiplying"),
                (_rollout(layers, renorm=-2), "you normalised the columns: each row (one query's weights over the "
                 "tokens it reads) must sum to 1, so divide by the sum over the last axis"),
                (_rollout(layers, heads="max"), "the heads were fused with max: average them (mean over axis 1)"),
                (_rollout(layers, combine="mul"), "layers combine with a matrix product (@), not element by "
                 "element (*): a token reaches an input through every intermediate token"),
                (_rollout(layers, combine="sum"), "you averaged the layers: rollout multiplies them (matrix "
                 "product), so that paths through intermediate tokens are followed"),
                (_rollout(layers, per_head=True), "average the heads of each layer before multiplying the layers: "
                 "multiplying each head's chain and averaging at the end follows no real path"),
            ]
            if L > 1:
                wrong += [
                    (_rollout(layers, order="first-left"), "the layers are multiplied in the wrong order: the last "
                     "layer goes on the left, R = A_L' ... A_2' A_1' (going up: rollout = A' @ rollout)"),
                    # with two layers "only the last" is "the first missing": the hints below say both
                    (_rollout(layers[1:]), "the first layer is missing from the product: multiply all L layers"),
                    (_rollout(layers[:-1]), "the last layer is missing from the product: multiply all L layers"),
                    (_rollout(layers[-1:]), "you used only the last layer: rollout multiplies every layer's "
                     "weights, first to last"),
                    (_rollout(layers[:1]), "you used only the first layer: rollout multiplies every layer's "
                     "weights, first to last"),
                ]
            wrong.append((want.transpose(-2, -1), "you returned the transpose: row i must hold what token i at the "
                          "top draws from each input token (rows sum to 1)"))
            if B != H:
                wrong.append((_rollout(layers, heads="batch"), "you averaged over the batch (axis 0): the heads are "
                              "axis 1 of (B, H, N, N)"))
            _expect(c, label, got, want, wrong=wrong, dtype=layers[0].dtype, what="rollout",
                    shape_hint="attention_rollout returns (B, N, N): heads averaged away, one matrix per image")
    return c.passed("1 to 4 layers, 1 to 4 heads, causal weights, float64, a tuple of layers")
