"""The checker of notebook 07's training loop, ``train_model``.

A training loop is judged by what it does to a model. The checker gives the learner's loop a
small model of its own, :class:`Probe` (an :class:`attnkit.GPT` in float64 with two extras: a
fixed, dropout-like mask on the logits that is on in training mode only, and in one case
gradients multiplied by 1000), runs the loop the specification describes on an identical copy,
and compares

* what the loop returns: one loss and one learning rate per update, the held-out losses at
  the right steps (the first update's learning rate shows the warm-up);
* the weights after the last update (float64: two correct loops agree to ~1e-12; the huge
  gradients show whether the gradient norm is clipped, Adam's moments remember an unclipped one);
* what the model saw, recorded by the probe where it runs: training mode with gradients for every
  update, eval mode without gradients for every held-out batch, training mode again at the end;
* that the held-out loss falls within a small budget on a fixed seed.

When the weights differ, the usual slips are replayed (no warm-up, warm-up from 0, the schedule a
step late, no clipping, clipping each value, Adam's L2 penalty, default betas or weight decay,
no ``zero_grad``, eval mode left on after evaluating ...) and the one that matches is named.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import train as train_module
from ..data import repeated_sequences
from ..gpt import GPT
from ..model import DecoderConfig
from .._remote import there
from ._harness import Ban, Checker, gen

CFG = DecoderConfig(vocab_size=7, d_model=16, n_heads=2, n_layers=1, max_len=12, positions="rope")
BETAS = (0.9, 0.95)


class _ScaleGrad(torch.autograd.Function):
    """The identity forward; the gradient multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class Probe(nn.Module):
    """The checker's model: tokens ``(B, N)`` -> logits ``(B, N, vocab)``, float64.

    In training mode the logits are multiplied by a fixed mask (zeros and 1/0.75, like dropout
    but the same every time, so two runs can be compared); ``grad_scale`` multiplies every
    gradient. ``seen`` records, for every forward pass, ``[training, grad enabled, held-out batch]``.
    """

    def __init__(self, cfg: DecoderConfig, state: dict, held_out: torch.Tensor, grad_scale: float = 1.0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.gpt = GPT(cfg).double()
        self.gpt.load_state_dict(state)
        keep = (torch.rand(cfg.max_len, cfg.vocab_size, generator=gen(5), dtype=torch.float64) > 0.25) / 0.75
        self.register_buffer("keep", keep.double(), persistent=False)
        self.held_out = held_out.clone()
        self.grad_scale = float(grad_scale)
        self.seen: list[list[bool]] = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[-1]
        held = (tokens.ndim == 2 and len(tokens) > 0 and n <= self.held_out.shape[1]  # every row a held-out one
                and bool((self.held_out[None, :, :n] == tokens[:, None]).all(-1).any(-1).all()))
        self.seen.append([bool(self.training), bool(torch.is_grad_enabled()), held])
        logits = self.gpt(tokens)  # (B, N, vocab)
        if self.training:
            logits = logits * self.keep[:n]
        if self.grad_scale != 1.0:
            logits = _ScaleGrad.apply(logits, self.grad_scale)
        return logits


# ---------------------------------------------------------------------------- run where the model lives


def _make_probe(_fn, cfg, state, held_out, grad_scale):
    """Runs where the learner's function lives: a Probe there (the examiner gets a handle on it)."""
    return Probe(cfg, state, held_out, grad_scale)


def _probe_report(model) -> dict:
    """Runs where the probe lives: its weights, what it saw, its mode."""
    return {"state": {name: p.detach().clone() for name, p in model.gpt.named_parameters()},
            "seen": [list(s) for s in model.seen], "training": bool(model.training)}


# ---------------------------------------------------------------------------- the reference loop and its slips


def _schedule(step, *, lr, warmup, steps, slip=None):
    if slip == "late":
        step = step + 1
    if slip == "no_warmup":
        warmup = 0
    if step < warmup:
        return lr * step / warmup if slip == "warmup_from_zero" else lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if slip == "constant":
        return lr
    if slip == "linear":
        return lr * (1 - progress)
    low = 0.0 if slip == "to_zero" else 0.1 * lr
    return low + 0.5 * (lr - low) * (1 + math.cos(math.pi * progress))


def _loss(model, tokens, slip=None):
    if slip == "no_shift":
        logits, targets = model(tokens), tokens  # (B, N, vocab): each token "predicts" itself
    else:
        logits, targets = model(tokens[:, :-1]), tokens[:, 1:]  # (B, N-1, vocab), (B, N-1)
    reduction = "sum" if slip == "sum_loss" else "mean"
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def _evaluate(model, tokens, slip=None):
    if slip != "eval_in_train_mode":
        model.eval()
    with torch.no_grad():
        loss = _loss(model, tokens, slip).item()
    if slip != "stays_eval":
        model.train()
    return loss


def _loop(model, batches, eval_tokens, *, steps, lr, warmup, weight_decay, clip, eval_every, slip=None) -> dict:
    """The specification's loop; ``slip`` replays one usual mistake."""
    params = list(model.parameters())
    if slip == "adam_l2":
        opt = torch.optim.Adam(params, lr=lr, betas=BETAS, weight_decay=weight_decay)
    else:
        wd = {"default_weight_decay": 0.01, "no_weight_decay": 0.0}.get(slip, weight_decay)
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999) if slip == "default_betas" else BETAS,
                                weight_decay=wd)
    history = {"train_loss": [], "lr": [], "eval_loss": [(0, _evaluate(model, eval_tokens, slip))]}
    if slip != "stays_eval":
        model.train()
    for step in range(steps):
        rate = _schedule(step, lr=lr, warmup=warmup, steps=steps, slip=slip)
        for group in opt.param_groups:
            group["lr"] = rate
        loss = _loss(model, batches[step], slip)
        if slip != "no_zero_grad":
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if slip == "clip_value":
            nn.utils.clip_grad_value_(params, clip)
        elif slip != "no_clip":
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        history["train_loss"].append(loss.item())
        history["lr"].append(rate)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            history["eval_loss"].append((step + 1, _evaluate(model, eval_tokens, slip)))
    return history


