"""Intake attacks, written as tests: what a student can put in a submissions folder.

Each case is one a determined student can build with ordinary file operations (or an archive
the instructor unpacks): links to the solutions, links on the way, a folder that is a link,
a FIFO that would hang the grader, a hard link to a file outside the batch, a folder name
that is not UTF-8, notebooks that are correct but unusual (lone surrogates, nbformat 3), JSON
built to crash the parser, and outputs built to make a huge feedback page. The grader may
run as root, so nothing here may follow a link; one bad folder must not cost anyone else
their row.
"""

import base64
import copy
import csv
import html as html_module
import io
import json
import os
import re
import socket
import stat
import time
import types

import nbformat
import pytest

from grader import course, feedback, intake
from grader import notebooks as nbs
from grading_helpers import ASSIGNMENT, RIGHT, answered, cell_index, source

NAME = f"{ASSIGNMENT}.ipynb"


def _raw(nb) -> bytes:
    return json.dumps(nb).encode()


@pytest.fixture
def root(tmp_path):
    """A submissions folder with one honest student, ``ada``."""
    subs = tmp_path / "submitted"
    nbs.write_submission(subs, "ada", NAME, answered())
    return subs


def _read(root, parts, counts=None):
    return intake.read_submission_bytes(root, parts, intake.census(root) if counts is None else counts)


def _refused(root, parts, words):
    with pytest.raises(nbs.SubmissionError) as caught:
        _read(root, parts)
    message = str(caught.value)
    assert words in message and "\n" not in message, message
    return message


def _folder(root, name):
    return next(f for f in intake.scan(root) if f.name == name)


# ------------------------------------------------------------ links ----

def test_a_symlinked_notebook_is_refused_not_read(root):
    """Today the grader opens the link as root and grades the solution notebook 3/3."""
    solution = course.assignments()[ASSIGNMENT]
    (root / "mallory").mkdir()
    os.symlink(solution, root / "mallory" / NAME)
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts is None and "symbolic link" in why and NAME in why, why
    _refused(root, ("mallory", NAME), "is a symbolic link")
    with pytest.raises(nbs.SubmissionError, match="symbolic link"):  # validate's reader follows nothing either
        nbs.read_submission(root / "mallory" / NAME)
    assert _read(root, ("ada", NAME)) == (root / "ada" / NAME).read_bytes()  # the honest student is unaffected


def test_a_symlink_to_any_file_under_a_notebook_name_is_reported(root, tmp_path):
    (tmp_path / "elsewhere.txt").write_text("not yours")
    (root / "mallory" / "deep").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.txt", root / "mallory" / "deep" / "Copy of homework.ipynb")
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts is None and "deep/Copy of homework.ipynb is a symbolic link" in why, why


def test_a_symlinked_folder_on_the_way_is_not_followed(root, tmp_path):
    """``mallory/work`` links to a folder holding the solution; and to another student's folder."""
    hideout = tmp_path / "hideout"
    hideout.mkdir()
    (hideout / NAME).write_bytes(course.assignments()[ASSIGNMENT].read_bytes())
    (root / "mallory").mkdir()
    os.symlink(hideout, root / "mallory" / "work")
    os.symlink(root / "ada", root / "mallory" / "ada")
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts is None and why.startswith("no notebook in the folder"), why
    for link in ("work", "ada"):
        message = _refused(root, ("mallory", link, NAME), "is a symbolic link")
        assert f"folder {link}" in message, message


def test_a_student_folder_that_is_a_symlink_gets_a_failed_row_reason(root, tmp_path):
    os.symlink(root / "ada", root / "eve")  # eve's "folder" is ada's work
    os.symlink(course.SOLUTIONS, root / "zed")  # or the solutions
    folders = {f.name: f for f in intake.scan(root)}
    assert sorted(folders) == ["ada", "eve", "zed"]  # every entry still gets a row
    assert folders["ada"].problem == ""
    for name in ("eve", "zed"):
        assert "symbolic link" in folders[name].problem, folders[name]
        parts, why = intake.find_notebook(folders[name], ASSIGNMENT)
        assert parts is None and "symbolic link" in why, why
        _refused(root, (name, NAME), "the student folder is a symbolic link")
    counts = intake.census(root, list(folders.values()))
    assert len(counts.counts) == 1  # only ada's notebook: nothing reached through the links


