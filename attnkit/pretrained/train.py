"""Train the shipped byte-level model on the standard library's source.

    python -m attnkit.pretrained.train                       # the shipped run (25-60 min, one thread)
    python -m attnkit.pretrained.train --steps 3 --d-model 32 --n-layers 1 --n-heads 2 \\
        --ctx 32 --batch 2 --eval-bytes 2000 --out /tmp/tiny  # a smoke test

Deterministic given ``--seed`` (one thread, CPU). Random windows of ``ctx + 1`` bytes are
cut from the training files; AdamW with linear warm-up then cosine decay, gradient clipping
at 1. Progress lines give the step, the time and the loss. ``--out`` receives

* ``stdlib_byte_lm.pt``: ``{"config": ..., "state_dict": ...}`` in float16, for
  ``torch.load(..., weights_only=True)``;
* ``stdlib_byte_lm.json``: the training record (Python version, file-list hash, held-out
  files, steps, time, held-out bits per byte against the byte-bigram baseline);
* ``stdlib_byte_lm.loss.json``: the loss curve.

A checkpoint (``--ckpt``, default ``<out>/stdlib_byte_lm.ckpt``) is written every
``--ckpt-every`` steps; ``--resume`` continues from it. ``--stop-after-s`` (or Ctrl-C /
SIGTERM) ends training early at the current step and still evaluates and writes the
weights, recording the steps actually taken.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import corpus
from .model import ByteLM, ByteLMConfig

NAME = "stdlib_byte_lm"
DEFAULT_OUT = Path(__file__).resolve().parent / "weights"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m attnkit.pretrained.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--d-mlp", type=int, default=None, help="default 4 * d_model")
    p.add_argument("--ctx", type=int, default=256, help="training context = the model's max_len")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--copy-frac", type=float, default=0.25,
                   help="share of each batch's rows that get a copy of an earlier stretch of themselves inserted")
    p.add_argument("--copy-from-step", type=int, default=0, help="insert copies from this step on")
    p.add_argument("--copy-len", type=int, nargs=2, default=(8, 96), metavar=("MIN", "MAX"),
                   help="length range of an inserted copy, in bytes")
    p.add_argument("--repeat-rows", type=int, default=1,
                   help="rows per batch whose tail is a random name-like string repeated (see insert_repeats)")
    p.add_argument("--repeat-period", type=int, nargs=2, default=(8, 40), metavar=("MIN", "MAX"))
    p.add_argument("--repeat-rows-later", type=int, nargs=2, default=None, metavar=("STEP", "ROWS"),
                   help="from STEP on, ROWS rows per batch instead of --repeat-rows")
    p.add_argument("--init", choices=("gpt2", "torch"), default="torch",
                   help="initialisation (ByteLM.reset_parameters); the shipped model used torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--ckpt", type=Path, default=None)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=500, help="held-out check on --eval-every-bytes bytes")
    p.add_argument("--eval-every-bytes", type=int, default=32768)
    p.add_argument("--eval-bytes", type=int, default=None,
                   help="final evaluation on at most this many held-out bytes (default all)")
    p.add_argument("--stop-after-s", type=float, default=None, help="stop training after this many seconds")
    return p.parse_args(argv)


def lr_at(step: int, args) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def insert_copies(window: torch.Tensor, rows: int, lengths: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Copy augmentation: in each of the first ``rows`` rows of ``window (B, ctx + 1)``, cut at
    a random point ``r`` and insert a copy of an earlier stretch ``[a, a + L)`` of the same row
    (``a + L <= r``), then let the row go on from ``r``; the row keeps its length.

    Real code repeats itself (names, calls, whole lines), but at a few million bytes of
    training a four-layer model had not learnt to copy from its context; rows that repeat a
    stretch of real source make the copying (induction) heads of Olsson et al. 2022 pay off early.
    """
    window = window.clone()
    n = window.shape[1]
    lo, hi = lengths
    for i in range(rows):
        L = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        r = int(torch.randint(L, n - 16, (1,), generator=gen))
        a = int(torch.randint(0, r - L + 1, (1,), generator=gen))
        row = window[i]
        window[i] = torch.cat((row[:r], row[a:a + L], row[r:]))[:n]
    return window


NAME_BYTES = torch.tensor(list(b"abcdefghijklmnopqrstuvwxyz_"))