_WARM = "the warm-up is missing: the first update's learning rate is lr / warmup, rising linearly to lr"
SLIPS = {
    "no_warmup": _WARM,
    "warmup_from_zero": ("the warm-up starts at 0, so the first update does nothing: update t < warmup uses "
                         "lr * (t + 1) / warmup"),
    "late": ("the schedule runs one update late (a scheduler stepped before the optimizer?): update t uses "
             "lr_at(t), the first one lr / warmup"),
    "constant": "the learning rate never decays after the warm-up: a cosine from lr down to lr / 10",
    "linear": "the decay is linear; the specification's is a cosine from lr down to lr / 10",
    "to_zero": "the cosine decays to 0; the specification's ends at a tenth of the peak, lr / 10",
    "no_clip": ("the gradients were not clipped when the optimizer stepped: clip the global norm after "
                "loss.backward() and before opt.step() (torch.nn.utils.clip_grad_norm_(model.parameters(), clip))"),
    "clip_value": ("each gradient value was clipped: clip the global norm of all the gradients together, "
                   "torch.nn.utils.clip_grad_norm_ (not clip_grad_value_)"),
    "adam_l2": ("torch.optim.Adam's weight_decay adds an L2 penalty to the gradient, which Adam then rescales: "
                "use torch.optim.AdamW, whose decay is decoupled (Loshchilov & Hutter 2019)"),
    "default_betas": "AdamW's betas are (0.9, 0.95) here (GPT-3's), not the default (0.9, 0.999)",
    "default_weight_decay": "pass weight_decay to AdamW: its default is 0.01",
    "no_weight_decay": "the weight decay is missing: AdamW(..., weight_decay=weight_decay)",
    "sum_loss": "the loss is summed over the tokens: take the mean, F.cross_entropy's default reduction",
    "no_shift": ("the model must predict the next token: logits = model(tokens[:, :-1]) against the targets "
                 "tokens[:, 1:], not model(tokens) against tokens"),
    "no_zero_grad": ("the gradients pile up from update to update: call opt.zero_grad() before every "
                     "loss.backward()"),
    "stays_eval": ("after evaluating, the model stayed in eval mode for the next updates: call model.train() "
                   "again when the evaluation is done"),
    "eval_in_train_mode": ("the held-out loss was measured in training mode (dropout on): call model.eval() "
                           "before evaluating"),
}
LR_SLIPS = ("no_warmup", "warmup_from_zero", "late", "constant", "linear", "to_zero")


