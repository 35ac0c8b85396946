"""The Triton and NumPy versions learners actually have.

Two parts:

- Version helpers of ``attnkit._triton`` and the behaviour they promise, checked in whatever
  environment runs this file: the interpreter fix for Triton before 3.7 with NumPy 2.4
  (``fix_interpreter``), the one-sentence diagnosis a checker shows instead of blaming the
  learner (``version_problem``), block pointers on Triton 3.9+, FP fusion kept on. The
  kernels run in fresh processes, because Triton decides at ``@triton.jit`` time whether a
  kernel is interpreted.
- The compatibility job (marker ``compat``; ``.ci/run`` runs it, plain ``pytest`` skips it
  unless ``ATTN_COMPAT=1``): for each environment built by ``.ci/compat_env.sh`` (Triton 3.6
  with NumPy 2.4, Colab's Triton 3.6 with NumPy 2.0, the newest Triton 3.9; torch 2.13.0+cpu in
  all three), the Triton test files (``triton_softmax``, ``triton_flash_forward``,
  ``TritonFlashAttention``'s backward, the checkers run on learner-style kernels, the compiles
  for sm_75/sm_80/sm_90) and the first part of this file run on that environment's
  interpreter, and the solution notebooks 10 and 11 run top to bottom on its kernel.

docs/colab-parity.md records the table this produces.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

from attnkit import _triton

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "attention-course"
COMPAT_ENVS = ("triton-3.6", "colab-triton", "triton-3.9")
TRITON_FILES = ("tests/test_triton_softmax.py", "tests/test_triton_flash.py", "tests/test_triton_compile.py",
                "tests/test_triton_ladder.py", "tests/test_compat.py")
NOTEBOOKS = ("10_triton_softmax", "11_triton_flash")


def _run(code: str, *, interpret: bool = True, timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter of this environment and return the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    env["TRITON_INTERPRET"] = "1" if interpret else "0"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- attnkit._triton's version helpers ---------------------------------------------------------

def _versions(monkeypatch, triton: str, numpy: str):
    monkeypatch.setattr(_triton, "versions", lambda: {"python": "3.11.7", "torch": "2.13.0+cpu",
                                                      "triton": triton, "numpy": numpy})


def _chained(*errors: BaseException) -> BaseException:
    """``errors[-1]`` raised from ``errors[-2]`` raised from ... ``errors[0]``, as a checker chains them."""
    for inner, outer in zip(errors, errors[1:]):
        outer.__cause__ = inner
    return errors[-1]


ZERO_D = "only 0-dimensional arrays can be converted to Python scalars"


def test_version_numbers_are_read_as_numbers():
    assert _triton._version("3.6.0") == (3, 6, 0)
    assert _triton._version("2.13.0+cpu") == (2, 13, 0)
    assert _triton._version("3.10.0") > _triton._version("3.9.0")
    assert _triton._version("2.4.0rc1") >= (2, 4)


def test_versions_names_what_is_installed():
    found = _triton.versions()
    import numpy
    import torch
    import triton
    assert found["torch"] == torch.__version__ and found["triton"] == triton.__version__
    assert found["numpy"] == numpy.__version__ and found["python"] == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.parametrize("triton,numpy,broken", [("3.6.0", "2.4.6", True), ("3.6.0", "2.4.0", True),
                                                 ("3.5.1", "2.5.0", True), ("3.6.0", "2.3.5", False),
                                                 ("3.6.0", "2.0.2", False), ("3.7.1", "2.4.6", False),
                                                 ("3.9.0", "2.4.6", False), ("", "2.4.6", False)])
def test_the_broken_pair_is_triton_before_37_with_numpy_24(monkeypatch, triton, numpy, broken):
    _versions(monkeypatch, triton, numpy)
    assert _triton.interpreter_index_broken() is broken


def test_the_numpy_24_error_names_versions_and_fix(monkeypatch):
    _versions(monkeypatch, "3.6.0", "2.4.6")
    # as the checkers see it: their AssertionError, raised from the interpreter's error, from NumPy's
    error = _chained(TypeError(ZERO_D), RuntimeError(f"TypeError('{ZERO_D}')"),
                     AssertionError("triton_softmax: your function raised InterpreterError: ..."))
    sentence = _triton.version_problem(error)
    assert sentence and "Triton 3.6.0" in sentence and "NumPy 2.4.6" in sentence
    assert "not from your kernel" in sentence and "_triton.prepare()" in sentence and "numpy<2.4" in sentence
    assert sentence.count(". ") == 0, "one sentence"
    # found through __context__ too (an error raised while handling another)
    outer = ValueError("while reporting")
    outer.__context__ = TypeError(ZERO_D)
    assert _triton.version_problem(outer) == sentence


def test_versions_of_another_process_can_be_given(monkeypatch):
    """The grader's examiner composes the message in another process than the kernel's."""
    _versions(monkeypatch, "3.7.1", "2.4.6")  # this process
    kernel = {"python": "3.13.0", "torch": "2.11.0", "triton": "3.6.0", "numpy": "2.4.1"}
    sentence = _triton.version_problem(RuntimeError(f"InterpreterError: TypeError('{ZERO_D}')"), kernel)
    assert sentence and "Triton 3.6.0" in sentence and "NumPy 2.4.1" in sentence
    assert _triton.version_problem(TypeError(ZERO_D)) is None


@pytest.mark.parametrize("triton,numpy", [("3.7.1", "2.4.6"), ("3.6.0", "2.0.2")])
def test_the_same_error_on_a_working_pair_is_not_blamed_on_versions(monkeypatch, triton, numpy):
    _versions(monkeypatch, triton, numpy)
    assert _triton.version_problem(TypeError(ZERO_D)) is None


@pytest.mark.parametrize("error", [
    NotImplementedError("Block pointers have been removed in favor of the tensor descriptor API"),  # Triton 3.9
    AttributeError("module 'triton.language' has no attribute 'make_block_ptr'"),
    AttributeError("module 'triton.language' has no attribute 'advance'"),
])
def test_block_pointers_are_explained(monkeypatch, error):
    _versions(monkeypatch, "3.9.0", "2.4.6")
    sentence = _triton.version_problem(_chained(error, RuntimeError(repr(error)), AssertionError("checker")))
    assert sentence and "Triton 3.9.0" in sentence and "removed in 3.9" in sentence
    assert "stride_xm" in sentence, "it says what to write instead"


@pytest.mark.parametrize("error", [
    NotImplementedError(),  # an exercise stub: the checker's own message applies
    ValueError("q of shape (2, 3) must be 4-D"),
    TypeError("unsupported operand type(s)"),
    AttributeError("module 'triton.language' has no attribute 'arange2'"),
    AttributeError("'Tensor' object has no attribute 'advance_by'"),
])
def test_a_learners_own_mistake_is_not_a_version_problem(monkeypatch, error):
    _versions(monkeypatch, "3.6.0", "2.4.6")
    assert _triton.version_problem(_chained(error, AssertionError("checker"))) is None


def test_prepare_keeps_fp_fusion_on_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("TRITON_DEFAULT_FP_FUSION", raising=False)
    _triton.prepare()
    assert os.environ["TRITON_DEFAULT_FP_FUSION"] == "1" and _triton.FP_FUSION is True
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    _triton.prepare()
    assert os.environ["TRITON_DEFAULT_FP_FUSION"] == "0"


# -- the behaviour, in this environment --------------------------------------------------------

LOOP_KERNEL = """
    import json, torch, triton, triton.language as tl
    from attnkit import _triton

    @triton.jit
    def row_sums(X, OUT, N, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, N, BLOCK):  # a loop bound that is a kernel argument
            cols = start + tl.arange(0, BLOCK)
            acc += tl.load(X + cols, mask=cols < N, other=0.0)
        tl.store(OUT, tl.sum(acc, 0))

    x = torch.arange(37, dtype=torch.float32)
    out = torch.zeros(1)
    result = dict(broken=_triton.interpreter_index_broken(), fixed=FIXED)
    try:
        row_sums[(1,)](x, out, 37, BLOCK=8)
        result.update(ok=True, value=float(out[0]))
    except Exception as e:
        result.update(ok=False, sentence=_triton.version_problem(e), error=repr(e)[:300])
    print(json.dumps(result))
