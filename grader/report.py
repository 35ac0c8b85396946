"""``attn-grade report``: one assignment's class analytics, for the instructor.

:func:`report` reads the gradebook (:func:`grader.gradebook.rows`, the store of record) and
writes to a folder one HTML page and its plots as PNG files (matplotlib, Agg):

- **what to reteach**: the checkers' misconceptions aggregated over the class. A failed test's
  message reads ``AssertionError: <exercise>: <hint> failing case: <case>``; failures are
  grouped by exercise and by the hint, normalised (numbers, the failing case, the student's own
  exception text) so different cases of one mistake count together, and ranked by the share
  of graded students who made it: "41% of the class: scaled_dot_product_attention: weights do
  not sum to 1 over keys: did you take softmax over the query axis?";
- the score histogram (counts by score) and score statistics;
- each test's pass rate (full marks), partial credit and mean points;
- the grading time per student;
- late submissions (``late_days > 0``) and their penalties;
- students who could not be graded (``failed`` rows: no submission, unreadable) with the
  reason, students who ran out of time, and the grader's notes on graded rows.

A ``failed`` row counts under "did not submit / could not be graded", never in the score
statistics. The page is self-contained: inline CSS, no script, the plots embedded as ``data:``
URIs (the PNG files beside it are the same pictures, for slides). Every piece of text that
came from a student (ids, messages, reasons, file names) is HTML-escaped, and lines of the
source notebook's hidden tests are removed from it should any have slipped into a message.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import html
import io
import math
import pathlib
import re
import statistics
import warnings
from dataclasses import dataclass, field

from . import gradebook
from . import notebooks as nbs

PAGE = "report.html"
PLOTS = {"scores": "score_histogram.png", "tests": "test_pass_rate.png", "time": "time_per_student.png",
         "late": "late_days.png", "misconceptions": "misconceptions.png"}
TOP_PLOTTED = 12  # misconceptions in the bar chart (the table lists them all)
MAX_CASES = 3  # example failing cases listed per misconception
LABEL = 40  # characters of a student id or hint on a plot axis

# "AssertionError: softmax: <hint> failing case: <case> (2 of 5 cases failed)", on one line
_ERROR_TYPE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Failed|Failure|Exit|Interrupt)): (.*)\Z", re.S)
_EXERCISE = re.compile(r"^([A-Za-z_]\w*): (.*)\Z", re.S)
_CASE = re.compile(r"\s+failing case:\s*(.*)\Z", re.S)
_COUNT = re.compile(r"\s*\(\d+ of \d+ cases? failed\)")
_RAISED = re.compile(r"^(your function raised [A-Za-z_][\w.]*)(?::.*)?\Z", re.S)
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TIMEOUT = re.compile(r"exceeded \d+(?:\.\d+)? s and was|time limit|ran past", re.I)


@dataclass
class Failure:
    """One failed test of one student, read from its message."""
    student_id: str
    grade_id: str
    exercise: str
    hint: str  # as the checker worded it (without the failing case)
    key: str  # the hint normalised: what groups failures together
    case: str = ""
    truncated: bool = False


@dataclass
class Misconception:
    exercise: str
    key: str
    hints: collections.Counter = field(default_factory=collections.Counter)
    students: set = field(default_factory=set)
    tests: set = field(default_factory=set)
    cases: list = field(default_factory=list)

    @property
    def hint(self) -> str:
        """The wording most students got."""
        return self.hints.most_common(1)[0][0]


@dataclass
class TestStats:
    grade_id: str
    max_points: float = 0.0
    n: int = 0  # graded students with an outcome for this test
    passed: int = 0  # full marks
    partial: int = 0  # some points, not all
    timeouts: int = 0
    not_run: int = 0
    points: float = 0.0

    @property
    def pass_rate(self) -> float:
        return self.passed / self.n if self.n else 0.0

    @property
    def mean_points(self) -> float:
        return self.points / self.n if self.n else 0.0


def _one_line(text) -> str:
    return " ".join(str(text).split())


def parse_message(message: str, grade_id: str = "") -> tuple[str, str, str, bool]:
    """``(exercise, hint, case, truncated)`` from a failed test's message. A message that is not a
    checker's (no ``<exercise>: `` after the exception type) keeps its exception type and counts
    under the test's ``grade_id``."""
    text = _one_line(message)
    truncated = text.endswith("...")
    if truncated:
        text = text[:-3].rstrip()
    text = _COUNT.sub("", text)
    case = ""
    m = _CASE.search(text)
    if m:
        text, case = text[:m.start()], m.group(1).strip()
    exercise, hint = grade_id or "?", text
    m = _ERROR_TYPE.match(text)
    if m:
        inner = _EXERCISE.match(m.group(2))
        if inner:
            exercise, hint = inner.group(1), inner.group(2)
    return exercise, hint.strip() or "(no message)", case, truncated


