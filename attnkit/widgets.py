"""Interactive explorers for the notebooks, on ipywidgets 7 (Colab today) and 8.

Each explorer is a small class: ``controls`` (the sliders and dropdowns), ``state`` (the
numbers the picture is drawn from, recomputed on every change, so tests can check a
callback from Python), ``draw()`` (a matplotlib figure for the current state) and
``show()``. Where a widget front end exists (JupyterLab, Notebook 7, Colab, VS Code),
``show()`` displays the live widget; elsewhere (nbconvert, nbclient in CI, the grader) it
displays the figure for the starting values, so every notebook still has its picture.
Set ``ATTNKIT_WIDGETS=1`` or ``=0`` to force either.

Only widgets and layout options present in both ipywidgets 7.7 and 8 are used.
"""

from __future__ import annotations

import math
import os
import sys

import torch

from . import viz
from .masks import causal_mask, padding_mask
from .softmax import softmax


def has_frontend() -> bool:
    """Best guess whether widgets will render where this code runs."""
    forced = os.environ.get("ATTNKIT_WIDGETS")
    if forced in ("0", "1"):
        return forced == "1"
    if "google.colab" in sys.modules:
        return True
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        return False
    if shell is None or not hasattr(shell, "kernel"):
        return False
    # jupyter_server tells the kernels it starts which notebook they serve; VS Code sets its own.
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID")
                or os.environ.get("VSCODE_IPC_HOOK_CLI"))


class Explorer:
    """Base class: subclasses set ``self.controls`` then call ``self._wire()``; implement
    ``compute()`` (fills ``self.state``) and ``draw()`` (returns a figure)."""

    title = ""

    def _wire(self) -> None:
        import ipywidgets as w
        self.output = w.Output()
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        self.widget = w.VBox([w.HTML(f"<b>{self.title}</b>"), w.HBox(list(self.controls.values())), self.output])
        self.updates = 0
        self.compute()

    def values(self) -> dict:
        return {name: c.value for name, c in self.controls.items()}

    def _changed(self, _change=None) -> None:
        self.compute()
        self.updates += 1
        if getattr(self, "_live", False):
            self._render()

    def _render(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import clear_output, display
        with self.output:
            clear_output(wait=True)
            fig = self.draw()
            display(fig)
            plt.close(fig)

    def show(self):
        """Display the live widget, or the static figure where widgets cannot render."""
        from IPython.display import display
        if has_frontend():
            self._live = True
            self._render()
            display(self.widget)
        else:
            import matplotlib.pyplot as plt
            fig = self.draw()
            display(fig)
            plt.close(fig)
        return self

    def compute(self) -> None:
        raise NotImplementedError

    def draw(self):
        raise NotImplementedError


def _figure(width=6.0, height=3.2, ncols=1):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(width, height))
    return fig, axes


class SimilarityExplorer(Explorer):
    """Turn and stretch a 2-D query; compare its dot products and cosines with fixed keys."""

    title = "Rotate and stretch the query"

    def __init__(self, keys: torch.Tensor | None = None, labels=None):
        import ipywidgets as w
        self.keys = keys if keys is not None else torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.4], [2.0, 2.0]])
        self.labels = labels or [f"k{i}" for i in range(len(self.keys))]
        self.controls = {
            "angle": w.FloatSlider(value=30.0, min=-180.0, max=180.0, step=5.0, description="angle (deg)"),
            "length": w.FloatSlider(value=1.0, min=0.1, max=3.0, step=0.1, description="length"),
        }
        self._wire()

    def compute(self) -> None:
        a = math.radians(self.controls["angle"].value)
        q = self.controls["length"].value * torch.tensor([math.cos(a), math.sin(a)])
        dots = self.keys @ q
        cos = dots / (self.keys.norm(dim=1) * q.norm())
        self.state = {"query": q, "dot": dots, "cosine": cos}

    def draw(self):
        fig, (ax0, ax1) = _figure(9.0, 3.6, ncols=2)
        q = self.state["query"]
        for k, name in zip(self.keys, self.labels):
            ax0.arrow(0, 0, float(k[0]), float(k[1]), head_width=0.06, color="tab:blue", length_includes_head=True)
            ax0.annotate(name, (float(k[0]), float(k[1])))
        ax0.arrow(0, 0, float(q[0]), float(q[1]), head_width=0.08, color="tab:red", length_includes_head=True)
        ax0.annotate("q", (float(q[0]), float(q[1])), color="tab:red")
        ax0.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title="query (red) and keys")
        x = list(range(len(self.keys)))
        ax1.bar([i - 0.2 for i in x], self.state["dot"].tolist(), width=0.4, label="dot product")
        ax1.bar([i + 0.2 for i in x], self.state["cosine"].tolist(), width=0.4, label="cosine")
        ax1.set_xticks(x, labels=self.labels)
        ax1.axhline(0, color="black", lw=0.5)
        ax1.legend()
        ax1.set_title("scores")
        fig.tight_layout()
        return fig