def test_scan_skips_hidden_and_junk_entries_and_keeps_special_ones(root):
    for name in (".git", "__MACOSX", ".ipynb_checkpoints", "__pycache__"):
        (root / name).mkdir()
    (root / "index.html").write_text("an LMS page")  # a file at the top is not a student
    os.mkfifo(root / "pipe")
    folders = {f.name: f for f in intake.scan(root)}
    assert sorted(folders) == ["ada", "pipe"]
    assert "FIFO" in folders["pipe"].problem and "not a folder" in folders["pipe"].problem


# ------------------------------------------------- special files ----

@pytest.mark.timeout(30)
def test_a_fifo_named_like_the_notebook_does_not_hang(root):
    (root / "mallory").mkdir()
    os.mkfifo(root / "mallory" / NAME)
    start = time.monotonic()
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts is None and "FIFO" in why, why
    _refused(root, ("mallory", NAME), "is not a regular file")
    with pytest.raises(nbs.SubmissionError, match="not a regular file"):
        nbs.read_submission(root / "mallory" / NAME)
    assert time.monotonic() - start < 5


@pytest.mark.timeout(30)
def test_sockets_and_devices_are_never_opened(root, tmp_path):
    (root / "mallory").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    try:
        os.chdir(root / "mallory")  # a relative name: pytest's folders can exceed AF_UNIX's 108 bytes
        sock.bind(NAME)
        os.chdir(here)
        _refused(root, ("mallory", NAME), "is not a regular file")
    finally:
        os.chdir(here)
        sock.close()
    device = root / "mallory" / "zero.ipynb"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero: reading it never ends
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here (no CAP_MKNOD)")
    _refused(root, ("mallory", "zero.ipynb"), "is not a regular file")


# ---------------------------------------------------------- hard links ----

def test_a_hard_link_to_a_file_outside_the_submissions_is_refused(root, tmp_path):
    secret = tmp_path / "instructor_copy.ipynb"
    secret.write_bytes(course.assignments()[ASSIGNMENT].read_bytes())
    (root / "mallory").mkdir()
    os.link(secret, root / "mallory" / NAME)
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts == ("mallory", NAME), why  # it looks like any notebook ...
    _refused(root, parts, "is a hard link to a file outside the submissions")  # ... but is not read


def test_two_hard_linked_copies_inside_the_batch_are_accepted(root):
    (root / "bob").mkdir()
    os.link(root / "ada" / NAME, root / "bob" / NAME)  # e.g. an LMS that deduplicates identical files
    counts = intake.census(root)
    for student in ("ada", "bob"):
        parts, why = intake.find_notebook(_folder(root, student), ASSIGNMENT)
        nb = nbs.parse_submission(intake.read_submission_bytes(root, parts, counts), parts[-1])
        assert nb.cells[cell_index(nb, "dot_product_scores")].source == RIGHT
    # a third link outside the batch turns both into refusals
    os.link(root / "ada" / NAME, root.parent / "outside.ipynb")
    _refused(root, ("ada", NAME), "hard link to a file outside")


def test_the_census_is_bounded_and_says_so(root):
    deep = root / "mallory"
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("deep")
    nbs.write_submission(root, "mallory", NAME, answered())
    counts = intake.census(root)
    assert any("mallory" in note and "32 levels" in note for note in counts.notes), counts.notes
    assert _read(root, ("mallory", NAME), counts)  # a file with one link needs no census
    wide = intake.census(root, max_entries=10)
    assert any("more than 10 entries" in note for note in wide.notes), wide.notes


# ---------------------------------------------------------------- names ----

