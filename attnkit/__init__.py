"""attnkit: the solution library of the attention course.

Reference implementations of everything the notebooks teach, one concept per module,
with the exact signatures of the course's exercise contract, plus the checkers that grade a
learner's version (:mod:`attnkit.checks`). Later notebooks import earlier concepts from
here, so a learner who got one notebook wrong can still do the next.

Shape legend used in every docstring and comment: ``B`` batch, ``H`` heads, ``Hkv``
key/value heads, ``N``/``Nq`` queries, ``Nk`` keys, ``d`` head dim, ``D`` model dim.
"""

from .additive import AdditiveAttention, additive_attention, additive_scores
from .alibi import alibi_bias, alibi_slopes
from .attention import scaled_dot_product_attention
from .gqa import grouped_query_attention, repeat_kv
from .heads import merge_heads, multi_head_attention, split_heads
from .kv_cache import KVCache, decode_step, kv_cache_bytes
from .induction import induction_score, previous_token_score
from .flash import FlashAttention, flash_attention_backward, flash_attention_forward
from .linear import linear_attention, linear_attention_chunked, linear_attention_recurrent
from .chunked import chunked_attention
from .sparse import bigbird_layout, block_sparse_attention, sliding_window_attention
from .approx import linformer_attention, performer_attention
from .masks import causal_mask, padding_mask, sliding_window_mask
from .online_softmax import online_softmax
from .mha import MultiHeadAttention
from .model import Block, DecoderConfig, MLP, TinyDecoder, generate
from .gpt import GPT, CausalSelfAttention, DecoderBlock
from .train import train_model
from .positions import sinusoidal_positions
from .rope import apply_rope, apply_rope_complex
from .similarity import cosine_scores, dot_product_scores
from .softmax import softmax
from .distributed import RingAttention, merge_partials, ring_attention, run_ring_attention
from .paging import PagedKVCache, paged_attention
from .latent import mla_attention, mla_scores
from .sinks import sink_attention
from .yarn import yarn_inv_freq
from .decoding import flash_decode
from .delta import gated_delta_rule, gated_delta_rule_chunked
from .code_heads import bracket_match_score, indentation_score
from .seq2seq import cross_attention
from .vit import attention_rollout, patchify

from .env import report

__version__ = "0.1.0"

__all__ = [
    "FlashAttention", "flash_attention_backward", "flash_attention_forward", "linear_attention", "online_softmax",
    "sliding_window_mask", "chunked_attention", "sliding_window_attention", "block_sparse_attention", "bigbird_layout",
    "linear_attention_chunked", "linear_attention_recurrent", "performer_attention", "linformer_attention",
    "AdditiveAttention", "Block", "DecoderConfig", "KVCache", "MLP", "MultiHeadAttention",
    "TinyDecoder", "additive_attention", "additive_scores", "alibi_bias", "alibi_slopes",
    "apply_rope", "apply_rope_complex", "causal_mask", "cosine_scores", "decode_step",
    "dot_product_scores", "generate", "induction_score", "kv_cache_bytes", "previous_token_score", "grouped_query_attention", "merge_heads",
    "multi_head_attention", "padding_mask", "repeat_kv", "report", "scaled_dot_product_attention",
    "sinusoidal_positions", "softmax", "split_heads",
    "RingAttention", "merge_partials", "ring_attention", "run_ring_attention",
    "PagedKVCache", "paged_attention", "mla_attention", "mla_scores", "sink_attention", "yarn_inv_freq",
    "flash_decode", "gated_delta_rule", "gated_delta_rule_chunked",
    "bracket_match_score", "indentation_score",
    "GPT", "CausalSelfAttention", "DecoderBlock", "train_model",
    "cross_attention", "patchify", "attention_rollout",
]

# Triton kernels load on first use (PEP 562), so `import attnkit` never imports triton:
# name -> the submodule that defines it. Give such a submodule a name different from the
# function's: importing attnkit.x sets the attribute attnkit.x to the module.
_LAZY = {
    "triton_softmax": "fused_softmax",
    "triton_flash_forward": "triton_flash",
    "TritonFlashAttention": "triton_flash",
    "triton_scale_shift": "triton_ladder",
    "triton_row_max": "triton_ladder",
    "triton_matmul": "triton_ladder",
    "triton_attention_tile": "triton_ladder",
}
__all__ += list(_LAZY)


def __getattr__(name):
    if name == "pretrained":  # the shipped model's package: `attnkit.pretrained.load()` after `import attnkit`
        import importlib
        return importlib.import_module(".pretrained", __name__)
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"pretrained"})