class TemperatureExplorer(Explorer):
    """softmax(logits / T) as a bar chart, with its entropy, as the temperature moves."""

    title = "Softmax under temperature"

    def __init__(self, logits: torch.Tensor | None = None, labels=None):
        import ipywidgets as w
        self.logits = logits if logits is not None else torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])
        self.labels = labels or [str(i) for i in range(len(self.logits))]
        self.controls = {"temperature": w.FloatSlider(value=1.0, min=0.05, max=5.0, step=0.05,
                                                      description="temperature")}
        self._wire()

    def compute(self) -> None:
        t = self.controls["temperature"].value
        p = softmax(self.logits / t)
        entropy = float(-(p * p.clamp_min(1e-30).log()).sum())
        self.state = {"probs": p, "entropy": entropy, "max_entropy": math.log(len(p))}

    def draw(self):
        fig, ax = _figure()
        ax.bar(self.labels, self.state["probs"].tolist())
        ax.set(ylim=(0, 1), ylabel="probability",
               title=f"T = {self.controls['temperature'].value:.2f}, entropy {self.state['entropy']:.2f} "
                     f"of at most {self.state['max_entropy']:.2f} nats")
        fig.tight_layout()
        return fig


class MaskBuilder(Explorer):
    """Build causal, padding and combined masks and see which keys each query may use."""

    title = "Mask builder"

    def __init__(self, n: int = 8):
        import ipywidgets as w
        self.n = n
        self.controls = {
            "kind": w.Dropdown(options=["causal", "padding", "causal & padding"], value="causal & padding",
                               description="mask"),
            "length": w.IntSlider(value=n - 2, min=0, max=n, description="real tokens"),
            "queries": w.IntSlider(value=n, min=1, max=n, description="queries"),
        }
        self._wire()

    def compute(self) -> None:
        kind, length, n_q = self.controls["kind"].value, self.controls["length"].value, self.controls["queries"].value
        mask = torch.ones(n_q, self.n, dtype=torch.bool)
        if "causal" in kind:
            mask &= causal_mask(n_q, self.n)
        if "padding" in kind:
            mask &= padding_mask(torch.tensor([length]), self.n)[0]
        self.state = {"mask": mask, "fully_masked_rows": [i for i in range(n_q) if not mask[i].any()]}

    def draw(self):
        fig, ax = _figure(5.0, 4.2)
        viz.heatmap(self.state["mask"].float(), ax=ax, cmap="Greens", annotate=False, vmin=0, vmax=1,
                    title=f"{self.controls['kind'].value}: green = may attend")
        for i in self.state["fully_masked_rows"]:
            ax.text(self.n - 0.5, i, " fully masked", va="center", color="tab:red", fontsize=8)
        fig.tight_layout()
        return fig


class HeadSelector(Explorer):
    """Attention weights ``(H, Nq, Nk)``: pick a head, see its map."""

    title = "Attention map per head"

    def __init__(self, weights: torch.Tensor, tokens=None):
        import ipywidgets as w
        if weights.ndim != 3:
            raise ValueError(f"HeadSelector expects weights (H, Nq, Nk), got shape {tuple(weights.shape)}")
        self.weights = weights.detach().cpu()
        self.tokens = tokens
        self.controls = {"head": w.IntSlider(value=0, min=0, max=self.weights.shape[0] - 1, description="head")}
        self._wire()

    def compute(self) -> None:
        h = self.controls["head"].value
        w_h = self.weights[h]
        self.state = {"weights": w_h, "mean_distance": float((w_h * (torch.arange(w_h.shape[0])[:, None]
                                                                      - torch.arange(w_h.shape[1])[None]).abs()).sum(1).mean())}

    def draw(self):
        fig, ax = _figure(5.5, 4.5)
        viz.heatmap(self.state["weights"], ax=ax, row_labels=self.tokens, col_labels=self.tokens, vmin=0, vmax=1,
                    annotate=False, title=f"head {self.controls['head'].value}: mean attended distance "
                                          f"{self.state['mean_distance']:.1f}")
        fig.tight_layout()
        return fig


