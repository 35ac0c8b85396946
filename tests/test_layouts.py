"""Intake from where submissions really come from (grader/layouts.py): one folder per student,
nbgrader's submitted/ tree, and the bulk downloads of Canvas, Moodle, Blackboard and Gradescope,
named exactly as each produces them; a roster; the newest copy; which assignment a notebook is.

Submissions are hostile: every layout is also given links, FIFOs and names that are not UTF-8,
and nothing may be followed, hang, crash or cost another student their entry. No kernels here.
"""

import builtins
import copy
import io
import json
import os
import pathlib
import stat
from datetime import datetime, timedelta, timezone

import nbformat
import pytest

from grader import course, intake, layouts
from grader import notebooks as nbs

A = "03_attention"
UTC = timezone.utc
T0 = datetime(2026, 11, 20, 14, 3, 11, tzinfo=UTC)  # the class's submission afternoon
RELEASED = layouts.released_notebooks()


def notebook(assignment=A, marker="") -> bytes:
    """The released notebook's bytes with a marker in its metadata (to tell copies apart)."""
    nb = copy.deepcopy(RELEASED[assignment])
    nb.metadata["marker"] = marker
    return nbformat.writes(nb).encode()


def put(path: pathlib.Path, data: bytes | str = b"{}", when: datetime | None = None) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if when is not None:
        os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def marker_of(batch, choice) -> str:
    return json.loads(batch.read(choice.candidate))["metadata"]["marker"]


def by_id(batch):
    return {e.student_id: e for e in batch.entries}


def reasons(batch, assignment=A):
    return {e.student_id: e.choose(assignment).reason for e in batch.entries}


# ================================================================ layouts ====
# Each builder writes one realistic download and returns its folder.

def build_folders(tmp_path):
    root = tmp_path / "folders"
    put(root / "ada" / f"{A}.ipynb", notebook(marker="ada"), T0)
    put(root / "ben" / "work" / f"Copy of {A} (1).ipynb", notebook(marker="ben"), T0)
    put(root / "cy" / f"{A}.ipynb", notebook(marker="cy-stub"), T0 - timedelta(days=2))
    put(root / "cy" / f"{A} (1).ipynb", notebook(marker="cy-new"), T0)
    (root / "dee").mkdir()
    return root


def build_nbgrader(tmp_path):
    root = tmp_path / "submitted"
    put(root / "ada" / A / f"{A}.ipynb", notebook(marker="ada"), T0 + timedelta(days=5))
    put(root / "ada" / A / "timestamp.txt", "2026-11-20 14:03:11.123456 UTC")
    put(root / "ada" / "05_multi_head" / "05_multi_head.ipynb", notebook("05_multi_head"))
    put(root / "ada" / "05_multi_head" / "timestamp.txt", "2026-11-27 09:00:00.000000 UTC")
    put(root / "ben" / A / f"{A}.ipynb", notebook(marker="ben"), T0)
    put(root / "ben" / A / "timestamp.txt", "2026-11-21 08:00:00.5 UTC")
    put(root / "cy" / "05_multi_head" / "05_multi_head.ipynb", notebook("05_multi_head"))
    put(root / "cy" / "05_multi_head" / "timestamp.txt", "2026-11-27 09:00:00.000000 UTC")
    return root


def build_canvas(tmp_path):
    root = tmp_path / "canvas"
    put(root / f"smithjane_1001_6001_{A}.ipynb", notebook(marker="jane-first"), T0 - timedelta(hours=3))
    put(root / f"smithjane_1001_6002_{A}-1.ipynb", notebook(marker="jane-resub"), T0)
    put(root / f"doejohn_LATE_1002_6003_{A}.ipynb", notebook(marker="john"), T0 + timedelta(days=1))
    put(root / "leeann_1003_6004_notes.pdf", b"%PDF-1.4", T0)
    put(root / f"leeann_1003_6005_Copy of {A}.ipynb", notebook(marker="ann"), T0)
    return root


def build_moodle(tmp_path):
    root = tmp_path / "moodle"
    put(root / "Jane Smith_1001_assignsubmission_file_" / f"{A}.ipynb", notebook(marker="jane"), T0)
    put(root / "Jane Smith_1001_assignsubmission_onlinetext_" / "onlinetext.html", "<p>see file</p>", T0)
    put(root / "José Núñez_1002_assignsubmission_file_" / "hw" / f"{A}-Copy1.ipynb", notebook(marker="jose"), T0)
    zoe = "Zoe\u0308 A\u030angstro\u0308m"  # decomposed accents, as macOS unzips them
    put(root / f"{zoe}_1003_assignsubmission_file_" / f"{A}.ipynb", notebook(marker="zoe"), T0)
    put(root / f"Ann Lee_1004_assignsubmission_file_{A}.ipynb", notebook(marker="ann-flat"), T0)
    return root


BB_META = """Name: {name} ({user})
Assignment: Assignment 3
Date Submitted: {date}
Current Grade: Needs Grading

Submission Field:
There is no student submission text data for this assignment.

Comments:
There are no student comments for this assignment.

Files:
\tOriginal filename: {orig}
\tFilename: {stored}
"""


def bb(root, name, user, ts, orig, data, date=None, meta=True):
    stored = f"Assignment 3_{user}_attempt_{ts}_{orig}"
    put(root / stored, data, T0)
    if meta:
        put(root / f"Assignment 3_{user}_attempt_{ts}.txt",
            BB_META.format(name=name, user=user, date=date or "", orig=orig, stored=stored))
    return stored


