"""Pictures used across the notebooks: heatmaps of scores and attention weights.

Plotting only: no maths, no grading. Every function draws on a matplotlib ``Axes``
(a new figure when none is given) and returns it, so notebooks and tests can inspect it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def heatmap(matrix, *, ax=None, row_labels: Sequence[str] | None = None,
            col_labels: Sequence[str] | None = None, title: str = "", cmap: str = "viridis",
            annotate: bool | None = None, xlabel: str = "keys", ylabel: str = "queries",
            vmin=None, vmax=None):
    """Draw a 2-D matrix (tensor or array) with labelled rows (queries) and columns (keys)."""
    import matplotlib.pyplot as plt

    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else matrix
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.45 * m.shape[1], 1 + 0.4 * m.shape[0]))
    image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if row_labels is not None:
        ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    if col_labels is not None:
        ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=45, ha="right")
    if annotate is None:
        annotate = m.size <= 100
    if annotate:
        mid = (m.max() + m.min()) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > mid else "white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return ax