def test_a_folder_name_that_is_not_utf8_gets_a_printable_id_and_a_csv_row(root):
    """Today ``grades.csv`` fails to write for the whole class (0 rows, exit 2)."""
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    (root / os.fsdecode(b"caf\xe9") / NAME).write_bytes(_raw(answered()))
    folder = _folder(root, os.fsdecode(b"caf\xe9"))
    assert folder.student_id == "caf\\xe9" and folder.problem == ""
    with pytest.raises(UnicodeEncodeError):
        folder.name.encode("utf-8")  # the raw name is what broke the CSV
    buffer = io.StringIO()
    csv.writer(buffer).writerow([folder.student_id, ASSIGNMENT, "3", "3", "graded", ""])
    written = buffer.getvalue().encode("utf-8")  # as autograde writes grades.csv
    assert next(csv.reader(io.StringIO(written.decode("utf-8"))))[0] == "caf\\xe9"
    parts, why = intake.find_notebook(folder, ASSIGNMENT)  # and the notebook inside is graded
    assert parts == (folder.name, NAME), why
    nbs.parse_submission(_read(root, parts), parts[-1])


def test_names_are_escaped_never_raise_and_never_collide(root):
    for raw in (b"new\nline", b"tab\there", b"caf\\xe9", b"caf\xe9", "zoë".encode()):
        os.mkdir(os.fsencode(root) + b"/" + raw)
    ids = {os.fsencode(f.name): f.student_id for f in intake.scan(root)}
    assert ids[b"new\nline"] == "new\\x0aline" and ids[b"tab\there"] == "tab\\x09here"
    assert ids["zoë".encode()] == "zoë" and ids[b"ada"] == "ada"  # clean UTF-8 is unchanged
    assert len(set(ids.values())) == len(ids), ids  # the literal "caf\xe9" and the byte one differ
    for sid in ids.values():
        assert sid.isprintable() and sid.encode("utf-8")


def test_a_non_utf8_notebook_name_is_found_and_reported_printably(root):
    (root / "mallory").mkdir()
    name = os.fsdecode(b"d\xe9mo.ipynb")
    (root / "mallory" / name).write_bytes(_raw(answered()))
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts == ("mallory", name)
    os.mkfifo(root / "mallory" / os.fsdecode(b"\xff.ipynb"))
    parts, why = intake.find_notebook(_folder(root, "mallory"), ASSIGNMENT)
    assert parts is None and "\\xff.ipynb" in why and why.encode("utf-8"), why


# ------------------------------------------------------ finding the file ----

def _put(root, student, relative, nb):
    path = root / student / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_find_notebook_keeps_the_matching_rules(root):
    def find(student):
        parts, why = intake.find_notebook(_folder(root, student), ASSIGNMENT)
        return parts[1:] if parts else why

    _put(root, "copy", f"Copy of {NAME}", answered())
    _put(root, "numbered", f"{ASSIGNMENT} (1).ipynb", answered())
    _put(root, "nested", "work/sub/" + f"{ASSIGNMENT}-Copy1.ipynb", answered())
    _put(root, "renamed", "homework.ipynb", answered())
    _put(root, "both", NAME, answered())
    _put(root, "both", f"Copy of {NAME}", answered())
    _put(root, "two", "a.ipynb", answered())
    _put(root, "two", "b.ipynb", answered())
    _put(root, "hidden", f".ipynb_checkpoints/{ASSIGNMENT}-checkpoint.ipynb", answered())
    nbs.write_submission(root, "notes", "notes.txt", text="I forgot")
    (root / "empty").mkdir()
    for name in ("old", "new"):
        _put(root, "newest", f"{name}/{NAME}", answered())
    os.utime(root / "newest" / "old" / NAME, (1e9, 1e9))
    assert find("ada") == (NAME,)
    assert find("copy") == (f"Copy of {NAME}",)
    assert find("numbered") == (f"{ASSIGNMENT} (1).ipynb",)
    assert find("nested") == ("work", "sub", f"{ASSIGNMENT}-Copy1.ipynb")
    assert find("renamed") == ("homework.ipynb",)
    assert find("both") == (NAME,)  # the exact name first
    assert find("newest") == ("new", NAME)
    assert find("two") == f"no notebook named like {NAME} among a.ipynb, b.ipynb"
    assert find("hidden") == "no notebook in the folder (it is empty)"
    assert find("notes") == "no notebook in the folder (found: notes.txt)"
    assert find("empty") == "no notebook in the folder (it is empty)"