def build_blackboard(tmp_path):
    root = tmp_path / "blackboard"
    bb(root, "Jane Smith", "jsmith", "2026-11-20-14-03-11", f"{A}.ipynb", notebook(marker="jane-1"),
       "Friday, November 20, 2026 2:03:11 PM UTC")
    bb(root, "Jane Smith", "jsmith", "2026-11-21-09-30-00", f"{A}.ipynb", notebook(marker="jane-2"),
       "Saturday, November 21, 2026 9:30:00 AM UTC")
    bb(root, "John Doe", "j_doe", "2026-11-20-23-00-00", f"{A} (1).ipynb", notebook(marker="john"),
       "Friday, November 20, 2026 11:00:00 PM CET")
    return root


GS_META = """submission_111:
  :submitters:
  - :name: Jane Smith
    :sid: '1001'
    :email: jane@example.edu
  :created_at: 2026-11-20 06:03:11.123456000 -08:00
  :score: 0.0
  :status: processed
submission_222:
  :submitters:
  - :name: Bob Lee
    :sid: '1002'
    :email: bob@example.edu
  - :name: Cy Park
    :sid: '1003'
    :email: cy@example.edu
  :created_at: 2026-11-21 10:00:00.000000000 +01:00
  :score: 0.0
  :status: processed
"""


def build_gradescope(tmp_path, meta=GS_META):
    root = tmp_path / "gradescope"
    put(root / "submission_metadata.yml", meta)
    put(root / "submission_111" / f"{A}.ipynb", notebook(marker="jane"), T0 + timedelta(days=9))
    put(root / "submission_222" / "group" / f"{A}.ipynb", notebook(marker="group"), T0)
    put(root / "submission_222" / "README.md", "our work")
    return root


BUILDERS = {"folders": build_folders, "nbgrader": build_nbgrader, "canvas": build_canvas, "moodle": build_moodle,
            "blackboard": build_blackboard, "gradescope": build_gradescope}


# ============================================================= detection ====

@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_auto_detects_each_layout(tmp_path, layout):
    root = BUILDERS[layout](tmp_path)
    found, note = layouts.detect(root)
    assert found == layout, note
    batch = layouts.collect(root, "auto", assignment=A)
    assert batch.layout == layout and batch.notes[0].startswith(f"layout {layout}")