class QueryExplorer(Explorer):
    """Attention as a soft lookup: move a 1-D query and a sharpness knob, watch the weights
    over keys and the output (a weighted average of values) follow."""

    title = "Attention as a soft dictionary lookup"

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None):
        import ipywidgets as w
        self.keys = keys if keys is not None else torch.linspace(-3, 3, 13)
        self.values = values if values is not None else torch.sin(self.keys) + 0.1 * self.keys
        self.controls = {
            "query": w.FloatSlider(value=0.5, min=-3.0, max=3.0, step=0.1, description="query"),
            "sharpness": w.FloatSlider(value=2.0, min=0.1, max=20.0, step=0.1, description="sharpness"),
        }
        self._wire()

    def compute(self) -> None:
        q, s = self.controls["query"].value, self.controls["sharpness"].value
        scores = -s * (self.keys - q) ** 2  # a Gaussian kernel: similarity falls with distance
        weights = softmax(scores)
        self.state = {"weights": weights, "output": float(weights @ self.values)}

    def draw(self):
        fig, ax = _figure(7.0, 3.4)
        ax.plot(self.keys.tolist(), self.values.tolist(), "o-", color="tab:blue", label="(key, value) pairs")
        ax.bar(self.keys.tolist(), (self.state["weights"] * 2).tolist(), width=0.3, alpha=0.4, color="tab:orange",
               label="attention weight (x2)")
        ax.plot([self.controls["query"].value], [self.state["output"]], "*", ms=15, color="tab:red",
                label="output = weighted average")
        ax.set(xlabel="key", ylabel="value")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        return fig


class RopeExplorer(Explorer):
    """RoPE on one feature pair: a query at position m and a key at position n, each turned
    by its position times the pair's frequency; their dot product depends on n - m only."""

    title = "Rotary position embedding, one feature pair"

    def __init__(self, q=(1.0, 0.3), k=(0.8, -0.5), theta: float = 10000.0, d: int = 8):
        import ipywidgets as w
        self.q, self.k = torch.tensor(q), torch.tensor(k)
        self.theta, self.d = theta, d
        self.controls = {
            "m": w.IntSlider(value=2, min=0, max=40, description="query pos m"),
            "n": w.IntSlider(value=5, min=0, max=40, description="key pos n"),
            "pair": w.IntSlider(value=0, min=0, max=d // 2 - 1, description="pair i"),
        }
        self._wire()

    @staticmethod
    def _rotate(v, angle):
        c, s = math.cos(angle), math.sin(angle)
        return torch.tensor([c * v[0] - s * v[1], s * v[0] + c * v[1]])

    def compute(self) -> None:
        m, n, i = (self.controls[k].value for k in ("m", "n", "pair"))
        freq = self.theta ** (-2 * i / self.d)
        qm, kn = self._rotate(self.q, m * freq), self._rotate(self.k, n * freq)
        self.state = {"q_rotated": qm, "k_rotated": kn, "score": float(qm @ kn),
                      "score_at_offset_only": float(self.q @ self._rotate(self.k, (n - m) * freq))}

    def draw(self):
        from matplotlib.patches import Circle

        fig, ax = _figure(4.6, 4.4)
        for vec, color, label in ((self.state["q_rotated"], "tab:red", "q at m"),
                                  (self.state["k_rotated"], "tab:blue", "k at n")):
            ax.arrow(0, 0, float(vec[0]), float(vec[1]), head_width=0.05, color=color, length_includes_head=True)
            ax.annotate(label, (float(vec[0]), float(vec[1])), color=color)
        ax.add_patch(Circle((0, 0), 1.0, fill=False, ls=":", color="gray"))
        ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal",
               title=f"score {self.state['score']:.3f}  (n - m = {self.controls['n'].value - self.controls['m'].value})")
        fig.tight_layout()
        return fig


