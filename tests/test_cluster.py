"""Autograde on a Dask cluster (``--scheduler``): a real scheduler and real workers on
127.0.0.1, each a separate process started the way an instructor starts them."""

import csv
import os
import pathlib
import sys
import threading
import time

import pytest

from grader import autograde, cluster, grade, localcluster, sandbox
from grading_helpers import ASSIGNMENT, RIGHT, TRANSPOSED, answered, put

distributed = pytest.importorskip("distributed")

TESTS = pathlib.Path(__file__).resolve().parent
LIMITS = grade.Limits(cell_timeout=60, notebook_timeout=240)
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
SLOW = "import time\ntime.sleep(25)\n"  # a cell that keeps its student's task running for a while


@pytest.fixture
def make_cluster(tmp_path):
    made = []

    def make(workers=2, **envs):
        c = localcluster.LocalCluster(tmp_path / f"cluster{len(made)}", env=ENV)
        made.append(c)
        for i in range(workers):
            c.add_worker(f"w{i}", envs.get(f"w{i}"), nanny=False)
        c.wait_for(workers)
        return c
    yield make
    for c in made:
        c.close()


def _rows(out: pathlib.Path) -> list[dict]:
    with open(out / "grades.csv", newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["student_id"])


def _settings(**kw) -> autograde.Settings:
    return autograde.Settings(jobs=2, limits=LIMITS, progress=False, **kw)


def _batch(subs: pathlib.Path) -> None:
    """Twelve students: right and wrong answers, broken files, and the hostile submissions the
    grader-trust tests hold (a lying allclose, a kernel that kills itself, a hidden-test scan)."""
    name = f"{ASSIGNMENT}.ipynb"
    put(subs, "right1", name, answered(RIGHT))
    put(subs, "right2", f"Copy of {name}", answered(RIGHT))
    put(subs, "transposed", name, answered(TRANSPOSED))
    put(subs, "raises", name, answered("def dot_product_scores(q, k):\n    raise ValueError('no')\n"))
    put(subs, "untouched", name, answered("def dot_product_scores(q, k):\n    raise NotImplementedError\n"))
    put(subs, "liar", name, answered(TRANSPOSED, "import torch\ntorch.allclose = lambda *a, **k: True\n"
                                                 "torch.testing.assert_close = lambda *a, **k: None\n"))
    put(subs, "exits", name, answered(RIGHT, "import os\nos._exit(3)\n"))
    put(subs, "scans", name, answered(RIGHT, "print(repr(globals().get('In')), repr(globals().get('_ih')))\n"))
    put(subs, "garbage", name, raw=b"\x00\x01 not a notebook")
    put(subs, "not_json", name, text="{\"cells\": [")
    (subs / "empty").mkdir(parents=True)
    (subs / "linked").mkdir(parents=True)
    os.symlink(autograde.course.assignments()[ASSIGNMENT], subs / "linked" / name)


def test_a_cluster_grades_a_batch_exactly_as_a_local_run(make_cluster, tmp_path):
    subs = tmp_path / "subs"
    _batch(subs)
    local, remote = tmp_path / "local", tmp_path / "remote"
    autograde.autograde(subs, ASSIGNMENT, local, _settings())
    c = make_cluster(2)
    autograde.autograde(subs, ASSIGNMENT, remote, _settings(scheduler=c.address))
    want, got = _rows(local), _rows(remote)
    assert len(got) == 12
    assert got == want
    by_id = {r["student_id"]: r for r in got}
    assert by_id["right1"]["score"] == "3" and by_id["liar"]["score"] == "0" and by_id["linked"]["status"] == "failed"
    for sid in by_id:  # the same pages and formgrader copies, written by the client
        for tree in ("feedback", "autograded", "submitted"):
            assert sorted(p.name for p in (local / tree / sid).rglob("*")) == \
                sorted(p.name for p in (remote / tree / sid).rglob("*")), (tree, sid)
    page = (remote / "feedback" / "scans" / f"{ASSIGNMENT}.html").read_text()
    assert "BEGIN HIDDEN" not in page and "assert torch.allclose(dot_product_scores" not in page


