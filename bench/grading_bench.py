"""Grading speed: attn-grade (sandbox on, --jobs 2) vs nbgrader's own sequential autograde.

Both grade the same 40 submissions of a real course notebook, one after the other in this
one process run, and the script prints both wall-clock times and their ratio.

    python bench/grading_bench.py [--students 40] [--jobs 2] [--assignment 01_dot_products]

With ``--scheduler ADDRESS`` (a Dask scheduler, or ``local`` to start one here with
``--workers`` one-thread workers on 127.0.0.1) it grades the same submissions locally
(``--jobs``) and on the cluster instead, and prints both times: on one machine this is the
cluster's overhead per student, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grader import autograde, course, grade, release, sandbox  # noqa: E402
from grader.localcluster import LocalCluster  # noqa: E402
from grader import notebooks as nbs  # noqa: E402


def make_submissions(root: pathlib.Path, assignment: str, n: int) -> list[tuple[str, nbformat.NotebookNode]]:
    source = nbformat.read(course.assignments()[assignment], as_version=4)
    template = nbformat.reads(release.student_version(course.assignments()[assignment]), as_version=4)
    wrong = {nbs.grade_id(c): "def broken(*args):\n    raise ValueError('not done')\n" for c in source.cells if nbs.is_solution(c)}
    subs = []
    for i in range(n):
        kind = i % 4
        nb = (template if kind == 3 else
              nbs.as_student_answer(template, source, wrong if kind == 2 else None))
        subs.append((f"student{i:02d}", nb))
    return subs


def time_ours(subs, assignment: str, root: pathlib.Path, jobs: int, scheduler: str | None = None,
              name: str = "ours") -> float:
    folder = root / name / "submitted"
    for sid, nb in subs:
        (folder / sid).mkdir(parents=True)
        nbformat.write(nb, folder / sid / f"{assignment}.ipynb")
    settings = autograde.Settings(jobs=jobs, sandbox="auto", progress=False, limits=grade.Limits(cell_timeout=120),
                                  scheduler=scheduler)
    start = time.perf_counter()
    results = autograde.autograde(folder, assignment, root / name / "out", settings)
    seconds = time.perf_counter() - start
    assert len(results) == len(subs)
    return seconds


def time_nbgrader(subs, assignment: str, root: pathlib.Path) -> float:
    course_dir = root / "nbgrader"
    course.ensure_tools_on_path()
    (course_dir / "source" / assignment).mkdir(parents=True)
    shutil.copy(course.assignments()[assignment], course_dir / "source" / assignment / f"{assignment}.ipynb")
    (course_dir / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.root = %r\nc.Execute.timeout = 120\n" % str(course_dir))
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    run = lambda *args: subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course_dir, env=env,
                                       capture_output=True, text=True)
    done = run("generate_assignment", assignment, "--force")
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    for sid, nb in subs:
        folder = course_dir / "submitted" / sid / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
    start = time.perf_counter()
    done = run("autograde", assignment, "--create", "--force")
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    graded = list((course_dir / "autograded").glob(f"*/{assignment}/{assignment}.ipynb"))
    assert len(graded) == len(subs), f"nbgrader graded {len(graded)} of {len(subs)}"
    return seconds


def compare_cluster(args, root: pathlib.Path) -> int:
    subs = make_submissions(root, args.assignment, args.students)
    local = None
    address = args.scheduler
    try:
        if address == "local":  # as an instructor starts them: one-thread workers, each with its nanny
            local = LocalCluster(root / "dask")
            for i in range(args.workers):
                local.add_worker(f"w{i}")
            local.wait_for(args.workers)
            address = local.address
        ours = time_ours(subs, args.assignment, root, args.jobs)
        remote = time_ours(subs, args.assignment, root, args.jobs, scheduler=address, name="cluster")
    finally:
        if local is not None:
            local.close()
        shutil.rmtree(root, ignore_errors=True)
    where = f"{args.workers} one-thread Dask workers on this machine" if args.scheduler == "local" else args.scheduler
    n = args.students
    print(f"\n{n} submissions of {args.assignment}, {os.cpu_count()} CPU cores")
    print("| attn-grade autograde | seconds | s/student |")
    print("|---|---|---|")
    print(f"| local, --jobs {args.jobs} | {ours:.1f} | {ours / n:.2f} |")
    print(f"| --scheduler ({where}) | {remote:.1f} | {remote / n:.2f} |")
    print(f"\ncluster overhead per student: {(remote - ours) / n:+.2f} s ({remote / ours:.2f}x the local time)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--assignment", default="01_dot_products")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="compare local grading with grading on this Dask scheduler ('local': start one here)")
    parser.add_argument("--workers", type=int, default=2, help="workers of --scheduler local (default 2)")
    args = parser.parse_args(argv)
    root = pathlib.Path(tempfile.mkdtemp(prefix="attn-bench-"))
    if args.scheduler:
        return compare_cluster(args, root)
    try:
        subs = make_submissions(root, args.assignment, args.students)
        mode = sandbox.resolve_mode("auto")
        ours = time_ours(subs, args.assignment, root, args.jobs)
        theirs = time_nbgrader(subs, args.assignment, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.students} submissions of {args.assignment}, {os.cpu_count()} CPU cores")
    print("| grader | sandbox | jobs | seconds | s/student |")
    print("|---|---|---|---|---|")
    print(f"| attn-grade autograde | {mode} | {args.jobs} | {ours:.1f} | {ours / args.students:.2f} |")
    print(f"| nbgrader autograde | none | 1 | {theirs:.1f} | {theirs / args.students:.2f} |")
    print(f"\nspeed-up: {theirs / ours:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
