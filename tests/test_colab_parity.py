"""Colab parity: every notebook, and every widget callback, on Colab's widget stack.

Colab runs ipywidgets 7.7.1; requirements.txt pins ipywidgets 8. `.ci/colab_env.sh` builds a
virtual environment that shares this machine's packages (the same torch, triton, numpy,
matplotlib, ipykernel) and shadows the widget stack with Colab's versions; its kernel runs
here. docs/colab-parity.md says what is mirrored and what cannot be.

What runs on that kernel, and what is deliberately not repeated:

- each assignment's student and solution notebooks, in one kernel and one pass. The two
  differ only in their exercise and test cells; every other cell is byte-identical. Shared
  cells run once; where the notebooks differ, the student's cells run first (their stubs must
  fail with NotImplementedError, nothing else may fail), then the solution's cells (which must
  pass, hidden tests included). Running the shared cells a second time would repeat, on the
  same libraries, the work of tests/test_notebooks_run.py; here they run with the widget path
  on (``ATTNKIT_WIDGETS=1``, as on Colab, which has a widget front end), which the main suite
  never takes.
- then every explorer the notebook built gets every one of its controls moved the way the
  front end moves it (a comm ``update`` message, ``index`` for a dropdown, ``value`` for a
  slider): the callback must fire, change what the picture is drawn from, and redraw into its
  Output widget.
- tests/test_widgets.py, run again on the parity interpreter.
- Python 3.13 (Colab's Python, not the one torch is installed for here): every source file
  and notebook cell compiles, and nothing imports a standard-library module that 3.13 removed.
"""

from __future__ import annotations

import ast
import fcntl
import glob
import json
import os
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest

from attnkit import widgets as W
from grader import course
from grader import notebooks as nbs

pytestmark = pytest.mark.colab_parity

