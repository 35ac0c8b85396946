"""Associative recall: where a fixed-size state forgets and attention does not (the
multi-query associative recall task of Arora et al. 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models"), and the three tiny models notebook 15 trains on it.

A sequence holds ``n_pairs`` key-value pairs, then ``n_queries`` keys asked again; the model
must answer each with its value. Each pair is one position (the sum of a key embedding and a
value embedding, as if a first layer or a short convolution had already merged the two tokens),
and each query is a key embedding plus a "?" embedding. One layer of attention can solve it at
any length: match the query against the stored keys, copy the value. A linear-attention layer
must squeeze all pairs into its ``(dv, dk)`` state per head, and once there are more pairs than
the state can separate, recall falls.

Models: :class:`RecallModel` with a ``layout`` string, ``"A"`` a causal softmax attention layer
(no positions: the task needs none, like Kimi Linear's NoPE attention layers), ``"G"`` a gated
DeltaNet layer (:func:`attnkit.gated_delta_rule_chunked` with L2-normalised keys and queries,
``beta = sigmoid``, ``g = sigmoid``, as in Yang, Kautz and Hatamizadeh 2024). ``"AAAA"``,
``"GGGG"`` and ``"GGGA"`` (three gated-delta layers per attention layer, Qwen3-Next's and Kimi
Linear's 3:1) have the same width and nearly the same number of parameters.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as chk
from .delta import gated_delta_rule_chunked

LAYER_KINDS = {"A": "softmax attention", "G": "gated DeltaNet"}


def recall_batch(batch: int, n_pairs: int, n_queries: int, n_keys: int, n_values: int,
                 generator: torch.Generator | None = None):
    """``keys (B, n_pairs)``, distinct within a sequence; ``values (B, n_pairs)``; ``query_keys
    (B, n_queries)`` drawn from the stored keys; ``answers (B, n_queries)``. All int64."""
    for name, value in (("batch", batch), ("n_pairs", n_pairs), ("n_queries", n_queries), ("n_keys", n_keys),
                        ("n_values", n_values)):
        chk.positive_int(name, value)
    if n_pairs > n_keys:
        raise ValueError(f"n_pairs ({n_pairs}) distinct keys need n_keys >= n_pairs, got n_keys={n_keys}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    keys = torch.argsort(torch.rand(batch, n_keys, generator=g), dim=-1)[:, :n_pairs]  # (B, n_pairs), distinct
    values = torch.randint(0, n_values, (batch, n_pairs), generator=g)
    asked = torch.randint(0, n_pairs, (batch, n_queries), generator=g)  # which pair each query asks for
    return keys, values, torch.gather(keys, 1, asked), torch.gather(values, 1, asked)


class AttentionMixer(nn.Module):
    """Causal multi-head softmax attention, no positions."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, d)
        return self.out(o.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class GatedDeltaMixer(nn.Module):
    """A gated DeltaNet layer: L2-normalised keys and queries, a write strength ``beta`` and a
    decay ``g`` per token and head, computed in chunks."""

    def __init__(self, d_model: int, n_heads: int, chunk_size: int = 64):
        super().__init__()
        self.n_heads, self.chunk_size = n_heads, chunk_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.beta_gate = nn.Linear(d_model, 2 * n_heads)
        with torch.no_grad():
            self.beta_gate.bias[n_heads:] = 3.0  # start with g = sigmoid(3) ~ 0.95: remember
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, d)
        q, k = F.normalize(F.silu(q), dim=-1), F.normalize(F.silu(k), dim=-1)
        beta, g = torch.sigmoid(self.beta_gate(x)).view(B, N, 2, self.n_heads).permute(2, 0, 3, 1)  # 2 x (B, H, N)
        o, _ = gated_delta_rule_chunked(q, k, v, beta, g, chunk_size=self.chunk_size)  # (B, H, N, d)
        return self.out(o.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class RecallModel(nn.Module):
    """Embeddings, one pre-norm residual mixer per letter of ``layout``, a readout over values."""

    def __init__(self, layout: str, *, d_model: int = 64, n_heads: int = 2, n_keys: int = 128, n_values: int = 64):
        super().__init__()
        if not layout or set(layout) - set(LAYER_KINDS):
            raise ValueError(f"layout must be a string of {sorted(LAYER_KINDS)} ('A' attention, 'G' gated DeltaNet), "
                             f"got {layout!r}")
        if d_model % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model})")
        self.layout, self.d_model, self.n_heads = layout, d_model, n_heads
        self.n_keys, self.n_values = n_keys, n_values
        self.key_embedding = nn.Embedding(n_keys, d_model)
        self.value_embedding = nn.Embedding(n_values + 1, d_model)  # the last one is "?" (a query)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in layout)
        self.mixers = nn.ModuleList(AttentionMixer(d_model, n_heads) if kind == "A" else GatedDeltaMixer(d_model, n_heads)
                                    for kind in layout)
        self.final_norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, n_values)

    def forward(self, keys, values, query_keys):
        """Logits over values ``(B, n_queries, n_values)`` for every query."""
        pairs = self.key_embedding(keys) + self.value_embedding(values)  # (B, n_pairs, D)
        asks = self.key_embedding(query_keys) + self.value_embedding.weight[self.n_values]  # (B, n_queries, D)
        x = torch.cat((pairs, asks), dim=1)  # (B, N, D)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.readout(self.final_norm(x[:, keys.shape[1]:]))  # (B, n_queries, n_values)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def memory_numbers(self, seq_len: int) -> int:
        """Numbers kept per sequence when decoding ``seq_len`` tokens: a key and a value per position for
        each attention layer, one ``(d, d)`` state per head for each gated DeltaNet layer."""
        d = self.d_model // self.n_heads
        return (self.layout.count("A") * 2 * self.d_model * seq_len
                + self.layout.count("G") * self.n_heads * d * d)


