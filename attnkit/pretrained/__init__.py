"""A small byte-level language model trained on the Python standard library, shipped with the course.

    from attnkit import pretrained
    model, tok = pretrained.load()            # offline, from the weights inside the package
    logits = model(torch.tensor([tok.encode("def f(x):")]))   # (1, 9, 256)
    print(pretrained.sample("def ", 200))
    pretrained.info()["held_out_bits_per_byte"]

The model (:class:`attnkit.pretrained.model.ByteLM`) is a pre-norm decoder with RoPE over
the 256 byte values, trained by ``python -m attnkit.pretrained.train`` on the ``.py`` files
of CPython's standard library (test suites and a few data-like directories left out, about
5% of the files held out by a hash of their path). Its forward pass can return attention
weights and per-head outputs and can ablate, patch or window heads: see ``ByteLM.forward``.
Importing this module loads nothing; :func:`load` reads the weights on first call and caches them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from .model import ByteLM, ByteLMConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS = WEIGHTS_DIR / "stdlib_byte_lm.pt"
RECORD = WEIGHTS_DIR / "stdlib_byte_lm.json"
LOSS_CURVE = WEIGHTS_DIR / "stdlib_byte_lm.loss.json"

__all__ = ["ByteLM", "ByteLMConfig", "ByteTokenizer", "info", "load", "loss_curve", "sample", "tokenizer"]


class ByteTokenizer:
    """Text <-> UTF-8 byte ids (0..255). Every string has an encoding; ``decode`` replaces
    byte sequences that are not valid UTF-8 (a sample can stop mid-character) with U+FFFD."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1:
                raise ValueError(f"decode takes a 1-D tensor or a list of ids, got shape {tuple(ids.shape)}")
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise TypeError(f"decode needs integer ids, got dtype {ids.dtype}")
            ids = ids.tolist()
        ids = list(ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 256]
        if bad:
            raise ValueError(f"decode needs byte ids in 0..255, got {bad[:5]!r}")
        return bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self):
        return "ByteTokenizer(vocab_size=256)"


tokenizer = ByteTokenizer()


@lru_cache(maxsize=None)
def _load_cpu() -> ByteLM:
    if not WEIGHTS.exists():
        raise FileNotFoundError(f"the shipped weights are missing: {WEIGHTS} (reinstall attnkit, or train "
                                "them with python -m attnkit.pretrained.train)")
    blob = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = ByteLM(ByteLMConfig(**blob["config"]))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    model.requires_grad_(False)
    return model.eval()


def load(device="cpu") -> tuple[ByteLM, ByteTokenizer]:
    """``(model, tokenizer)``: the shipped model in eval mode, float32, on ``device``.

    Reads only the file inside the package, never the network. Cached: every call returns
    the same model object for a device (its parameters do not require gradients; call
    ``model.requires_grad_(True)`` for gradient x input, which needs only the input's gradient).
    """
    return _load_on(str(torch.device(device))), tokenizer


@lru_cache(maxsize=None)
def _load_on(device: str) -> ByteLM:
    model = _load_cpu()
    return model if device == "cpu" else _copy_to(model, device)


def _copy_to(model: ByteLM, device: str) -> ByteLM:
    clone = ByteLM(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.to(device).requires_grad_(False).eval()


def sample(prompt: str, n: int, temperature: float = 0.8, seed: int = 0) -> str:
    """``prompt`` followed by ``n`` bytes sampled from the shipped model, decoded as UTF-8.

    Deterministic given ``seed``; ``temperature=0`` takes the most likely byte each time.
    A prompt longer than the model's context is cut to its last ``max_len`` bytes for reading
    (the whole prompt is still returned).
    """
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("sample needs a non-empty prompt (try '\\n')")
    model, _ = load()
    gen = torch.Generator().manual_seed(int(seed))
    context = torch.tensor([ids[-model.config.max_len:]], dtype=torch.long)  # (1, T)
    out = model.generate(context, n, temperature=temperature, generator=gen)  # (1, T + n)
    new = out[0, context.shape[1]:].tolist()
    return tokenizer.decode(ids + new)


def info() -> dict:
    """The training record written next to the weights (a fresh copy each call)."""
    return json.loads(RECORD.read_text())


def loss_curve() -> list[dict]:
    """The training loss curve: one dict per step (``step``, ``time_s``, ``loss`` in nats, ``lr``, ...)."""
    return json.loads(LOSS_CURVE.read_text())
