"""The training script of the shipped model (python -m attnkit.pretrained.train): the copy and
repeat augmentations, and a tiny run that is deterministic, stops early and resumes."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from attnkit import pretrained
from attnkit.pretrained import train as train_mod


TINY = ["--steps", "4", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--ctx", "32",
        "--batch", "2", "--warmup", "2", "--eval-every", "2", "--eval-every-bytes", "200",
        "--eval-bytes", "300", "--log-every", "1", "--seed", "5",
        "--copy-frac", "0.5", "--copy-from-step", "2", "--copy-len", "2", "8", "--repeat-rows", "1"]


def test_insert_repeats_ends_rows_in_a_repeated_name():
    gen = torch.Generator().manual_seed(0)
    window = torch.full((4, 64), ord(" "))
    out = train_mod.insert_repeats(window, 2, (3, 9), gen)
    torch.testing.assert_close(out[:2], window[:2])  # the first rows untouched
    for row in out[2:].tolist():
        r = next(i for i, b in enumerate(row) if b != ord(" "))
        tail = bytes(row[r:])
        assert set(tail) <= set(b"abcdefghijklmnopqrstuvwxyz_")
        period = next(P for P in range(3, 10) if all(tail[i] == tail[i % P] for i in range(len(tail))))
        assert len(tail) >= period


def test_insert_copies_repeats_an_earlier_stretch():
    gen = torch.Generator().manual_seed(0)
    window = torch.arange(100).repeat(5, 1)  # (5, 100): distinct values, so a copy is easy to find
    out = train_mod.insert_copies(window, 3, (4, 20), gen)
    assert out.shape == window.shape
    torch.testing.assert_close(out[3:], window[3:])  # rows past `rows` untouched
    for row in out[:3].tolist():
        r = next(i for i in range(1, 100) if row[i] != row[i - 1] + 1)  # where the copy starts
        a = row[r]
        # the row is its own start, a copy of an earlier stretch [a, a + L), then goes on from r
        fits = [L for L in range(4, 21) if a + L <= r
                and row == (list(range(r)) + list(range(a, a + L)) + list(range(r, 100)))[:100]]
        assert fits, row
    with pytest.raises(ValueError, match="copy-len"):
        train_mod.main(TINY + ["--copy-len", "2", "40", "--out", "/nonexistent"])


def test_training_script_is_deterministic_and_resumes(tmp_path, capsys):
    rec_a = train_mod.main(TINY + ["--out", str(tmp_path / "a")])
    rec_b = train_mod.main(TINY + ["--out", str(tmp_path / "b")])
    curve_a = json.loads((tmp_path / "a" / "stdlib_byte_lm.loss.json").read_text())
    curve_b = json.loads((tmp_path / "b" / "stdlib_byte_lm.loss.json").read_text())
    assert [c["loss"] for c in curve_a] == [c["loss"] for c in curve_b] and len(curve_a) == 4
    assert rec_a["held_out_bits_per_byte"] == rec_b["held_out_bits_per_byte"]
    assert rec_a["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert rec_a["steps"] == 4 and not rec_a["stopped_early"]
    out = capsys.readouterr().out
    assert "step     4/4" in out and " s  loss " in out
    # stop after one step (the checkpoint is written), then resume: the same losses
    stopped = train_mod.main(TINY + ["--out", str(tmp_path / "c"), "--stop-after-s", "0"])
    assert stopped["steps"] == 1 and stopped["stopped_early"]
    train_mod.main(TINY + ["--out", str(tmp_path / "c"), "--resume"])
    curve_c = json.loads((tmp_path / "c" / "stdlib_byte_lm.loss.json").read_text())
    assert [c["loss"] for c in curve_c] == [c["loss"] for c in curve_a]
    # the weights load like the shipped ones
    blob = torch.load(tmp_path / "a" / "stdlib_byte_lm.pt", weights_only=True)
    model = pretrained.ByteLM(pretrained.ByteLMConfig(**blob["config"]))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    assert model(torch.zeros(1, 32, dtype=torch.long)).shape == (1, 32, 256)