def insert_repeats(window: torch.Tensor, rows: int, periods: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Induction rows: the last ``rows`` rows of ``window (B, ctx + 1)`` keep their real start
    up to a random cut in the first half, then a random string of ``P`` name characters
    (``a-z``, ``_``) repeated to the end, ``P`` drawn from ``periods``. Nothing but the string's earlier copy predicts
    it, so these rows pay only for copying from context (the toy task of notebook 06, here
    mixed into real source)."""
    window = window.clone()
    B, n = window.shape
    lo, hi = periods
    for i in range(B - rows, B):
        P = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        r = int(torch.randint(0, n // 2, (1,), generator=gen))
        string = NAME_BYTES[torch.randint(len(NAME_BYTES), (P,), generator=gen)]
        window[i] = torch.cat((window[i, :r], string.repeat(n // P + 1)))[:n]
    return window


@torch.no_grad()
def bits_per_byte(model: ByteLM, data: np.ndarray, *, stride: int | None = None, batch: int = 32) -> float:
    """Mean ``-log2 p(byte | preceding bytes)`` over every byte of ``data`` after the first.

    Windows of ``max_len`` bytes start every ``stride`` (default ``max_len // 2``) bytes; each
    byte is scored once, in the first window that reaches it, so every byte past the first
    window has at least ``max_len - stride`` bytes of context.
    """
    T = min(model.config.max_len, len(data) - 1)
    stride = stride or max(1, T // 2)
    starts = list(range(0, len(data) - 1 - T, stride)) + [len(data) - 1 - T]
    tokens = torch.from_numpy(data.astype(np.int64))
    total, scored_to = 0.0, 0  # targets data[1 .. scored_to] are counted
    was_training = model.training
    model.eval()
    for i in range(0, len(starts), batch):
        chunk = starts[i:i + batch]
        x = torch.stack([tokens[s:s + T] for s in chunk])  # (b, T)
        y = torch.stack([tokens[s + 1:s + T + 1] for s in chunk])  # (b, T)
        nll = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view(len(chunk), T)
        for row, s in enumerate(chunk):
            first = max(0, scored_to - s)  # target index s + 1 + j is new when s + 1 + j > scored_to
            total += float(nll[row, first:].double().sum())
            scored_to = s + T
    model.train(was_training)
    assert scored_to == len(data) - 1
    return total / (len(data) - 1) / math.log(2)


def save_weights(model: ByteLM, path: Path) -> None:
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state}, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.copy_frac and not 1 <= args.copy_len[0] <= args.copy_len[1] < args.ctx - 16:
        raise ValueError(f"--copy-len {args.copy_len[0]} {args.copy_len[1]} must satisfy "
                         f"1 <= MIN <= MAX < ctx - 16 = {args.ctx - 16}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(args.ckpt) if args.ckpt else out / f"{NAME}.ckpt"

    files = corpus.list_files()
    train_files, held_files = corpus.split(files)
    train_data = corpus.read_bytes(train_files)
    held_data = corpus.read_bytes(held_files)
    final_eval = held_data if args.eval_bytes is None else held_data[:args.eval_bytes]
    bigram = corpus.bigram_counts(train_data)
    print(f"python {platform.python_version()} stdlib: {len(files)} files, {len(train_files)} train "
          f"({len(train_data):,} bytes), {len(held_files)} held out ({len(held_data):,} bytes)", flush=True)

    cfg = ByteLMConfig(n_layers=args.n_layers, n_heads=args.n_heads, d_model=args.d_model,
                       max_len=args.ctx, d_mlp=args.d_mlp or 4 * args.d_model)
    model = ByteLM(cfg)
    if args.init != "gpt2":
        model.reset_parameters(args.init)  # no extra draws for gpt2: the shipped run stays reproducible
    decay = [p for p in model.parameters() if p.ndim == 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    tokens = torch.from_numpy(train_data.astype(np.int64))
    eval_slice = held_data[:args.eval_every_bytes]
    curve, step, elapsed = [], 0, 0.0
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        curve, step, elapsed = ck["curve"], ck["step"], ck["elapsed"]
        print(f"resumed from {ckpt_path} at step {step} ({elapsed:.0f} s)", flush=True)
    print(f"model: {model.num_parameters():,} parameters, config {cfg.to_dict()}", flush=True)

    stop = {"flag": False}

    def request_stop(signum, frame):
        print(f"signal {signum}: stopping after this step", flush=True)
        stop["flag"] = True

    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread
            pass

    def checkpoint():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "curve": curve, "step": step,
                    "elapsed": elapsed}, ckpt_path.with_name(ckpt_path.name + ".tmp"))
        ckpt_path.with_name(ckpt_path.name + ".tmp").replace(ckpt_path)  # a kill mid-write keeps the last one

    model.train()
    t0 = time.perf_counter() - elapsed
    try:
        while step < args.steps and not stop["flag"]:
            lr = lr_at(step, args)
            for group in opt.param_groups:
                group["lr"] = lr
            starts = torch.randint(0, len(tokens) - args.ctx - 1, (args.batch,), generator=gen)
            window = torch.stack([tokens[s:s + args.ctx + 1] for s in starts.tolist()])  # (B, ctx + 1)
            if args.copy_frac and step >= args.copy_from_step:  # no draws before: earlier steps are unchanged
                window = insert_copies(window, round(args.copy_frac * args.batch), tuple(args.copy_len), gen)
            repeat_rows = args.repeat_rows
            if args.repeat_rows_later and step >= args.repeat_rows_later[0]:
                repeat_rows = args.repeat_rows_later[1]
            if repeat_rows:
                window = insert_repeats(window, repeat_rows, tuple(args.repeat_period), gen)
            logits = model(window[:, :-1])  # (B, ctx, 256)
            loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())  # mean nats per byte
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss = loss.item()
            elapsed = time.perf_counter() - t0
            entry = {"step": step, "time_s": round(elapsed, 2), "loss": round(loss, 5),
                     "lr": lr, "grad_norm": round(float(grad_norm), 4)}
            if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
                entry["held_out_bpb_slice"] = round(bits_per_byte(model, eval_slice), 4)
            curve.append(entry)
            if step % args.log_every == 0 or step == 1 or "held_out_bpb_slice" in entry or step == args.steps:
                extra = f" held-out bpb (first {len(eval_slice)} B) {entry['held_out_bpb_slice']:.3f}" \
                    if "held_out_bpb_slice" in entry else ""
                print(f"step {step:5d}/{args.steps}  {elapsed:7.1f} s  loss {loss:.4f} "
                      f"({loss / math.log(2):.3f} bits/byte)  lr {lr:.2e}{extra}", flush=True)
            if args.ckpt_every and step % args.ckpt_every == 0:
                checkpoint()
            if args.stop_after_s is not None and elapsed >= args.stop_after_s:
                print(f"--stop-after-s {args.stop_after_s:g} reached at step {step}", flush=True)
                break
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    train_time = time.perf_counter() - t0
    checkpoint()

    print(f"evaluating on {len(final_eval):,} held-out bytes ...", flush=True)
    t_eval = time.perf_counter()
    model_bpb = bits_per_byte(model, final_eval)
    bigram_bpb = corpus.bigram_bits_per_byte(bigram, final_eval)
    eval_time = time.perf_counter() - t_eval
    model.eval()
    record = {
        "name": NAME,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch_version": torch.__version__,
        "stdlib_path": str(corpus.stdlib_root()),
        "excluded_dirs": sorted(corpus.EXCLUDED_DIRS),
        "held_out_rule": f"sha256(relative path) mod {corpus.HELD_OUT_EVERY} == 0",
        "n_files": len(files),
        "file_list_sha256": corpus.file_list_sha256(files),
        "train_files": len(train_files),
        "train_bytes": int(len(train_data)),
        "held_out_files": held_files,
        "held_out_bytes": int(len(held_data)),
        "eval_bytes": int(len(final_eval)),
        "config": cfg.to_dict(),
        "parameters": model.num_parameters(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": "python -m attnkit.pretrained.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": step,
        "planned_steps": args.steps,
        "stopped_early": step < args.steps,
        "batch": args.batch,
        "bytes_seen": step * args.batch * args.ctx,
        "train_time_s": round(train_time, 1),
        "threads": args.threads,
        "final_train_loss": curve[-1]["loss"] if curve else None,
        "final_train_loss_mean_last_50": (round(float(np.mean([c["loss"] for c in curve[-50:]])), 5)
                                          if curve else None),
        "held_out_bits_per_byte": round(model_bpb, 4),
        "bigram_bits_per_byte": round(bigram_bpb, 4),
        "eval_time_s": round(eval_time, 1),
        "copy_augmentation": (f"from step {args.copy_from_step}, {round(args.copy_frac * args.batch)} of "
                              f"{args.batch} rows per batch get a copy of an earlier stretch of "
                              f"{args.copy_len[0]}-{args.copy_len[1]} bytes of themselves inserted"
                              if args.copy_frac else None),
        "repeat_rows": (f"{args.repeat_rows} of {args.batch} rows per batch end in a random name-like "
                        f"string of period {args.repeat_period[0]}-{args.repeat_period[1]} repeated"
                        + (f"; {args.repeat_rows_later[1]} rows from step {args.repeat_rows_later[0]}"
                           if args.repeat_rows_later else "")
                        if args.repeat_rows else None),
        "eval_method": f"windows of {cfg.max_len} bytes every {max(1, min(cfg.max_len, len(final_eval) - 1) // 2)}; "
                       "each byte after the first scored once; bigram add-one smoothed, counted on the "
                       "training bytes, scored on the same bytes",
    }
    save_weights(model, out / f"{NAME}.pt")
    (out / f"{NAME}.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / f"{NAME}.loss.json").write_text(json.dumps(curve) + "\n")
    print(f"held-out {model_bpb:.3f} bits/byte vs byte bigram {bigram_bpb:.3f} ({len(final_eval):,} bytes); "
          f"{step} steps in {train_time:.0f} s; wrote {out / (NAME + '.pt')}", flush=True)
    return record


if __name__ == "__main__":
    main()
