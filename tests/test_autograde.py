"""attn-grade autograde on a class full of the submissions that break nbgrader.

One batch grades every case (two at a time, sandbox on); each test then reads its row.
Several answers are written so that they earn full marks only if the sandbox held: they
try something forbidden and sabotage themselves when it works.
"""

import csv
import socket
import subprocess
import threading

import nbformat
import pytest

from grader import autograde, grade, sandbox
from grader import notebooks as nbs
from grading_helpers import ASSIGNMENT, RIGHT, TRANSPOSED, answered, cell_index, deep, put, source, template

FULL = 3.0
BWRAP = sandbox.resolve_mode("auto") == "bwrap"
MARKER = "3607.25"  # a sleep nobody else runs: must not survive grading


def _guarded(check: str) -> str:
    """An answer that is right only if ``check`` (code setting `leak`) finds no leak."""
    return f"leak = False\n{check}\n" + RIGHT.replace("    return", "    assert not leak, 'sandbox leak'\n    return")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    subs, out = root / "submitted", root / "graded"
    outside = root / "outside.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    solution_path = next(iter([p for p in (autograde.course.SOLUTIONS).glob(f"{ASSIGNMENT}.ipynb")]))
    name = f"{ASSIGNMENT}.ipynb"

    put(subs, "right", name, answered())
    put(subs, "wrong", name, answered(TRANSPOSED))
    put(subs, "untouched", name, template())
    put(subs, "colab_copy", f"Copy of {name}", answered())
    put(subs, "numbered_copy", f"{ASSIGNMENT} (1).ipynb", answered())
    put(subs, "renamed_only", "homework.ipynb", answered())
    (subs / "nothing").mkdir(parents=True)
    put(subs, "other_files", "notes.txt", text="I forgot")
    put(subs, "empty", name, text="")
    put(subs, "bad_json", name, text='{"cells": [}')
    put(subs, "not_notebook", name, text='{"hello": "world"}')
    put(subs, "binary", name, raw=b"\x89PNG\r\n\x1a\n\x00\x00")

    dup = answered()
    dup.cells.insert(3, deep(dup.cells[cell_index(dup, "dot_product_scores")]))  # duplicated solution cell
    dup.cells.append(deep(dup.cells[cell_index(dup, "test_dot_product_scores")]))  # duplicated test cell
    put(subs, "duplicated", name, dup)

    renamed = answered()
    for cell in renamed.cells:
        if nbs.grade_id(cell) == "dot_product_scores":
            cell.metadata["nbgrader"]["grade_id"] = "my_answer"
            cell["id"] = "changed-id"
    put(subs, "renamed_ids", name, renamed)

    stripped = answered()
    for cell in stripped.cells:
        cell.metadata = {}
        cell["id"] = nbs.stable_id("x", cell.source)
    put(subs, "no_metadata", name, stripped)

    deleted = answered(TRANSPOSED)
    deleted.cells = [c for c in deleted.cells if not nbs.is_test(c)]
    put(subs, "deleted_tests", name, deleted)

    edited = answered(TRANSPOSED)
    for cell in edited.cells:
        if nbs.is_test(cell):
            cell.source = "print('all good')"
    put(subs, "edited_tests", name, edited)

    loop = answered()
    loop.cells.insert(cell_index(loop, "test_dot_product_properties"),
                      nbformat.v4.new_code_cell("while True:\n    pass"))
    put(subs, "infinite_loop", name, loop)

    stubborn = answered()
    stubborn.cells.insert(cell_index(stubborn, "test_dot_product_properties"), nbformat.v4.new_code_cell(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)"))
    put(subs, "ignores_sigint", name, stubborn)

    dies = answered()
    dies.cells.insert(cell_index(dies, "test_dot_product_properties"), nbformat.v4.new_code_cell("import os\nos._exit(3)"))
    put(subs, "kernel_dies", name, dies)

    put(subs, "memory_hog", name, answered(RIGHT + "\nhog = bytearray(6 * 2**30)\n"))

    put(subs, "huge_output", name, answered(RIGHT + "\nprint('x' * 20_000_000)\nfor i in range(5000):\n    print(i)\n"))

    put(subs, "tamper_checks", name, answered(
        "import attnkit.checks, torch\ndef dot_product_scores(q, k):\n    return torch.zeros(*q.shape[:-1], k.shape[-2])\n"
        "attnkit.checks.check_dot_product_scores = lambda fn: print('passed')\ntorch.allclose = lambda *a, **k: True\n"))
    put(subs, "tamper_testing", name, answered(
        TRANSPOSED + "import numpy.testing, torch.testing\nnumpy.testing.assert_allclose = lambda *a, **k: None\n"
        "torch.testing.assert_close = lambda *a, **k: None\n"))
    put(subs, "tamper_traceback", name, answered(
        TRANSPOSED + "get_ipython().showtraceback = lambda *a, **k: None\n"))
    put(subs, "tamper_events", name, answered(
        "import attnkit.checks, torch\n"
        "def dot_product_scores(q, k):\n    return torch.zeros(*q.shape[:-1], k.shape[-2])\n"
        "_real = (attnkit.checks.check_dot_product_scores, torch.allclose)\n"
        "def _patch(*a):\n    attnkit.checks.check_dot_product_scores = lambda fn: None\n"
        "    torch.allclose = lambda *a, **k: True\n"
        "def _restore(*a):\n    attnkit.checks.check_dot_product_scores, torch.allclose = _real\n"
        "get_ipython().events.register('pre_run_cell', _patch)\n"
        "get_ipython().events.register('post_run_cell', _restore)\n"))
    put(subs, "spy_hidden", name, answered(
        "captured = []\nget_ipython().events.register('pre_run_cell', lambda info: captured.append(info.raw_cell))\n"
        + TRANSPOSED, ))
    spy = nbformat.read(subs / "spy_hidden" / name, as_version=4)
    spy.cells.append(nbformat.v4.new_code_cell("print('CAPTURED-' + 'CELLS', '\\n'.join(captured))"))
    nbformat.write(spy, subs / "spy_hidden" / name)

    put(subs, "reads_solutions", name, answered(_guarded(
        f"try:\n    leak = 'BEGIN HIDDEN' in open({str(solution_path)!r}).read()\nexcept OSError:\n    pass")))
    put(subs, "reads_others", name, answered(_guarded(
        f"try:\n    leak = len(open({str(subs / 'right' / name)!r}).read()) > 0\nexcept OSError:\n    pass")))
    put(subs, "reads_gradebook", name, answered(_guarded(
        f"import os\nleak = os.path.exists({str(out / 'gradebook.db')!r}) or os.path.exists({str(out)!r} + '/grades.csv')")))
    put(subs, "writes_outside", name, answered(_guarded(
        f"try:\n    open({str(outside)!r}, 'w').write('pwned')\n    leak = True\nexcept OSError:\n    pass")))
    put(subs, "network", name, answered(_guarded(
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    leak = True\n"
        "except OSError:\n    pass")))
    put(subs, "leaves_process", name, answered(RIGHT + f"\nimport subprocess\nsubprocess.Popen(['sleep', '{MARKER}'])\n"))

    accepted = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    settings = autograde.Settings(jobs=2, limits=grade.Limits(cell_timeout=8, notebook_timeout=90,
                                                             memory_bytes=int(2.5 * 2**30)), progress=True)
    results = autograde.autograde(subs, ASSIGNMENT, out, settings)
    server.close()
    rows = {r["student_id"]: r for r in csv.DictReader((out / "grades.csv").open())}
    return dict(rows=rows, results={r.student_id: r for r in results}, out=out, subs=subs,
                outside=outside, accepted=accepted)


def row(batch, student):
    return batch["rows"][student]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_row_per_student_folder_with_the_contract_columns(batch):
    with (batch["out"] / "grades.csv").open() as f:
        header = f.readline().strip()
    assert header.startswith("student_id,assignment,score,max_score,status,reason")  # the contract's six first
    folders = {p.name for p in batch["subs"].iterdir() if p.is_dir()}
    assert set(batch["rows"]) == folders
    for r in batch["rows"].values():
        assert r["assignment"] == ASSIGNMENT and r["max_score"] == "3" and r["status"] in ("graded", "failed")
        assert "\n" not in r["reason"]


@pytest.mark.parametrize("student", ["right", "colab_copy", "numbered_copy", "renamed_only", "duplicated",
                                     "renamed_ids", "no_metadata"])
def test_full_marks(batch, student):
    r = row(batch, student)
    assert (r["status"], float(r["score"])) == ("graded", FULL), r


@pytest.mark.parametrize("student", ["wrong", "untouched"])
def test_zero_is_a_graded_zero(batch, student):
    r = row(batch, student)
    assert (r["status"], float(r["score"])) == ("graded", 0.0), r


@pytest.mark.parametrize("student,words", [
    ("nothing", "no notebook"), ("other_files", "notes.txt"), ("empty", "empty"), ("bad_json", "not valid JSON"),
    ("not_notebook", "not a notebook"), ("binary", "not"),
])
def test_unreadable_submissions_fail_with_a_reason(batch, student, words):
    r = row(batch, student)
    assert r["status"] == "failed" and r["score"] == "" and words in r["reason"], r


def test_duplicates_are_noted(batch):
    assert "duplicated" in row(batch, "duplicated")["reason"]


@pytest.mark.parametrize("student,words", [("deleted_tests", "deleted test"), ("edited_tests", "edited test")])
def test_tests_are_restored_and_graded(batch, student, words):
    r = row(batch, student)
    assert (r["status"], float(r["score"])) == ("graded", 0.0) and words in r["reason"], r


@pytest.mark.parametrize("student,words", [("infinite_loop", "interrupted"), ("ignores_sigint", "killed"),
                                           ("kernel_dies", "died")])
def test_runaway_cells_are_bounded_and_credit_is_kept(batch, student, words):
    r = row(batch, student)
    assert r["status"] == "graded" and words in r["reason"], r
    assert float(r["score"]) == FULL, r  # the cell is skipped, the state rebuilt, later tests still run
    assert batch["results"][student].seconds < 60


def test_memory_hog_is_stopped_by_the_limit(batch):
    r = row(batch, "memory_hog")
    assert r["status"] == "graded" and float(r["score"]) == FULL, r


def test_huge_output_is_truncated_in_feedback(batch):
    page = batch["out"] / "feedback" / "huge_output" / f"{ASSIGNMENT}.html"
    assert page.stat().st_size < 2_000_000
    assert "cut by the grader" in page.read_text() or "dropped by the grader" in page.read_text()


@pytest.mark.parametrize("student", ["tamper_checks", "tamper_testing", "tamper_traceback", "tamper_events"])
def test_tampering_gains_nothing(batch, student):
    # the tests run in the grader's examiner: what the kernel replaces there decides nothing
    r = row(batch, student)
    assert r["status"] == "graded" and float(r["score"]) == 0.0, r


def test_feedback_never_shows_hidden_tests(batch):
    hidden = [line for c in source().cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)]
    assert hidden
    for page in (batch["out"] / "feedback").rglob("*.html"):
        text = page.read_text()
        for line in hidden:
            import html
            assert line not in text and html.escape(line) not in text, (page, line)
    spy = (batch["out"] / "feedback" / "spy_hidden" / f"{ASSIGNMENT}.html").read_text()
    printed = spy.split("CAPTURED-CELLS", 1)[1].split("</pre>", 1)[0]
    assert "print(" in printed  # the spy saw the cells that ran after it...
    assert "check_dot_product_scores" not in printed  # ...and no test cell: none ever ran in the kernel


