"""Autograde on a Dask cluster: ``attn-grade autograde ... --scheduler tcp://HOST:PORT``.

Each student is one task. What crosses the network is plain data in JSON text, both ways:

* client -> worker: the student's submission as the instructor's machine read it (base64, after
  the same intake checks as a local run), the assignment's name and the sha256 of its source
  notebook, the limits and the sandbox mode;
* worker -> client: the row (``grade.Result.as_data``), the feedback page (HTML text) and the
  graded notebook formgrader opens (``.ipynb`` text), all made by the grader on the worker.

The client deserialises task results as msgpack only (``deserializers=["msgpack", "error"]``):
a result that is not plain data is refused, never unpickled, and no byte a student's kernel
wrote is unpickled anywhere (the kernel speaks JSON to the grader on its own machine). Dask's
own control messages (a task's exception) are still pickles: the scheduler and the workers are
trusted machines, like the grading host. On
the worker the student's kernel and examiner are exactly those of a local run (bubblewrap,
uids, cgroups, seccomp, the examiner forked from a zygote): the Dask task hands the job to a
long-lived *grading server* (``python -m grader.cluster serve``), a plain single-threaded
process per worker thread that runs the local grader's own loop for one student at a time (a
Dask worker has threads and an event loop, which a process that forks must not have).

A worker lost mid-task (killed, its machine gone) means Dask runs the task elsewhere; a
student whose grading is on two workers that die gets a ``failed`` row saying so (the
scheduler's ``allowed-failures`` is set to 1 for the run). When the scheduler goes away the
run stops within ``SCHEDULER_GRACE`` seconds with a clear error; the rows graded so far are
merged into the gradebook first.

Workers need the course installed at the same version (the source notebook's hash is
compared) and, unless the run says ``--sandbox none``, bubblewrap: a worker that lacks either
is named and the run refused before anything is graded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from . import course, grade, intake

SCHEDULER_GRACE = 30.0  # seconds without a scheduler before the run gives up
CONNECT_TIMEOUT = 20.0  # seconds to reach the scheduler at the start
PROTOCOL = 1
MAX_REPLY = 8 << 20  # bytes of one worker reply (feedback pages with figures are about 1 MB)


class ClusterError(RuntimeError):
    """The cluster cannot grade this batch (no scheduler, an unfit worker, the scheduler gone)."""


def source_sha(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------- on the worker
def probe(assignment: str, sha: str, mode: str) -> dict:
    """What this worker can do (run by the client on every worker before grading)."""
    from . import sandbox
    problems = []
    sources = course.assignments()
    if assignment not in sources:
        problems.append(f"its course has no assignment {assignment!r}")
    elif source_sha(sources[assignment]) != sha:
        problems.append(f"its course's {assignment} differs from the client's (install the same version)")
    if mode == "bwrap" and not sandbox.bwrap_works():
        problems.append("bubblewrap is not installed or cannot create namespaces there (apt-get install bubblewrap)")
    import attnkit
    return {"protocol": PROTOCOL, "problems": problems, "version": attnkit.__version__,
            "host": os.uname().nodename, "root": os.geteuid() == 0}


_servers: dict[int, "_Server"] = {}
_servers_lock = threading.Lock()


class _Server:
    """A grading server process owned by one worker thread."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
        self.proc = subprocess.Popen([sys.executable, "-m", "grader.cluster", "serve", "--parent", str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, start_new_session=True)

    def ask(self, line: str, timeout: float) -> str:
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        data = bytearray()
        while not data.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("the grading server did not answer in time")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("the grading server ended")
            data += chunk
            if len(data) > MAX_REPLY:
                raise ValueError("the grading server's reply is too large")
        return data.decode("utf-8")

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


def grade_task(payload: str) -> str:
    """The Dask task: one student, JSON text in and out."""
    job = json.loads(payload)
    timeout = float(job["limits"]["notebook_timeout"]) + 300
    key = threading.get_ident()
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server.proc.poll() is not None:
            server = _servers[key] = _Server()
    try:
        return server.ask(payload, timeout)
    except (OSError, EOFError, TimeoutError, ValueError) as e:
        server.close()
        with _servers_lock:
            _servers.pop(key, None)
        return json.dumps({"result": {"status": "failed", "reason": f"grader error on the worker: {e}"}})


def _watch_parent(parent: int) -> None:
    """The server ends (with everything it started) when its Dask worker is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            try:
                os.killpg(os.getpgid(0), 9)
            finally:
                os._exit(1)


def serve(parent: int) -> None:
    """Grade jobs read from stdin (one JSON line each), answering one JSON line each."""
    from . import autograde, examiner, layouts, release, sandbox
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    state: dict = {}
    released = layouts.released_notebooks()
    out_stream = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            job = json.loads(line)
            reply = _grade_one(job, state, released, autograde, examiner, release, sandbox, layouts)
        except Exception as e:  # noqa: BLE001 - a reply for every job
            reply = {"result": {"status": "failed", "reason": f"grader error on the worker: {type(e).__name__}: {e}"[:300]}}
        out_stream.write(json.dumps(reply, allow_nan=False, default=str).encode("utf-8") + b"\n")
        out_stream.flush()
    for entry in state.values():
        entry["pool"].close()


def _grade_one(job, state, released, autograde, examiner, release, sandbox, layouts) -> dict:
    import nbformat
    assignment, mode = str(job["assignment"]), str(job["mode"])
    sources = course.assignments()
    if assignment not in sources or source_sha(sources[assignment]) != job["sha"]:
        raise ValueError(f"this worker's course has another version of {assignment}")
    limits = grade.Limits(**{k: float(v) if k != "memory_bytes" else int(v) for k, v in job["limits"].items()})
    key = (assignment, mode, limits.memory_bytes)
    if key not in state:
        source = nbformat.read(sources[assignment], as_version=4)
        template = nbformat.reads(release.student_version(sources[assignment]), as_version=4)
        policy = sandbox.Policy(mode=sandbox.resolve_mode(mode), memory_bytes=limits.memory_bytes)
        uids = sandbox.UidPool() if policy.mode == "bwrap" and os.geteuid() == 0 else None
        pool = examiner.ExaminerPool(policy, warm=examiner.plan(source).warm, uids=uids)
        state[key] = {"source": source, "template": template, "policy": policy, "uids": uids, "pool": pool}
    s = state[key]
    sid = str(job["student_id"])
    name = str(job["filename"])
    intake._check_part(name)  # the client checked it; a file name is all it is here
    raw = base64.b64decode(job["submission"], validate=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="attn-grade-cluster-"))
    os.chmod(scratch, 0o700)
    try:
        root, out, run_dir = scratch / "in", scratch / "out", scratch / "run"
        for d in (root / "s", out, run_dir):
            d.mkdir(parents=True)
        (root / "s" / name).write_bytes(raw)
        entry = layouts.Entry(student_id=sid, label=sid)
        unit = autograde._Job(entry, parts=("s", name), file=str(job.get("file", "")),
                              submitted_at=str(job.get("submitted_at", "")))
        settings = autograde.Settings(jobs=1, limits=limits, sandbox=mode, progress=False,
                                      feedback=bool(job.get("feedback", True)))
        results = autograde._run_all([unit], root, intake.census(root), assignment, s["source"], s["template"],
                                     run_dir, s["policy"], settings, out, s["pool"], s["uids"], released)
        result = results[0]
        reply = {"result": result.as_data()}
        page = autograde._feedback_path(out, sid, assignment)
        if page.is_file():
            reply["feedback"] = page.read_text(encoding="utf-8")
        graded = out / "autograded" / autograde.feedback_folder(sid) / assignment / f"{assignment}.ipynb"
        if graded.is_file():
            reply["autograded"] = graded.read_text(encoding="utf-8")
        return reply
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------- on the client
def connect(address: str, timeout: float = CONNECT_TIMEOUT):
    """A Dask client for ``address`` (``tcp://HOST:PORT`` or a scheduler file) that deserialises
    only msgpack (plain data)."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError("--scheduler needs Dask's distributed package: pip install distributed") from None
    kwargs = {"timeout": timeout, "deserializers": ["msgpack", "error"], "set_as_default": False}
    try:
        if "://" in address or not os.path.exists(address):
            if "://" not in address and ":" not in address:
                raise ClusterError(f"--scheduler {address!r} is neither an address (tcp://HOST:PORT) nor a scheduler file")
            return Client(address, **kwargs)
        return Client(scheduler_file=address, **kwargs)
    except ClusterError:
        raise
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"no Dask scheduler at {address}: {e}") from None


def check_workers(client, assignment: str, sha: str, mode: str, wait: float = 30.0) -> dict:
    """Every worker's probe; refuse the run, naming the worker, when one cannot grade."""
    end = time.monotonic() + wait
    while not client.scheduler_info().get("workers"):
        if time.monotonic() > end:
            raise ClusterError(f"the scheduler has no workers (waited {wait:.0f} s): start `dask worker ADDRESS` "
                               "on the grading machines")
        time.sleep(0.5)
    answers = client.run(probe, assignment, sha, mode, on_error="return")
    unfit = []
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            what = f"{type(answer).__name__}: {answer}"
            if isinstance(answer, (ImportError, ModuleNotFoundError)) or "No module named" in what:
                what = f"the course is not installed there ({what})"
            unfit.append(f"{worker}: {what}")
        elif not isinstance(answer, dict) or answer.get("protocol") != PROTOCOL:
            unfit.append(f"{worker}: another version of attn-grade")
        elif answer.get("problems"):
            unfit.append(f"{worker}: " + "; ".join(map(str, answer["problems"])))
    if unfit:
        raise ClusterError("these Dask workers cannot grade (they need the course installed, the same version, and "
                           "bubblewrap): " + " | ".join(unfit))
    return answers


def _set_allowed_failures(client, n):
    def setter(dask_scheduler=None, n=n):
        old = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = n
        return old
    try:
        return client.run_on_scheduler(setter)
    except Exception:  # noqa: BLE001 - a scheduler that refuses keeps its own setting
        return None


def run(jobs, submissions, counts, assignment, source_path, source, settings, out, mode, write_feedback_for,
        on_result=None):
    """Grade ``jobs`` on the cluster at ``settings.scheduler``. Returns ``(results, error)``:
    ``error`` is a :class:`ClusterError` when the scheduler went away (``results`` then holds
    the rows finished before)."""
    from tqdm import tqdm

    from . import autograde
    total = grade.max_score(source)
    sha = source_sha(source_path)
    client = connect(settings.scheduler)
    results: list[grade.Result] = []
    error = None
    old_failures = None
    bar = None
    try:
        check_workers(client, assignment, sha, mode)
        old_failures = _set_allowed_failures(client, 1)
        bar = tqdm(total=len(jobs), desc=f"grading {assignment} on {len(client.scheduler_info()['workers'])} workers",
                   unit="student", disable=not settings.progress, file=sys.stderr)
        futures = {}
        raws = {}
        limits = {"cell_timeout": settings.limits.cell_timeout, "notebook_timeout": settings.limits.notebook_timeout,
                  "memory_bytes": settings.limits.memory_bytes}
        for job in jobs:
            sid = job.student_id
            if job.parts is None:
                results.append(grade.Result(sid, "failed", None, total, job.why))
                write_feedback_for(results[-1])
                bar.update()
                continue
            try:
                raw = intake.read_submission_bytes(submissions, job.parts, counts)
            except Exception as e:  # noqa: BLE001 - the row says why
                results.append(grade.Result(sid, "failed", None, total, str(e)[:300]))
                write_feedback_for(results[-1])
                bar.update()
                continue
            raws[sid] = raw
            payload = json.dumps({"student_id": sid, "assignment": assignment, "sha": sha, "mode": mode,
                                  "filename": job.parts[-1], "file": job.file, "submitted_at": job.submitted_at,
                                  "feedback": settings.feedback, "limits": limits,
                                  "submission": base64.b64encode(raw).decode("ascii")})
            key = f"attn-grade-{assignment}-{_key_part(sid)}-{uuid.uuid4().hex[:8]}"
            futures[client.submit(grade_task, payload, key=key, pure=False, retries=0)] = sid
        by_sid = {job.student_id: job for job in jobs}
        pending = set(futures)
        lost_since = None
        while pending:
            if client.status != "running":  # reconnecting, or given up: no row is decided while so
                lost_since = lost_since or time.monotonic()
                if client.status in ("closing", "closed") or time.monotonic() - lost_since > SCHEDULER_GRACE:
                    error = ClusterError(f"the Dask scheduler at {settings.scheduler} went away with "
                                         f"{len(pending)} of {len(futures)} students not graded; the "
                                         f"{len(results)} rows finished are in the gradebook: grade again "
                                         "to finish (graded rows are replaced, nothing else is lost)")
                    break
                time.sleep(0.2)
                continue
            lost_since = None
            batch = [f for f in pending if f.status in ("finished", "error", "cancelled", "lost")]
            if not batch:
                time.sleep(0.2)
                continue
            for fut in batch:
                if fut.status == "cancelled" and client.status != "running":
                    continue  # the scheduler is going: this student is not graded, not failed
                pending.discard(fut)
                sid = futures[fut]
                result = _collect(fut, sid, total, out, assignment, source, raws.pop(sid, b""), settings,
                                  by_sid[sid], submissions, write_feedback_for, autograde)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.update()
    finally:
        if bar is not None:
            bar.close()
        if old_failures is not None and error is None:
            _set_allowed_failures(client, old_failures)
        try:
            client.close(timeout=5)
        except Exception:  # noqa: BLE001 - the scheduler may be gone
            pass
    return results, error


def _key_part(student_id: str) -> str:
    """The student id as it may appear in a task's key (the scheduler's dashboard shows keys)."""
    return "".join(ch if ch.isalnum() or ch in "._@" else "_" for ch in student_id)[:64]


def _collect(fut, sid, total, out, assignment, source, raw, settings, job, submissions, write_feedback_for,
             autograde) -> grade.Result:
    """The row of one finished task, its feedback page and formgrader copies written here."""
    from distributed import KilledWorker
    try:
        text = fut.result(timeout=60)
        if not isinstance(text, str):
            raise TypeError(f"the worker sent {type(text).__name__}, not JSON text")
        reply = json.loads(text)
        if not isinstance(reply, dict) or not isinstance(reply.get("result"), dict):
            raise TypeError("the worker's reply is not a row")
    except KilledWorker:
        result = grade.Result(sid, "failed", None, total,
                              "grading this submission killed its Dask worker twice (tried on two workers)")
        write_feedback_for(result)
        return result
    except Exception as e:  # noqa: BLE001 - one student's row, never the batch
        result = grade.Result(sid, "failed", None, total, f"grader error on the cluster: {type(e).__name__}: {e}"[:300])
        write_feedback_for(result)
        return result
    result = grade.Result.from_data(sid, reply["result"], total)
    page = reply.get("feedback")
    if settings.feedback and isinstance(page, str):
        path = autograde._feedback_path(out, sid, assignment)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    graded = reply.get("autograded")
    if result.status == "graded" and isinstance(graded, str):
        try:
            import nbformat
            nb = nbformat.reads(graded, as_version=4)  # JSON, checked as a notebook before it is written
            if pathlib.Path(submissions).resolve() != (out / "submitted").resolve():
                autograde.write_submitted(out, sid, assignment, raw, job.submitted_at)
            folder = out / "autograded" / autograde.feedback_folder(sid) / assignment
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{assignment}.ipynb.tmp"
            nbformat.write(nb, tmp)
            os.replace(tmp, folder / f"{assignment}.ipynb")
        except Exception as e:  # noqa: BLE001 - the grade stands without the copy
            result.reason = (result.reason + "; " if result.reason else "") + f"autograded copy not written: {e}"
    return result


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m grader.cluster")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="a grading server for one Dask worker thread (started by the task)")
    s.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