def test_read_submission_bytes_caps_the_size_and_refuses_odd_parts(root):
    with pytest.raises(nbs.SubmissionError, match="is larger than 1,024 bytes"):
        intake.read_submission_bytes(root, ("ada", NAME), intake.census(root), max_bytes=1024)
    for parts in (("ada", "..", "ada", NAME), ("ada/..", NAME), ("",)):
        with pytest.raises(nbs.SubmissionError, match="not a plain file name"):
            _read(root, parts)
    _refused(root, ("ada", "missing.ipynb"), "cannot read missing.ipynb")


# ------------------------------------------------------------- parsing ----

def test_a_lone_surrogate_in_a_markdown_cell_parses(root):
    """Today such a correct notebook is ``failed``."""
    nb = answered()
    markdown = next(c for c in nb.cells if c.cell_type == "markdown")
    markdown.source += " broken emoji: \ud83d"
    nb.cells[cell_index(nb, "dot_product_scores")].metadata["note \udc00"] = "x\udfff"
    raw = _raw(nb)
    assert b"\\ud83d" in raw
    nbs.write_submission(root, "sam", NAME, raw=raw)
    parsed = nbs.parse_submission(_read(root, ("sam", NAME)), NAME)
    assert parsed.cells[0].source.encode("utf-8")
    assert any("broken emoji: \ufffd" in c.source for c in parsed.cells if c.cell_type == "markdown")
    assert parsed.cells[cell_index(parsed, "dot_product_scores")].metadata["note \ufffd"] == "x\ufffd"
    assert parsed.cells[cell_index(parsed, "dot_product_scores")].source == RIGHT
    nbs.dumps(parsed).encode("utf-8")  # everything downstream writes UTF-8
    paired = json.dumps({"cells": [], "metadata": {"x": "\U0001F600"}, "nbformat": 4, "nbformat_minor": 5})
    assert nbs.parse_submission(paired.encode(), NAME).metadata["x"] == "\U0001F600"  # a real pair is kept


def test_an_nbformat3_notebook_is_upgraded_with_its_nbgrader_metadata():
    """Today: 'is JSON but not a notebook (no list of cells)'; nbgrader itself grades it."""
    nb = answered()
    v3 = json.loads(nbformat.writes(nbformat.convert(copy.deepcopy(nb), 3)))
    assert v3["nbformat"] == 3 and "worksheets" in v3 and "cells" not in v3
    parsed = nbs.parse_submission(json.dumps(v3).encode(), NAME)
    assert parsed.nbformat == 4
    assert [nbs.grade_id(c) for c in parsed.cells] == [nbs.grade_id(c) for c in nb.cells]
    for new, old in zip(parsed.cells, nb.cells):
        assert (new.cell_type, new.source, new.metadata.get("nbgrader")) == \
               (old.cell_type, old.source, old.metadata.get("nbgrader"))


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"cells": [' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"]}",
    b"[" * 100_000,  # unbalanced too
], ids=["lists", "objects in a notebook", "unclosed"])
def test_deep_json_is_refused_quickly_with_one_line(raw):
    """Today: a RecursionError as the reason."""
    start = time.monotonic()
    with pytest.raises(nbs.SubmissionError) as caught:
        nbs.parse_submission(raw, NAME)
    assert time.monotonic() - start < 1.0
    message = str(caught.value)
    assert message == f"{NAME} is nested more than 100 levels deep: not a notebook"