def test_every_student_gets_a_feedback_page(batch):
    for student in batch["rows"]:
        assert (batch["out"] / "feedback" / student / f"{ASSIGNMENT}.html").exists(), student


def test_gradebook_records_graded_students_only(batch):
    from nbgrader.api import Gradebook, MissingEntry
    with Gradebook(f"sqlite:///{batch['out'] / 'gradebook.db'}") as gb:
        assert gb.find_submission(ASSIGNMENT, "right").score == FULL
        assert gb.find_submission(ASSIGNMENT, "wrong").score == 0.0
        with pytest.raises(MissingEntry):
            gb.find_submission(ASSIGNMENT, "bad_json")


@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not available here: isolation is documented as degraded")
@pytest.mark.parametrize("student", ["reads_solutions", "reads_others", "reads_gradebook", "writes_outside", "network"])
def test_sandbox_holds(batch, student):
    r = row(batch, student)
    assert float(r["score"]) == FULL, r  # each answer sabotages itself if the forbidden thing worked
    assert not batch["outside"].exists()
    assert not batch["accepted"]


def test_no_process_left_behind(batch):
    r = row(batch, "leaves_process")
    assert float(r["score"]) == FULL
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"sleep {MARKER}" not in ps
    assert "ipykernel_launcher" not in "\n".join(l for l in ps.splitlines() if "attn-grade-" in l)
