"""Deadlines (grader/deadlines.py): --due times and their zones, per-student extensions, the
--late-policy grammar and what lateness costs; refusals name the part they could not read."""

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from grader import deadlines

UTC = timezone.utc
DUE = datetime(2026, 11, 20, 23, 59, tzinfo=UTC)


def late(**kw):
    return DUE + timedelta(**kw)


@pytest.fixture
def new_york(monkeypatch):
    """This machine's local zone set to America/New_York for the test."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ================================================================= times ====

@pytest.mark.parametrize("text, want", [
    ("2026-11-20T23:59:00+01:00", datetime(2026, 11, 20, 22, 59, tzinfo=UTC)),
    ("2026-11-20T22:59Z", datetime(2026, 11, 20, 22, 59, tzinfo=UTC)),
    ("2026-11-20 23:59 UTC", datetime(2026, 11, 20, 23, 59, tzinfo=UTC)),
    ("2026-11-20 23:59 +0100", datetime(2026, 11, 20, 22, 59, tzinfo=UTC)),
    ("2026-11-20 23:59 UTC-8", datetime(2026, 11, 21, 7, 59, tzinfo=UTC)),
    ("2026-11-20 23:59:30.250 Europe/Paris", datetime(2026, 11, 20, 22, 59, 30, 250000, tzinfo=UTC)),
    ("2026-07-01 23:59 Europe/Paris", datetime(2026, 7, 1, 21, 59, tzinfo=UTC)),  # summer time: +02:00
    ("2026-11-20 9:05 PST", datetime(2026, 11, 20, 17, 5, tzinfo=UTC)),
    ("  2026-11-20   23:59   cet ", datetime(2026, 11, 20, 22, 59, tzinfo=UTC)),
    ("20261120T225900Z", datetime(2026, 11, 20, 22, 59, tzinfo=UTC)),  # ISO 8601 basic form
])
def test_due_times_with_a_zone(text, want):
    at, note = deadlines.parse_time(text, what="--due")
    assert at == want and at.tzinfo == UTC and note == ""


def test_a_naive_due_time_is_local_and_says_so(new_york):
    at, note = deadlines.parse_time("2026-11-20 23:59", what="--due")
    assert at == datetime(2026, 11, 21, 4, 59, tzinfo=UTC)  # EST, UTC-5
    assert note == "--due '2026-11-20 23:59' has no time zone: read in this machine's local time zone (EST, UTC-05:00)"
    summer, note = deadlines.parse_time("2026-07-01T23:59", what="--due")  # the local rules of that date
    assert summer == datetime(2026, 7, 2, 3, 59, tzinfo=UTC) and "EDT, UTC-04:00" in note


def test_a_naive_time_can_be_read_in_a_given_zone():
    at, note = deadlines.parse_time("2026-11-20 23:59", default_zone=ZoneInfo("Asia/Tokyo"))
    assert at == datetime(2026, 11, 20, 14, 59, tzinfo=UTC) and "Asia/Tokyo (UTC+09:00)" in note
    at, note = deadlines.parse_time("2026-11-20 14:03:11.123456", default_zone=UTC)
    assert at == datetime(2026, 11, 20, 14, 3, 11, 123456, tzinfo=UTC)


@pytest.mark.parametrize("text, words", [
    ("2026-11-20", "is a date without a time (give one, e.g. '2026-11-20 23:59')"),
    ("tomorrow 5pm", "cannot read 'tomorrow 5pm' as a time"),
    ("20/11/2026 23:59", "cannot read '20/11/2026 23:59' as a time"),
    ("2026-11-20 23:59 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("2026-11-20 23:59 XYZ", "unknown time zone 'XYZ'"),
    ("2026-11-20 23:59 +25:00", "offset '+25:00' is out of range"),
    ("2026-02-30 23:59", "cannot read '2026-02-30 23:59' as a time"),
    ("2026-11-20 24:30", "cannot read '2026-11-20 24:30' as a time"),
    ("", "no time given"),
])
def test_unreadable_due_times_are_refused_by_name(text, words):
    with pytest.raises(ValueError) as caught:
        deadlines.parse_time(text, what="--due")
    assert str(caught.value).startswith("--due") and words in str(caught.value), str(caught.value)


def test_time_formats_for_csv_and_reasons():
    at = datetime(2026, 11, 20, 15, 3, 11, 999000, tzinfo=ZoneInfo("Europe/Paris"))
    assert deadlines.format_time(at) == "2026-11-20T14:03:11Z"
    assert deadlines.format_time(None) == ""
    assert deadlines.short_time(at) == "2026-11-20 14:03 UTC"


# ============================================================ late policy ====

@pytest.mark.parametrize("spec, fields", [
    ("none", dict(kind="none")),
    ("", dict(kind="none")),
    ("10%/day, max 3 days, then 0", dict(kind="rate", rate=10, percent=True, period=86400, max_periods=3,
                                          then_zero=True)),
    ("5%/hour", dict(kind="rate", rate=5, period=3600, max_periods=None)),
    ("2 points/day", dict(kind="rate", rate=2, percent=False)),
    ("0 after due", dict(kind="zero")),
    ("Zero after the due date", dict(kind="zero")),
    ("0 after due, grace 10 minutes", dict(kind="zero", grace=600)),
    ("10 % per day; max 30%", dict(rate=10, max_penalty=30)),
    ("1.5 pts / d, max 6 points, grace 1 hour", dict(rate=1.5, percent=False, max_penalty=6, grace=3600)),
    ("5%/hour, max 2 days", dict(period=3600, max_periods=48)),
    ("  10%/DAY ,  MAX 3 DAYS , THEN ZERO ", dict(rate=10, max_periods=3, then_zero=True)),
])
def test_policy_grammar(spec, fields):
    policy = deadlines.parse_policy(spec)
    for name, value in fields.items():
        assert getattr(policy, name) == value, (name, policy)
    assert policy.describe()


@pytest.mark.parametrize("spec, words", [
    ("10%/fortnight", "cannot read '10%/fortnight' as a rate"),
    ("ten percent a day", "cannot read 'ten percent a day' as a rate"),
    ("10%/day, max three days", "cannot read 'max three days'"),
    ("10%/day, then 0", "'then 0' needs 'max N days'"),
    ("10%/day, max 3 days, then 50", "cannot read 'then 50'"),
    ("150%/day", "'150%/day' takes more than 100% per period"),
    ("0%/day", "must be more than 0"),
    ("10%/day,,max 3 days", "an empty clause"),
    ("10%/day, max 3 days, max 4 days", "'max 4 days' repeats a clause"),
    ("10%/day, max 2.5 days", "needs a whole number of periods"),
    ("10%/day, max 36 hours", "is not a whole number of the rate's periods"),
    ("10%/day, max 6 points", "'max 6 points' is in another unit than the rate"),
    ("none, max 3 days", "'none' takes nothing after it"),
    ("0 after due, max 3 days", "only 'grace N minutes' may follow '0 after due'"),
    ("10%/day, grace soon", "cannot read 'grace soon'"),
    ("10%/day, and be nice", "cannot read 'and be nice'"),
])
def test_policy_refusals_name_the_bad_part(spec, words):
    with pytest.raises(ValueError) as caught:
        deadlines.parse_policy(spec)
    message = str(caught.value)
    assert message.startswith(f"late policy {spec!r}") and words in message and "\n" not in message, message


# ================================================================ penalty ====

TEN = deadlines.parse_policy("10%/day, max 3 days, then 0")


@pytest.mark.parametrize("when, days, penalty, score", [
    (DUE - timedelta(minutes=5), 0, 0, 4),
    (DUE, 0, 0, 4),  # on the dot is on time
    (late(seconds=1), 1, 0.4, 3.6),  # a partial day rounds up
    (late(hours=24), 1, 0.4, 3.6),
    (late(hours=24, seconds=1), 2, 0.8, 3.2),
    (late(days=3), 3, 1.2, 2.8),
    (late(days=3, seconds=1), 4, 4, 0),  # past the cap: then 0
])
def test_ten_percent_a_day_then_zero(when, days, penalty, score):
    p = TEN.penalty(4, 4, when, DUE)
    assert (p.late_days, p.penalty, p.score, p.raw_score) == (days, penalty, score, 4)
    assert (p.note == "") == (days == 0)


def test_percent_is_of_the_maximum_and_the_score_never_goes_below_zero():
    p = TEN.penalty(0.2, 4, late(days=2), DUE)  # 0.8 due, only 0.2 to take
    assert (p.penalty, p.score) == (0.2, 0) and p.note == "2 days late: -0.2 (10%/day)"
    p = deadlines.parse_policy("10%/day").penalty(10, 10, late(days=30), DUE)  # no cap: 300% -> 0
    assert (p.late_days, p.penalty, p.score) == (30, 10, 0)


def test_hourly_and_points_policies():
    hourly = deadlines.parse_policy("5%/hour")
    p = hourly.penalty(20, 20, late(minutes=61), DUE)
    assert (p.late_days, p.penalty, p.score) == (1, 2, 18)  # 2 hours (rounded up) x 5% of 20
    assert p.note == "2 hours late: -2 (5%/hour)"
    capped = deadlines.parse_policy("1%/hour, max 2 days").penalty(20, 20, late(days=5), DUE)
    assert (capped.penalty, capped.score, capped.late_days) == (9.6, 10.4, 5)  # 48 hours charged at most
    points = deadlines.parse_policy("2 points/day, max 6 points")
    assert points.penalty(10, 10, late(days=2), DUE).score == 6
    assert points.penalty(10, 10, late(days=5), DUE).score == 4  # the cap holds
    assert deadlines.parse_policy("10%/day, max 30%").penalty(4, 4, late(days=9), DUE).penalty == 1.2


def test_zero_none_and_grace():
    zero = deadlines.parse_policy("0 after due")
    assert zero.penalty(4, 4, late(seconds=1), DUE).score == 0
    assert zero.penalty(4, 4, DUE, DUE).score == 4
    none = deadlines.parse_policy("none").penalty(4, 4, late(days=2, hours=1), DUE)
    assert (none.late_days, none.penalty, none.score) == (3, 0, 4) and "no late penalty" in none.note
    grace = deadlines.parse_policy("10%/day, grace 15 minutes")
    assert grace.penalty(4, 4, late(minutes=15), DUE).late_days == 0  # within the grace: on time
    p = grace.penalty(4, 4, late(hours=25), DUE)
    assert (p.late_days, p.penalty) == (2, 0.8)  # the grace does not shift the count
    assert deadlines.parse_policy("0 after due, grace 1 hour").penalty(4, 4, late(minutes=59), DUE).score == 4


def test_unknown_times_and_failed_rows():
    assert TEN.penalty(4, 4, None, DUE) == deadlines.Penalty(0, 0.0, 4.0, 4.0)
    assert TEN.penalty(4, 4, late(days=1), None).score == 4
    failed = TEN.penalty(None, 4, late(days=2), DUE)  # a failed row still shows how late it was
    assert (failed.late_days, failed.penalty, failed.score, failed.raw_score) == (2, 0, None, None)
    with pytest.raises(ValueError, match="aware"):
        TEN.penalty(4, 4, datetime(2026, 11, 21), DUE)


def test_lateness_is_elapsed_time_across_zones_and_daylight_saving():
    paris = ZoneInfo("Europe/Paris")
    due = datetime(2026, 10, 24, 23, 59, tzinfo=paris)  # clocks go back on the 25th
    handed_in = datetime(2026, 10, 25, 23, 59, tzinfo=paris)  # one calendar day, 25 hours later
    assert TEN.penalty(4, 4, handed_in, due).late_days == 2
    assert TEN.penalty(4, 4, datetime(2026, 10, 25, 21, 59, tzinfo=UTC), due).late_days == 1  # 23:59 + 24 h


# ============================================================= extensions ====

def test_extensions_with_new_due_times_and_extra_days():
    text = ("student_id,due,days\n"
            "ada,2026-11-23 12:00 UTC,\n"
            "ben,,2\n"
            "cy,,0.5\n")
    ext = deadlines.parse_extensions(text, DUE)
    assert ext.due_for("ada") == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert ext.due_for("ben") == DUE + timedelta(days=2)
    assert ext.due_for("cy") == DUE + timedelta(hours=12)
    assert ext.due_for("dee") == DUE  # no extension: the class's due time
    assert ext.unknown(["ada", "ben"]) == ["cy"]
    # late time counts from the student's own due time
    handed_in = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    assert TEN.penalty(4, 4, handed_in, ext.due_for("ada")).late_days == 0
    assert TEN.penalty(4, 4, handed_in, ext.due_for("ben")).late_days == 1  # 61 minutes past 22 Nov 23:59
    assert TEN.penalty(4, 4, handed_in, ext.due_for("dee")).late_days == 3  # 2 days and 61 minutes


def test_extension_file_with_bom_header_variants_and_naive_times(tmp_path, new_york):
    path = tmp_path / "extensions.csv"
    path.write_bytes("\ufeffStudent ID,New Due,Extra Hours\nada,2026-11-22 23:59,\nben,,36\n".encode())
    ext = deadlines.read_extensions(path, DUE)
    assert ext.due_for("ada") == datetime(2026, 11, 23, 4, 59, tzinfo=UTC)
    assert ext.due_for("ben") == DUE + timedelta(hours=36)
    assert ext.notes == [f"{path}: 1 due time(s) without a time zone, read in this machine's local time zone"]
    assert deadlines.read_extensions(None, DUE).due_for("x") == DUE


@pytest.mark.parametrize("text, words", [
    ("student_id,due,days\nada,2026-11-22 23:59 UTC,2\n", "row 2: ada has both a due time and extra days"),
    ("student_id,days\nada,1\nada,2\n", "row 3: ada is listed twice"),
    ("student_id,days\n,1\n", "row 2: no student id"),
    ("student_id,days\nada,two\n", "row 2: 'two' is not a number"),
    ("student_id,days\nada,-1\n", "row 2: '-1' is not a sensible extension"),
    ("student_id,days\nada,nan\n", "row 2: 'nan' is not a sensible extension"),
    ("student_id,due\nada,someday\n", "row 2: cannot read 'someday' as a time"),
    ("student_id,due,days\nada,,\n", "row 2: ada has neither a due time nor extra days"),
    ("name,days\nada,1\n", "no student_id column"),
    ("student_id,comment\nada,ill\n", "needs a 'due' column"),
])
def test_bad_extension_rows_are_refused_by_row(text, words):
    with pytest.raises(ValueError) as caught:
        deadlines.parse_extensions(text, DUE)
    assert words in str(caught.value), str(caught.value)


def test_extra_days_need_a_due_time():
    with pytest.raises(ValueError, match="extra days for ada need --due"):
        deadlines.parse_extensions("student_id,days\nada,1\n", None)
    ext = deadlines.parse_extensions("student_id,due\nada,2026-11-22T23:59Z\n", None)
    assert ext.due_for("ada") == datetime(2026, 11, 22, 23, 59, tzinfo=UTC) and ext.due_for("ben") is None


# ================================================================ columns ====

def test_trailing_columns_follow_the_contract():
    assert deadlines.TRAILING_COLUMNS == ["submitted_at", "late_days", "penalty", "raw_score"]
    submitted = late(days=1, seconds=30)
    p = TEN.penalty(3, 4, submitted, DUE)
    assert deadlines.trailing_columns(submitted, p) == ["2026-11-21T23:59:30Z", "2", "0.8", "3"]
    assert deadlines.trailing_columns(None, TEN.penalty(3, 4, None, DUE)) == ["", "0", "0", "3"]
    assert deadlines.trailing_columns(submitted, TEN.penalty(None, 4, submitted, DUE)) == \
        ["2026-11-21T23:59:30Z", "2", "0", ""]
    assert deadlines.trailing_columns(None, None) == ["", "", "", ""]
