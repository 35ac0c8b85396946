"""A small Vision Transformer: patch embedding, a CLS token, attention rollout.

Dosovitskiy et al. (2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale") cut an image ``(C, H, W)`` into ``N = (H/p)(W/p)`` square patches of ``p x p`` pixels,
read them row by row (left to right, top to bottom), flatten each to ``C p p`` numbers and map
it linearly to ``D`` features: a sequence of ``N`` tokens for an ordinary Transformer encoder.
A learned ``[CLS]`` token is put in front, learned position embeddings are added, and the
CLS token's final state is classified. The linear map of flattened patches is exactly a
``Conv2d(C, D, kernel_size=p, stride=p)``.

Attention rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers")
follows attention through the layers: average each layer's heads, add the identity for the
residual connection, renormalise the rows, and multiply the layers,
``R = A_L' ... A_2' A_1'`` with ``A' = (mean_h A + I) / 2``. Row ``i`` of ``R`` says how much of
token ``i``'s top-layer state can be traced back to each input token, under the simplifying
assumption that information mixes only where attention says it does.

The data (:func:`shapes`) are drawn on the spot: outlines of squares, circles, triangles and
plus signs at random positions and sizes, in noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as chk
from .mha import MultiHeadAttention
from .model import MLP
from .train import fit

CLASSES = ("square", "circle", "triangle", "plus")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, row-major, each flattened.

    Args:
        images: ``(B, C, H, W)``; ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: ``p``.

    Returns:
        ``(B, N, C*p*p)`` with ``N = (H/p)(W/p)``. Patch ``n = r * (W/p) + c`` covers rows
        ``r*p : (r+1)*p`` and columns ``c*p : (c+1)*p``; its features are ordered
        (channel, row in the patch, column in the patch), the order of a ``Conv2d`` weight
        ``(D, C, p, p)`` flattened, so ``patchify(x, p) @ conv.weight.flatten(1).T`` equals
        ``conv(x)`` (without bias) flattened and transposed.
    """
    chk.tensor("images", images, ndim=4)
    p = chk.positive_int("patch_size", patch_size)
    B, C, H, W = images.shape
    if H % p or W % p:
        raise ValueError(f"patchify: patch_size={p} must divide the height and width of images "
                         f"{chk.shape_str(images)} (B, C, H, W)")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, rows, p, cols, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema 2020) of a stack of layers.

    Args:
        attentions: one ``(B, H, N, N)`` tensor of attention weights per layer, first layer first.

    Returns:
        ``(B, N, N)``: ``A_L' @ ... @ A_1'`` with ``A' = rownorm(mean over heads of A + I)``.
        Every row sums to 1.
    """
    if isinstance(attentions, torch.Tensor) or not isinstance(attentions, (list, tuple)) or not attentions:
        raise TypeError("attention_rollout expects a non-empty list of (B, H, N, N) tensors, one per layer, "
                        f"got {type(attentions).__name__}")
    first = attentions[0]
    for i, a in enumerate(attentions):
        chk.tensor(f"attentions[{i}]", a, ndim=4, floating=True)
        if a.shape != first.shape or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attention_rollout: every layer's weights must be the same (B, H, N, N), got "
                             f"attentions[0] {chk.shape_str(first)} and attentions[{i}] {chk.shape_str(a)}")
    eye = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device)  # (N, N)
    rollout = None
    for a in attentions:
        a = a.mean(1) + eye  # (B, N, N): heads averaged, plus the residual path
        a = a / a.sum(-1, keepdim=True)  # rows sum to 1 again
        rollout = a if rollout is None else a @ rollout  # (B, N, N): this layer after the ones below
    return rollout


# ---------------------------------------------------------------------------------- the data


def shapes(n: int, image_size: int = 24, *, noise: float = 0.15, generator: torch.Generator | None = None):
    """``(images (n, 1, S, S), labels (n,))``: one outlined shape per image, classes :data:`CLASSES`.

    Each shape has a random centre and size (radius 3 to S/4 pixels), a stroke about 1.5 pixels
    wide and a random brightness, on Gaussian noise of standard deviation ``noise``.
    """
    n = chk.positive_int("n", n)
    S = chk.positive_int("image_size", image_size)
    if S < 12:
        raise ValueError(f"image_size must be at least 12 pixels, got {S}")
    labels = torch.randint(0, len(CLASSES), (n,), generator=generator)  # (n,)
    r = 3 + torch.rand(n, generator=generator) * (S / 4 - 3)  # (n,) radius
    cx = r + 1 + torch.rand(n, generator=generator) * (S - 2 * r - 2)  # (n,) centre, shape inside the image
    cy = r + 1 + torch.rand(n, generator=generator) * (S - 2 * r - 2)
    bright = 0.7 + 0.6 * torch.rand(n, generator=generator)  # (n,)
    grid = torch.arange(S, dtype=torch.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]  # (n, 1, S): column offset
    dy = grid[None, :, None] - cy[:, None, None]  # (n, S, 1): row offset
    r3 = r[:, None, None]
    # a signed "distance" to each outline, negative inside: the stroke is where it lies in (-1.5, 0]
    square = torch.maximum(dx.abs(), dy.abs()) - r3  # (n, S, S)
    circle = (dx ** 2 + dy ** 2).sqrt() - r3
    # triangle with apex up: the edge lines' signed distances, inside where all are <= 0
    k = 1 / math.sqrt(5)  # the slanted edges have slope 2
    triangle = torch.maximum(torch.maximum(dy - r3, (-2 * dx - dy - r3) * k), (2 * dx - dy - r3) * k)
    plus = torch.minimum(torch.maximum(dx.abs() - 0.75, dy.abs() - r3),
                         torch.maximum(dy.abs() - 0.75, dx.abs() - r3))  # two bars 1.5 wide, all stroke
    dist = torch.stack((square, circle, triangle, plus), 1)[torch.arange(n), labels]  # (n, S, S)
    stroke = ((dist <= 0) & (dist > -1.5)).float() * bright[:, None, None]  # (n, S, S)
    images = stroke + noise * torch.randn(n, S, S, generator=generator)
    return images[:, None], labels  # (n, 1, S, S), (n,)


# ---------------------------------------------------------------------------------- the model


@dataclass
class ViTConfig:
    image_size: int = 24
    patch_size: int = 4
    channels: int = 1
    n_classes: int = len(CLASSES)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    d_mlp: int | None = 128

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViTBlock(nn.Module):
    """Pre-norm encoder block: bidirectional self-attention over CLS + patches, then an MLP."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp or 4 * cfg.d_model)

    def forward(self, x, return_weights: bool = False):
        a, w = self.attn(self.ln1(x), return_weights=True) if return_weights else (self.attn(self.ln1(x)), None)
        x = x + a  # (B, 1+N, D)
        x = x + self.mlp(self.ln2(x))  # (B, 1+N, D)
        return (x, w) if return_weights else x