# ---------------------------------------------------------------------------- the check


def _case_data(seed, steps, batch=8):
    g = gen(seed)
    n = CFG.max_len
    batches = repeated_sequences(steps * batch, n, CFG.vocab_size, period=(2, 4), generator=g, distinct=True)[0]
    eval_tokens = repeated_sequences(16, n, CFG.vocab_size, period=(2, 4), generator=g, distinct=True)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = {name: t.detach().clone() for name, t in GPT(CFG).double().state_dict().items()}
    return batches.view(steps, batch, n), eval_tokens, state


def _reference(state, eval_tokens, grad_scale, batches, settings, slip=None):
    model = Probe(CFG, state, eval_tokens, grad_scale)
    history = _loop(model, batches, eval_tokens, slip=slip, **settings)
    return history, {name: p.detach() for name, p in model.gpt.named_parameters()}


def _close_states(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        isinstance(a[k], torch.Tensor) and a[k].shape == b[k].shape
        and torch.allclose(a[k].double(), b[k].double(), rtol=1e-7, atol=1e-10) for k in b)


def _numbers(values, what, fail) -> list[float]:
    if not isinstance(values, (list, tuple)):
        fail(f'history["{what}"] must be a list of numbers, got {type(values).__name__}')
    out = []
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(f'history["{what}"] must hold plain numbers (loss.item()), found {type(v).__name__}')
        out.append(float(v))
    return out


def _eval_pairs(values, fail) -> list[tuple[int, float]]:
    if not isinstance(values, (list, tuple)):
        fail(f'history["eval_loss"] must be a list of (step, loss) pairs, got {type(values).__name__}')
    pairs = []
    for v in values:
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            fail('history["eval_loss"] must be a list of (updates done, held-out loss) pairs, found '
                 f'{type(v).__name__} {v!r}'[:300])
        step, loss = v
        step = int(step.item()) if isinstance(step, torch.Tensor) else step
        loss = loss.item() if isinstance(loss, torch.Tensor) and loss.numel() == 1 else loss
        if isinstance(step, bool) or not isinstance(step, int) or not isinstance(loss, (int, float)):
            fail(f'history["eval_loss"] pairs are (int step, float loss), found {v!r}'[:300])
        pairs.append((step, float(loss)))
    return pairs


def _seen_problem(seen, steps) -> str | None:
    if not isinstance(seen, list):
        return "the grader could not read what your loop did with the model"
    updates = [s for s in seen if isinstance(s, list) and len(s) == 3 and not s[2]]
    held = [s for s in seen if isinstance(s, list) and len(s) == 3 and s[2]]
    if any(training and grad for training, grad, _ in held):
        return ("your loop ran the model on the held-out tokens in training mode with gradients: evaluate under "
                "model.eval() and torch.no_grad(), and never train on them")
    if any(grad for _, grad, _ in held):
        return ("the held-out loss was computed with gradients on: wrap the evaluation in torch.no_grad() (it "
                "must not build a graph, and cannot then touch the weights)")
    if any(training for training, _, _ in held):
        return SLIPS["eval_in_train_mode"]
    if not held:
        return "the model never saw the held-out tokens: measure the held-out loss with model(eval_tokens[:, :-1])"
    if any(not training for training, _, _ in updates):
        return SLIPS["stays_eval"]
    if any(not grad for _, grad, _ in updates):
        return "an update ran without gradients: only the evaluation goes under torch.no_grad()"
    if len(updates) != steps:
        return (f"your loop ran the model on {len(updates)} training batches for steps={steps}: one forward pass per "
                "update, batch t for update t")
    return None