"""


def test_a_loop_with_a_runtime_bound_runs_after_prepare():
    """What notebook 10's setup cell does: prepare() first, then the learner's kernels. On
    Triton before 3.7 with NumPy 2.4 this is the fix at work; elsewhere the plain interpreter."""
    result = _run(LOOP_KERNEL.replace("FIXED", "_triton.fix_interpreter()")
                  .replace("from attnkit import _triton", "from attnkit import _triton; _triton.prepare()"))
    assert result["ok"], result
    assert result["value"] == sum(range(37))
    assert result["fixed"] == (_triton._version(_triton.versions()["triton"]) < (3, 7))


def test_without_prepare_the_versions_are_named_exactly_where_they_break():
    """No prepare(): the kernel fails exactly when the versions are the broken pair, and then
    version_problem names them; it runs everywhere else."""
    result = _run(LOOP_KERNEL.replace("FIXED", "None"))
    assert result["ok"] is (not result["broken"]), result
    if not result["ok"]:
        assert ZERO_D in result["error"] and result["sentence"] and "NumPy" in result["sentence"]


def test_fix_interpreter_is_idempotent_and_a_no_op_from_triton_37():
    result = _run("""
        import json, triton
        from attnkit import _triton
        from triton.runtime import interpreter
        first = _triton.fix_interpreter(); hook = getattr(interpreter, "_patch_lang_tensor", None)
        second = _triton.fix_interpreter()
        print(json.dumps(dict(first=first, second=second, same=hook is getattr(interpreter, "_patch_lang_tensor", None),
                              old=_triton._version(triton.__version__) < (3, 7))))
    """)
    assert result["first"] is result["second"] is result["old"] and result["same"]


BLOCK_POINTER_KERNEL = """
    import json, torch, triton, triton.language as tl
    from attnkit import _triton
    _triton.prepare()

    @triton.jit
    def copy(X, Y, N, BLOCK: tl.constexpr):
        src = tl.make_block_ptr(X, shape=(N,), strides=(1,), offsets=(0,), block_shape=(BLOCK,), order=(0,))
        tl.store(Y + tl.arange(0, BLOCK), tl.load(src, boundary_check=(0,)))

    x, y = torch.arange(16.0), torch.zeros(16)
    try:
        copy[(1,)](x, y, 16, BLOCK=16)
        print(json.dumps(dict(ok=bool(torch.equal(x, y)))))
    except Exception as e:
        print(json.dumps(dict(ok=False, sentence=_triton.version_problem(e), error=repr(e)[:300])))
