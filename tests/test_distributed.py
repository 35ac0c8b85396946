"""Ring attention over torch.distributed: spawned gloo ranks agree with single-device attention
(outputs, log-sum-exps, gradients) for lengths the world size does not divide, causal or not,
contiguous or zigzag; a failing, dying or stuck rank ends the run with an error naming it.
(The merge exercise's checker and its known mistakes are in tests/library_models.py.)

Spawning costs a fresh interpreter per rank, so each spawned run checks many cases at once.
"""

import math
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import attnkit
from attnkit import distributed as D

# --------------------------------------------------------------------------- an independent reference


def reference(q, k, v, causal):
    """float64 SDPA and log-sum-exp, with autograd."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal), torch.logsumexp(s, -1), (q, k, v)


def partial(q, k, v, allowed):
    """float64 attention over the keys ``allowed`` lets each query see: (out, lse), zeros and -inf if none."""
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    w = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return w @ v, lse


def plain_error(q, k, v, causal, want):
    """How far plain float32 SDPA lands from the float64 answer: the yardstick for the ring."""
    return (F.scaled_dot_product_attention(q, k, v, is_causal=causal).double() - want).abs().max().item()


# --------------------------------------------------------------------------- workers (imported by the ranks)


def cases_worker(rank, world_size, cases):
    """Run every case on this rank; also report the error a mis-cut shard raises."""
    results = []
    for case in cases:
        layout, causal = case["layout"], case["causal"]
        q, k, v = (D.shard(case[name], rank, world_size, layout) for name in ("q", "k", "v"))
        timings = []
        out, lse = D.ring_attention_forward(q, k, v, causal, layout=layout, block_size=case["block"], timings=timings)
        result = {"out": out, "lse": lse, "steps": len(timings), "timing_keys": sorted(timings[0])}
        if case.get("d_out") is not None:
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            D.ring_attention(q, k, v, causal, layout=layout, block_size=case["block"]).backward(
                D.shard(case["d_out"], rank, world_size, layout))
            result["grads"] = (q.grad, k.grad, v.grad)
        results.append(result)
    q = cases[0]["q"][..., : 3 + rank, :]  # every rank cuts its own length: no layout gives that
    try:
        D.ring_attention_forward(q, q, q)
        error = None
    except ValueError as e:
        error = str(e)
    return {"results": results, "error": error}


def raising_worker(rank, world_size):
    if rank == 1:
        raise ValueError("rank one cannot go on")
    dist.barrier()  # waits for rank 1, which never comes


def exiting_worker(rank, world_size):
    if rank == 1:
        os._exit(3)  # dies without a Python exception (as a crash or a kill would)
    dist.barrier()  # rank 0 then fails too, because of rank 1


def stuck_peer_worker(rank, world_size):
    if rank == 1:
        time.sleep(120)
    buffer = torch.zeros(3)
    dist.recv(buffer, src=1)  # rank 1 never sends: the collective timeout must end this


def sleeping_worker(rank, world_size):
    time.sleep(120)


# --------------------------------------------------------------------------- spawned runs


def _cases(g, n_values, dv=5):
    cases = []
    for i, n in enumerate(n_values):
        for layout in D.LAYOUTS:
            for causal in (False, True):
                q, k = torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)
                v = torch.randn(1, 2, n, dv, generator=g)
                d_out = torch.randn(1, 2, n, dv, generator=g) if (i + causal) % 2 == 0 else None
                cases.append(dict(q=q, k=k, v=v, d_out=d_out, layout=layout, causal=causal, block=8, n=n))
    return cases


def _compare(world_size, cases, run):
    for case, per_rank in zip(cases, zip(*[r["results"] for r in run])):
        label = f"W={world_size} N={case['n']} {case['layout']} causal={case['causal']}"
        out = D.unshard([r["out"] for r in per_rank], case["layout"])
        lse = D.unshard([r["lse"] for r in per_rank], case["layout"], dim=-1)
        want, want_lse, leaves = reference(case["q"], case["k"], case["v"], case["causal"])
        yardstick = plain_error(case["q"], case["k"], case["v"], case["causal"], want)
        assert (out.double() - want).abs().max().item() <= 4 * yardstick + 1e-6, label
        assert torch.allclose(lse.double(), want_lse, rtol=1e-5, atol=1e-5), label
        assert all(r["steps"] == world_size for r in per_rank), label
        assert per_rank[0]["timing_keys"] == ["compute_s", "post_s", "step", "wait_s"]
        if case["d_out"] is not None:
            want.backward(case["d_out"].double())
            for i, name in enumerate(("dq", "dk", "dv")):
                got = D.unshard([r["grads"][i] for r in per_rank], case["layout"])
                assert torch.allclose(got.double(), leaves[i].grad, rtol=1e-4, atol=1e-5), f"{label} {name}"


@pytest.mark.parametrize("world_size,n_values", [(2, [7, 33]), (4, [10, 61])])
def test_ring_equals_single_device_attention(world_size, n_values):
    """Lengths the world size does not divide (7, 33, 10, 61), both layouts, causal and not,
    gradients for half of them; one spawned run per world size."""
    g = torch.Generator().manual_seed(world_size)
    cases = _cases(g, n_values)
    run = D.launch(cases_worker, world_size, cases, timeout=240)
    _compare(world_size, cases, run)
    assert all(r["error"] and "layout" in r["error"] and "shard" in r["error"] for r in run)


def test_a_rank_that_raises_is_named_and_the_others_are_stopped():
    start = time.monotonic()
    with pytest.raises(D.WorkerError) as info:
        D.launch(raising_worker, 2, timeout=120, collective_timeout=120)
    message = str(info.value)
    assert message.startswith("rank 1 of 2 failed with ValueError: rank one cannot go on"), message
    assert "traceback of rank 1" in message and "raising_worker" in message and info.value.rank == 1
    assert time.monotonic() - start < 60  # rank 0 blocked in a barrier was killed, not waited for


def test_a_rank_that_dies_without_an_exception_is_named_as_the_cause():
    with pytest.raises(D.WorkerError, match="rank 1 of 2 exited with code 3"):
        D.launch(exiting_worker, 2, timeout=120)


def test_a_collective_waiting_for_a_stuck_rank_times_out():
    start = time.monotonic()
    with pytest.raises(D.WorkerError) as info:
        D.launch(stuck_peer_worker, 2, timeout=120, collective_timeout=2)
    assert str(info.value).startswith("rank 0 of 2 failed"), str(info.value)
    assert "timed out" in str(info.value).lower() or "timeout" in str(info.value).lower(), str(info.value)
    assert time.monotonic() - start < 60


def test_the_whole_run_has_a_deadline():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="rank 0 of 1 still running after 4 s"):
        D.launch(sleeping_worker, 1, timeout=4)
    assert time.monotonic() - start < 15


def test_run_ring_attention_and_the_command_line_table(capsys):
    """The notebook's entry point (spawn, shard, gather) and the benchmark's table, one run each."""
    from attnkit.distributed.__main__ import main

    g = torch.Generator().manual_seed(5)
    q, k, v, d_out = (torch.randn(2, 13, 4, generator=g) for _ in range(4))
    res = attnkit.run_ring_attention(q, k, v, 2, True, layout="zigzag", d_out=d_out, block_size=4)
    want, want_lse, leaves = reference(q, k, v, True)
    want.backward(d_out.double())
    assert torch.allclose(res.out.double(), want, atol=1e-6) and torch.allclose(res.lse.double(), want_lse, atol=1e-5)
    assert all(torch.allclose(a.double(), b.grad, atol=1e-5) for a, b in zip(res.grads, leaves))
    assert len(res.timings) == 2 and all(len(t) == 2 for t in res.timings)

    rows = main(["--world-size", "2", "--n", "48", "--heads", "2", "--head-dim", "8", "--repeats", "1"])
    table = capsys.readouterr().out
    assert rows[0]["world_size"] == 2 and rows[0]["n_local"] == 24
    assert rows[0]["bytes_per_step"] == 2 * (2 * 24 * 8) * 4  # a key and a value block, float32
    assert rows[0]["total_s"] > 0 and rows[0]["compute_s"] > 0 and rows[0]["transfer_s"] > 0
    assert "exposed comm" in table and "\n    2 |          24 |" in table


# --------------------------------------------------------------------------- no processes needed


def test_layouts_cover_every_position_once():
    for n, w, layout in [(7, 2, "contiguous"), (10, 4, "zigzag"), (61, 4, "zigzag"), (5, 5, "contiguous")]:
        held = D.positions(n, w, layout)
        assert sorted(torch.cat(held).tolist()) == list(range(n))
        assert max(len(p) for p in held) - min(len(p) for p in held) <= (1 if layout == "contiguous" else 2)
        x = torch.randn(3, n, 2)
        assert torch.equal(D.unshard([D.shard(x, r, w, layout) for r in range(w)], layout), x)
    assert D.positions(8, 2, "zigzag")[0].tolist() == [0, 1, 6, 7]  # chunks 0 and 3 of 4


def test_work_counts_and_zigzag_balance():
    for n, w, layout, causal in [(13, 3, "contiguous", True), (13, 3, "zigzag", True), (10, 2, "zigzag", False)]:
        held = D.positions(n, w, layout)
        work = D.ring_work(n, w, layout, causal)
        for step in range(w):
            for rank in range(w):
                i, j = held[rank][:, None], held[(rank - step) % w][None, :]
                assert work[step, rank] == int((j <= i).sum() if causal else i.numel() * j.numel())
    contiguous, zigzag = D.ring_work(64, 4, "contiguous", True), D.ring_work(64, 4, "zigzag", True)
    assert contiguous.sum() == zigzag.sum() == 64 * 65 // 2
    assert (zigzag.max(1).values == zigzag.min(1).values).all()  # every rank equally busy at every step
    assert contiguous[1:, 0].sum() == 0  # rank 0 idles after its own block
    assert D.ring_schedule(3).tolist() == [[0, 1, 2], [2, 0, 1], [1, 2, 0]]


def test_merge_partials_equals_attention_over_the_union(g):
    q, k, v = (torch.randn(2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    split = torch.arange(9) < 4
    pa, pb = partial(q, k, v, causal & split), partial(q, k, v, causal & ~split)
    out, lse = attnkit.merge_partials(*pa, *pb)
    want, want_lse, _ = reference(q, k, v, True)
    assert torch.allclose(out, want) and torch.allclose(lse, want_lse)
    empty = (torch.zeros_like(out), torch.full_like(lse, float("-inf")))
    assert torch.equal(attnkit.merge_partials(*empty, *empty)[0], torch.zeros_like(out))
    assert torch.isneginf(attnkit.merge_partials(*empty, *empty)[1]).all()


def test_bad_input_is_named():
    x = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="lse_b must be"):
        attnkit.merge_partials(x, x[..., 0], x, x[..., :3, 0])
    with pytest.raises(ValueError, match="cannot be split into 8 non-empty zigzag chunks"):
        D.segments(7, 4, "zigzag")
    with pytest.raises(ValueError, match="layout must be one of"):
        D.shard(x, 0, 2, "striped")
    with pytest.raises(ValueError, match="same batch dimensions and length N"):
        attnkit.run_ring_attention(x, x[:, :4], x[:, :4], 2)
    with pytest.raises(RuntimeError, match="initialised process group"):
        D.ring_attention_forward(x, x, x)
    with pytest.raises(TypeError, match="module-level function"):
        D.launch(lambda rank, world: None, 2)
    with pytest.raises(ValueError, match="world_size must be > 0"):
        D.launch(sleeping_worker, 0)
    with pytest.raises(ValueError, match="backend must be"):
        D.launch(sleeping_worker, 2, backend="mpi")


def test_ring_explorer_steps_and_balances():
    from attnkit.widgets import RingExplorer

    e = RingExplorer(world_size=4, n=16)
    assert e.state["holds"] == [0, 1, 2, 3]
    e.controls["step"].value = 1
    assert e.updates == 1 and e.state["holds"] == [3, 0, 1, 2]
    assert e.state["work"].tolist() == [0, 16, 16, 16]  # causal, contiguous: rank 0 has nothing to do
    contiguous = e.state["utilisation"]
    e.controls["layout"].value = "zigzag"
    assert e.state["work"].tolist() == [8, 8, 8, 8] and e.state["utilisation"] == 1.0 > contiguous
    assert e.state["done"].sum() == sum(D.ring_work(16, 4, "zigzag", True)[:2].sum(1)).item()
    import matplotlib.pyplot as plt
    plt.close(e.draw())
