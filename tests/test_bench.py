"""The efficient-attention benchmark (attnkit.bench): its table, its memory measurement, its
float64 references, its skip rules and its argument checks."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run of the command line (memory measured in subprocesses), shared."""
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--quick", "--no-plot", "--out", str(out)]) == 0
    data = json.loads((out / "efficient-attention-cpu.json").read_text())
    return out, data


def _row(data, method, n):
    return next(r for r in data["rows"] if r["method"] == method and r["n"] == n)


def test_quick_run_tables_every_method_at_every_n(quick):
    out, data = quick
    md = (out / "efficient-attention-cpu.md").read_text()
    ns = bench.QUICK["ns"]
    for name in bench.METHODS:
        for n in ns:
            assert f"| {n} | {name} |" in md
            row = _row(data, name, n)
            assert row["time_ms"] is not None and row["time_ms"] > 0, row
    assert "flash/naive peak extra memory at N=8192" in md and "flash/sdpa time at N=4096" in md
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["threads"] == 1
    assert data["config"]["heads"] == bench.QUICK["heads"]


def test_memory_sees_naive_matrices_and_ranks_naive_above_flash(quick):
    _, data = quick
    n = max(bench.QUICK["ns"])
    naive, flash, sdpa = (_row(data, m, n)["peak_mib"] * bench.MiB for m in ("naive", "flash", "sdpa"))
    matrix = bench.QUICK["batch"] * bench.QUICK["heads"] * n * n * 4  # one (B, H, N, N) float32 matrix
    assert naive >= matrix  # scores and weights both exist at the peak: at least one whole matrix
    assert naive < 4 * matrix  # and not a runaway count
    assert flash < matrix / 4 and sdpa < matrix / 4  # tiled / fused: no N x N matrix


def test_exact_methods_are_close_to_float64_and_approximations_to_their_own_definition(quick):
    _, data = quick
    for n in bench.QUICK["ns"]:
        naive_err = _row(data, "naive", n)["err_exact"]
        for name in ("naive", "sdpa", "chunked", "flash"):
            err = _row(data, name, n)["err_exact"]
            assert err < 1e-5 and err <= 10 * naive_err + 1e-6, (name, n, err, naive_err)
        for name in ("sliding", "linear"):
            row = _row(data, name, n)
            assert row["err_own"] < 1e-5, row
            assert row["err_exact"] > 1e-2, row  # a different function, not a rounding error


def test_references_match_sdpa_and_the_library_in_float64():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 37, 8, generator=g) for _ in range(3))
    qd, kd, vd = q.double(), k.double(), v.double()
    for causal in (False, True):
        cfg = bench.Config(heads=2, head_dim=8, causal=causal, window=5)
        torch.testing.assert_close(bench.reference(q, k, v, cfg, rows=10),
                                   F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal))
        torch.testing.assert_close(bench.reference(q, k, v, cfg, "linear", rows=10),
                                   attnkit.linear_attention(qd, kd, vd, causal=causal))
        mask = attnkit.sliding_window_mask(37, 37, 5)
        torch.testing.assert_close(bench.reference(q, k, v, cfg, "sliding", rows=10),
                                   F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask))
        torch.testing.assert_close(bench.naive_attention(qd, kd, vd, causal),
                                   F.scaled_dot_product_attention(qd, kd, vd, is_causal=causal))


def test_skips_say_why():
    rows = bench.measure(["naive", "flash"], [64], heads=1, head_dim=8, memory=False, repeats=1,
                         memory_limit=1000, threads=1)
    assert all(r["time_ms"] is None and r["note"].startswith("skipped: would need") for r in rows)
    rows = bench.measure(["naive"], [64, 4096], heads=1, head_dim=8, memory=False, repeats=1,
                         max_seconds=1e-6, threads=1)
    assert rows[-1]["time_ms"] is None and "per call estimated" in rows[-1]["note"]
    assert "| 4096 | naive |" in bench.table(rows)