"""


def test_block_pointers_run_before_triton_39_and_are_explained_after():
    """Measured: 3.6 and 3.7 run them, 3.8 warns that they are deprecated and runs them, 3.9
    raises NotImplementedError."""
    result = _run(BLOCK_POINTER_KERNEL)
    new = _triton._version(_triton.versions()["triton"]) >= (3, 9)
    if new:
        assert not result["ok"] and result["sentence"] and "make_block_ptr" in result["sentence"], result
    else:
        assert result["ok"], result


CHECKED_BLOCK_POINTER_SOFTMAX = """
    import json, torch, triton, triton.language as tl
    from attnkit import _triton
    _triton.prepare()
    from attnkit.checks import check_triton_softmax

    @triton.jit
    def softmax_kernel(X, Y, N, stride_xm, stride_xn, stride_ym, stride_yn, BLOCK_N: tl.constexpr):
        row = tl.program_id(0)
        src = tl.make_block_ptr(X + row * stride_xm, shape=(N,), strides=(stride_xn,), offsets=(0,),
                                block_shape=(BLOCK_N,), order=(0,))
        dst = tl.make_block_ptr(Y + row * stride_ym, shape=(N,), strides=(stride_yn,), offsets=(0,),
                                block_shape=(BLOCK_N,), order=(0,))
        cols = tl.arange(0, BLOCK_N)
        x = tl.load(src, boundary_check=(0,)).to(tl.float32)
        x = tl.where(cols < N, x, -float("inf"))
        m = tl.max(x, 0)
        m = tl.where(m == -float("inf"), 0.0, m)
        e = tl.exp(x - m)
        l = tl.sum(e, 0)
        tl.store(dst, (e / tl.where(l > 0, l, 1.0)).to(Y.dtype.element_ty), boundary_check=(0,))

    def triton_softmax(x):
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        softmax_kernel[(x.shape[0],)](x, y, x.shape[1], *x.stride(), *y.stride(),
                                      BLOCK_N=max(16, triton.next_power_of_2(x.shape[1])))
        return y

    try:
        print(json.dumps(dict(accepted=True, message=check_triton_softmax(triton_softmax))))
    except AssertionError as e:
        print(json.dumps(dict(accepted=False, message=str(e)[:300], sentence=_triton.version_problem(e))))
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_checker_rejecting_block_pointers_on_triton_39_gets_the_sentence():
    """A learner's softmax written with block pointers, through the real checker: accepted
    where block pointers exist; on 3.9 the checker's AssertionError carries the kernel's
    NotImplementedError, and version_problem reads the versions' sentence out of it."""
    result = _run(CHECKED_BLOCK_POINTER_SOFTMAX, timeout=600)
    if _triton._version(_triton.versions()["triton"]) >= (3, 9):
        assert not result["accepted"] and result["sentence"] and "removed in 3.9" in result["sentence"], result
    else:
        assert result["accepted"], result