def test_depth_is_counted_outside_strings_only():
    nb = answered()
    nb.cells[0].source = "[" * 50_000 + '"\\' + "{" * 50_000  # brackets, quotes and escapes as text
    assert nbs.parse_submission(_raw(nb), NAME).cells[0].source == nb.cells[0].source
    nested = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    node = nested["metadata"]
    for _ in range(98):  # 100 levels all told: allowed
        node["x"] = {}
        node = node["x"]
    assert nbs.parse_submission(json.dumps(nested).encode(), NAME)
    node["x"] = {}
    with pytest.raises(nbs.SubmissionError, match="nested more than 100 levels deep"):
        nbs.parse_submission(json.dumps(nested).encode(), NAME)


def test_absurd_counts_are_refused():
    many = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x")] * 5001)
    with pytest.raises(nbs.SubmissionError, match="5,001 cells .more than 5,000."):
        nbs.parse_submission(_raw(many), NAME)
    huge = answered()
    huge.cells[0].source = "x" * 6_000_000
    with pytest.raises(nbs.SubmissionError, match="more than 5,000,000"):
        nbs.parse_submission(_raw(huge), NAME)
    flat = b'{"cells": [], "x": [' + b"[]," * 1_500_000 + b"[]]}"
    with pytest.raises(nbs.SubmissionError, match="more than 1,000,000 JSON lists"):
        nbs.parse_submission(flat, NAME)


@pytest.mark.parametrize("raw,words", [
    (b"", "is empty"), (b"  \n", "is empty"), (b'{"cells": [}', "not valid JSON (line 1, column 12"),
    (b'{"hello": "world"}', "JSON but not a notebook"), (b"[1, 2]", "JSON but not a notebook"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file (not UTF-8)"),
    (b'{"cells": [1, 2]}', "cell 1 is not a JSON object"),
    (b'{"cells": [], "nbformat": 99}', "not a readable notebook"),
])
def test_unreadable_files_keep_their_one_line_reasons(raw, words):
    with pytest.raises(nbs.SubmissionError) as caught:
        nbs.parse_submission(raw, NAME)
    assert words in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_read_submission_is_parse_submission_of_the_file(root):
    path = root / "ada" / NAME
    assert nbs.read_submission(path) == nbs.parse_submission(path.read_bytes(), NAME)
    with pytest.raises(nbs.SubmissionError, match="cannot read missing.ipynb"):
        nbs.read_submission(root / "ada" / "missing.ipynb")


# ------------------------------------------------------------ feedback ----

def _result(cells, tests=(), reason=""):
    return types.SimpleNamespace(student_id="ada", status="graded", score=1.0, max_score=3.0, reason=reason,
                                 tests=list(tests), cells=cells)


def _test_cells():
    """The source's cells as assemble hands them on (test cells with their hidden parts)."""
    return [copy.deepcopy(c) for c in source().cells]


def test_50_cells_of_5_images_make_a_page_under_5_mb_with_a_note(tmp_path):
    """Today: a 98 MB page."""
    image = base64.b64encode(os.urandom(290_000)).decode()  # each just under the per-image limit
    assert len(image) <= feedback.MAX_IMAGE
    plots = [nbformat.v4.new_code_cell(f"plot({i})", outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": image, "text/plain": "<Figure>"})
        for _ in range(5)]) for i in range(50)]
    page = tmp_path / "feedback" / "ada" / f"{ASSIGNMENT}.html"
    nb = feedback.build(_result(_test_cells() + plots), ASSIGNMENT, source())
    feedback.write_html(nb, page)
    size = page.stat().st_size
    assert size <= feedback.MAX_PAGE == 5_000_000, size
    text = page.read_text(encoding="utf-8")
    shown = text.count(image[:64])
    assert 0 < shown < 250
    assert f"{250 - shown} images not shown" in nb.cells[0].source, nb.cells[0].source
    assert text.count("[image not shown: the feedback page reached its 5 MB limit]") == 250 - shown
    for line in (line for c in source().cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)):
        assert line not in text


