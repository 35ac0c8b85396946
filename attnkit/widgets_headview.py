"""A head view for a byte-level model: which bytes each byte attends to, per layer and head.

Like bertviz's head view (Vig 2019, "A Multiscale Visualization of Attention in the Transformer
Model"), drawn with the two tools every runtime of the course has: matplotlib and the widgets
present in both ipywidgets 7.7 (Colab) and 8. Pick a layer and a head; pick a query byte with
the slider or, in a live front end, by clicking it in the text, where hovering a byte shows its
three strongest keys. The picture shades every byte of the source by the weight the query gives
it and shows the head's whole ``(T, T)`` map beside it. Without a front end, ``show()`` draws
that picture for the starting values (see :class:`attnkit.widgets.Explorer`).
"""

from __future__ import annotations

import torch

from .widgets import Explorer

_SHOWN = {"\n": "\u21b5", " ": "\u00b7", "\t": "\u2192"}  # how a newline, a space and a tab are drawn


def byte_labels(ids) -> list[str]:
    """One printable label per byte id: the character, or ``\\xNN`` for bytes that are not ASCII."""
    out = []
    for b in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
        b = int(b)
        out.append(chr(b) if b in (9, 10) or 32 <= b < 127 else f"\\x{b:02x}")
    return out


def _stack(attn) -> torch.Tensor:
    """``(L, H, T, T)`` from a list of per-layer ``(H, T, T)`` or ``(1, H, T, T)`` tensors, or a tensor."""
    if isinstance(attn, (list, tuple)):
        attn = torch.stack([a[0] if a.ndim == 4 else a for a in attn])
    if not isinstance(attn, torch.Tensor) or attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
        raise ValueError(f"HeadView expects attention (L, H, T, T) or a list of (H, T, T) per layer, got {shape}")
    return attn.detach().float().cpu()