class CurveExplorer(Explorer):
    """Pick one of several precomputed curves (e.g. loss per position under different caches)."""

    title = "Compare"

    def __init__(self, curves: dict, xlabel: str = "", ylabel: str = "", title: str = ""):
        import ipywidgets as w
        if not curves:
            raise ValueError("CurveExplorer needs at least one curve")
        self.curves = {name: (list(map(float, x)), list(map(float, y))) for name, (x, y) in curves.items()}
        self.xlabel, self.ylabel, self.title = xlabel, ylabel, title or self.title
        names = list(self.curves)
        self.controls = {"curve": w.Dropdown(options=names, value=names[0], description="show")}
        self._wire()

    def compute(self) -> None:
        x, y = self.curves[self.controls["curve"].value]
        self.state = {"x": x, "y": y, "mean": sum(y) / len(y)}

    def draw(self):
        fig, ax = _figure(7.0, 3.4)
        for name, (x, y) in self.curves.items():
            ax.plot(x, y, color="lightgray", lw=1)
        ax.plot(self.state["x"], self.state["y"], lw=2, label=f"{self.controls['curve'].value} (mean {self.state['mean']:.3f})")
        ax.set(xlabel=self.xlabel, ylabel=self.ylabel, title=self.title)
        ax.legend()
        fig.tight_layout()
        return fig