def _expected_eval_steps(steps, every):
    return [0] + [s for s in range(1, steps + 1) if s % every == 0 or s == steps]


def _eval_steps_hint(got, want, steps, every) -> str:
    if got and got[0] != 0 and 0 in want:
        return "measure the held-out loss before the first update too: the first pair is (0, loss at initialisation)"
    if got[-1:] != [steps]:
        return (f"measure the held-out loss after the last update too: the last pair is ({steps}, ...), even when "
                f"steps is not a multiple of eval_every")
    return (f"the held-out loss is measured after every {every} updates (and before the first, and after the last): "
            f"at {want}, not {got}")


def run_training(fn, *, seed=0, steps=6, lr=0.02, warmup=2, weight_decay=0.1, clip=1.0, eval_every=3,
                 grad_scale=1.0) -> dict:
    """Run the learner's ``fn`` on the checker's probe model and the reference loop on an identical copy.

    Returns ``{"history", "state", "seen", "training"}`` for the learner's run and ``"want"``,
    ``"want_state"`` for the reference (what a hidden test can assert on). Runs the learner's
    function under no ban: :func:`check_train_model` is the checker.
    """
    settings = dict(steps=steps, lr=lr, warmup=warmup, weight_decay=weight_decay, clip=clip, eval_every=eval_every)
    batches, eval_tokens, state = _case_data(seed, steps)
    model = there(fn, _make_probe, CFG, state, eval_tokens, grad_scale)
    history = fn(model, batches, eval_tokens, **settings)
    report = there(model, _probe_report)
    want, want_state = _reference(state, eval_tokens, grad_scale, batches, settings)
    return {"history": history, **report, "want": want, "want_state": want_state}


def _run_case(c, fn, label, seed, grad_scale, settings, *, loss_falls=False):
    steps = settings["steps"]

    def fail(message):
        c.fail(label, message)

    batches, eval_tokens, state = _case_data(seed, steps)
    model = there(fn, _make_probe, CFG, state, eval_tokens, grad_scale)
    history = c.call(label, model, batches, eval_tokens, **settings)
    report = there(model, _probe_report)
    want, want_state = _reference(state, eval_tokens, grad_scale, batches, settings)

    if not isinstance(history, dict) or not {"train_loss", "lr", "eval_loss"} <= set(history):
        fail('train_model must return a dict with "train_loss", "lr" and "eval_loss", got '
             + (f"keys {sorted(map(str, history))}" if isinstance(history, dict) else type(history).__name__))
    losses, rates = _numbers(history["train_loss"], "train_loss", fail), _numbers(history["lr"], "lr", fail)
    if len(losses) != steps or len(rates) != steps:
        fail(f'one training loss and one learning rate per update: {steps} each, got {len(losses)} and {len(rates)}')
    if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(rates, want["lr"])):
        for slip in LR_SLIPS:
            schedule = [_schedule(t, slip=slip, **{k: settings[k] for k in ("lr", "warmup", "steps")})
                        for t in range(steps)]
            if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(rates, schedule)):
                fail(SLIPS[slip])
        t = next(i for i, (a, b) in enumerate(zip(rates, want["lr"])) if not math.isclose(a, b, rel_tol=1e-9))
        fail(f"the learning rate of update {t} is {rates[t]:.6g}; the schedule gives {want['lr'][t]:.6g} (warm-up "
             "lr * (t + 1) / warmup, then a cosine from lr to lr / 10)")
    pairs = _eval_pairs(history["eval_loss"], fail)
    expected_steps = [s for s, _ in want["eval_loss"]]
    if [s for s, _ in pairs] != expected_steps:
        fail(_eval_steps_hint([s for s, _ in pairs], expected_steps, steps, settings["eval_every"]))
    problem = _seen_problem(report.get("seen") if isinstance(report, dict) else None, steps)
    if problem:
        fail(problem)
    got_state = report.get("state") if isinstance(report, dict) else None
    if not isinstance(got_state, dict) or not _close_states(got_state, want_state):
        for slip, hint in SLIPS.items():
            if _close_states(got_state or {}, _reference(state, eval_tokens, grad_scale, batches, settings, slip)[1]):
                fail(hint)
        fail(f"after {steps} updates your model's weights differ from the specification's loop (AdamW with betas "
             "(0.9, 0.95) and weight_decay, the learning rate set before each opt.step(), zero_grad, backward, "
             "clip_grad_norm_, step; loss = mean cross-entropy of tokens[:, 1:] given model(tokens[:, :-1]))")
    if not all(math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-10) for a, b in zip(losses, want["train_loss"])):
        t = next(i for i, (a, b) in enumerate(zip(losses, want["train_loss"])) if not math.isclose(a, b, rel_tol=1e-7))
        if math.isclose(losses[t], want["train_loss"][t] * batches[t][:, 1:].numel(), rel_tol=1e-7):
            fail(SLIPS["sum_loss"])
        fail(f"history[\"train_loss\"][{t}] is {losses[t]:.6g}, but batch {t}'s loss before its update is "
             f"{want['train_loss'][t]:.6g}: record loss.item() of each batch, the mean over its tokens")
    for (step, got), (_, expected) in zip(pairs, want["eval_loss"]):
        if not math.isclose(got, expected, rel_tol=1e-7, abs_tol=1e-10):
            fail(f"the held-out loss after {step} updates is {got:.6g}; the mean next-token cross-entropy over all "
                 f"of eval_tokens, in eval mode, is {expected:.6g}")
    if not report.get("training"):
        fail("your loop left the model in eval mode: switch back with model.train() after evaluating")
    if loss_falls:
        first, last = pairs[0][1], pairs[-1][1]
        if not last < 0.8 * first:
            fail(f"the held-out loss did not fall: {first:.3f} -> {last:.3f} in {steps} updates")