def test_the_page_cap_holds_for_text_and_cells_too(tmp_path):
    """5,000 cells of 30 long prints each: outputs, then whole cells give way; test cells stay."""
    out = {"output_type": "stream", "name": "stdout", "text": "<" * 9_000}  # 4x longer once escaped
    cells = _test_cells() + [nbformat.from_dict({"cell_type": "code", "source": "print('<' * 9000)", "metadata": {},
                                                 "id": f"spam-{i}", "outputs": [out] * 30, "execution_count": 1})
                             for i in range(5000)]
    tests = [types.SimpleNamespace(grade_id=nbs.grade_id(c), points=1.0, max_points=1.0, status="ok", message="")
             for c in source().cells if nbs.is_test(c)]
    nb = feedback.build(_result(cells, tests), ASSIGNMENT, source(), max_page=2_000_000)
    page = tmp_path / "p.html"
    feedback.write_html(nb, page, max_page=2_000_000)
    assert page.stat().st_size <= 2_000_000
    text = page.read_text(encoding="utf-8")
    assert "whole cells not shown" in nb.cells[0].source or "whole cells" in text
    assert text.count("passed: 1 / 1 points") == len(tests)  # every test's result is on the page


def test_hidden_lines_stay_hidden_and_surrogates_render(tmp_path):
    hidden = [line for c in source().cells if nbs.is_test(c) for line in nbs.hidden_lines(c.source)]
    assert hidden
    spy = nbformat.v4.new_code_cell("spy()", outputs=[
        nbformat.v4.new_output("stream", text="\n".join(hidden) + "\nbad \ud800 byte"),
        nbformat.v4.new_output("display_data", data={
            "text/html": "<pre>" + "\n".join(html_module.escape(h, quote=True).replace("a", "&#97;")
                                             for h in hidden) + "</pre>",
            "text/plain": "\udcff"}),
        nbformat.v4.new_output("display_data", data={"image/svg+xml": "<svg>" + "".join(
            f"<text>{html_module.escape(h).replace('e', '&#101;')}</text>\n" for h in hidden) + "</svg>"}),
        nbformat.v4.new_output("error", ename="ValueError", evalue=hidden[0], traceback=hidden)])
    tests = [types.SimpleNamespace(grade_id="test_dot_product_scores", points=0.0, max_points=2.0, status="error",
                                   message=f"AssertionError: {hidden[0]}\n{hidden[-1]}")]
    nb = feedback.build(_result(_test_cells() + [spy], tests, reason="note \ud800"), ASSIGNMENT, source())
    page = tmp_path / "p.html"
    feedback.write_html(nb, page)
    text = page.read_text(encoding="utf-8")
    svgs = [base64.b64decode(m).decode() for m in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", text)]
    assert svgs  # the lab template shows SVG as an <img>: its text is still drawn for the student
    for line in hidden:
        assert line not in text and html_module.escape(line) not in text, line
        for shown in [text] + svgs:
            assert html_module.unescape(line) not in html_module.unescape(shown), line
    assert "hidden test line removed" in text and "bad \ufffd byte" in text


def test_the_cap_is_hard_even_below_the_template_size(tmp_path):
    """A cap smaller than the template itself (about 280 KB) still holds: the summary alone."""
    tests = [types.SimpleNamespace(grade_id="test_dot_product_scores", points=0.0, max_points=2.0, status="error",
                                   message="[click](javascript:alert(1)) *boom* | $x$")]
    nb = feedback.build(_result(_test_cells(), tests), ASSIGNMENT, source(), max_page=100_000)
    assert "\\[click\\]\\(javascript:alert\\(1\\)\\) \\*boom\\* \\| \\$x\\$" in nb.cells[0].source
    page = tmp_path / "p.html"
    feedback.write_html(nb, page, max_page=100_000)
    text = page.read_text(encoding="utf-8")
    assert page.stat().st_size <= 100_000 and "Feedback: 01_dot_products" in text and "limit]" in text