def test_a_method_missing_from_attnkit_is_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(bench.METHODS, "chunked",
                        bench.dataclasses.replace(bench.METHODS["chunked"], needs=("no_such_function", "no_such_module")))
    assert "chunked" not in bench.available_methods()
    rows = bench.measure(["chunked", "sdpa"], [32], heads=1, head_dim=8, memory=False, repeats=1, threads=1)
    assert rows[0]["note"].startswith("not available") and rows[1]["time_ms"] is not None


def test_goals_report_ratios_and_verdicts():
    rows = [{"method": "flash", "n": 8192, "peak_mib": 20.0, "time_ms": None},
            {"method": "naive", "n": 8192, "peak_mib": 1000.0, "time_ms": None},
            {"method": "flash", "n": 4096, "peak_mib": None, "time_ms": 300.0},
            {"method": "sdpa", "n": 4096, "peak_mib": None, "time_ms": 100.0}]
    memory, speed = bench.goals(rows)
    assert math.isclose(memory["ratio"], 0.02) and memory["pass"] is True
    assert math.isclose(speed["ratio"], 3.0) and speed["pass"] is False
    assert bench.goals(rows[:1])[0]["pass"] is None
    assert "FAIL" in bench.goal_lines(rows)[1] and "not measured" in bench.goal_lines([])[0]


@pytest.mark.parametrize("argv,message", [
    (["--n", "0"], "positive integer"), (["--n", "ten"], "positive integer"),
    (["--methods", "naive", "magic"], "unknown method magic"), (["--repeats", "-1"], "positive integer"),
    (["--max-seconds", "0"], "positive number"), (["--flash-block", "64"], "expected 2 arguments"),
])
def test_bad_command_lines_exit_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("call,error,message", [
    (lambda: bench.measure(["naive", "magic"], [64]), ValueError, "unknown method(s) ['magic']"),
    (lambda: bench.measure(["naive"], [64, 0]), ValueError, "positive ints"),
    (lambda: bench.measure(["naive"], 64.0), TypeError, "list of sequence lengths"),
    (lambda: bench.measure(["naive"], [64], repeats=0), ValueError, "repeats"),
    (lambda: bench.measure(["flash"], [64], flash_block=(64,)), ValueError, "flash_block"),
    (lambda: bench.measure(["naive"], [64], heads=0), ValueError, "heads"),
    (lambda: bench.peak_memory("magic", 64), ValueError, "choose from naive"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error) as exc:
        call()
    assert message in str(exc.value)


def test_plot_draws_time_and_memory_log_log_one_line_per_method(quick):
    from matplotlib.figure import Figure
    _, data = quick
    fig = bench.plot(data["rows"], axes=Figure().subplots(1, 2))
    time_ax, memory_ax = fig.axes
    assert time_ax.get_xscale() == "log" and time_ax.get_yscale() == "log" and memory_ax.get_yscale() == "log"
    labels = [line.get_label() for line in time_ax.get_lines()]
    assert labels == ["naive", "sdpa", "chunked", "flash", "sliding (approx.)", "linear (approx.)"]
    assert len(memory_ax.get_lines()) >= 4  # a method whose peak rounds to 0 at every N has no line on log axes


def test_a_method_that_raises_is_reported_not_fatal(monkeypatch):
    def broken(q, k, v, cfg):
        raise RuntimeError("boom")
    monkeypatch.setitem(bench.METHODS, "linear", bench.dataclasses.replace(bench.METHODS["linear"], run=broken))
    rows = bench.measure(["linear", "sdpa"], [32], heads=1, head_dim=8, memory=False, repeats=1, threads=1)
    assert rows[0]["note"] == "failed: RuntimeError: boom" and rows[1]["time_ms"] is not None


def test_threads_default_to_every_core_unless_the_environment_limits_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert bench.Config().n_threads() == bench.cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert bench.Config().n_threads() == 1 and bench.Config(threads=3).n_threads() == 3


def test_a_memory_worker_past_its_time_limit_is_ended_and_reported():
    cfg = bench.Config(heads=1, head_dim=8, threads=1)
    result, = bench._run_worker([bench._job("naive", 64, cfg, 30)], timeout=0.05)
    assert result["error"].startswith("the memory worker took over 0 s")