REPO = course.REPO
SCRIPT = REPO / ".ci" / "colab_env.sh"
SOURCES = course.assignments()
VENV = pathlib.Path(os.environ.get("ATTN_COLAB_VENV") or pathlib.Path(
    os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "attention-course" / "colab-venv")
CELL_TIMEOUT = 300


def _colab_pins() -> dict[str, str]:
    line = next(l for l in SCRIPT.read_text().splitlines() if l.startswith("COLAB_PINS="))
    return dict(p.split("==") for p in line.split("=", 1)[1].strip('"').split())


def _requirement(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==")[1].strip()
    raise LookupError(name)


@pytest.fixture(scope="session")
def colab_python() -> pathlib.Path:
    """The parity venv's python, built by .ci/colab_env.sh on first use (one builder at a time
    across xdist workers); skipped with the reason when it cannot be built (no package index)."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f".{VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["bash", str(SCRIPT), str(VENV)], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHON=sys.executable))
    if proc.returncode != 0:
        pytest.skip(f"the Colab-parity venv could not be built by {SCRIPT.name}: {proc.stderr.strip()[-500:]}")
    return pathlib.Path(proc.stdout.strip().splitlines()[-1])


def _kernel_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               # Colab has a widget front end, so attnkit takes the live widget path there.
               ATTNKIT_WIDGETS="1",
               # Colab draws figures inline; the main suite's MPLBACKEND=Agg would hide plt.show().
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("JPY_SESSION_NAME", None)
    return env


def test_parity_env_has_colab_widgets_and_our_torch(colab_python):
    """The venv's copy of each Colab pin shadows ours; everything else is the main env's."""
    probe = ("import json, sys, importlib.metadata as m\n"
             "import ipywidgets, torch\n"
             "print(json.dumps({'ipywidgets': ipywidgets.__version__, 'widgetsnbextension': m.version('widgetsnbextension'),"
             " 'torch': torch.__version__, 'triton': m.version('triton'), 'python': sys.version.split()[0],"
             " 'ipywidgets_file': ipywidgets.__file__}))")
    facts = json.loads(subprocess.run([str(colab_python), "-c", probe], capture_output=True, text=True, check=True,
                                      env=_kernel_env()).stdout)
    for name, version in _colab_pins().items():
        assert facts[name] == version, (name, facts[name])
    assert facts["ipywidgets_file"].startswith(str(colab_python.parent.parent)), "the venv's ipywidgets must shadow ours"
    assert facts["torch"].split("+")[0] == _requirement("torch") and facts["triton"] == _requirement("triton")
    import ipywidgets
    assert ipywidgets.__version__ != facts["ipywidgets"], "the main env must keep its own ipywidgets"


def test_parity_venv_sees_the_packages_of_the_virtualenv_that_builds_it(tmp_path):
    """A contributor's virtualenv holds torch & co. in its own site-packages, not in the base
    interpreter's. The parity venv built from inside it must see them: a marker module that
    exists only in that virtualenv is importable from the parity venv, behind the parity venv's
    own ipywidgets and in front of the base interpreter's packages."""
    outer = tmp_path / "contributor-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(outer)], check=True, timeout=120)
    outer_python = outer / "bin" / "python"
    own = pathlib.Path(subprocess.run([str(outer_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      capture_output=True, text=True, check=True).stdout.strip())
    (own / "attn_contributor_marker.py").write_text("WHERE = 'contributor venv'\n")
    # what `pip install -r requirements.txt` put into the contributor's venv: here, this environment's packages
    sites = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    (own / "this_env.pth").write_text(f"import site; list(map(site.addsitedir, {sites!r}))\n")

    parity = tmp_path / "parity"
    proc = subprocess.run(["bash", str(SCRIPT), str(parity)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHON=str(outer_python)))
    if proc.returncode != 0:
        pytest.skip(f"{SCRIPT.name} could not build the venv (no package index?): {proc.stderr.strip()[-500:]}")
    probe = ("import json, sys, attn_contributor_marker as m, ipywidgets, torch\n"
             "print(json.dumps(dict(marker=m.__file__, ipywidgets=ipywidgets.__version__, where=ipywidgets.__file__,"
             " torch=torch.__version__, prefix=sys.prefix)))")
    facts = json.loads(subprocess.run([str(parity / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                      check=True, env=_kernel_env()).stdout)
    assert facts["marker"].startswith(str(own)), "the parity venv must see the active virtualenv's own packages"
    assert facts["ipywidgets"] == _colab_pins()["ipywidgets"] and facts["where"].startswith(str(parity))
    assert facts["prefix"] == str(parity)
    spec = json.loads((parity / "share" / "jupyter" / "kernels" / "colab-parity" / "kernel.json").read_text())
    assert spec["argv"][0] == str(parity / "bin" / "python")
    # built again from the same environment: kept as it is
    again = subprocess.run(["bash", str(SCRIPT), str(parity)], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHON=str(outer_python)))
    assert again.returncode == 0 and again.stdout.strip() == str(parity / "bin" / "python")
    # and the contributor's own environment keeps its ipywidgets
    theirs = subprocess.run([str(outer_python), "-c", "import ipywidgets; print(ipywidgets.__version__)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    import ipywidgets
    assert theirs == ipywidgets.__version__ != facts["ipywidgets"]


def test_widget_callbacks_from_python_on_colab_versions(colab_python):
    """tests/test_widgets.py again, on the parity interpreter (ipywidgets 7.7.1)."""
    proc = subprocess.run([str(colab_python), "-m", "pytest", str(REPO / "tests" / "test_widgets.py"), "-q",
                           "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-o", "addopts="],
                          capture_output=True, text=True, cwd=REPO, env=_kernel_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout)


# -- notebooks -------------------------------------------------------------------------------

def merged_cells(solution, student):
    """The cells of both notebooks in one order: shared cells once; each run of cells that
    differ as the student's version, then the solution's. Each cell is tagged with its role.

    A test cell right after such a run belongs to it even when both notebooks hold the same
    text (a visible checker cell usually does): it runs once after the student's stub, where
    it must fail as not implemented, and once after the solution, where it must pass."""
    sol, stu = solution.cells, student.cells
    assert [c.get("id") for c in sol] == [c.get("id") for c in stu], "the student notebook's cells must match the solution's"

    def same(i):
        return sol[i].cell_type == stu[i].cell_type and sol[i].source == stu[i].source

    out, i = [], 0
    while i < len(sol):
        if same(i):
            out.append(("shared", sol[i]))
            i += 1
            continue
        j = i
        while j < len(sol) and not same(j):
            j += 1
        while j < len(sol) and sol[j].cell_type == "code" and nbs.is_test(sol[j]):
            j += 1
        out += [("student", c) for c in stu[i:j]] + [("solution", c) for c in sol[i:j]]
        i = j
    return out


SWEEP = r'''
import gc as _gc, json as _json
import torch as _torch, ipywidgets as _ipw
from attnkit import widgets as _W


def _snapshot(state):
    return {k: (v.clone() if isinstance(v, _torch.Tensor) else v) for k, v in state.items()}


def _equal(a, b):
    if isinstance(a, _torch.Tensor):
        return isinstance(b, _torch.Tensor) and a.shape == b.shape and bool(_torch.equal(a, b))
    return a == b


def _moves(control):
    """What the front end sends when a learner moves this control, for every other value."""
    if isinstance(control, _ipw.widgets.widget_selection._Selection):
        return [{"index": i} for i in range(len(control.options)) if i != control.index], {"index": control.index}
    if isinstance(control.value, bool):
        return [{"value": not control.value}], {"value": control.value}
    if hasattr(control, "min") and hasattr(control, "max"):
        return [{"value": v} for v in dict.fromkeys((control.max, control.min)) if v != control.value], {"value": control.value}
    raise TypeError(f"no rule to move a {type(control).__name__}")


def _send(control, state):
    control._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def _is_explorer(o):
    return issubclass(type(o), _W.Explorer)  # type(), not isinstance: proxies and lazy modules stay untouched


def _sweep(explorers):
    """Move every control of every explorer to each other value, as the front end would."""
    moved = []
    for e in explorers:
        name = type(e).__name__
        assert getattr(e, "_live", False), f"{name}.show() took the still-figure path on a kernel with a front end"
        draws = []
        e.draw = (lambda draw: lambda: (draws.append(1), draw())[1])(e.draw)  # count redraws
        for c_name, control in e.controls.items():
            targets, start = _moves(control)
            changed = False
            for t in targets:
                before, n, d = _snapshot(e.state), e.updates, len(draws)
                _send(control, t)
                # one update or more: a control may re-range another (a new block size re-ranges a slider)
                assert e.updates > n, f"{name}.{c_name}: {t} from the front end did not reach the callback"
                assert len(draws) > d, f"{name}.{c_name}: the callback did not redraw the picture"
                changed |= any(not _equal(before[k], e.state[k]) for k in before)
            _send(control, start)
            assert changed, f"{name}.{c_name}: moving it changed nothing the picture is drawn from"
            moved.append(f"{name}.{c_name}")
        del e.draw
    return moved


if __name__ == "__main__":  # in the notebook's kernel
    _explorers = list({id(o): o for o in _gc.get_objects() if _is_explorer(o)}.values())
    print("SWEEP " + _json.dumps({"ipywidgets": _ipw.__version__, "explorers": len(_explorers),
                                  "moved": _sweep(_explorers)}))
'''


def _sweep_namespace():
    namespace = {"__name__": "sweep"}
    exec(SWEEP, namespace)
    return namespace


class _DeadCallback(W.TemperatureExplorer):
    def compute(self):  # ignores the slider: the picture never changes
        if not hasattr(self, "state"):
            super().compute()


class _NoRedraw(W.TemperatureExplorer):
    def _changed(self, _change=None):  # recomputes but never redraws
        self.compute()
        self.updates += 1


def _live(explorer):
    explorer._live = True
    return explorer


@pytest.mark.parametrize("mutant, hint", [
    (lambda: W.TemperatureExplorer(), "still-figure path"),
    (lambda: _live(_DeadCallback()), "changed nothing"),
    (lambda: _live(_NoRedraw()), "did not redraw"),
])
def test_sweep_rejects_broken_explorers(mutant, hint, monkeypatch):
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    with pytest.raises(AssertionError, match=hint):
        _sweep_namespace()["_sweep"]([mutant()])


def test_sweep_moves_every_control_of_a_working_explorer(monkeypatch):
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    e = _live(W.MaskBuilder(n=6))
    start = e.values()
    assert _sweep_namespace()["_sweep"]([e]) == ["MaskBuilder.kind", "MaskBuilder.length", "MaskBuilder.queries"]
    assert e.values() == start and e.updates >= 6


def _execute(nb, km, tmp_path):
    from nbclient import NotebookClient
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=_kernel_env())
    return client


@pytest.fixture
def parity_kernel(colab_python):
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    kernels = colab_python.parent.parent / "share" / "jupyter" / "kernels"
    return KernelManager(kernel_name="colab-parity", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def _error(cell):
    return next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)


def _widget_outputs(nb) -> int:
    """Output widgets that received a PNG, in the widget state nbclient saved."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return sum(1 for m in state.values() if m.get("model_name") == "OutputModel"
               and any("image/png" in o.get("data", {}) for o in m.get("state", {}).get("outputs", [])))


@pytest.mark.slow
@pytest.mark.parametrize("name", SOURCES)
def test_notebook_runs_on_colab_versions(name, parity_kernel, tmp_path):
    solution = nbformat.read(SOURCES[name], as_version=4)
    student = nbformat.read(course.NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = merged_cells(solution, student)
    merged = nbformat.v4.new_notebook(metadata=solution.metadata)
    for role, cell in cells:
        cell = nbformat.from_dict(json.loads(json.dumps(cell)))
        cell.metadata["parity_role"] = role
        merged.cells.append(cell)
    merged.cells.append(nbformat.v4.new_code_cell(SWEEP, metadata={"parity_role": "sweep"}))
    for i, cell in enumerate(merged.cells):
        cell["id"] = f"c{i}"  # both versions share ids; executed copies need their own

    client = _execute(merged, parity_kernel, tmp_path)

    problems, student_failures = [], 0
    for cell in merged.cells:
        if cell.cell_type != "code":
            continue
        role, err = cell.metadata["parity_role"], _error(cell)
        where = f"{role} cell {nbs.grade_id(cell) or (cell.source.strip().splitlines() or [''])[0][:60]!r}"
        if role == "student" and err:
            stub = err["ename"] == "NotImplementedError" or (
                err["ename"] == "AssertionError" and "not implemented yet" in err["evalue"])
            if not ((nbs.is_test(cell) or nbs.is_solution(cell)) and stub):
                problems.append(f"{where}: {err['ename']}: {err['evalue']}")
            student_failures += 1
        elif err:
            problems.append(f"{where}: {err['ename']}: {err['evalue'][:300]}")
    assert not problems, "\n".join(problems)
    if any(nbs.is_solution(c) for c in solution.cells):
        assert student_failures, "the student notebook's stubs must fail on Colab's versions too"

    stdout = "".join(o.get("text", "") for o in merged.cells[-1].outputs if o.get("name") == "stdout")
    facts = json.loads(next(l for l in stdout.splitlines() if l.startswith("SWEEP "))[len("SWEEP "):])
    assert facts["ipywidgets"] == _colab_pins()["ipywidgets"]
    print(f"{name}: {facts['explorers']} explorers, moved {', '.join(facts['moved']) or 'nothing'}")
    if facts["explorers"]:
        assert facts["moved"], "explorers without controls"
        assert _widget_outputs(client.nb) >= 1, "no explorer drew into its Output widget"


# -- Colab's Python ----------------------------------------------------------------------------

def _python313() -> str | None:
    candidates = [os.environ.get("ATTN_PYTHON313", "")]
    candidates += sorted(glob.glob(os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv")) + "/versions/3.13*/bin/python3.13"))
    candidates += ["/usr/bin/python3.13", "/usr/local/bin/python3.13"]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            continue
        if out == "True":
            return exe
    return None


def _top_imports(source: str) -> set[str]:
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_sources_compile_on_colab_python():
    """Colab runs Python 3.13, torch is installed here for 3.11 only: compile everything
    with 3.13 and refuse imports of standard-library modules that 3.13 no longer has."""
    exe = _python313()
    if exe is None:
        pytest.skip("no Python 3.13 interpreter on this machine (set ATTN_PYTHON313)")
    files = {str(p.relative_to(REPO)): p.read_text() for d in ("attnkit", "grader")
             for p in sorted((REPO / d).rglob("*.py"))}
    for path in list(SOURCES.values()) + sorted(course.NOTEBOOKS.glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                files[f"{path.relative_to(REPO)}#cell{i}"] = cell.source
    program = ("import json, sys, warnings\n"
               "warnings.simplefilter('error')\n"
               "files = json.load(sys.stdin)\n"
               "bad = {}\n"
               "for name, src in files.items():\n"
               "    try:\n"
               "        compile(src, name, 'exec')\n"
               "    except (SyntaxError, SyntaxWarning, ValueError) as e:\n"
               "        bad[name] = f'{type(e).__name__}: {e}'\n"
               "print(json.dumps({'bad': bad, 'stdlib': sorted(sys.stdlib_module_names)}))\n")
    proc = subprocess.run([exe, "-c", program], input=json.dumps(files), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["bad"], result["bad"]
    removed = set(sys.stdlib_module_names) - set(result["stdlib"])
    used = {name: sorted(_top_imports(src) & removed) for name, src in files.items()}
    assert not {k: v for k, v in used.items() if v}, "standard-library modules that Python 3.13 removed"
