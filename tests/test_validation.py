"""Bad input raises ValueError/TypeError naming what was wrong; it never returns garbage."""

import pytest
import torch

import attnkit

f32 = torch.zeros


@pytest.mark.parametrize("call,error,words", [
    (lambda: attnkit.dot_product_scores(f32(3, 4), f32(5, 6)), ValueError, ["(3, 4)", "(5, 6)"]),
    (lambda: attnkit.dot_product_scores(f32(2, 3, 4), f32(5, 7, 4)), ValueError, ["broadcast", "(2,)", "(5,)"]),
    (lambda: attnkit.dot_product_scores([[1.0]], f32(1, 1)), TypeError, ["q", "list"]),
    (lambda: attnkit.dot_product_scores(f32(3, 4, dtype=torch.long), f32(3, 4, dtype=torch.long)), TypeError, ["floating"]),
    (lambda: attnkit.dot_product_scores(f32(3, 4), f32(3, 4, dtype=torch.float64)), TypeError, ["float32", "float64"]),
    (lambda: attnkit.softmax(f32(3, 4), dim=2), ValueError, ["dim=2", "(3, 4)"]),
    (lambda: attnkit.softmax(torch.arange(4)), TypeError, ["floating", "int64"]),
    (lambda: attnkit.scaled_dot_product_attention(f32(2, 4), f32(3, 4), f32(5, 4)), ValueError, ["Nk", "(3, 4)", "(5, 4)"]),
    (lambda: attnkit.scaled_dot_product_attention(f32(2, 4), f32(3, 4), f32(3, 4), f32(2, 3)), TypeError, ["bool"]),
    (lambda: attnkit.scaled_dot_product_attention(f32(2, 4), f32(3, 4), f32(3, 4), torch.ones(3, 2, dtype=torch.bool)),
     ValueError, ["(3, 2)", "(2, 3)"]),
    (lambda: attnkit.causal_mask(-1, 3), ValueError, ["n_q"]),
    (lambda: attnkit.causal_mask(2.5, 3), TypeError, ["n_q", "float"]),
    (lambda: attnkit.padding_mask(torch.tensor([1.0]), 3), TypeError, ["lengths", "float32"]),
    (lambda: attnkit.padding_mask(torch.tensor([4]), 3), ValueError, ["lengths", "n=3"]),
    (lambda: attnkit.split_heads(f32(2, 3, 10), 4), ValueError, ["n_heads=4", "D=10", "(2, 3, 10)"]),
    (lambda: attnkit.split_heads(f32(3, 10), 2), ValueError, ["3 dimensions", "(3, 10)"]),
    (lambda: attnkit.merge_heads(f32(2, 3, 4)), ValueError, ["4 dimensions", "(2, 3, 4)"]),
    (lambda: attnkit.multi_head_attention(f32(1, 3, 8), f32(8, 8), f32(8, 8), f32(8, 8), f32(8, 8), 3),
     ValueError, ["n_heads=3", "D=8"]),
    (lambda: attnkit.multi_head_attention(f32(1, 3, 8), f32(8, 4), f32(8, 8), f32(8, 8), f32(8, 8), 2),
     ValueError, ["w_q", "(8, 4)", "(8, 8)"]),
    (lambda: attnkit.sinusoidal_positions(4, 0), ValueError, ["d"]),
    (lambda: attnkit.apply_rope(f32(2, 3, 5), torch.arange(3)), ValueError, ["even", "(2, 3, 5)"]),
    (lambda: attnkit.apply_rope(f32(2, 3, 4), torch.arange(4)), ValueError, ["positions", "(4,)", "N=3"]),
    (lambda: attnkit.apply_rope(f32(3, 4), torch.arange(3), pairing="neox"), ValueError, ["pairing", "neox"]),
    (lambda: attnkit.alibi_bias(0, 2, 2), ValueError, ["n_heads"]),
    (lambda: attnkit.decode_step(f32(1, 2, 2, 4), f32(1, 2, 1, 4), f32(1, 2, 1, 4), f32(1, 2, 3, 4), f32(1, 2, 3, 4)),
     ValueError, ["q_t", "(1, 2, 2, 4)"]),
    (lambda: attnkit.decode_step(f32(1, 2, 1, 4), f32(1, 2, 1, 4), f32(1, 2, 1, 4), f32(1, 3, 3, 4), f32(1, 3, 3, 4)),
     ValueError, ["k_cache", "(1, 3, 3, 4)"]),
    (lambda: attnkit.repeat_kv(f32(1, 2, 3, 4), 0), ValueError, ["n_rep"]),
    (lambda: attnkit.grouped_query_attention(f32(1, 6, 3, 4), f32(1, 4, 3, 4), f32(1, 4, 3, 4)), ValueError,
     ["Hkv=4", "Hq=6"]),
    (lambda: attnkit.grouped_query_attention(f32(1, 4, 3, 4), f32(1, 2, 3, 5), f32(1, 2, 3, 5)), ValueError,
     ["(1, 4, 3, 4)", "(1, 2, 3, 5)"]),
    (lambda: attnkit.MultiHeadAttention(10, 3), ValueError, ["n_heads=3", "d_model=10"]),
    (lambda: attnkit.MultiHeadAttention(12, 4, n_kv_heads=3), ValueError, ["n_kv_heads=3"]),
    (lambda: attnkit.MultiHeadAttention(8, 2)(f32(1, 3, 6)), ValueError, ["(1, 3, 6)", "D=8"]),
    (lambda: attnkit.KVCache(1, 2, 2, 4).append(f32(1, 2, 3, 4), f32(1, 2, 3, 4)), ValueError, ["full", "3"]),
    (lambda: attnkit.KVCache(1, 2, 8, 4).append(f32(1, 3, 1, 4), f32(1, 3, 1, 4)), ValueError, ["(1, 3, 1, 4)"]),
])
def test_bad_input_names_the_problem(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
