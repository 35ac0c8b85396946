"""Checkers for every graded exercise: ``check_<name>(fn)``.

Each checker runs the learner's ``fn`` against attnkit's reference on seeded random and
edge cases, prints one line when everything passes, and otherwise raises an
``AssertionError`` whose first line names the likely misconception. Calling the reference
or a library shortcut for the concept being taught is rejected too.

    >>> from attnkit.checks import check_softmax
    >>> check_softmax(my_softmax)
    check_softmax passed: 9 cases (...)

``CHECKS`` maps every exercise name to its checker.
"""

from .._remote import there  # run a helper where a (possibly remote) learner's object lives
from .basics import check_dot_product_scores, check_scaled_dot_product_attention, check_softmax
from .flex import FLEX_CHECKS, check_alibi_score_mod, check_document_mask_mod, check_sliding_window_mask_mod
from .efficient import (check_flash_attention_backward, check_flash_attention_forward, check_linear_attention,
                        check_online_softmax, check_sliding_window_mask)
from .distributed import check_merge_partials
from .heads import check_merge_heads, check_multi_head_attention, check_split_heads
from .inference import check_decode_step, check_grouped_query_attention, check_repeat_kv
from .masks import check_causal_mask, check_padding_mask
from .model import NOTEBOOK_CHECKS, check_causal_self_attention, check_decoder_block, check_induction_score
from .training import check_train_model
from .positions import check_alibi_bias, check_apply_rope, check_sinusoidal_positions
from .triton_softmax import check_triton_softmax  # imports triton only when it runs
from .triton import check_triton_flash_dq, check_triton_flash_forward  # imports triton only when it runs
from .triton_ladder import (check_triton_attention_tile, check_triton_matmul, check_triton_row_max,
                            check_triton_scale_shift)  # imports triton only when it runs
from .modern import (check_flash_decode, check_mla_scores, check_paged_attention, check_sink_attention,
                     check_yarn_inv_freq)
from .beyond import check_gated_delta_rule, check_gated_delta_rule_chunked
from .inside import INSIDE_CHECKS, check_bracket_match_score, check_indentation_score
from .seq2seq import check_cross_attention
from .vision import check_attention_rollout, check_patchify

CHECKS = {
    "dot_product_scores": check_dot_product_scores,
    "softmax": check_softmax,
    "scaled_dot_product_attention": check_scaled_dot_product_attention,
    "causal_mask": check_causal_mask,
    "padding_mask": check_padding_mask,
    "split_heads": check_split_heads,
    "merge_heads": check_merge_heads,
    "multi_head_attention": check_multi_head_attention,
    "sinusoidal_positions": check_sinusoidal_positions,
    "apply_rope": check_apply_rope,
    "alibi_bias": check_alibi_bias,
    "decode_step": check_decode_step,
    "repeat_kv": check_repeat_kv,
    "grouped_query_attention": check_grouped_query_attention,
    "online_softmax": check_online_softmax,
    "flash_attention_forward": check_flash_attention_forward,
    "flash_attention_backward": check_flash_attention_backward,
    "sliding_window_mask": check_sliding_window_mask,
    "linear_attention": check_linear_attention,
    "triton_softmax": check_triton_softmax,
    "triton_flash_forward": check_triton_flash_forward,
    "paged_attention": check_paged_attention,
    "mla_scores": check_mla_scores,
    "sink_attention": check_sink_attention,
    "yarn_inv_freq": check_yarn_inv_freq,
    "flash_decode": check_flash_decode,
    "gated_delta_rule": check_gated_delta_rule,
    "train_model": check_train_model,
    "cross_attention": check_cross_attention,
    "patchify": check_patchify,
    "attention_rollout": check_attention_rollout,
}

# Graded exercises of the notebooks that are not part of the course contract.
NOTEBOOK_CHECKS.update(FLEX_CHECKS)
NOTEBOOK_CHECKS.update(merge_partials=check_merge_partials)
NOTEBOOK_CHECKS.update(triton_flash_dq=check_triton_flash_dq)
NOTEBOOK_CHECKS.update(triton_scale_shift=check_triton_scale_shift, triton_row_max=check_triton_row_max,
                       triton_matmul=check_triton_matmul, triton_attention_tile=check_triton_attention_tile)
NOTEBOOK_CHECKS.update(gated_delta_rule_chunked=check_gated_delta_rule_chunked)
NOTEBOOK_CHECKS.update(INSIDE_CHECKS)
assert set(NOTEBOOK_CHECKS).isdisjoint(CHECKS)

__all__ = ["CHECKS", "NOTEBOOK_CHECKS", "there", *(f"check_{name}" for name in CHECKS), "check_induction_score",
           "check_merge_partials",
           "check_triton_flash_dq", "check_triton_scale_shift", "check_triton_row_max", "check_triton_matmul",
           "check_triton_attention_tile", "check_gated_delta_rule_chunked",
           "check_decoder_block", "check_causal_self_attention", *(f"check_{name}" for name in FLEX_CHECKS),
           *(f"check_{name}" for name in INSIDE_CHECKS)]
