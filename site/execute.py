"""The execution half of the course website's build (site/build.py): every solution notebook run
on a fresh kernel in the test suite's environment, each in a worker process of its own, and
cached by a key (the notebook's bytes, every file of ``attnkit/``, the stack's versions, these
settings) in ``site/_build/executed``. ``python site/execute.py NAME --key KEY ...`` is that
worker; :func:`execute_all` starts them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "solutions"
EXECUTED = REPO / "site" / "_build" / "executed"

CELL_TIMEOUT = 120  # seconds per cell, the grader's default (attn-grade autograde --timeout)
EXECUTOR_VERSION = 1  # bump when the execution settings below change in a way the key must see
KERNEL_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",  # the same CPU run on any build machine
    "ATTNKIT_WIDGETS": "0",  # the still figure: no widget front end on a static page
    "PYTHONHASHSEED": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1", "TQDM_MININTERVAL": "5",
}
STACK = ("torch", "triton", "numpy", "matplotlib", "ipywidgets", "ipykernel", "nbclient", "tqdm")


def log(msg: str) -> None:
    print(msg, flush=True)


def notebook_names() -> list[str]:
    return sorted(p.stem for p in SOLUTIONS.glob("*.ipynb"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def library_fingerprint() -> str:
    """What every notebook's outputs depend on besides the notebook: attnkit's files, the stack's
    versions, the kernel's environment and this executor's settings."""
    h = hashlib.sha256()
    root = REPO / "attnkit"
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(json.dumps({"python": sys.version.split()[0], "stack": {d: _version(d) for d in STACK},
                         "env": KERNEL_ENV, "timeout": CELL_TIMEOUT, "executor": EXECUTOR_VERSION},
                        sort_keys=True).encode())
    return h.hexdigest()


def notebook_key(name: str, fingerprint: str, solutions: pathlib.Path = SOLUTIONS) -> str:
    return hashlib.sha256(fingerprint.encode() + (solutions / f"{name}.ipynb").read_bytes()).hexdigest()


def cached_key(path: pathlib.Path) -> str | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["metadata"]["attn_site"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _first_error(nb) -> str | None:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                return f"cell {i} ({cell.get('id', '?')}): {out.get('ename')}: {out.get('evalue')}"
    return None


def _slowest(nb) -> list:
    """[cell id, seconds] of the cell that took longest (nbclient's timing metadata)."""
    from datetime import datetime
    best = ["", 0.0]
    for cell in nb.cells:
        t = cell.get("metadata", {}).get("execution", {})
        try:
            took = (datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()
        except (KeyError, ValueError):
            continue
        if took > best[1]:
            best = [cell.get("id", "?"), round(took, 1)]
    return best


def execute_one(name: str, key: str, timeout: int, solutions: pathlib.Path, executed: pathlib.Path) -> dict:
    """Run SOLUTIONS/NAME.ipynb top to bottom in a fresh kernel, which inherits this process's
    environment (set here: this runs in a worker process of its own, ``python site/execute.py NAME``); write
    EXECUTED/NAME.ipynb on success, EXECUTED/NAME.failed.ipynb otherwise."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    os.environ.update(KERNEL_ENV)
    for var in ("JPY_SESSION_NAME", "VSCODE_PID", "VSCODE_IPC_HOOK_CLI", "TRITON_DEFAULT_FP_FUSION"):
        os.environ.pop(var, None)
    # the kernel imports this checkout's attnkit, as the test suite's kernels do
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    nb = nbformat.read(solutions / f"{name}.ipynb", as_version=4)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"attn-site-{name}-"))
    running = {}  # the cell being executed, for a timeout's message

    def started(cell, cell_index, **_):
        running.update(index=cell_index, id=cell.get("id", "?"))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            record_timing=True, resources={"metadata": {"path": str(work)}},
                            on_cell_execute=started)
    error = None
    t0 = time.monotonic()
    executed.mkdir(parents=True, exist_ok=True)
    kernel_log = open(executed / f"{name}.kernel.log", "wb")  # the kernel's own stderr (not cell output)
    try:
        client.execute(stderr=kernel_log, stdout=kernel_log)
    except CellTimeoutError as exc:
        where = f"cell {running['index']} ({running['id']})" if running else "a cell"
        error = f"{where} ran past {timeout} s: {str(exc).splitlines()[0]}"
    except DeadKernelError as exc:
        error = f"the kernel died: {exc}"
    except Exception as exc:  # CellExecutionError and anything else nbclient raises
        error = _first_error(nb) or f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    finally:
        kernel_log.close()
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - t0, 1)
    error = error or _first_error(nb)
    if error:
        nbformat.write(nb, executed / f"{name}.failed.ipynb")
        return {"name": name, "ok": False, "seconds": seconds, "error": error}
    (executed / f"{name}.failed.ipynb").unlink(missing_ok=True)
    nb.metadata["attn_site"] = {"key": key, "seconds": seconds, "slowest": _slowest(nb)}
    tmp = executed / f".{name}.ipynb.tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, executed / f"{name}.ipynb")
    return {"name": name, "ok": True, "seconds": seconds, "error": "", "slowest": nb.metadata["attn_site"]["slowest"]}


RESULT = "attn-site-result: "


def run_one(name: str, key: str, timeout: int, solutions: pathlib.Path, executed: pathlib.Path) -> dict:
    """execute_one in a worker process of its own (a fresh environment for each kernel)."""
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), name, "--key", key,
           "--timeout", str(timeout), "--solutions", str(solutions), "--executed", str(executed)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    return {"name": name, "ok": False, "seconds": round(time.monotonic() - t0, 1),
            "error": f"the worker exited with {proc.returncode}: " + " | ".join(tail)}


def execute_all(names: list[str], jobs: int, timeout: int, solutions: pathlib.Path = SOLUTIONS,
                executed: pathlib.Path = EXECUTED) -> dict[str, dict]:
    """Execute the notebooks whose key changed, ``jobs`` at a time; {name: {"key", "cached",
    ...}}. Exits 1 naming every notebook that failed (the others are kept for the next build)."""
    fingerprint = library_fingerprint()
    keys = {n: notebook_key(n, fingerprint, solutions) for n in names}
    done = {n: {"key": keys[n], "cached": True} for n in names if cached_key(executed / f"{n}.ipynb") == keys[n]}
    todo = [n for n in names if n not in done]
    # the longest first (their last time, where known), so that the workers finish together
    last = {}
    for n in todo:
        try:
            last[n] = json.loads((executed / f"{n}.ipynb").read_text())["metadata"]["attn_site"]["seconds"]
        except (OSError, ValueError, KeyError):
            last[n] = 60.0
    todo.sort(key=lambda n: -last[n])
    log(f"execute: {len(done)} of {len(names)} notebooks unchanged (cached), {len(todo)} to run, "
        f"{jobs} at a time, {timeout} s per cell")
    failed = []
    if todo:
        t0 = time.monotonic()
        with futures.ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
            running = [pool.submit(run_one, n, keys[n], timeout, solutions, executed) for n in todo]
            for fut in futures.as_completed(running):
                r = fut.result()
                if r["ok"]:
                    done[r["name"]] = {"key": keys[r["name"]], "cached": False, "seconds": r["seconds"]}
                    cell, took = r["slowest"]
                    log(f"  {r['name']}: {r['seconds']:.1f} s (slowest cell {cell!r}: {took:.1f} s of the {timeout} s allowed)")
                else:
                    failed.append((r["name"], r["error"]))
                    log(f"  {r['name']}: FAILED after {r['seconds']:.1f} s: {r['error']}")
        log(f"execute: {time.monotonic() - t0:.1f} s")
    if failed:
        for name, error in sorted(failed):
            log(f"error: notebook {name} failed: {error} (the executed copy: {executed / (name + '.failed.ipynb')})")
        sys.exit(1)
    return done


def main(argv: list[str] | None = None) -> int:
    """The worker: execute one notebook, print its result as one line."""
    ap = argparse.ArgumentParser(prog="python site/execute.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--key", required=True)
    ap.add_argument("--timeout", type=int, default=CELL_TIMEOUT)
    ap.add_argument("--solutions", type=pathlib.Path, default=SOLUTIONS)
    ap.add_argument("--executed", type=pathlib.Path, default=EXECUTED)
    args = ap.parse_args(argv)
    result = execute_one(args.name, args.key, args.timeout, args.solutions, args.executed)
    print(RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
