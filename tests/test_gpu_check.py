"""The one-shot GPU check (bench/gpu_check.sh) on a CPU: its dry run, its budget, its refusal.

The dry run is the same script with CUDA hidden: the GPU tests at toy sizes through Triton's
interpreter, notebook 10 cell by cell, and the benchmark's ``--interpret --tiny``, each result
in the output folder. What only a GPU can show (real sizes, bfloat16, NCCL) is the script's
job on a lent GPU machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run bench/gpu_check.sh itself")


def _run(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "PYTEST_"))}
    env.update(OMP_NUM_THREADS="1", PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_its_results(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["ok"] and result["dry_run"] and result["seconds"] < result["budget_s"]
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == ["tests", "notebooks", "bench"]
    # the GPU tests ran their own code at toy sizes; only the GPU-only cases skipped
    tests = stages["tests"]
    assert tests["passed"] >= 10 and tests["failed"] == tests["errors"] == 0
    log = (tmp_path / "tests.log").read_text()
    assert "bfloat16 needs sm_80+" in log and "NCCL needs two GPUs" in log
    # notebook 10, every cell, with what it printed
    assert [n["notebook"] for n in stages["notebooks"]["notebooks"]] == ["10_triton_softmax"]
    md = (tmp_path / "notebooks.md").read_text()
    assert "10_triton_softmax: every cell ran" in md and "same as a + b: True" in md
    # the benchmark's tiny interpreter run, its files beside the summary
    assert stages["bench"]["files"] == ["triton-bench-interpreter-tiny.json"]
    assert (tmp_path / "triton-bench-interpreter-tiny.md").exists()
    assert stages["bench"]["cs336"] and {r["provider"] for r in stages["bench"]["cs336"]} == {"triton", "sdpa"}
    summary = (tmp_path / "summary.md").read_text()
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert "dry run" in facts["gpu"] and facts["torch"] == torch.__version__ and facts["triton"]
    assert summary.startswith("# GPU check: CPU, dry run") and "| tests | passed: " in summary
    assert result["started"][:10] in summary


def test_without_a_gpu_the_real_check_says_how_to_dry_run(tmp_path):
    proc = _run("--out", str(tmp_path), timeout=120)
    assert proc.returncode != 0
    assert "needs an NVIDIA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "summary.json").exists()


def test_the_budget_bounds_the_whole_run(tmp_path):
    """A budget too small for anything: each stage stops at its share and says so; the run fails."""
    proc = _run("--dry-run", "--out", str(tmp_path), "--budget", "4", timeout=120)
    assert proc.returncode == 1
    result = json.loads((tmp_path / "summary.json").read_text())
    assert not result["ok"] and result["seconds"] < 4 + 10  # facts are read before the clock matters
    assert any(s["timed_out"] for s in result["stages"])
    assert "timed out" in (tmp_path / "summary.md").read_text()


def test_summary_names_failures():
    found = dict(gpu="NVIDIA H100 80GB HBM3", capability="9.0", torch="2.13.0", triton="3.7.1")
    stages = [dict(stage="tests", ok=False, timed_out=False, seconds=60.0, passed=40, failed=2, errors=0, skipped=3,
                   failures=["FAILED tests/test_gpu.py::test_flash_backward_against_sdpa[...]"]),
              dict(stage="notebooks", ok=False, timed_out=True, seconds=200.0,
                   notebooks=[dict(notebook="12_flex_attention", ok=False, timed_out=True, errors=0)]),
              dict(stage="bench", ok=True, timed_out=False, seconds=100.0, files=["triton-bench-x.json"],
                   goals=["CS336 ... goal < 5.4 ms: met"])]
    args = gpu_check.parse([])
    md = gpu_check.summary_md(found, stages, "2026-11-29T12:00:00+00:00", 360.0, args)
    assert md.startswith("# GPU check: NVIDIA H100 80GB HBM3 (sm_90)")
    assert "| tests | FAILED: 40 passed, 2 failed" in md and "test_flash_backward_against_sdpa" in md
    assert "| notebooks | timed out: 12_flex_attention: timed out |" in md
    assert "goal < 5.4 ms: met" in md
    assert gpu_check.slug(found["gpu"]) == "nvidia-h100-80gb-hbm3"


def test_defaults_fit_the_eight_minutes():
    args = gpu_check.parse([])
    assert args.budget <= 8 * 60 and args.notebooks == ["10", "11", "12", "13"]
    assert gpu_check.parse(["--dry-run"]).notebooks == ["10"]
    assert all((REPO / f).exists() for f in gpu_check.GPU_TEST_FILES)