class ViT(nn.Module):
    """Patch embedding (``patchify`` then a linear map), a CLS token, learned positions, encoder
    blocks, a classifier on the CLS token's final state.

    ``patchify_fn`` has the signature of :func:`patchify` (the default); pass your own to train
    a model with it.
    """

    def __init__(self, cfg: ViTConfig, patchify_fn: Callable | None = None):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"patch_size={cfg.patch_size} must divide image_size={cfg.image_size}")
        self.cfg = cfg
        self.patchify = patchify_fn or patchify
        self.patch_embed = nn.Linear(cfg.channels * cfg.patch_size ** 2, cfg.d_model)
        self.cls = nn.Parameter(torch.randn(1, 1, cfg.d_model) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(1 + cfg.n_patches, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, images: torch.Tensor, return_weights: bool = False):
        """``images (B, C, S, S)`` -> logits ``(B, n_classes)``; with ``return_weights`` also every
        layer's attention weights, a list of ``(B, H, 1+N, 1+N)`` tensors (token 0 is CLS)."""
        cfg = self.cfg
        chk.tensor("images", images, ndim=4, floating=True)
        if tuple(images.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"images {chk.shape_str(images)} must be (B, {cfg.channels}, {cfg.image_size}, "
                             f"{cfg.image_size})")
        x = self.patch_embed(self.patchify(images, cfg.patch_size))  # (B, N, D)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), 1) + self.pos_emb  # (B, 1+N, D)
        weights = []
        for blk in self.blocks:
            if return_weights:
                x, w = blk(x, return_weights=True)
                weights.append(w)
            else:
                x = blk(x)
        logits = self.head(self.ln_f(x[:, 0]))  # (B, n_classes)
        return (logits, weights) if return_weights else logits


def train(model: ViT, *, steps: int = 500, batch: int = 64, lr: float = 2e-3, noise: float = 0.15,
          seed: int = 0, time_budget: float | None = None, progress: bool = True) -> list[float]:
    """Train on freshly drawn shapes with AdamW, warm-up and cosine decay; the loss of every step.

    Stops early (and says so) when ``time_budget`` seconds run out.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    def batch_loss():
        images, labels = shapes(batch, model.cfg.image_size, noise=noise, generator=g)
        return F.cross_entropy(model(images), labels)

    return fit(model, opt, schedule, steps, batch_loss, progress=progress, time_budget=time_budget, every=25)


@torch.no_grad()
def accuracy(model: ViT, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` whose largest logit is the right class."""
    model.eval()
    return (model(images).argmax(-1) == labels).float().mean().item()


def tiny_vit(seed: int = 0, patchify_fn: Callable | None = None, **overrides) -> ViT:
    """The course's ViT: 24 x 24 images in 4 x 4 patches (36 + CLS tokens), 3 layers x 4 heads, D 64."""
    torch.manual_seed(seed)
    return ViT(ViTConfig(**overrides), patchify_fn)