def train_recall(model: RecallModel, *, steps: int = 400, batch: int = 32, pairs: tuple[int, int] = (4, 32),
                 n_queries: int = 8, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """AdamW with a one-cycle schedule on batches of ``pairs[0]..pairs[1]`` pairs (a new length each
    step); returns the loss of every step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for _ in range(steps):
        n = int(torch.randint(pairs[0], pairs[1] + 1, (1,), generator=g))
        keys, values, query_keys, answers = recall_batch(batch, n, n_queries, model.n_keys, model.n_values, g)
        loss = F.cross_entropy(model(keys, values, query_keys).flatten(0, 1), answers.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def recall_accuracy(model: RecallModel, n_pairs: int, *, n_sequences: int = 256, n_queries: int = 16,
                    seed: int = 1234) -> float:
    """Share of queries answered right on fresh sequences of ``n_pairs`` pairs."""
    g = torch.Generator().manual_seed(seed)
    keys, values, query_keys, answers = recall_batch(n_sequences, n_pairs, n_queries, model.n_keys, model.n_values, g)
    return (model(keys, values, query_keys).argmax(-1) == answers).double().mean().item()


def train_three(steps: int = 400, seed: int = 0, layouts=("AAAA", "GGGG", "GGGA"), **model_options):
    """Train one model per layout with the same data, steps and seed; returns
    ``{layout: (model, losses, seconds)}``."""
    results = {}
    for layout in layouts:
        torch.manual_seed(seed)
        model = RecallModel(layout, **model_options)
        start = time.perf_counter()
        losses = train_recall(model, steps=steps, seed=seed)
        results[layout] = (model, losses, time.perf_counter() - start)
    return results


def recall_table(results, lengths=(8, 16, 32, 48, 64, 128)) -> dict[str, list[float]]:
    """``{layout: [accuracy at each number of pairs]}``."""
    return {layout: [recall_accuracy(model, n) for n in lengths] for layout, (model, _, _) in results.items()}