def _grade_in_thread(subs, out, settings):
    box = {}

    def go():
        try:
            box["results"] = autograde.autograde(subs, ASSIGNMENT, out, settings)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def _worker_running(c: localcluster.LocalCluster, client, student: str, timeout=120) -> str:
    """The name of the worker running ``student``'s task, once it runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
        for addr, keys in client.processing().items():
            if any(f"-{student}-" in str(k) for k in keys) and addr in names:
                return names[addr]
        time.sleep(0.2)
    raise AssertionError(f"{student}'s task never ran")


def test_a_worker_killed_mid_batch_loses_no_student(make_cluster, tmp_path):
    subs = tmp_path / "subs"
    name = f"{ASSIGNMENT}.ipynb"
    put(subs, "slow", name, answered(RIGHT, SLOW))
    for i in range(3):
        put(subs, f"s{i}", name, answered(RIGHT if i % 2 == 0 else TRANSPOSED))
    c = make_cluster(2)
    t, box = _grade_in_thread(subs, tmp_path / "out", _settings(scheduler=c.address))
    with c.client() as client:
        victim = _worker_running(c, client, "slow")
        time.sleep(3)  # the kernel is running the student's cells
        c.kill(c.workers[victim])
    t.join(400)
    assert not t.is_alive() and "error" not in box, box.get("error")
    rows = {r["student_id"]: r for r in _rows(tmp_path / "out")}
    assert {sid: (r["status"], r["score"]) for sid, r in rows.items()} == {
        "slow": ("graded", "3"), "s0": ("graded", "3"), "s1": ("graded", "0"), "s2": ("graded", "3")}


def test_a_student_whose_grading_kills_two_workers_gets_a_failed_row(make_cluster, tmp_path):
    subs = tmp_path / "subs"
    name = f"{ASSIGNMENT}.ipynb"
    put(subs, "slow", name, answered(RIGHT, SLOW))
    put(subs, "fine", name, answered(RIGHT))
    c = make_cluster(3)
    t, box = _grade_in_thread(subs, tmp_path / "out", _settings(scheduler=c.address))
    with c.client() as client:
        for _ in range(2):
            victim = _worker_running(c, client, "slow")
            time.sleep(2)
            c.kill(c.workers[victim])
    t.join(300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    rows = {r["student_id"]: r for r in _rows(tmp_path / "out")}
    assert rows["slow"]["status"] == "failed" and "killed its Dask worker twice" in rows["slow"]["reason"]
    assert (rows["fine"]["status"], rows["fine"]["score"]) == ("graded", "3")
    assert (tmp_path / "out" / "feedback" / "slow" / f"{ASSIGNMENT}.html").exists()


def test_the_scheduler_going_away_ends_the_run_with_the_finished_rows_kept(make_cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "SCHEDULER_GRACE", 3.0)
    subs = tmp_path / "subs"
    name = f"{ASSIGNMENT}.ipynb"
    put(subs, "fast", name, answered(RIGHT))
    put(subs, "slow", name, answered(RIGHT, "import time\ntime.sleep(55)\n"))  # still running when the scheduler goes
    c = make_cluster(2)
    out = tmp_path / "out"
    t, box = _grade_in_thread(subs, out, _settings(scheduler=c.address))
    end = time.monotonic() + 200
    while not (out / "feedback" / "fast").exists():  # the fast student's row has come back
        assert time.monotonic() < end and t.is_alive(), box
        time.sleep(0.2)
    time.sleep(1)
    killed = time.monotonic()
    c.kill(c.scheduler)
    t.join(120)
    assert not t.is_alive(), "the run hung after the scheduler went away"
    assert time.monotonic() - killed < 90
    assert isinstance(box.get("error"), cluster.ClusterError) and "went away" in str(box["error"])
    rows = {r["student_id"]: r for r in _rows(out)}
    assert (rows["fast"]["status"], rows["fast"]["score"]) == ("graded", "3")
    assert "slow" not in rows  # not graded: no row rather than a wrong one
    assert "1 of 2 students not graded" in str(box["error"])


def test_no_scheduler_is_a_clear_error_not_a_hang(tmp_path, monkeypatch, capsys):
    from grader import cli
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 3.0)
    subs = tmp_path / "subs"
    put(subs, "a", f"{ASSIGNMENT}.ipynb", answered(RIGHT))
    start = time.monotonic()
    code = cli.main(["autograde", str(subs), "--assignment", ASSIGNMENT, "--out", str(tmp_path / "out"),
                     "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2 and time.monotonic() - start < 60
    assert "no Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    code = cli.main(["autograde", str(subs), "--assignment", ASSIGNMENT, "--out", str(tmp_path / "out"),
                     "--scheduler", "no-such-file.json"])
    assert code == 2 and "neither an address" in capsys.readouterr().err


@pytest.mark.skipif(not sandbox.bwrap_works(), reason="bubblewrap is not usable here")
def test_a_worker_without_bubblewrap_is_named_and_nothing_is_graded(make_cluster, tmp_path):
    subs = tmp_path / "subs"
    put(subs, "a", f"{ASSIGNMENT}.ipynb", answered(RIGHT))
    bare = dict(os.environ, PATH="/nonexistent", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    c = make_cluster(2, w1=bare)
    with pytest.raises(cluster.ClusterError, match=r"w1|bubblewrap") as e:
        autograde.autograde(subs, ASSIGNMENT, tmp_path / "out", _settings(scheduler=c.address))
    assert "bubblewrap is not installed" in str(e.value)
    assert not (tmp_path / "out" / "grades.csv").exists() or len(_rows(tmp_path / "out")) == 0


def test_a_worker_without_the_course_is_named():
    class FakeClient:
        def scheduler_info(self):
            return {"workers": {"tcp://10.0.0.7:4000": {}, "tcp://10.0.0.8:4000": {}}}

        def run(self, fn, *args, on_error="raise"):
            return {"tcp://10.0.0.7:4000": ModuleNotFoundError("No module named 'grader'"),
                    "tcp://10.0.0.8:4000": fn(*args)}
    sha = cluster.source_sha(autograde.course.assignments()[ASSIGNMENT])
    with pytest.raises(cluster.ClusterError) as e:
        cluster.check_workers(FakeClient(), ASSIGNMENT, sha, "none")
    assert "tcp://10.0.0.7:4000: the course is not installed there" in str(e.value)
    assert "10.0.0.8" not in str(e.value)
    with pytest.raises(cluster.ClusterError, match="differs from the client's"):
        cluster.check_workers(FakeClient(), ASSIGNMENT, "0" * 64, "none")


def test_the_client_unpickles_nothing_a_worker_sends(make_cluster, tmp_path):
    """Results reach the instructor's machine as msgpack only: an object whose unpickling would
    run code is refused, and no process unpickles it."""
    import cluster_payloads
    c = make_cluster(1)
    marker = tmp_path / "unpickled"
    client = cluster.connect(c.address)
    try:
        future = client.submit(cluster_payloads.reducer, str(marker), pure=False)
        with pytest.raises(Exception) as e:
            future.result(timeout=60)
        assert "serializ" in str(e.value).lower()
        text = client.submit(cluster.grade_task, '{"limits": {"notebook_timeout": 1}}', pure=False).result(timeout=60)
    finally:
        client.close()
    assert not marker.exists(), marker.read_text()
    assert isinstance(text, str) and '"status": "failed"' in text  # a malformed job is a failed row, as JSON text


def test_a_reply_that_is_not_json_text_is_a_failed_row(tmp_path):
    class Done:
        def __init__(self, value):
            self.value = value

        def result(self, timeout=None):
            return self.value
    written = []
    for value in ({"result": {"status": "graded", "score": 3}}, "not json", '["a list"]'):
        r = cluster._collect(Done(value), "x", 3.0, tmp_path, ASSIGNMENT, None, b"", _settings(), None, tmp_path,
                             written.append, autograde)
        assert r.status == "failed" and r.score is None and "grader error on the cluster" in r.reason
    assert len(written) == 3