class OnlineSoftmaxStepper(Explorer):
    """Step through a row block by block: the running max ``m``, the running sum ``l`` and the
    rescale factor ``exp(m_old - m_new)`` applied to the sum whenever the max grows."""

    title = "Online softmax, one block at a time"

    def __init__(self, x: torch.Tensor | None = None, block_size: int = 3, step: int = 2):
        import ipywidgets as w
        if x is None:
            x = torch.tensor([0.5, 1.0, -0.3, 0.2, 2.5, 0.1, -1.0, 3.1, 0.4, 1.2, -0.5, 0.8])
        if not isinstance(x, torch.Tensor) or x.ndim != 1 or len(x) < 2:
            raise ValueError(f"OnlineSoftmaxStepper needs a 1-D tensor with at least 2 entries, got {x!r}")
        self.x = x.detach().double()
        sizes = [b for b in (1, 2, 3, 4, 6) if b < len(self.x)] or [1]
        block_size = block_size if block_size in sizes else sizes[-1]
        self.controls = {
            "block_size": w.Dropdown(options=sizes, value=block_size, description="block size"),
            "step": w.IntSlider(value=0, min=0, max=self._n_blocks(block_size), description="blocks seen"),
        }
        self.controls["step"].value = min(step, self.controls["step"].max)
        self._wire()

    def _n_blocks(self, block_size):
        return -(-len(self.x) // block_size)

    def compute(self) -> None:
        b = self.controls["block_size"].value
        slider = self.controls["step"]
        if slider.max != self._n_blocks(b):  # a new block size: re-range the slider
            slider.max = self._n_blocks(b)
        t = min(slider.value, slider.max)
        m, l, history = float("-inf"), 0.0, []
        for i in range(t):
            block = self.x[i * b:(i + 1) * b]
            m_new = max(m, float(block.max()))
            alpha = math.exp(m - m_new) if m != float("-inf") else 0.0
            l = l * alpha + float(torch.exp(block - m_new).sum())
            history.append({"m": m_new, "l": l, "alpha": alpha, "max_moved": m_new > m})
            m = m_new
        seen = min(t * b, len(self.x))
        partial = torch.exp(self.x[:seen] - m) / l if seen else self.x[:0]
        self.state = {"block_size": b, "step": t, "seen": seen, "m": m, "l": l, "history": history,
                      "partial": partial, "final": softmax(self.x), "done": seen == len(self.x)}

    def draw(self):
        s = self.state
        fig, (ax1, ax2) = _figure(9.0, 3.2, ncols=2)
        n, b = len(self.x), s["block_size"]
        colors = ["tab:blue" if j < s["seen"] - b or s["step"] == 0 else "tab:orange" for j in range(n)]
        colors = [c if j < s["seen"] else "lightgray" for j, c in enumerate(colors)]
        ax1.bar(range(n), self.x.tolist(), color=colors)
        if s["step"]:
            ax1.axhline(s["m"], color="tab:red", ls="--", lw=1, label=f"running max m = {s['m']:.2f}")
            last = s["history"][-1]
            note = (f"l = {last['l']:.3f}; the max moved, so the old sum was x{last['alpha']:.3f}"
                    if last["max_moved"] and s["step"] > 1 else f"l = {last['l']:.3f}")
            ax1.set_title(note, fontsize=9)
            ax1.legend(fontsize=8, loc="lower left")
        for edge in range(b, n, b):
            ax1.axvline(edge - 0.5, color="k", lw=0.5, alpha=0.3)
        ax1.set(xlabel="position (orange: the block just read)", ylabel="x")
        ax2.bar(range(n), s["final"].tolist(), color="lightgray", label="softmax of the whole row")
        if s["seen"]:
            ax2.bar(range(s["seen"]), s["partial"].tolist(), width=0.5, color="tab:blue",
                    label="exp(x - m) / l so far")
        ax2.set(xlabel="position", ylabel="probability",
                title="final" if s["done"] else f"{s['seen']} of {n} read: the seen part over-weighted", )
        ax2.title.set_fontsize(9)
        ax2.legend(fontsize=8)
        fig.suptitle(self.title, fontsize=10)
        fig.tight_layout()
        return fig


class TileExplorer(Explorer):
    """Which Triton program covers which part of an ``(M, N)`` matrix in a row softmax: rows
    in blocks of ``BLOCK_M`` (one program each), columns in blocks of ``BLOCK_N`` (one step of
    the program's loop), and the masked lanes past the edges."""

    title = "Programs and tiles of a row softmax"

    def __init__(self, M: int = 10, N: int = 27, block_m: int = 4, block_n: int = 16):
        import ipywidgets as w
        self.controls = {
            "M": w.IntSlider(value=M, min=1, max=32, description="rows M"),
            "N": w.IntSlider(value=N, min=1, max=64, description="columns N"),
            "block_m": w.Dropdown(options=[1, 2, 4, 8, 16], value=block_m, description="BLOCK_M"),
            "block_n": w.Dropdown(options=[4, 8, 16, 32, 64], value=block_n, description="BLOCK_N"),
        }
        self._wire()

    def compute(self) -> None:
        M, N = self.controls["M"].value, self.controls["N"].value
        bm, bn = self.controls["block_m"].value, self.controls["block_n"].value
        programs, steps = -(-M // bm), -(-N // bn)  # grid size; loop steps per program
        r = torch.arange(programs * bm)[:, None]  # (rows covered, 1)
        c = torch.arange(steps * bn)[None, :]  # (1, columns covered)
        valid = (r < M) & (c < N)  # (rows covered, columns covered): the load/store mask
        self.state = {"programs": programs, "steps": steps, "one_pass": steps == 1,
                      "owner": (r // bm).expand_as(valid), "step": (c // bn).expand_as(valid), "valid": valid,
                      "masked_fraction": 1 - M * N / valid.numel(),
                      "reads_of_x": 1 if steps == 1 else 2}

    def draw(self):
        import matplotlib.pyplot as plt

        s = self.state
        rows, cols = s["valid"].shape
        fig, ax = _figure(7.5, 3.8)
        colours = plt.get_cmap("tab10")(s["owner"].remainder(10).numpy())  # (rows, cols, 4) one colour per program
        colours[..., :3] = colours[..., :3] * (0.75 + 0.25 * (s["step"].numpy()[..., None] % 2))  # alternate steps
        colours[~s["valid"].numpy()] = (0.93, 0.93, 0.93, 1.0)  # masked lanes: loaded as -inf, never stored
        ax.imshow(colours, aspect="auto", interpolation="nearest", extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
        M, N = self.controls["M"].value, self.controls["N"].value
        bm, bn = self.controls["block_m"].value, self.controls["block_n"].value
        for edge in range(bn, cols, bn):
            ax.axvline(edge - 0.5, color="k", lw=1, ls="--")
        for edge in range(bm, rows, bm):
            ax.axhline(edge - 0.5, color="k", lw=1.5)
        ax.plot([-0.5, N - 0.5, N - 0.5, -0.5, -0.5], [-0.5, -0.5, M - 0.5, M - 0.5, -0.5], color="tab:red", lw=2)
        for p in range(s["programs"]):
            ax.text(0, min(p * bm + (bm - 1) / 2, M - 1), f"pid {p}", ha="left", va="center", fontsize=8,
                    color="white", fontweight="bold")
        passes = "one pass: x read once" if s["one_pass"] else f"{s['steps']} steps per program: x read twice"
        ax.set(xlabel="column (dashed: one BLOCK_N step of the loop)", ylabel="row",
               title=f"grid = {s['programs']} programs; {passes}; {s['masked_fraction']:.0%} of lanes masked (grey)")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        return fig


class RingExplorer(Explorer):
    """Ring attention step by step: the key/value block every rank holds at each step, the
    query-key pairs scored so far (coloured by the rank that scores them), and the work each
    rank does at this step (the slowest rank sets the pace of the step)."""

    title = "Ring attention, step by step"

    def __init__(self, world_size: int = 4, n: int = 16):
        import ipywidgets as w
        from .distributed import ring
        ring.segments(n, world_size, "zigzag")  # a clear error if n is too short for either layout
        self.world_size, self.n = world_size, n
        self.controls = {
            "step": w.IntSlider(value=0, min=0, max=world_size - 1, description="step"),
            "layout": w.Dropdown(options=list(ring.LAYOUTS), value="contiguous", description="layout"),
            "causal": w.Checkbox(value=True, description="causal"),
        }
        self._wire()

    def compute(self) -> None:
        from .distributed import ring
        step, layout, causal = (self.controls[k].value for k in ("step", "layout", "causal"))
        W, n = self.world_size, self.n
        owner = torch.empty(n, dtype=torch.int64)  # (N,) the rank holding each position
        for rank, held in enumerate(ring.positions(n, W, layout)):
            owner[held] = rank
        meet = (owner.unsqueeze(1) - owner.unsqueeze(0)) % W  # (N, N): step at which query i meets key j
        allowed = causal_mask(n, n) if causal else torch.ones(n, n, dtype=torch.bool)
        work = ring.ring_work(n, W, layout, causal)  # (steps, ranks)
        self.state = {
            "holds": ring.ring_schedule(W)[step].tolist(),  # KV block held by each rank now
            "owner": owner, "allowed": allowed, "done": (meet <= step) & allowed, "now": (meet == step) & allowed,
            "work": work[step],
            # share of rank-steps spent computing when every step lasts as long as its slowest rank
            "utilisation": float(work.sum() / (W * work.max(1).values.sum())),
        }

    def draw(self):
        import matplotlib.pyplot as plt
        from matplotlib.colors import to_rgba

        from .distributed import ring
        s, W, n = self.state, self.world_size, self.n
        step = self.controls["step"].value
        colors = [plt.get_cmap("tab10")(r % 10) for r in range(W)]
        fig, (ax0, ax1, ax2) = _figure(12.0, 3.9, ncols=3)
        sched = ring.ring_schedule(W)  # (steps, ranks)
        grid = torch.ones(W, W, 4)
        for t in range(W):
            for r in range(W):
                grid[t, r] = torch.tensor(to_rgba(colors[int(sched[t, r])], 1.0 if t == step else 0.25))
                ax0.text(r, t, f"KV {int(sched[t, r])}", ha="center", va="center", fontsize=8)
        ax0.imshow(grid.numpy())
        ax0.set(xticks=range(W), yticks=range(W), xlabel="rank", ylabel="step",
                title="key/value block each rank holds (colour: its home rank)")
        image = torch.tensor(to_rgba("lightgray")).repeat(n, n, 1)  # (N, N, 4): allowed, not scored yet
        image[~s["allowed"]] = torch.tensor(to_rgba("white"))  # masked out: never scored
        for i, j in s["done"].nonzero().tolist():
            image[i, j] = torch.tensor(to_rgba(colors[int(s["owner"][i])], 1.0 if s["now"][i, j] else 0.35))
        ax1.imshow(image.numpy())
        ticks = range(0, n, max(1, n // 8))
        ax1.set(xticks=ticks, yticks=ticks, xlabel="key position", ylabel="query position",
                title=f"pairs scored by step {step}, coloured by rank (bright: this step)")
        ax2.bar([f"rank {r}\nholds KV {b}" for r, b in enumerate(s["holds"])], s["work"].tolist(), color=colors)
        ax2.axhline(float(s["work"].max()), color="black", ls=":", lw=1)
        ax2.set(ylabel="query-key pairs scored",
                title=f"work at step {step}; utilisation over all steps {s['utilisation']:.0%}")
        for ax in (ax0, ax1, ax2):
            ax.title.set_fontsize(9)
        fig.tight_layout()
        return fig

