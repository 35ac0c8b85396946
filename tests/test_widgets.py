"""Widget callbacks exercised from Python: set a value, the state behind the picture changes;
and the static fallback draws a figure where no front end exists."""

import math

import pytest
import torch

from attnkit import widgets as W
from attnkit.widgets_headview import HeadView


def _exercise(explorer, control, value):
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in explorer.state.items()}
    explorer.controls[control].value = value
    assert explorer.updates == 1
    changed = [k for k in before if not (torch.equal(before[k], explorer.state[k]) if isinstance(before[k], torch.Tensor)
                                         else before[k] == explorer.state[k])]
    assert changed, f"moving {control} changed nothing"
    return explorer


def test_temperature_explorer_sharpens_and_flattens():
    e = W.TemperatureExplorer(torch.tensor([2.0, 1.0, 0.0]))
    _exercise(e, "temperature", 0.05)
    assert e.state["probs"].max() > 0.99 and e.state["entropy"] < 0.05
    e.controls["temperature"].value = 5.0
    assert e.state["entropy"] > 0.95 * e.state["max_entropy"]


def test_mask_builder_reports_fully_masked_rows():
    e = _exercise(W.MaskBuilder(n=6), "kind", "causal")
    assert torch.equal(e.state["mask"], torch.ones(6, 6, dtype=torch.bool).tril())
    e.controls["kind"].value = "padding"
    e.controls["length"].value = 0
    assert e.state["fully_masked_rows"] == list(range(6))
    e.controls["kind"].value = "causal & padding"
    e.controls["length"].value = 3
    e.controls["queries"].value = 2  # the last two positions of six
    assert e.state["mask"].shape == (2, 6) and e.state["mask"].sum().item() == 6


def test_head_selector_switches_heads():
    weights = torch.stack([torch.eye(4), torch.ones(4, 4).tril() / torch.arange(1, 5)[:, None]])
    e = _exercise(W.HeadSelector(weights, list("abcd")), "head", 1)
    assert torch.equal(e.state["weights"], weights[1])
    with pytest.raises(ValueError, match="H, Nq, Nk"):
        W.HeadSelector(torch.ones(4, 4))


def test_query_explorer_output_follows_the_query():
    e = _exercise(W.QueryExplorer(), "query", -2.5)
    keys, values = e.keys, e.values
    e.controls["sharpness"].value = 20.0
    nearest = values[(keys - (-2.5)).abs().argmin()]
    assert abs(e.state["output"] - float(nearest)) < 0.3
    assert abs(float(e.state["weights"].sum()) - 1) < 1e-6


def test_similarity_explorer_cosine_ignores_length():
    e = W.SimilarityExplorer()
    cos, dot = e.state["cosine"].clone(), e.state["dot"].clone()
    _exercise(e, "length", 2.0)
    torch.testing.assert_close(e.state["cosine"], cos)
    torch.testing.assert_close(e.state["dot"], 2 * dot)


@pytest.mark.parametrize("make", [W.TemperatureExplorer, W.MaskBuilder, W.QueryExplorer, W.SimilarityExplorer, W.RopeExplorer,
                                  W.OnlineSoftmaxStepper, lambda: W.CurveExplorer({"a": ([0, 1], [1, 2])}),
                                  lambda: W.HeadSelector(torch.softmax(torch.randn(2, 3, 3), -1)),
                                  lambda: HeadView(torch.softmax(torch.randn(1, 2, 4, 4), -1), list(b"ab\nc"))])
def test_static_fallback_draws_a_figure(make, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.setenv("ATTNKIT_WIDGETS", "0")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    make().show()
    assert len(shown) == 1 and type(shown[0]).__name__ == "Figure"


def test_live_mode_displays_the_widget(monkeypatch):
    monkeypatch.setenv("ATTNKIT_WIDGETS", "1")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    e = W.TemperatureExplorer().show()
    assert shown[-1] is e.widget
    e.controls["temperature"].value = 2.0  # re-renders into the Output widget without error
    assert e.updates == 1


def test_frontend_detection(monkeypatch):
    monkeypatch.delenv("ATTNKIT_WIDGETS", raising=False)
    assert W.has_frontend() is False  # plain python: no kernel
    monkeypatch.setenv("ATTNKIT_WIDGETS", "1")
    assert W.has_frontend() is True


def test_rope_explorer_score_depends_on_offset_only():
    e = W.RopeExplorer()
    e.controls["m"].value, e.controls["n"].value = 3, 10
    s1 = e.state["score"]
    e.controls["m"].value, e.controls["n"].value = 20, 27
    assert abs(e.state["score"] - s1) < 1e-5 and abs(e.state["score"] - e.state["score_at_offset_only"]) < 1e-5
    before = e.state["score"]
    _ = e.controls["n"].value
    e.controls["n"].value = 30
    assert abs(e.state["score"] - before) > 1e-4


def test_curve_explorer_switches_curves():
    e = W.CurveExplorer({"a": ([0, 1], [1.0, 2.0]), "b": ([0, 1], [3.0, 5.0])})
    assert e.state["mean"] == 1.5
    e.controls["curve"].value = "b"
    assert e.state["mean"] == 4.0 and e.updates == 1
    with pytest.raises(ValueError):
        W.CurveExplorer({})


def test_online_softmax_stepper_tracks_the_reference_running_max_and_sum():
    import attnkit
    x = torch.tensor([0.3, -1.0, 2.0, 0.5, 4.0, -0.2, 1.0], dtype=torch.float64)
    e = _exercise(W.OnlineSoftmaxStepper(x, block_size=2, step=0), "step", 2)
    _, m, l = attnkit.online_softmax(x[:4], 2)  # two blocks of two seen
    assert e.state["m"] == pytest.approx(float(m)) and e.state["l"] == pytest.approx(float(l))
    e.controls["step"].value = 3  # the block holding 4.0 raises the max: the sum so far shrinks by exp(2 - 4)
    assert e.state["history"][-1]["max_moved"] and e.state["history"][-1]["alpha"] == pytest.approx(math.exp(-2.0))
    e.controls["block_size"].value = 3  # re-ranges the slider: ceil(7 / 3) = 3 blocks
    assert e.controls["step"].max == 3
    e.controls["step"].value = 3
    probs, _, _ = attnkit.online_softmax(x, 3)
    assert e.state["done"] and torch.allclose(e.state["partial"], probs)
    with pytest.raises(ValueError, match="1-D"):
        W.OnlineSoftmaxStepper(torch.zeros(2, 3))


def test_head_view_callbacks_and_clickable_bytes():
    text = "f(x, [y])\n    z\n"
    T = len(text)
    attn = torch.softmax(torch.randn(2, 2, T, T, generator=torch.Generator().manual_seed(0))
                         .masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1)
    e = _exercise(HeadView(attn, list(text.encode()), query=3), "head", 1)
    assert torch.equal(e.state["row"], attn[0, 1, 3])
    e.controls["layer"].value = 1
    assert torch.equal(e.state["weights"], attn[1, 1])
    e.byte_panel()
    e.buttons[7].click()  # the ']': clicking a byte makes it the query
    assert e.controls["query"].value == 7 and torch.equal(e.state["row"], attn[1, 1, 7])
    assert e.buttons[7].tooltip.startswith("byte 7 ']' attends to")