def test_kernels_compiled_for_a_gpu_fuse_multiply_adds_and_say_nothing_about_it():
    """FP fusion is on for our compiles (more fma instructions than with it off) whatever
    TRITON_DEFAULT_FP_FUSION says, so Triton 3.9 has nothing to warn about."""
    result = _run("""
        import json, os, warnings
        import torch
        from attnkit import triton_flash as tf, fused_softmax as fs
        os.environ.pop("TRITON_DEFAULT_FP_FUSION", None)  # prepare() set it; our launches must not need it
        config = tf.configs("forward", 80, 64, torch.float16)[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            on = tf.compile_for("forward", 80, config, 64, torch.float16).asm["ptx"]
            off = tf.compile_for("forward", 80, config, 64, torch.float16, fp_fusion=False).asm["ptx"]
            softmax = fs.compile_for((8, 0), 64, 20000).asm["ptx"]  # two passes: the online rescale
        count = lambda ptx: len(re.findall(r"\\bfma\\.rn\\.f32", ptx))
        print(json.dumps(dict(on=count(on), off=count(off), softmax=count(softmax),
                              warnings=[str(w.message) for w in caught])))
    """.replace("import json, os, warnings", "import json, os, re, warnings"), interpret=False)
    assert result["on"] > result["off"], result
    assert result["softmax"] > 0, "the softmax rescale l * exp(m - shift) + sum is one fma"
    assert not [w for w in result["warnings"] if "FP_FUSION" in w], result["warnings"]


# -- the compatibility job ---------------------------------------------------------------------

compat = pytest.mark.compat
needs_compat = pytest.mark.skipif(not os.environ.get("ATTN_COMPAT"), reason=(
    "the compatibility job builds venvs with other Triton versions (set ATTN_COMPAT=1, or run .ci/run)"))


def _build(name: str) -> pathlib.Path:
    """The environment's python, built by .ci/compat_env.sh on first use (one builder at a time)."""
    venv = CACHE / f"compat-{name}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".compat-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["bash", str(REPO / ".ci" / "compat_env.sh"), name, str(venv)], capture_output=True,
                              text=True, timeout=1200, env=dict(os.environ, PYTHON=sys.executable))
    if proc.returncode != 0:
        message = f".ci/compat_env.sh {name} failed: {proc.stderr.strip()[-800:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return pathlib.Path(proc.stdout.strip().splitlines()[-1])


def _env_versions(python: pathlib.Path) -> dict:
    probe = "import json; from attnkit import _triton; print(json.dumps(_triton.versions()))"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "PYTEST_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return env


def _report(name: str, what: str, line: str) -> None:
    """One row of the compatibility table, in a file .ci/run prints at the end."""
    path = pathlib.Path(os.environ.get("ATTN_COMPAT_REPORT") or CACHE / "compat-report.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{name}\t{what}\t{line}\n")


@compat
@needs_compat
@pytest.mark.parametrize("name", COMPAT_ENVS)
def test_triton_kernels_and_checkers_on(name):
    python = _build(name)
    found = _env_versions(python)
    expected = {"triton-3.6": ("3.6.0", "2.4"), "colab-triton": ("3.6.0", "2.0"), "triton-3.9": ("3.9.0", "2.4")}[name]
    assert found["triton"] == expected[0] and found["numpy"].startswith(expected[1]), found
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "pytest", *TRITON_FILES, "-m", "not compat", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "-p", "no:randomly"], capture_output=True, text=True, cwd=REPO,
                          env=_clean_env(), timeout=1500)
    summary = (re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", proc.stdout, re.M) or ["no summary"])[-1]
    _report(name, f"triton {found['triton']}, numpy {found['numpy']}, torch {found['torch']}: Triton tests",
            f"{summary} ({time.perf_counter() - start:.0f} s)")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary


def _execute(notebook: pathlib.Path, python: pathlib.Path, kernel: str, tmp_path: pathlib.Path):
    import nbformat
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    specs = KernelSpecManager(kernel_dirs=[str(python.parent.parent / "share" / "jupyter" / "kernels")])
    km = KernelManager(kernel_name=kernel, kernel_spec_manager=specs)
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    client = NotebookClient(nb, km=km, timeout=600, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    errors = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"cell {i} ({(cell.source.strip().splitlines() or [''])[0][:60]!r}): "
                              f"{out['ename']}: {out['evalue'][:400]}")
    return nb, errors


@compat
@needs_compat
@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS)
@pytest.mark.parametrize("name", COMPAT_ENVS)
def test_solution_notebook_runs_on(name, notebook, tmp_path):
    """Every cell of the solution notebook, hidden tests and checkers included, on the
    environment's own kernel. (The student notebooks differ only in their exercise stubs.)"""
    python = _build(name)
    found = _env_versions(python)
    start = time.perf_counter()
    _, errors = _execute(REPO / "solutions" / f"{notebook}.ipynb", python, f"attn-{name}", tmp_path)
    _report(name, f"triton {found['triton']}, numpy {found['numpy']}, torch {found['torch']}: {notebook}",
            f"{'every cell ran' if not errors else f'{len(errors)} cells failed'} ({time.perf_counter() - start:.0f} s)")
    assert not errors, "\n".join(errors)
