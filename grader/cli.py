"""``attn-grade`` (also ``python -m grader``): release, validate, autograde, export, feedback, report, demo."""

from __future__ import annotations

import argparse
import pathlib
import sys

from . import autograde, course, demo, export, grade, release, validate


def _limits(args) -> grade.Limits:
    return grade.Limits(cell_timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                        memory_bytes=int(args.memory_gib * 2**30))


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="wall-clock limit per cell in seconds (default 120)")
    p.add_argument("--notebook-timeout", type=float, default=900.0, metavar="S",
                   help="wall-clock limit per notebook in seconds (default 900)")
    p.add_argument("--memory-gib", type=float, default=3.0, metavar="G",
                   help="memory (address space) limit per kernel in GiB (default 3)")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                   help="kernel sandbox: bubblewrap when available (auto), required (bwrap), or rlimits only (none)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="attn-grade", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("release", help="regenerate notebooks/ from solutions/ (and lay out an nbgrader course)")
    p.add_argument("names", nargs="*", metavar="NAME", help="assignments to release (default: all)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 naming the notebooks that differ")
    p.add_argument("--course", type=pathlib.Path, default=None, metavar="DIR",
                   help="also write DIR/source and DIR/release, register in DIR's gradebook (nbgrader exchange, formgrader)")

    p = sub.add_parser("validate", help="run one notebook as the autograder will; exit 1 if a visible test fails")
    p.add_argument("notebook", type=pathlib.Path)
    _add_limits(p)

    p = sub.add_parser("autograde", help="grade a folder of student folders")
    p.add_argument("submissions", type=pathlib.Path, help="one folder per student (folder name = student id)")
    p.add_argument("--assignment", required=True, help="the notebook's file stem, e.g. 01_dot_products")
    p.add_argument("--out", required=True, type=pathlib.Path, help="where grades.csv and feedback/ go")
    p.add_argument("--jobs", type=int, default=2, help="students graded at once (default 2)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="grade on a Dask cluster: tcp://HOST:PORT or a scheduler file (each student is one task; "
                        "workers need the course installed and bubblewrap)")
    p.add_argument("--db-url", default=None,
                   help="gradebook URL (default sqlite:///OUT/gradebook.db; e.g. postgresql://user@host/course)")
    p.add_argument("--no-feedback", action="store_true", help="skip the feedback pages")
    p.add_argument("--student", action="append", default=[], metavar="ID",
                   help="regrade only this student (repeatable); grades.csv still lists everyone")
    p.add_argument("--layout", default="auto", choices=("auto", "folders", "nbgrader", "canvas", "moodle",
                                                        "blackboard", "gradescope"),
                   help="how SUBMISSIONS is organised (default: detected)")
    p.add_argument("--roster", type=pathlib.Path, default=None, metavar="CSV",
                   help="the class list (id, name, email, lms_id): missing students get a 'no submission' row")
    p.add_argument("--due", default=None, metavar="T",
                   help="due time, e.g. '2026-12-01 23:59 Europe/Paris' or ISO 8601 (no zone: this machine's)")
    p.add_argument("--extensions", type=pathlib.Path, default=None, metavar="CSV",
                   help="per-student due times or extra days (student_id, due | days)")
    p.add_argument("--late-policy", default=None, metavar="SPEC",
                   help="e.g. '10%%/day, max 3 days, then 0', '5%%/hour', '0 after due' (default: none)")
    _add_limits(p)

    def where(p):
        p.add_argument("--assignment", required=True, help="the notebook's file stem, e.g. 03_attention")
        p.add_argument("--course", type=pathlib.Path, default=pathlib.Path("."), metavar="DIR",
                       help="the folder autograde wrote (its --out; default: the current folder)")
        p.add_argument("--db-url", default=None, help="gradebook URL (default: sqlite in DIR)")

    p = sub.add_parser("export", help="write the LMS's grade import file from the gradebook")
    where(p)
    p.add_argument("--format", required=True, choices=export.FORMATS, help="canvas, moodle or csv")
    p.add_argument("--out", required=True, type=pathlib.Path, metavar="FILE")
    p.add_argument("--column", default=None, help="Canvas: the existing gradebook column, e.g. 'HW 3 (12345)'")

    p = sub.add_parser("feedback", help="pack the feedback pages for a bulk upload to the LMS")
    where(p)
    p.add_argument("--zip", action="store_true", required=True, help="write a zip named as the LMS expects")
    p.add_argument("--out", type=pathlib.Path, default=None, metavar="FILE",
                   help="the zip (default: DIR/feedback-<assignment>.zip)")
    p.add_argument("--layout", default="auto", choices=("auto", "folders", "canvas", "moodle"),
                   help="naming inside the zip (default: the layout the submissions came in)")

    p = sub.add_parser("report", help="class analytics: scores, pass rates, time, lateness, misconceptions")
    where(p)
    p.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR", help="folder for report.html and plots")

    p = sub.add_parser("demo", help="release, collect and grade sample submissions")
    p.add_argument("--keep", type=pathlib.Path, default=None, metavar="DIR",
                   help="work in DIR and keep it (default: a temporary folder, removed at the end)")

    args = parser.parse_args(argv)
    if args.command == "release":
        try:
            drifted = release.release(check=args.check, names=args.names, course_dir=args.course)
        except release.ReleaseError as e:
            print(f"attn-grade: {e}", file=sys.stderr)
            return 2
        count = len(args.names) or len(course.assignments())
        if args.check:
            if drifted:
                print("student notebooks out of date (run `attn-grade release`): " + ", ".join(drifted))
                return 1
            print(f"notebooks/ matches solutions/ ({count} notebooks)")
            return 0
        print(f"released {count} notebooks" + (f"; updated: {', '.join(drifted)}" if drifted else "; nothing changed")
              + (f"; course laid out in {args.course}" if args.course else ""))
        return 0
    if args.command == "validate":
        return validate.validate(args.notebook, _limits(args), args.sandbox)
    if args.command == "autograde":
        if args.jobs < 1:
            parser.error("--jobs must be at least 1")
        settings = autograde.Settings(jobs=args.jobs, limits=_limits(args), sandbox=args.sandbox,
                                      db_url=args.db_url, feedback=not args.no_feedback,
                                      students=tuple(args.student), layout=args.layout, roster=args.roster,
                                      due=args.due, extensions=args.extensions, late_policy=args.late_policy,
                                      scheduler=args.scheduler)
        try:
            results = autograde.autograde(args.submissions, args.assignment, args.out, settings)
        except (ValueError, RuntimeError) as e:
            print(f"attn-grade: {e}", file=sys.stderr)
            return 2
        print(f"graded {len(results)} submission(s); wrote {args.out / 'grades.csv'} (every student of "
              f"{args.assignment} in the gradebook)")
        return 0
    if args.command in ("export", "feedback", "report"):
        db_url = args.db_url or course.sqlite_url(args.course / "gradebook.db")
        if not args.db_url and not (args.course / "gradebook.db").exists():
            print(f"attn-grade: no gradebook in {args.course} (give --course the folder autograde wrote, "
                  "or --db-url)", file=sys.stderr)
            return 2
        try:
            if args.command == "export":
                for warning in export.export(db_url, args.assignment, args.format, args.out, args.column):
                    print(f"warning: {warning}", file=sys.stderr)
                print(f"wrote {args.out}")
            elif args.command == "feedback":
                target = args.out or args.course / f"feedback-{args.assignment}.zip"
                count, missing = export.feedback_zip(args.course, db_url, args.assignment, target, args.layout)
                print(f"wrote {target} ({count} pages)" + (f"; no page for: {', '.join(missing)}" if missing else ""))
            else:
                from . import report
                print(f"wrote {report.report(db_url, args.assignment, args.out)}")
        except ValueError as e:
            print(f"attn-grade: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "demo":
        try:
            demo.demo(keep=args.keep)
        except ValueError as e:
            print(f"attn-grade: {e}", file=sys.stderr)
            return 2
        return 0
    return 2