def test_auto_falls_back_to_folders_and_says_why(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert layouts.detect(empty) == ("folders", "layout folders: the folder is empty")
    mixed = tmp_path / "mixed"  # half Canvas files, half Moodle folders: ambiguous
    put(mixed / f"smithjane_1001_6001_{A}.ipynb", notebook())
    put(mixed / "Jane Smith_1001_assignsubmission_file_" / f"{A}.ipynb", notebook())
    layout, note = layouts.detect(mixed)
    assert layout == "folders" and "ambiguous" in note and "canvas" in note and "moodle" in note
    few = tmp_path / "few"  # one Canvas-like name among three student folders
    for s in ("ada", "ben", "cy"):
        put(few / s / f"{A}.ipynb", notebook())
    put(few / f"smithjane_1001_6001_{A}.ipynb", notebook())
    layout, note = layouts.detect(few)
    assert layout == "folders" and "too few" in note and "1 like canvas" in note
    batch = layouts.collect(few, assignment=A)
    assert [e.student_id for e in batch.entries] == ["ada", "ben", "cy"]
    assert any("not student folders" in n and "smithjane" in n for n in batch.notes)


def test_a_linked_metadata_file_is_not_gradescope(tmp_path):
    root = build_gradescope(tmp_path)
    secret = tmp_path / "secret.yml"
    (root / "submission_metadata.yml").rename(secret)
    os.symlink(secret, root / "submission_metadata.yml")
    assert layouts.detect(root)[0] != "gradescope"
    batch = layouts.collect(root, "gradescope", assignment=A)  # forced: folders become entries, link noted
    assert any("symbolic link" in n for n in batch.notes)
    assert sorted(e.student_id for e in batch.entries) == ["submission_111", "submission_222"]


def test_unknown_layout_and_missing_folder_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'webct'"):
        layouts.collect(tmp_path, "webct")
    with pytest.raises(ValueError, match="not a folder"):
        layouts.collect(tmp_path / "nowhere")


# ================================================================ folders ====

def test_folders_layout_keeps_todays_rules_and_the_newest_copy_wins(tmp_path):
    batch = layouts.collect(build_folders(tmp_path), "folders", assignment=A)
    assert [e.student_id for e in batch.entries] == ["ada", "ben", "cy", "dee"]
    choices = {e.student_id: e.choose(A) for e in batch.entries}
    assert marker_of(batch, choices["ada"]) == "ada"
    assert choices["ben"].reason == f"graded work/Copy of {A} (1).ipynb, file time 2026-11-20 14:03 UTC"
    # the case: an older exact-name stub beside a newer "(1)" copy: the newer is graded and named
    assert marker_of(batch, choices["cy"]) == "cy-new"
    assert choices["cy"].reason == f"graded {A} (1).ipynb (newest of 2), file time 2026-11-20 14:03 UTC"
    assert choices["cy"].candidate.source == "mtime" and choices["cy"].submitted_at == T0
    assert not choices["dee"].ok and choices["dee"].reason == "no notebook in the submission (it is empty)"


# =============================================================== nbgrader ====

def test_nbgrader_times_come_from_timestamp_txt(tmp_path):
    batch = layouts.collect(build_nbgrader(tmp_path), "nbgrader", assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["ada", "ben", "cy"]
    ada = entries["ada"].choose(A)
    assert ada.submitted_at == T0.replace(microsecond=123456) and ada.candidate.source == "timestamp.txt"
    assert ada.candidate.parts == ("ada", A, f"{A}.ipynb") and marker_of(batch, ada) == "ada"
    assert ada.reason == f"graded {A}.ipynb, submitted 2026-11-20 14:03 UTC"
    assert entries["ben"].choose(A).submitted_at == datetime(2026, 11, 21, 8, 0, 0, 500000, tzinfo=UTC)
    cy = entries["cy"].choose(A)  # only 05 handed in: says so, does not grade 05 as 03
    assert not cy.ok and cy.reason == f"no {A} folder in the student's nbgrader folder (found: 05_multi_head)"


def test_nbgrader_without_an_assignment_reads_every_assignment_folder(tmp_path):
    batch = layouts.collect(build_nbgrader(tmp_path), "nbgrader")
    ada = by_id(batch)["ada"]
    assert {c.name for c in ada.candidates} == {f"{A}/{A}.ipynb", "05_multi_head/05_multi_head.ipynb"}
    assert ada.choose("05_multi_head").submitted_at == datetime(2026, 11, 27, 9, tzinfo=UTC)


def test_nbgrader_timestamp_variants(tmp_path):
    root = tmp_path / "submitted"
    cases = {"naive": ("2026-11-20 14:03:11", T0),  # nbgrader reads a zone-less stamp as UTC
             "offset": ("2026-11-20 15:03:11+01:00", T0),
             "zoned": ("2026-11-20 09:03:11.000000 EST", T0),
             "iana": ("2026-11-20 15:03:11 Europe/Paris", T0)}
    for student, (text, _) in cases.items():
        put(root / student / A / f"{A}.ipynb", notebook(), T0 + timedelta(days=30))
        put(root / student / A / "timestamp.txt", text + "\n")
    put(root / "garbage" / A / f"{A}.ipynb", notebook(), T0 - timedelta(days=1))
    put(root / "garbage" / A / "timestamp.txt", "yesterday-ish\x1b[31m")
    put(root / "none" / A / f"{A}.ipynb", notebook(), T0 - timedelta(days=2))
    put(root / "garbage" / "05_multi_head" / "timestamp.txt", "2026-11-20 14:03:11 UTC")  # makes it nbgrader-like
    batch = layouts.collect(root, assignment=A)
    assert batch.layout == "nbgrader"
    entries = by_id(batch)
    for student, (_, want) in cases.items():
        choice = entries[student].choose(A)
        assert choice.submitted_at == want and choice.candidate.source == "timestamp.txt", student
    garbage = entries["garbage"]
    assert garbage.choose(A).candidate.source == "mtime"
    assert any("does not hold a time" in n and "\\x1b" in n and "\x1b" not in n for n in garbage.notes)
    assert entries["none"].choose(A).candidate.source == "mtime"
    assert any("no 03_attention/timestamp.txt" in n for n in entries["none"].notes)


# ================================================================= canvas ====

def test_canvas_names_late_flag_and_resubmission(tmp_path):
    batch = layouts.collect(build_canvas(tmp_path), "canvas", assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["doejohn", "leeann", "smithjane"]
    jane = entries["smithjane"]
    assert jane.lms_id == "1001" and jane.label == "smithjane (Canvas user 1001)"
    choice = jane.choose(A)  # Canvas's "-1" resubmission is the same assignment, and the newer
    assert marker_of(batch, choice) == "jane-resub" and choice.candidate.parts == (f"smithjane_1001_6002_{A}-1.ipynb",)
    assert choice.reason == f"graded {A}-1.ipynb (newest of 2), file time 2026-11-20 14:03 UTC"
    john = entries["doejohn"].choose(A)
    assert john.candidate.late is True and "marked LATE" in john.reason
    assert "Canvas marked the submission LATE" in entries["doejohn"].notes
    ann = entries["leeann"]
    assert ann.others == ["notes.pdf"] and ann.choose(A).reason.startswith(f"graded Copy of {A}.ipynb")


def test_canvas_resubmission_wins_a_tie_of_file_times(tmp_path):
    root = tmp_path / "canvas"
    put(root / f"smithjane_1001_6001_{A}.ipynb", notebook(marker="first"), T0)
    put(root / f"smithjane_1001_6002_{A}-2.ipynb", notebook(marker="third"), T0)
    put(root / f"smithjane_1001_6003_{A}-1.ipynb", notebook(marker="second"), T0)
    batch = layouts.collect(root, assignment=A)
    assert marker_of(batch, batch.entries[0].choose(A)) == "third"


def test_two_canvas_users_with_one_name_are_never_merged(tmp_path):
    root = tmp_path / "canvas"
    put(root / f"smithjane_1001_6001_{A}.ipynb", notebook(marker="one"), T0)
    put(root / f"smithjane_1007_6002_{A}.ipynb", notebook(marker="two"), T0)
    batch = layouts.collect(root, assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["smithjane_1001", "smithjane_1007"]
    assert marker_of(batch, entries["smithjane_1007"].choose(A)) == "two"
    assert any("shared by users 1001, 1007" in n for n in entries["smithjane_1001"].notes)


# ================================================================= moodle ====

def test_moodle_folders_names_with_spaces_and_accents(tmp_path):
    batch = layouts.collect(build_moodle(tmp_path), "moodle", assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["1001", "1002", "1003", "1004"]  # participant ids, never the folder name
    jane = entries["1001"]
    assert jane.name == "Jane Smith" and jane.lms_id == "1001"
    assert jane.others == ["onlinetext.html"]  # the online-text folder joins the same student
    assert marker_of(batch, jane.choose(A)) == "jane"
    jose = entries["1002"]
    assert jose.name == "José Núñez" and jose.choose(A).reason.startswith(f"graded hw/{A}-Copy1.ipynb")
    assert entries["1003"].name == "Zoë Ångström"  # NFC, whatever the unzip tool wrote
    flat = entries["1004"].choose(A)
    assert flat.candidate.parts == (f"Ann Lee_1004_assignsubmission_file_{A}.ipynb",) and flat.candidate.name == f"{A}.ipynb"


# ============================================================= blackboard ====

def test_blackboard_newest_attempt_wins_with_its_time(tmp_path):
    batch = layouts.collect(build_blackboard(tmp_path), "blackboard", assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["j_doe", "jsmith"]  # a user name with "_" is read from the metadata
    jane = entries["jsmith"]
    choice = jane.choose(A)
    assert jane.name == "Jane Smith" and marker_of(batch, choice) == "jane-2"
    assert choice.submitted_at == datetime(2026, 11, 21, 9, 30, tzinfo=UTC) and choice.candidate.source == "lms"
    assert choice.reason == f"graded {A}.ipynb, submitted 2026-11-21 09:30 UTC"
    assert any("2 Blackboard attempts" in n and "2026-11-21 09:30:00" in n for n in jane.notes)
    john = entries["j_doe"].choose(A)  # "11:00:00 PM CET" is 22:00 UTC
    assert john.submitted_at == datetime(2026, 11, 20, 22, tzinfo=UTC) and john.candidate.name == f"{A} (1).ipynb"


def test_blackboard_without_metadata_reads_the_name_in_the_given_zone(tmp_path):
    from zoneinfo import ZoneInfo
    root = tmp_path / "bb"
    bb(root, "", "ann", "2026-11-20-15-03-11", f"{A}.ipynb", notebook(), meta=False)
    bb(root, "", "ben", "2026-11-20-15-03-11", f"{A}.ipynb", notebook(), date="Freitag, 20. November 2026 15:03")
    batch = layouts.collect(root, assignment=A, lms_timezone=ZoneInfo("Europe/Paris"))
    assert batch.layout == "blackboard"
    for e in batch.entries:
        assert e.choose(A).submitted_at == T0, e.student_id
    assert any("without a known zone were read in Europe/Paris" in n for n in batch.notes)


# ============================================================= gradescope ====

def test_gradescope_metadata_times_and_a_group_of_two(tmp_path):
    batch = layouts.collect(build_gradescope(tmp_path), "gradescope", assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["1001", "1002", "1003"]  # both members of the group get their own row
    jane = entries["1001"].choose(A)
    assert jane.submitted_at == T0.replace(microsecond=123456) and jane.candidate.source == "lms"
    assert entries["1001"].email == "jane@example.edu" and entries["1001"].name == "Jane Smith"
    bob, cy = entries["1002"].choose(A), entries["1003"].choose(A)
    assert bob.candidate.parts == cy.candidate.parts == ("submission_222", "group", f"{A}.ipynb")
    assert marker_of(batch, bob) == marker_of(batch, cy) == "group"
    assert bob.submitted_at == datetime(2026, 11, 21, 9, tzinfo=UTC)
    assert any("group submission submission_222 with Cy Park" in n for n in entries["1002"].notes)
    assert entries["1002"].others == ["README.md"]


def test_gradescope_folders_and_metadata_that_disagree(tmp_path):
    meta = GS_META + """submission_333:
  :submitters:
  - :name: Dee Absent
    :sid: '1004'
  :created_at: 2026-11-20 14:03:11 +00:00
"""
    root = build_gradescope(tmp_path, meta)
    put(root / "submission_444" / f"{A}.ipynb", notebook(marker="orphan"), T0)
    batch = layouts.collect(root, assignment=A)
    entries = by_id(batch)
    assert entries["1004"].choose(A).reason == "no folder submission_333 in the Gradescope export"
    orphan = entries["submission_444"]
    assert marker_of(batch, orphan.choose(A)) == "orphan" and orphan.choose(A).candidate.source == "mtime"
    assert any("not in submission_metadata.yml" in n for n in orphan.notes)


@pytest.mark.parametrize("text, words", [
    ("submission_1: !!python/object/apply:os.system ['touch hacked']\n", "ConstructorError"),
    ("submission_1: " + "[" * 100_000 + "]" * 100_000, "nested more than 64 levels"),  # libyaml would crash
    ("submission_1: " + "{a: " * 70 + "1" + "}" * 70, "nested more than 64 levels"),
    ("submission_1:\n" + "- " * 200_000 + "1\n", "indented more than 255 columns"),
    ("".join(" " * i + f"k{i}:\n" for i in range(0, 600, 2)), "indented more than 255 columns"),
    ("- just\n- a list\n", "not a mapping"),
    ("submission_1: {:submitters: [{:name: &a [*a]}]}\n", ""),  # an alias loop: ignored, not recursed
    ("a: &a [*a, *a]\nb: &b [*a, *a]\nsubmission_1: {:submitters: [{:name: *b, :sid: *b}]}\n", ""),
    (b"submission_1:\n  :created_at: \x80\x81\n", "cannot be read"),  # not UTF-8
], ids=["python-tag", "deep-flow", "deep-map", "deep-dashes", "deep-indent", "list", "alias-loop", "aliases",
        "bad-bytes"])
def test_hostile_gradescope_metadata_is_a_note_not_a_crash(tmp_path, text, words):
    root = tmp_path / "gs"
    put(root / "submission_metadata.yml", text)
    put(root / "submission_1" / f"{A}.ipynb", notebook(marker="x"), T0)
    batch = layouts.collect(root, assignment=A)
    assert batch.layout == "gradescope" and len(batch.entries) == 1
    assert marker_of(batch, batch.entries[0].choose(A)) == "x"
    assert words in " ".join(batch.notes)
    assert not (tmp_path / "hacked").exists()


def test_a_huge_metadata_file_is_refused_by_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(layouts, "GRADESCOPE_YAML_BYTES", 1000)
    root = build_gradescope(tmp_path, GS_META + "#" * 2000 + "\n")
    batch = layouts.collect(root, assignment=A)
    assert any("larger than 1,000 bytes" in n for n in batch.notes)
    assert sorted(by_id(batch)) == ["submission_111", "submission_222"]


# ================================================================= roster ====

ROSTER = "id,name,email,lms_id\ns1001,Jane Smith,jane@example.edu,1001\ns1002,John Doe,john@example.edu,1002\n" \
         "s1003,Ann Lee,ann@example.edu,1003\ns1009,Never Submitted,never@example.edu,1009\n"


@pytest.mark.parametrize("text", [
    ROSTER,
    "\ufeff" + ROSTER,
    "Student ID,Name,Email Address,LMS ID\n" + ROSTER.split("\n", 1)[1],
    "Student,ID,SIS User ID,SIS Login ID,Email\n    Points Possible,,,,\n"  # Canvas's gradebook export
    "Jane Smith,1001,s1001,jsmith,jane@example.edu\nJohn Doe,1002,s1002,jdoe,john@example.edu\n"
    "Ann Lee,1003,s1003,alee,ann@example.edu\nNever Submitted,1009,s1009,nsub,never@example.edu\n",
    "Identifier,Full name,Email address,ID number\nParticipant 1001,Jane Smith,jane@example.edu,s1001\n"  # Moodle
    "Participant 1002,John Doe,john@example.edu,s1002\nParticipant 1003,Ann Lee,ann@example.edu,s1003\n"
    "Participant 1009,Never Submitted,never@example.edu,s1009\n",
    "First name,Last name,SIS User ID,Canvas User ID,E-mail\nJane,Smith,s1001,1001,jane@example.edu\n"
    "John,Doe,s1002,1002,john@example.edu\nAnn,Lee,s1003,1003,ann@example.edu\nNever,Submitted,s1009,1009,never@x\n",
])
def test_roster_header_variants(text):
    roster = layouts.parse_roster(text)
    assert [s.id for s in roster.students] == ["s1001", "s1002", "s1003", "s1009"]
    jane = roster.get("s1001")
    assert jane.name == "Jane Smith" and jane.lms_id == "1001" and jane.email == "jane@example.edu"
    assert roster.find("lms_id", "1002").id == "s1002" and roster.find("email", "ANN@example.edu").id == "s1003"


def test_roster_file_with_bom_duplicates_and_refusals(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_bytes(("\ufeffStudent ID,Name\nada,Ada L\n,blank\nada,Ada again\nben,Ben\n").encode())
    roster = layouts.read_roster(path)
    assert [s.id for s in roster.students] == ["ada", "ben"] and roster.get("ada").name == "Ada L"
    assert any("listed again" in n for n in roster.notes) and any("without a student id" in n for n in roster.notes)
    with pytest.raises(ValueError, match="no student id column"):
        layouts.parse_roster("name,email\nAda,a@x\n")
    with pytest.raises(ValueError, match="empty"):
        layouts.parse_roster("\n\n")


@pytest.mark.parametrize("layout, expect", [
    ("canvas", {"s1001", "s1002", "s1003"}),  # Canvas user id -> lms_id
    ("moodle", {"s1001", "s1002", "s1003", "1004"}),  # participant -> lms_id; 1004 is not on the roster
    ("gradescope", {"s1001", "s1002", "s1003"}),  # SID -> lms_id (the roster's id is s...)
])
def test_roster_maps_lms_ids_lists_missing_and_reports_unknown(tmp_path, layout, expect):
    roster = layouts.parse_roster(ROSTER)
    batch = layouts.collect(BUILDERS[layout](tmp_path), layout, roster=roster, assignment=A)
    assert {e.student_id for e in batch.entries} == expect
    assert [s.id for s in batch.missing] == ["s1009"]  # gets a failed "no submission" row from the caller
    assert batch.unknown == sorted(expect - {"s1001", "s1002", "s1003"})
    jane = by_id(batch)["s1001"]
    assert jane.on_roster and jane.name == "Jane Smith" and jane.email == "jane@example.edu"


def test_roster_in_folders_nbgrader_and_blackboard_match_ids(tmp_path):
    roster = layouts.parse_roster("id,name,email,lms_id\nada,Ada,ada@x,\njsmith,Jane Smith,jane@x,\nzed,Zed,z@x,\n")
    batch = layouts.collect(build_folders(tmp_path), "folders", roster=roster, assignment=A)
    assert batch.unknown == ["ben", "cy", "dee"] and [s.id for s in batch.missing] == ["jsmith", "zed"]
    assert by_id(batch)["ada"].on_roster and by_id(batch)["ben"].on_roster is False
    batch = layouts.collect(build_blackboard(tmp_path), "blackboard", roster=roster, assignment=A)
    assert batch.unknown == ["j_doe"] and [s.id for s in batch.missing] == ["ada", "zed"]


def test_two_entries_for_one_roster_student_are_reported_not_merged(tmp_path):
    root = tmp_path / "folders"
    put(root / "s1001" / f"{A}.ipynb", notebook(marker="by-id"), T0)
    put(root / "1001" / f"{A}.ipynb", notebook(marker="by-lms-id"), T0)
    put(root / "jane@example.edu" / f"{A}.ipynb", notebook(marker="by-email"), T0)
    batch = layouts.collect(root, "folders", roster=layouts.parse_roster(ROSTER), assignment=A)
    entries = by_id(batch)
    assert sorted(entries) == ["1001", "jane@example.edu", "s1001"]  # three rows, none lost
    assert marker_of(batch, entries["s1001"].choose(A)) == "by-id"  # the strongest match keeps the id
    assert len(batch.duplicates) == 1 and "all map to roster id s1001" in batch.duplicates[0]
    assert set(batch.unknown) == {"1001", "jane@example.edu"}


def test_a_roster_id_that_another_entry_spells_is_made_unique(tmp_path):
    root = tmp_path / "canvas"
    put(root / f"s1002_1001_6001_{A}.ipynb", notebook(marker="name-part"), T0)  # Canvas name part "s1002"
    put(root / f"doejohn_1002_6002_{A}.ipynb", notebook(marker="john"), T0)  # maps to s1002 by user id
    batch = layouts.collect(root, roster=layouts.parse_roster("id,lms_id\ns1002,1002\n"), assignment=A)
    ids = [e.student_id for e in batch.entries]
    assert len(ids) == len(set(ids)) == 2 and "s1002" in ids
    assert marker_of(batch, by_id(batch)["s1002"].choose(A)) == "john"  # the LMS id is the stronger match
    assert any("would share the id s1002" in d for d in batch.duplicates)


# ========================================================= choosing a copy ====

@pytest.mark.parametrize("name, rank", [
    (f"{A}.ipynb", 2), (f"{A.upper()}.IPYNB", 2), (f"Copy of {A}.ipynb", 1), (f"{A} (1).ipynb", 1),
    (f"{A}-Copy1.ipynb", 1), (f"{A}-1.ipynb", 1), (f"{A}-12.ipynb", 1), (f"Copy of {A} (2)-1.ipynb", 1),
    (f"{A} copy.ipynb", 1), ("05_multi_head.ipynb", 0), (f"{A}.py", 0), (f"{A}x.ipynb", 0),
])
def test_copy_mangled_names_count_as_the_assignment(name, rank):
    assert layouts.matches(name, A) == rank


def cand(name, when, source="mtime", sequence=0, problem=""):
    return layouts.Candidate(("s", name), name, when, source, sequence=sequence, problem=problem)


def test_choose_rules():
    stub, newer = cand(f"{A}.ipynb", T0 - timedelta(days=1)), cand(f"{A} (1).ipynb", T0)
    assert layouts.choose([stub, newer], A).candidate is newer
    same = cand(f"Copy of {A}.ipynb", T0 - timedelta(days=1))
    assert layouts.choose([same, stub], A).candidate is stub  # a tie goes to the exact name
    lone = cand("my_notebook.ipynb", T0)
    assert layouts.choose([lone], A).candidate is lone  # a single notebook of any name is taken
    two = layouts.choose([lone, cand("other.ipynb", T0)], A)
    assert not two.ok and two.reason == f"no notebook named like {A}.ipynb among my_notebook.ipynb, other.ipynb"
    assert layouts.choose([], A, others=["b.pdf", "a.txt"]).reason == "no notebook in the submission (found: a.txt, b.pdf)"
    link = cand(f"{A} (2).ipynb", T0 + timedelta(hours=1), problem="a symbolic link (not followed)")
    chosen = layouts.choose([stub, newer, link], A)
    assert not chosen.ok and chosen.reason == f"{A} (2).ipynb is a symbolic link (not followed): not graded"
    lms = layouts.choose([cand(f"{A}.ipynb", T0, source="lms")], A)
    assert lms.reason == f"graded {A}.ipynb, submitted 2026-11-20 14:03 UTC"


# ================================================================ hostile ====

def plant(root: pathlib.Path, secret: pathlib.Path, layout: str) -> list[str]:
    """Links, a FIFO and names that are not UTF-8, named as the layout names submissions; returns
    the ids the hostile entries must still get."""
    bad = os.fsencode(root) + b"/"
    if layout in ("folders", "nbgrader"):
        os.symlink(secret.parent, root / "linked")  # a student folder that is a link
        put(root / "fifo" / A / "timestamp.txt", "2026-11-20 14:03:11 UTC")
        os.mkfifo(root / "fifo" / A / f"{A}.ipynb")
        (root / "deep" / A).mkdir(parents=True)
        os.symlink(secret, root / "deep" / A / f"{A}.ipynb")
        os.symlink(secret, root / "deep" / A / "timestamp.txt")
        os.makedirs(bad + b"caf\xe9/" + A.encode())
        with open(bad + b"caf\xe9/" + A.encode() + b"/" + A.encode() + b".ipynb", "wb") as f:
            f.write(notebook(marker="cafe"))
        with open(bad + b"caf\xe9/" + A.encode() + b"/timestamp.txt", "wb") as f:
            f.write(b"2026-11-20 14:03:11 UTC")
        return ["linked", "fifo", "deep", "caf\\xe9"]
    if layout == "canvas":
        os.symlink(secret, root / f"evil_1100_7001_{A}.ipynb")
        os.mkfifo(root / f"fifo_1101_7002_{A}.ipynb")
        (root / f"dir_1102_7003_{A}.ipynb").mkdir()
        with open(bad + b"caf\xe9_1103_7004_" + A.encode() + b".ipynb", "wb") as f:
            f.write(notebook(marker="cafe"))
        put(root / f"new\nline_1104_7005_{A}.ipynb", notebook(marker="newline"), T0)
        return ["evil", "fifo", "dir", "caf\\xe9", "new\\x0aline"]
    if layout == "moodle":
        os.symlink(secret.parent, root / "Mal Lory_1100_assignsubmission_file_")
        os.mkfifo(root / "Fi Fo_1101_assignsubmission_file_")
        (root / "Deep Link_1102_assignsubmission_file_").mkdir()
        os.symlink(secret, root / "Deep Link_1102_assignsubmission_file_" / f"{A}.ipynb")
        os.makedirs(bad + b"Caf\xe9 Owner_1103_assignsubmission_file_")
        with open(bad + b"Caf\xe9 Owner_1103_assignsubmission_file_/" + A.encode() + b".ipynb", "wb") as f:
            f.write(notebook(marker="cafe"))
        return ["1100", "1101", "1102", "1103"]
    if layout == "blackboard":
        os.symlink(secret, root / f"Assignment 3_evil_attempt_2026-11-20-14-03-11_{A}.ipynb")
        os.symlink(secret, root / "Assignment 3_evil_attempt_2026-11-20-14-03-11.txt")
        os.mkfifo(root / "Assignment 3_fifo_attempt_2026-11-20-14-03-11.txt")
        put(root / f"Assignment 3_fifo_attempt_2026-11-20-14-03-11_{A}.ipynb", notebook(marker="fifo"))
        with open(bad + b"Assignment 3_caf\xe9_attempt_2026-11-20-14-03-11_" + A.encode() + b".ipynb", "wb") as f:
            f.write(notebook(marker="cafe"))
        return ["evil", "fifo", "caf\\xe9"]
    if layout == "gradescope":
        os.symlink(secret.parent, root / "submission_900")
        os.mkfifo(root / "submission_901")
        (root / "submission_902").mkdir()
        os.symlink(secret, root / "submission_902" / f"{A}.ipynb")
        with open(root / "submission_metadata.yml", "a") as f:
            f.write("submission_900:\n  :submitters:\n  - :name: Mal\n    :sid: '900'\n"
                    "submission_901:\n  :submitters:\n  - :name: \"Fi\\x1bFo\"\n    :sid: \"9\\n01\"\n"
                    "submission_902:\n  :submitters:\n  - :name: Deep\n    :sid: '902'\n")
        return ["900", "9\\x0a01", "902"]
    raise AssertionError(layout)


@pytest.fixture
def secret(tmp_path):
    """The solutions a student would like the grader (root) to read for them."""
    path = tmp_path / "instructor" / f"{A}.ipynb"
    put(path, notebook(marker="SOLUTION"))
    return path


class _Spy:
    """Every os.open/open/scandir the grader makes while reading the batch."""

    def __init__(self, monkeypatch, root):
        self.root, self.calls = os.path.realpath(root), []
        real_open, real_builtin, real_scandir = os.open, builtins.open, os.scandir

        def spy_open(path, flags, mode=0o777, *, dir_fd=None):
            self.calls.append(("os.open", path, flags, dir_fd))
            return real_open(path, flags, mode, dir_fd=dir_fd)

        def spy_builtin(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                assert not os.path.realpath(os.fsdecode(file)).startswith(self.root), f"opened by path: {file!r}"
            return real_builtin(file, *args, **kwargs)

        def spy_scandir(path="."):
            assert isinstance(path, int), f"scandir by path: {path!r}"
            return real_scandir(path)

        real_stat = os.stat

        def spy_stat(path, *, dir_fd=None, follow_symlinks=True):
            if dir_fd is not None or os.path.realpath(os.fsdecode(path)).startswith(self.root + os.sep):
                assert not follow_symlinks, f"stat follows {path!r}"
            return real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

        monkeypatch.setattr(os, "stat", spy_stat)
        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(builtins, "open", spy_builtin)
        monkeypatch.setattr(io, "open", spy_builtin)
        monkeypatch.setattr(os, "scandir", spy_scandir)

    def check(self):
        assert self.calls
        for _, path, flags, dir_fd in self.calls:
            if dir_fd is None:  # only the instructor's own folder is opened by path
                assert os.path.realpath(os.fsdecode(path)) == self.root, path
            else:
                assert flags & os.O_NOFOLLOW, (path, flags)


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_hostile_entries_follow_nothing_and_everyone_keeps_an_entry(tmp_path, secret, monkeypatch, layout):
    root = BUILDERS[layout](tmp_path)
    honest = {e.student_id for e in layouts.collect(root, layout, assignment=A).entries}
    hostile = plant(root, secret, layout)
    fds = len(os.listdir("/proc/self/fd"))
    spy = _Spy(monkeypatch, root)
    batch = layouts.collect(root, "auto", assignment=A)
    assert batch.layout == layout
    ids = [e.student_id for e in batch.entries]
    assert len(ids) == len(set(ids))
    assert honest <= set(ids) and set(hostile) <= set(ids), ids
    read = {}
    for e in batch.entries:
        assert "\n" not in e.student_id and all(ord(ch) >= 0x20 for ch in e.student_id)
        choice = e.choose(A)
        assert "\n" not in choice.reason
        if choice.ok:
            try:
                read[e.student_id] = json.loads(batch.read(choice.candidate))["metadata"]["marker"]
            except nbs.SubmissionError as err:
                read[e.student_id] = str(err)
        else:
            read[e.student_id] = choice.reason
    spy.check()
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == fds  # no descriptor left open
    assert "SOLUTION" not in json.dumps(read)  # nothing reached the linked solutions
    assert all(read[h] != "SOLUTION" for h in hostile)
    assert any(marker == "cafe" for marker in read.values()) or layout == "gradescope"


@pytest.mark.parametrize("layout", ["canvas", "blackboard"])
def test_flat_layouts_refuse_a_hard_link_to_a_file_outside(tmp_path, secret, layout):
    root = BUILDERS[layout](tmp_path)
    name = {"canvas": f"evil_1100_7001_{A}.ipynb",
            "blackboard": f"Assignment 3_evil_attempt_2026-11-20-14-03-11_{A}.ipynb"}[layout]
    os.link(secret, root / name)
    inside = {"canvas": f"twin_1101_7002_{A}.ipynb",
              "blackboard": f"Assignment 3_twin_attempt_2026-11-20-14-03-11_{A}.ipynb"}[layout]
    put(root / "keep.ipynb", notebook(marker="twin"))
    os.link(root / "keep.ipynb", root / inside)  # both links inside the batch: fine
    batch = layouts.collect(root, assignment=A)
    entries = by_id(batch)
    with pytest.raises(nbs.SubmissionError, match="hard link to a file outside"):
        batch.read(entries["evil"].choose(A).candidate)
    assert marker_of(batch, entries["twin"].choose(A)) == "twin"


def test_a_linked_timestamp_is_not_read_and_mtime_is_used(tmp_path, secret):
    root = build_nbgrader(tmp_path)
    (root / "ben" / A / "timestamp.txt").unlink()
    os.symlink(secret, root / "ben" / A / "timestamp.txt")
    batch = layouts.collect(root, "nbgrader", assignment=A)
    ben = by_id(batch)["ben"]
    assert ben.choose(A).candidate.source == "mtime"
    assert any("symbolic link" in n for n in ben.notes)


def test_a_fifo_timestamp_or_metadata_never_hangs(tmp_path):
    root = build_nbgrader(tmp_path)
    (root / "ben" / A / "timestamp.txt").unlink()
    os.mkfifo(root / "ben" / A / "timestamp.txt")
    ben = by_id(layouts.collect(root, "nbgrader", assignment=A))["ben"]
    assert any("FIFO" in n for n in ben.notes)
    gs = build_gradescope(tmp_path)
    (gs / "submission_metadata.yml").unlink()
    os.mkfifo(gs / "submission_metadata.yml")
    batch = layouts.collect(gs, "gradescope", assignment=A)
    assert any("FIFO" in n or "not a regular file" in n for n in batch.notes)


def test_an_assignment_folder_that_is_a_link_is_the_entrys_problem(tmp_path, secret):
    root = build_nbgrader(tmp_path)
    os.symlink(secret.parent, root / "cy" / A)
    cy = by_id(layouts.collect(root, "nbgrader", assignment=A))["cy"]
    assert cy.problem == f"{A} is a symbolic link (not followed), not a folder: not graded"
    assert cy.choose(A).reason == cy.problem


def test_the_walk_limits_are_intakes(tmp_path):
    root = tmp_path / "folders"
    put(root.joinpath("ada", *["d"] * (intake.MAX_DEPTH + 1), f"{A}.ipynb"), notebook())
    put(root.joinpath("ben", *["d"] * intake.MAX_DEPTH, f"{A}.ipynb"), notebook())
    entries = by_id(layouts.collect(root, "folders", assignment=A))
    ada = entries["ada"].choose(A)
    assert not ada.ok and ada.reason == f"no notebook found (folders more than {intake.MAX_DEPTH} levels deep not searched)"
    assert entries["ben"].choose(A).ok


# =============================================================== identify ====

@pytest.mark.parametrize("assignment", sorted(RELEASED))
def test_identify_each_released_and_solution_notebook(assignment):
    assert layouts.identify(RELEASED[assignment], RELEASED) == assignment
    solution = nbformat.read(course.assignments()[assignment], as_version=4)
    assert layouts.identify(solution, RELEASED) == assignment


@pytest.mark.filterwarnings("ignore::nbformat.warnings.MissingIDFieldWarning")
@pytest.mark.parametrize("assignment", ["03_attention", "05_multi_head", "11_triton_flash"])
def test_identify_a_renamed_copy_with_its_metadata_stripped(tmp_path, assignment):
    """Saved as my_notebook.ipynb by a tool that drops cell ids and nbgrader metadata: the content tells."""
    nb = copy.deepcopy(RELEASED[assignment])
    for cell in nb.cells:
        cell.pop("id", None)
        cell.metadata = {}
    raw = json.dumps(nb).encode()
    parsed = nbs.parse_submission(raw, "my_notebook.ipynb")
    assert layouts.identify(parsed, RELEASED) == assignment


def test_identify_the_wrong_assignment_handed_in_under_the_right_name(tmp_path):
    root = tmp_path / "folders"
    put(root / "ada" / f"{A}.ipynb", notebook("05_multi_head"))
    batch = layouts.collect(root, assignment=A)
    choice = batch.entries[0].choose(A)
    nb = nbs.parse_submission(batch.read(choice.candidate), choice.candidate.parts[-1])
    assert layouts.identify(nb, RELEASED) == "05_multi_head"  # the caller fails "this is 05_multi_head, not 03_attention"


def test_released_notebooks_are_the_shipped_ones_or_a_given_folder(tmp_path):
    assert sorted(RELEASED) == sorted(course.assignments())
    put(tmp_path / "03_attention.ipynb", notebook())
    assert list(layouts.released_notebooks(tmp_path)) == [A]


def test_identify_says_none_when_nothing_tells():
    assert layouts.identify(nbformat.v4.new_notebook(), RELEASED) is None
    assert layouts.identify({"cells": "not a list"}, RELEASED) is None
    odd = {"cells": [{"metadata": [], "source": 5, "id": 3}, {"metadata": {"nbgrader": []}}, "x", {"source": [None]}]}
    assert layouts.identify(odd, RELEASED) is None  # raw JSON that parse_submission would have tidied
    lone = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello world, this is mine')")])
    assert layouts.identify(lone, RELEASED) is None
    assert layouts.identify(RELEASED[A], {}) is None
    both = nbformat.v4.new_notebook()
    for assignment, gid in ((A, "sdpa-md"), ("05_multi_head", "heads-md")):
        cell = copy.deepcopy(next(c for c in RELEASED[assignment].cells if c.metadata["nbgrader"]["grade_id"] == gid))
        cell.source = ""
        both.cells.append(cell)
    assert layouts.identify(both, RELEASED) is None  # one distinct cell of each and no text: a tie


def test_identify_keeps_the_majority_when_a_cell_was_pasted_in():
    nb = copy.deepcopy(RELEASED[A])
    nb.cells += copy.deepcopy(RELEASED["05_multi_head"].cells[2:4])
    assert layouts.identify(nb, RELEASED) == A


# ================================================================== sizes ====

def test_a_class_of_200_canvas_files_is_read_quickly(tmp_path):
    import time
    data = notebook()
    root = tmp_path / "canvas"
    for i in range(200):
        put(root / f"student{i:03d}_{2000 + i}_{9000 + i}_{A}.ipynb", data, T0)
    start = time.monotonic()
    batch = layouts.collect(root, assignment=A)
    assert len(batch.entries) == 200 and time.monotonic() - start < 5
    assert all(stat.S_ISREG(os.lstat(root / e.choose(A).parts[0]).st_mode) for e in batch.entries)