def normalise(hint: str) -> str:
    """The part of a hint that names the mistake: numbers, indices and shapes become ``#``, the
    student's own exception text after "your function raised X" is dropped, case and spacing
    folded. Two cases of one mistake give the same key."""
    m = _RAISED.match(hint)
    if m:
        hint = m.group(1)
    return _one_line(_NUMBER.sub("#", hint)).lower().rstrip(" .;:")


def _scrubber(source):
    secrets = sorted({line for c in (source.cells if source is not None else [])
                      if nbs.is_test(c) for line in nbs.hidden_lines(c.source)}, key=len, reverse=True)

    def scrub(text) -> str:
        text = str(text)
        for s in secrets:
            if s in text:
                text = text.replace(s, "[hidden test line removed]")
        return text
    return scrub


def misconceptions(rows: list[gradebook.Row], scrub=str) -> list[Misconception]:
    """Failed tests of graded students grouped by (exercise, normalised hint), most students first.
    Timeouts and tests that did not run are not misconceptions (see the timeout section)."""
    failures = []
    for r in rows:
        if r.status != "graded":
            continue
        for t in r.tests:
            gid, points, max_points, status, message = _test(t)
            if status in ("ok", "timeout", "not run") or (max_points > 0 and points >= max_points):
                continue
            if not_attempted(message):
                continue  # an exercise left undone is not a misconception (a card counts those students)
            exercise, hint, case, truncated = parse_message(scrub(message), gid)
            failures.append(Failure(r.student_id, gid, exercise, hint, normalise(hint), case, truncated))
    # a message cut at 300 characters groups with the full wording it starts with
    full = collections.defaultdict(set)
    for f in failures:
        if not f.truncated:
            full[f.exercise].add(f.key)
    for f in failures:
        if f.truncated:
            stem = f.key.rsplit(" ", 1)[0] if " " in f.key else f.key
            longer = sorted(k for k in full[f.exercise] if k.startswith(stem))
            if longer:
                f.key = longer[0]
    groups: dict[tuple[str, str], Misconception] = {}
    for f in failures:
        g = groups.setdefault((f.exercise, f.key), Misconception(f.exercise, f.key))
        if not f.truncated or not g.hints:
            g.hints[f.hint] += 1
        g.students.add(f.student_id)
        g.tests.add(f.grade_id)
        if f.case and f.case not in g.cases and len(g.cases) < MAX_CASES:
            g.cases.append(f.case)
    return sorted(groups.values(), key=lambda g: (-len(g.students), g.exercise, g.key))


_UNDONE = re.compile(r"not implemented yet|^NotImplementedError\b|^NameError: name '[^']+' is not defined")


def not_attempted(message: str) -> bool:
    """A failure that says the exercise was not done at all: the stub's NotImplementedError, the
    checker's "not implemented yet", or the exercise's name never defined."""
    return bool(_UNDONE.search(_one_line(message)))


def _test(t) -> tuple[str, float, float, str, str]:
    gid, points, max_points, status, message = (list(t) + ["", 0.0, 0.0, "", ""][len(t):])[:5]
    return str(gid), _number(points), _number(max_points), str(status), str(message or "")


