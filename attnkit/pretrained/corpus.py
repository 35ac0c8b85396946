"""The training corpus: the standard library's own ``.py`` source, as bytes.

Every machine that runs Python has it, so the course can train (and re-check) a model on
real text without downloading anything. The file list is sorted and hashed so a training
record names exactly what the model saw; a fixed share of files, chosen by a hash of the
relative path (not by chance, not by order), is held out for evaluation.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np

# Directories left out wherever they appear: test suites (generated-looking, very repetitive
# code), IDLE, installed third-party packages, pydoc's topic prose and the codec tables of
# encodings/ (hundreds of kilobytes of hex literals).
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages",
                           "pydoc_data", "encodings", "__pycache__"})
HELD_OUT_EVERY = 20  # a file is held out when sha256(relative path) mod 20 == 0: about 5%


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: Path | None = None) -> list[str]:
    """Sorted relative POSIX paths of the stdlib ``.py`` files we train on."""
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]) or not path.is_file():
            continue
        files.append(rel.as_posix())
    return sorted(files)


def is_held_out(rel: str) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def file_list_sha256(files: list[str]) -> str:
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def read_bytes(files: list[str], root: Path | None = None) -> np.ndarray:
    """The files' bytes, concatenated in order, as a ``uint8`` array."""
    root = Path(root) if root is not None else stdlib_root()
    return np.frombuffer(b"".join((root / f).read_bytes() for f in files), dtype=np.uint8)


def split(files: list[str]) -> tuple[list[str], list[str]]:
    """``(train, held_out)``, both keeping the sorted order."""
    return [f for f in files if not is_held_out(f)], [f for f in files if is_held_out(f)]


def bigram_counts(data: np.ndarray) -> np.ndarray:
    """``(256, 256)`` int64: ``counts[a, b]`` = how often byte ``b`` follows byte ``a``."""
    pairs = data[:-1].astype(np.int64) * 256 + data[1:]
    return np.bincount(pairs, minlength=256 * 256).reshape(256, 256)


def bigram_bits_per_byte(counts: np.ndarray, data: np.ndarray) -> float:
    """Mean ``-log2 p(b | a)`` over every byte of ``data`` after the first, with the
    add-one-smoothed bigram ``p(b | a) = (counts[a, b] + 1) / (counts[a].sum() + 256)``."""
    counts = counts.astype(np.float64)
    log_p = np.log2(counts + 1) - np.log2(counts.sum(axis=1, keepdims=True) + 256)  # (256, 256)
    return float(-log_p[data[:-1], data[1:]].mean())