def check_train_model(fn) -> str:
    """Check ``fn(model, batches, eval_tokens, *, steps, lr, warmup, weight_decay, clip, eval_every) -> history``.

    The loop must train with AdamW (betas (0.9, 0.95), decoupled weight decay), the learning rate
    of :func:`attnkit.train.lr_at` (linear warm-up from ``lr / warmup``, cosine to ``lr / 10``), the
    global gradient norm clipped to ``clip``, and measure the held-out loss in eval mode without
    gradients before the first update, every ``eval_every`` updates and after the last.
    """
    banned = (train_module.train_model, train_module.train, train_module.evaluate, train_module.lr_at)
    c = Checker("train_model", fn, Ban(python=banned, hint="Write the loop yourself: the optimizer, the learning "
                                                           "rate of each update, the clipping and the evaluation."))
    cases = [
        ("gradients x1000: the clipping", 2, 1000.0,
         dict(steps=4, lr=0.01, warmup=1, weight_decay=0.1, clip=0.5, eval_every=2), False),
        ("one update: the warm-up's first learning rate", 1, 1.0,
         dict(steps=1, lr=0.02, warmup=4, weight_decay=0.1, clip=1.0, eval_every=1), False),
        ("11 updates: the schedule and the evaluations", 3, 1.0,
         dict(steps=11, lr=0.02, warmup=3, weight_decay=0.1, clip=1.0, eval_every=4), False),
        ("40 updates: the held-out loss falls", 4, 1.0,
         dict(steps=40, lr=0.02, warmup=5, weight_decay=0.1, clip=1.0, eval_every=20), True),
    ]
    for description, seed, grad_scale, settings, falls in cases:
        label = f"{description} ({', '.join(f'{k}={v}' for k, v in settings.items())})"
        with c.case(label):
            _run_case(c, fn, label, seed, grad_scale, settings, loss_falls=falls)
    return c.passed("warm-up, cosine decay, clipping of huge gradients, AdamW, evaluation in eval mode without "
                    "gradients, a loss that falls")