def _number(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


def test_stats(rows: list[gradebook.Row], source=None) -> list[TestStats]:
    """Per test, over graded students with an outcome for it; in the source notebook's order."""
    stats: dict[str, TestStats] = {}
    if source is not None:
        for c in source.cells:
            if nbs.is_test(c) and nbs.grade_id(c):
                stats[nbs.grade_id(c)] = TestStats(nbs.grade_id(c), nbs.points(c))
    for r in rows:
        if r.status != "graded":
            continue
        for t in r.tests:
            gid, points, max_points, status, _ = _test(t)
            s = stats.setdefault(gid, TestStats(gid, max_points))
            s.max_points = max(s.max_points, max_points)
            s.n += 1
            s.points += points
            if status == "ok" or (max_points > 0 and points >= max_points):
                s.passed += 1
            elif points > 0:
                s.partial += 1
            s.timeouts += status == "timeout"
            s.not_run += status == "not run"
    return list(stats.values())


def histogram(scores: list[float], max_score: float) -> list[tuple[str, float, float, int]]:
    """``(label, low, high, count)`` bins: one per point (nearest) up to 20 points, else ten equal
    bins with the top one closed."""
    if max_score <= 0:
        return [("0", 0.0, 0.0, len(scores))] if scores else []
    if max_score <= 20:
        top = int(math.ceil(max_score))
        bins = [(f"{k:g}", k - 0.5, k + 0.5, 0) for k in range(top + 1)]
        counts = [0] * len(bins)
        for s in scores:
            counts[min(top, max(0, int(math.floor(s + 0.5))))] += 1
    else:
        width = max_score / 10
        bins = [(f"{i * width:g}-{(i + 1) * width:g}", i * width, (i + 1) * width, 0) for i in range(10)]
        counts = [0] * 10
        for s in scores:
            counts[min(9, max(0, int(s / width)))] += 1
    return [(label, lo, hi, n) for (label, lo, hi, _), n in zip(bins, counts)]


def timed_out(r: gradebook.Row) -> str:
    """Why ``r`` ran out of time ("" when it did not): a test over its limit, or a cell or the
    notebook past theirs as the row's reason says."""
    tests = [_test(t)[0] for t in r.tests if _test(t)[3] == "timeout"]
    why = []
    if tests:
        why.append(f"test{'s' if len(tests) > 1 else ''} over the time limit: {', '.join(tests)}")
    notes = [part.strip() for part in r.reason.split(";") if _TIMEOUT.search(part)]
    return "; ".join(why + notes)


# ------------------------------------------------------------------------ plots ----

def _label(text, limit: int = LABEL) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings(), matplotlib.rc_context({"text.parse_math": False}):
        warnings.simplefilter("ignore")  # a glyph a student id uses that the font lacks
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _plots(rows, graded, tests, found, bins, denominator) -> dict[str, bytes]:
    import matplotlib
    out = {}
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        fig = _figure(6.4, 3.2) if graded else None
        if fig is not None and bins:
            ax = fig.add_subplot()
            ax.bar(range(len(bins)), [b[3] for b in bins], color="#3b6ea8")
            ax.set_xticks(range(len(bins)), [b[0] for b in bins], rotation=0 if len(bins) <= 12 else 45)
            ax.set_xlabel("score (after late penalties)")
            ax.set_ylabel("students")
            ax.set_title(f"Scores of {len(graded)} graded students")
            ax.yaxis.get_major_locator().set_params(integer=True)
            out["scores"] = _png(fig)

        if tests:
            fig = _figure(6.4, 0.9 + 0.32 * len(tests))
            ax = fig.add_subplot()
            y = range(len(tests))[::-1]
            ax.barh(y, [100 * t.pass_rate for t in tests], color="#3f8f5a", label="full marks")
            ax.barh(y, [100 * t.partial / t.n if t.n else 0 for t in tests], left=[100 * t.pass_rate for t in tests],
                    color="#e0b040", label="partial credit")
            ax.set_yticks(list(y), [_label(t.grade_id) for t in tests])
            for i, t in zip(y, tests):
                ax.text(101, i, f"{100 * t.pass_rate:.0f}%", va="center", fontsize=8)
            ax.set_xlim(0, 112)
            ax.set_xticks([0, 20, 40, 60, 80, 100])
            ax.set_xlabel("% of graded students")
            ax.set_title("Pass rate per test")
            fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
            out["tests"] = _png(fig)

        timed = sorted(((r.seconds, r.student_id) for r in rows if r.seconds > 0), reverse=True)
        if timed:
            fig = _figure(6.4, 3.2 if len(timed) > 40 else 0.9 + 0.22 * len(timed))
            ax = fig.add_subplot()
            if len(timed) > 40:
                ax.hist([s for s, _ in timed], bins=20, color="#7a5ea8")
                ax.set_xlabel("seconds to grade")
                ax.set_ylabel("students")
            else:
                y = range(len(timed))[::-1]
                ax.barh(y, [s for s, _ in timed], color="#7a5ea8")
                ax.set_yticks(list(y), [_label(sid, 24) for _, sid in timed])
                ax.set_xlabel("seconds to grade")
            ax.set_title("Time per student")
            out["time"] = _png(fig)

        if graded:
            counts = collections.Counter(min(3, math.ceil(r.late_days)) if r.late_days > 0 else 0 for r in graded)
            labels = ["on time", "1 day", "2 days", "3+ days"]
            fig = _figure(6.4, 2.8)
            ax = fig.add_subplot()
            ax.bar(labels, [counts.get(k, 0) for k in range(4)], color=["#3f8f5a", "#e0b040", "#d07a30", "#b03a3a"])
            ax.set_ylabel("students")
            ax.set_title(f"Late submissions: {sum(r.late_days > 0 for r in graded)} of {len(graded)}")
            ax.yaxis.get_major_locator().set_params(integer=True)
            out["late"] = _png(fig)

        if found:
            top = found[:TOP_PLOTTED]
            fig = _figure(7.5, 0.9 + 0.34 * len(top))
            ax = fig.add_subplot()
            y = range(len(top))[::-1]
            share = [100 * len(m.students) / max(1, denominator) for m in top]
            ax.barh(y, share, color="#b03a3a")
            for i, v in zip(y, share):
                ax.text(v + 1, i, f"{v:.0f}%", va="center", fontsize=8)
            ax.set_yticks(list(y), [_label(f"{m.exercise}: {m.hint}", 60) for m in top])
            ax.set_xlim(0, 110)
            ax.set_xticks([0, 20, 40, 60, 80, 100])
            ax.set_xlabel("% of graded students")
            ax.set_title("Misconceptions: what to reteach")
            out["misconceptions"] = _png(fig)
    return out


# ------------------------------------------------------------------------- page ----

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2430;
       max-width: 1100px; margin: 24px auto; padding: 0 18px; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #d5dae3; }
.meta { color: #5b6577; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #d5dae3; border-radius: 8px; padding: 10px 14px; min-width: 130px; background: #f7f9fc; }
.card b { display: block; font-size: 1.5em; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.93em; }
th, td { border: 1px solid #d5dae3; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
ol.reteach li { margin: 0 0 10px 0; } .share { font-weight: 700; color: #a02c2c; }
.case { color: #5b6577; font-size: 0.9em; } code { background: #f1f3f7; padding: 0 3px; border-radius: 3px; }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #e3e7ee; }
figcaption { font-size: 0.85em; color: #5b6577; } .empty { color: #5b6577; font-style: italic; }
td.wrap { max-width: 520px; overflow-wrap: anywhere; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.0f}%" if d else "-"


def _table(head: list[str], body: list[list], nums: set[int] = frozenset(), wrap: set[int] = frozenset()) -> str:
    def cell(i, v):
        cls = "num" if i in nums else ("wrap" if i in wrap else "")
        return f"<td class=\"{cls}\">{v}</td>" if cls else f"<td>{v}</td>"
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in body)
            + "</tbody></table>")


def _img(plots: dict, key: str, alt: str) -> str:
    if key not in plots:
        return ""
    data = base64.b64encode(plots[key]).decode()
    return (f'<figure><img id="plot-{key}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{_e(alt)} (also <a href="{PLOTS[key]}">{PLOTS[key]}</a>)</figcaption></figure>')


def render(assignment: str, rows: list[gradebook.Row], source=None, scrub=str) -> tuple[str, dict[str, bytes]]:
    """The page's HTML and its plots (name -> PNG bytes)."""
    graded = [r for r in rows if r.status == "graded"]
    failed = [r for r in rows if r.status != "graded"]
    with_tests = [r for r in graded if r.tests]
    tests = test_stats(rows, source)
    found = misconceptions(rows, scrub)
    max_score = max([r.max_score for r in rows if r.max_score] or [0.0])
    scores = [r.score for r in graded if r.score is not None]
    bins = histogram(scores, max_score)
    late = [r for r in graded if r.late_days > 0]
    slow = [(r, timed_out(r)) for r in rows]
    slow = [(r, why) for r, why in slow if why]
    denominator = len(with_tests) or len(graded)
    plots = _plots(rows, graded, tests, found, bins, denominator) if rows else {}

    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data: 'self'; "
             f"style-src 'unsafe-inline'\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>Class report: {_e(assignment)}</title><style>{CSS}</style></head><body>",
             f"<h1>Class report: {_e(assignment)}</h1>",
             f"<p class=\"meta\">From the gradebook, {_e(dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}. "
             f"{len(rows)} student{'s' if len(rows) != 1 else ''}: {len(graded)} graded, {len(failed)} did not submit "
             f"or could not be graded.</p>"]
    if not rows:
        parts.append("<p class=\"empty\" id=\"empty-class\">No student of this assignment is in the gradebook yet: "
                     "grade some submissions first (<code>attn-grade autograde</code>).</p></body></html>\n")
        return "".join(parts), plots

    mean = statistics.fmean(scores) if scores else None
    cards = [("graded", len(graded)), ("did not submit / could not be graded", len(failed)),
             ("mean score", f"{_fmt(mean)} / {max_score:g}" if scores else "-"),
             ("median score", f"{_fmt(statistics.median(scores))}" if scores else "-"),
             ("full marks", f"{sum(s >= max_score for s in scores) if max_score else 0}"),
             ("late", len(late)), ("timed out", len(slow)),
             ("left an exercise undone", sum(any(not_attempted(_test(t)[4]) for t in r.tests) for r in graded))]
    parts.append("<div class=\"cards\">" + "".join(
        f"<div class=\"card\" data-stat=\"{_e(k)}\"><b>{_e(v)}</b>{_e(k)}</div>" for k, v in cards) + "</div>")

    # what to reteach
    parts.append("<h2 id=\"reteach\">What to reteach: the class's misconceptions</h2>")
    if found:
        parts.append(f"<p>Failed tests of the {denominator} graded students, grouped by exercise and by the checker's "
                     f"hint (different failing cases of one mistake count once per student), most students first.</p>"
                     "<ol class=\"reteach\">")
        for m in found:
            variants = len(m.hints)
            cases = "; ".join(_e(c) for c in m.cases)
            parts.append(
                f"<li class=\"misconception\"><span class=\"share\">{_pct(len(m.students), denominator)} of the class</span> "
                f"({len(m.students)} student{'s' if len(m.students) != 1 else ''}): <code>{_e(m.exercise)}</code>: "
                f"<span class=\"hint\">{_e(m.hint)}</span>"
                + (f" <span class=\"case\">({variants} wordings)</span>" if variants > 1 else "")
                + f"<br><span class=\"case\">tests: {_e(', '.join(sorted(m.tests)))}"
                + (f"; failing cases: {cases}" if cases else "") + "</span></li>")
        parts.append("</ol>")
        parts.append(_img(plots, "misconceptions", "Misconceptions, share of graded students"))
    elif graded:
        parts.append("<p class=\"empty\" id=\"no-misconceptions\">No failed test among the graded students: "
                     "nothing to reteach from the checks.</p>")
    else:
        parts.append("<p class=\"empty\">No graded student yet.</p>")

    # scores
    parts.append("<h2 id=\"scores\">Scores</h2>")
    if scores:
        stats = [("graded students", len(scores)), ("mean", _fmt(mean)), ("median", _fmt(statistics.median(scores))),
                 ("standard deviation", _fmt(statistics.pstdev(scores))), ("lowest", _fmt(min(scores))),
                 ("highest", _fmt(max(scores))), ("maximum possible", f"{max_score:g}")]
        parts.append(_table(["statistic", "value"], [[_e(k), _e(v)] for k, v in stats], nums={1})
                     .replace("<table>", "<table id=\"score-stats\">", 1))
        parts.append(_img(plots, "scores", "Score histogram"))
        parts.append("<p>Histogram counts (scores after late penalties; students who could not be graded are "
                     "not counted):</p>")
        parts.append(_table(["score", "students"], [[_e(b[0]), str(b[3])] for b in bins], nums={1})
                     .replace("<table>", "<table id=\"histogram\">", 1))
    else:
        parts.append("<p class=\"empty\">No graded student: no score to show.</p>")

    # tests
    parts.append("<h2 id=\"tests\">Tests</h2>")
    if tests:
        parts.append(_img(plots, "tests", "Pass rate per test"))
        parts.append(_table(
            ["test", "points", "graded", "full marks", "pass rate", "partial credit", "mean points", "timed out",
             "not run"],
            [[f"<code>{_e(t.grade_id)}</code>", f"{t.max_points:g}", str(t.n), str(t.passed), _pct(t.passed, t.n),
              str(t.partial), f"{t.mean_points:.3g}", str(t.timeouts), str(t.not_run)] for t in tests],
            nums=set(range(1, 9))).replace("<table>", "<table id=\"test-table\">", 1))
    else:
        parts.append("<p class=\"empty\">No test outcome recorded.</p>")

    # time
    parts.append("<h2 id=\"time\">Time per student</h2>")
    seconds = [r.seconds for r in rows if r.seconds > 0]
    if seconds:
        parts.append(f"<p>Grading time (kernel start to last test): median {statistics.median(seconds):.1f} s, "
                     f"longest {max(seconds):.1f} s, total {sum(seconds):.0f} s.</p>")
        parts.append(_img(plots, "time", "Time per student"))
    else:
        parts.append("<p class=\"empty\">No grading time recorded.</p>")

    # late
    parts.append("<h2 id=\"late\">Late submissions</h2>")
    if graded:
        parts.append(f"<p>{len(late)} of {len(graded)} graded students submitted late; penalties total "
                     f"{sum(r.penalty for r in late):g} points.</p>")
        parts.append(_img(plots, "late", "Late submissions"))
        if late:
            parts.append(_table(["student", "submitted", "late days", "penalty", "score before", "score"],
                                [[_e(r.student_id), _e(r.submitted_at), f"{r.late_days:.2f}", f"{r.penalty:g}",
                                  _fmt(r.raw_score), _fmt(r.score)]
                                 for r in sorted(late, key=lambda r: (-r.late_days, r.student_id))],
                                nums={2, 3, 4, 5}).replace("<table>", "<table id=\"late-table\">", 1))

    # failed rows
    parts.append("<h2 id=\"failed\">Did not submit or could not be graded</h2>")
    if failed:
        parts.append(_table(["student", "reason", "file"],
                            [[_e(r.student_id), _e(scrub(r.reason) or "(no reason recorded)"), _e(r.file)]
                             for r in failed], wrap={1}).replace("<table>", "<table id=\"failed-table\">", 1))
    else:
        parts.append("<p class=\"empty\">Everyone's submission was graded.</p>")

    # timeouts
    parts.append("<h2 id=\"timeouts\">Ran out of time</h2>")
    if slow:
        parts.append(_table(["student", "what ran out of time", "seconds"],
                            [[_e(r.student_id), _e(scrub(why)), f"{r.seconds:.1f}"] for r, why in slow],
                            nums={2}, wrap={1}).replace("<table>", "<table id=\"timeout-table\">", 1))
    else:
        parts.append("<p class=\"empty\">No student ran out of time.</p>")

    # notes
    noted = [r for r in graded if r.reason]
    if noted:
        parts.append("<h2 id=\"notes\">The grader's notes on graded students</h2>")
        parts.append(_table(["student", "note"], [[_e(r.student_id), _e(scrub(r.reason))] for r in noted], wrap={1}))

    # everyone
    parts.append("<h2 id=\"students\">Every student</h2><details><summary>show the table</summary>")
    parts.append(_table(["student", "status", "score", "of", "late days", "penalty", "seconds", "file"],
                        [[_e(r.student_id), _e(r.status), _fmt(r.score), f"{r.max_score:g}", f"{r.late_days:.2f}",
                          f"{r.penalty:g}", f"{r.seconds:.1f}", _e(r.file)] for r in rows], nums={2, 3, 4, 5, 6}))
    parts.append("</details></body></html>\n")
    return "".join(parts), plots


def report(db_url: str, assignment: str, out: pathlib.Path, source=None) -> pathlib.Path:
    """Write ``out/report.html`` and its PNG plots for ``assignment`` from the gradebook at
    ``db_url``; return the page's path. ``source``: the assignment's source notebook (test order
    and points, and hidden test lines to keep off the page); by default the course's own
    ``solutions/<assignment>.ipynb`` when there is one."""
    if source is None:
        source = _course_source(assignment)
    rows = gradebook.rows(db_url, assignment)
    page, plots = render(assignment, rows, source, _scrubber(source))
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for key, name in PLOTS.items():
        path = out / name
        if key in plots:
            _write(path, plots[key])
        elif path.exists():  # a plot an earlier report drew that this one has no data for
            path.unlink()
    target = out / PAGE
    _write(target, page.encode("utf-8"))
    return target


def _course_source(assignment: str):
    from . import course
    path = course.assignments().get(assignment)
    if path is None:
        return None
    import nbformat
    try:
        return nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - the report does without it
        return None


def _write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