class HeadView(Explorer):
    """Attention of every layer and head over one sequence of bytes, one query at a time.

    Args:
        attn: ``(L, H, T, T)``, or the model's list of ``(1, H, T, T)`` per layer.
        tokens: ``T`` labels (see :func:`byte_labels`), or the byte ids themselves.
        layer, head, query: where to start (``query`` defaults to the last position).
    """

    title = "Head view: pick a layer, a head and a query byte"

    def __init__(self, attn, tokens, layer: int = 0, head: int = 0, query: int | None = None):
        import ipywidgets as w
        self.attn = _stack(attn)
        L, H, T, _ = self.attn.shape
        if isinstance(tokens, torch.Tensor) or (len(tokens) and not isinstance(tokens[0], str)):
            tokens = byte_labels(tokens)
        if len(tokens) != T:
            raise ValueError(f"HeadView: {len(tokens)} labels for attention over T = {T} positions "
                             f"(attention shape {tuple(self.attn.shape)})")
        self.tokens = list(tokens)
        self.layout = self._layout(self.tokens)
        self.buttons = None  # the clickable bytes, built when a front end shows them
        self.controls = {
            "layer": w.Dropdown(options=[(f"layer {l}", l) for l in range(L)], value=layer, description="layer"),
            "head": w.IntSlider(value=head, min=0, max=H - 1, description="head"),
            "query": w.IntSlider(value=T - 1 if query is None else query, min=0, max=T - 1, description="query byte"),
        }
        self._wire()

    @staticmethod
    def _layout(tokens) -> list[tuple[int, int]]:
        """``(line, column)`` of every position; a newline ends its line."""
        where, line, col = [], 0, 0
        for t in tokens:
            where.append((line, col))
            line, col = (line + 1, 0) if t == "\n" else (line, col + 1)
        return where

    def compute(self) -> None:
        layer, head, q = (self.controls[k].value for k in ("layer", "head", "query"))
        weights = self.attn[layer, head]  # (T, T)
        row = weights[q]  # (T,) the query's weights over keys
        top = torch.topk(row, min(3, len(row)))
        self.state = {
            "weights": weights, "row": row, "query": q,
            "top": [(int(j), float(v)) for v, j in zip(top.values, top.indices)],
            "mean_distance": float((row * (q - torch.arange(len(row))).abs()).sum()),
        }
        if self.buttons is not None:
            self._paint()

    # -- the clickable text (live front ends only) --------------------------------------------
    def _tooltip(self, j: int) -> str:
        row = self.state["weights"][j]
        top = torch.topk(row, min(3, len(row)))
        looks = ", ".join(f"{_SHOWN.get(self.tokens[int(k)], self.tokens[int(k)])}@{int(k)} {float(v):.2f}"
                          for v, k in zip(top.values, top.indices))
        return f"byte {j} {_SHOWN.get(self.tokens[j], self.tokens[j])!r} attends to: {looks}"

    def _paint(self) -> None:
        """Colour every byte by the query's weight on it; the query itself is outlined in red."""
        import matplotlib.colors as mc
        import matplotlib.pyplot as plt
        row, q = self.state["row"], self.state["query"]
        levels = (8 * row / (float(row.max()) or 1.0)).round().int().tolist()  # 9 shades: unchanged ones send nothing
        cmap = plt.get_cmap("Blues")
        for j, button in enumerate(self.buttons):
            button.style.button_color = mc.to_hex(cmap(0.05 + 0.9 * levels[j] / 8))
            button.layout.border = "2px solid red" if j == q else "1px solid #eee"
            button.tooltip = self._tooltip(j)  # changes with the layer and head only

    def byte_panel(self):
        """The source as one button per byte, lines as rows; clicking a byte makes it the query."""
        import ipywidgets as w
        if self.buttons is None:
            self.buttons = []
            for j, t in enumerate(self.tokens):
                b = w.Button(description=_SHOWN.get(t, t), layout=w.Layout(width="16px", height="22px",
                                                                            padding="0px", margin="0px"))
                b.on_click(lambda _b, j=j: setattr(self.controls["query"], "value", j))
                self.buttons.append(b)
            self._paint()
        rows, current = [], []
        for j, (line, _) in enumerate(self.layout):
            current.append(self.buttons[j])
            if self.tokens[j] == "\n" or j == len(self.tokens) - 1:
                rows.append(w.HBox(current, layout=w.Layout(flex_flow="row wrap")))
                current = []
        return w.VBox(rows)

    def show(self):
        from .widgets import has_frontend
        if has_frontend():
            import ipywidgets as w
            self.widget = w.VBox([w.HTML(f"<b>{self.title}</b> (click a byte to make it the query; hover to see "
                                         "where it looks)"), w.HBox(list(self.controls.values())),
                                  self.byte_panel(), self.output])
        return super().show()

    # -- the picture ----------------------------------------------------------------------------
    def draw(self):
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        s = self.state
        layer, head, q = self.controls["layer"].value, self.controls["head"].value, s["query"]
        n_lines = self.layout[-1][0] + 1
        n_cols = max(c for _, c in self.layout) + 1
        cell_w, cell_h, side, pad = 0.13, 0.2, 3.0, 0.5  # inches: one byte, the map, the margins
        text_w, text_h = n_cols * cell_w, n_lines * cell_h
        live = self.buttons is not None  # the clickable bytes above already show the text: plot the row instead
        if live:
            text_w, text_h = 0.0, 0.0
        width, height = text_w + side + 3 * pad + (4.0 if live else 0.0), max(text_h, side) + 2.6 * pad
        top = height - 1.4 * pad  # the first row of bytes and the map start here; the caption above
        fig = plt.figure(figsize=(width, height))
        ax_text = fig.add_axes([pad / width, (top - text_h) / height, text_w / width, text_h / height])
        ax_map = fig.add_axes([(text_w + 2.2 * pad) / width, (top - side) / height, side / width, side / height])
        cmap = plt.get_cmap("Blues")
        scale = float(s["row"].max()) or 1.0
        for j, (line, col) in enumerate(self.layout if text_w else []):
            weight = float(s["row"][j]) / scale
            ax_text.add_patch(Rectangle((col, line), 1, 1, facecolor=cmap(0.05 + 0.9 * weight),
                                        edgecolor="red" if j == q else "none", lw=1.5))
            ax_text.text(col + 0.5, line + 0.55, _SHOWN.get(self.tokens[j], self.tokens[j]), ha="center",
                         va="center", family="monospace", fontsize=7,
                         color="white" if weight > 0.6 else ("gray" if self.tokens[j] in _SHOWN else "black"))
        ax_text.set(xlim=(0, n_cols), ylim=(n_lines, 0), xticks=[], yticks=[])
        ax_text.set_visible(bool(text_w))
        for spine in ax_text.spines.values():
            spine.set_visible(False)
        shown = _SHOWN.get(self.tokens[q], self.tokens[q])
        strongest = ", ".join(f"{_SHOWN.get(self.tokens[j], self.tokens[j])!r}@{j} ({v:.2f})" for j, v in s["top"])
        fig.text(pad / width, 1 - 0.45 * pad / height, f"layer {layer}, head {head}: byte {q} {shown!r} attends to "
                 f"{strongest}", fontsize=9, va="top")
        ax_map.imshow(s["weights"].numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax_map.axhline(q, color="red", lw=0.8)
        ax_map.set(xlabel="key position", ylabel="query position", title="the whole map (red: the query)")
        ax_map.title.set_fontsize(8)
        if live:
            ax_row = fig.add_axes([(side + 3.6 * pad) / width, (top - side) / height, 3.6 / width, side / height])
            ax_row.bar(range(len(s["row"])), s["row"].numpy(), width=1.0, color="tab:blue")
            ax_row.axvline(q, color="red", lw=0.8)
            ax_row.set(xlabel="key position", ylabel="weight", title=f"the query's row (byte {q})")
            ax_row.title.set_fontsize(8)
        return fig
