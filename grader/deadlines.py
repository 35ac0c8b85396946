"""Deadlines: the due time, per-student extensions and a late policy, for ``attn-grade autograde``.

``--due T``
    ISO 8601 (``2026-11-20T23:59:00+01:00``, ``2026-11-20T22:59Z``) or ``YYYY-MM-DD HH:MM[:SS]``
    followed by an optional time zone: ``Z``, ``UTC``, ``GMT``, an offset (``+01:00``,
    ``+0100``, ``-8``, ``UTC+1``), an IANA name (``Europe/Paris``) or one of the abbreviations
    in :data:`ABBREVIATIONS` (each read as one fixed offset: ``CST`` is US Central). Without a
    zone the time is read in **this machine's local time zone**, and the note returned says so.
    A date without a time is refused (is it the start or the end of the day?).

``--extensions file.csv``
    One row per student: a ``student_id`` column (or ``id``, ``student id``, ``sid``, ...) and
    either a ``due`` column (a new due time, same forms as ``--due``) or a ``days`` column (extra
    days added to ``--due``; ``hours`` works too). A row giving both, a student listed twice or an
    unreadable time is refused with a ``ValueError`` naming the row.

``--late-policy SPEC`` (case-insensitive; clauses separated by commas or semicolons)::

    spec    := "none"
             | zero ("," grace)?
             | rate ("," clause)*
    zero    := "0 after due" | "zero after due"      any lateness past the grace gives 0
    rate    := NUMBER amount ("/" | "per") period    "10%/day", "5 % per hour", "2 points/day"
    amount  := "%" | "point" | "points" | "pt" | "pts"
    period  := "day" | "days" | "d" | "hour" | "hours" | "h"
    clause  := "max" NUMBER period                   charge at most that many periods ("max 3 days")
             | "max" NUMBER amount                   cap the total penalty ("max 30%", "max 6 points")
             | "then 0"                              past the "max N days" cap the score is 0
             | grace
    grace   := "grace" NUMBER ("minute(s)" | "min" | "m" | "hour(s)" | "h")

Each clause at most once; ``then 0`` needs ``max N days`` (or hours) before it. Anything else is a
``ValueError`` that quotes the part it could not read and shows what would be accepted.

Semantics. Lateness is counted from the student's own due time (the extension when there is
one) in elapsed time, not calendar days. **Partial periods round up**: one second late is one day
late (one hour under an hourly policy). A grace period makes lateness up to it count as on time
(it does not shift the count: 25 hours late with a 15-minute grace is still 2 days). A percentage
is of the assignment's **maximum** score (as Canvas's late policy does): "10%/day" takes 0.4 per
day from an assignment worth 4. The penalty is never more than the raw score (the final score is
never below 0); ``late_days`` is always whole days late, whatever the policy's period.

Use::

    policy = deadlines.parse_policy(args.late_policy or "none")
    due, note = deadlines.parse_time(args.due)                  # note: "" or "read in local time"
    own = deadlines.read_extensions(args.extensions, due)       # Extensions: .due_for(id), .notes
    ...
    p = policy.penalty(raw, max_score, submitted_at, own.due_for(student_id))
    row += deadlines.trailing_columns(submitted_at, p)          # submitted_at,late_days,penalty,raw_score
"""

from __future__ import annotations

import csv
import math
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

TRAILING_COLUMNS = ["submitted_at", "late_days", "penalty", "raw_score"]
DAY, HOUR, MINUTE = 86400.0, 3600.0, 60.0

# Abbreviations read as one fixed offset each (hours east of UTC). Ambiguous ones are given their
# most common meaning in course software (CST = US Central, IST = India); others are refused.
ABBREVIATIONS = {
    "UTC": 0, "GMT": 0, "Z": 0, "UT": 0, "WET": 0, "WEST": 1, "BST": 1, "IST": 5.5,
    "CET": 1, "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
    "AKST": -9, "AKDT": -8, "HST": -10, "NZST": 12, "NZDT": 13, "AEST": 10, "AEDT": 11,
    "ACST": 9.5, "ACDT": 10.5, "AWST": 8, "JST": 9, "KST": 9, "SGT": 8, "HKT": 8,
}

_WALL = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})(?:[Tt]|\s+)(?P<h>\d{1,2}):(?P<m>\d{2})"
    r"(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?\s*(?P<zone>.*?)\s*$")
_OFFSET = re.compile(r"^(?:(?:UTC|GMT)\s*)?(?P<sign>[+-])(?P<h>\d{1,2})(?::?(?P<m>\d{2}))?$", re.I)


# ------------------------------------------------------------------ times ----

def zone_from_text(text: str) -> tzinfo:
    """A time zone from ``Z``/``UTC``/``GMT``, an offset (``+01:00``, ``+0100``, ``-8``, ``UTC+1``),
    an abbreviation of :data:`ABBREVIATIONS` or an IANA name; ``ValueError`` otherwise."""
    token = text.strip()
    m = _OFFSET.match(token)
    if m:
        hours, minutes = int(m["h"]), int(m["m"] or 0)
        if hours > 23 or minutes > 59:
            raise ValueError(f"time zone offset {token!r} is out of range")
        delta = timedelta(hours=hours, minutes=minutes)
        return timezone(-delta if m["sign"] == "-" else delta)
    if token.upper() in ABBREVIATIONS:
        return timezone(timedelta(hours=ABBREVIATIONS[token.upper()]))
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*", token):
        try:
            return zoneinfo.ZoneInfo(token)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ValueError(f"unknown time zone {token!r} (use an offset like +01:00, UTC, or a name like Europe/Paris)")


def local_zone_name(at: datetime | None = None) -> str:
    """This machine's local zone as words, e.g. ``"CET, UTC+01:00"``."""
    aware = (at or datetime.now()).astimezone()
    return f"{aware.tzname()}, UTC{_offset_text(aware.utcoffset())}"


def _offset_text(delta: timedelta | None) -> str:
    minutes = round((delta or timedelta()).total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def localize(naive: datetime, zone: tzinfo | None = None) -> datetime:
    """``naive`` as an aware time: in ``zone``, or in this machine's local zone (with its own
    daylight-saving rules for that date) when ``zone`` is None."""
    if zone is None:
        return naive.astimezone()
    return naive.replace(tzinfo=zone)


def parse_time(text: str, *, default_zone: tzinfo | None = None, what: str = "time") -> tuple[datetime, str]:
    """``(aware datetime in UTC, note)`` from ISO 8601 or ``YYYY-MM-DD HH:MM[:SS[.f]] [zone]``.
    A time without a zone is read in ``default_zone``, or this machine's local zone when that
    is None, and ``note`` says so; otherwise ``note`` is empty. ``ValueError`` names ``what``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: no time given")
    raw = text.strip()
    m = _WALL.match(raw)
    naive = zone = None
    try:
        if m:
            frac = (m["f"] or "0")[:6].ljust(6, "0")
            naive = datetime.fromisoformat(f"{m['date']}T{int(m['h']):02d}:{m['m']}:{m['s'] or '00'}.{frac}")
            if m["zone"]:
                zone = zone_from_text(m["zone"])
        else:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{8}", raw):
                raise ValueError(f"{raw!r} is a date without a time (give one, e.g. '{raw} 23:59')")
            parsed = datetime.fromisoformat(raw)
            if parsed.tzinfo is None:
                naive = parsed
            else:
                return parsed.astimezone(timezone.utc), ""
    except ValueError as e:
        if "without a time" in str(e) or "time zone" in str(e):
            raise ValueError(f"{what}: {e}") from None
        raise ValueError(f"{what}: cannot read {raw!r} as a time (expected ISO 8601 or "
                         f"'YYYY-MM-DD HH:MM' with an optional zone, e.g. '2026-11-20 23:59 Europe/Paris')") from None
    if zone is not None:
        return naive.replace(tzinfo=zone).astimezone(timezone.utc), ""
    aware = localize(naive, default_zone)
    where = (f"this machine's local time zone ({local_zone_name(naive)})" if default_zone is None
             else f"{default_zone} (UTC{_offset_text(aware.utcoffset())})")
    return aware.astimezone(timezone.utc), f"{what} {raw!r} has no time zone: read in {where}"


def format_time(at: datetime | None) -> str:
    """``2026-11-20T14:03:11Z`` (UTC, whole seconds), or ``""``."""
    if at is None:
        return ""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_time(at: datetime) -> str:
    """``2026-11-20 14:03 UTC`` for reasons."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------ extensions ----

_STUDENT_HEADERS = ("student_id", "student id", "studentid", "id", "sid", "student", "username", "login")
_DUE_HEADERS = ("due", "new due", "new_due", "due_at", "due at", "deadline", "until", "extended due", "extended_due")
_DAYS_HEADERS = ("days", "extra days", "extra_days", "extension days", "extension_days", "extension")
_HOURS_HEADERS = ("hours", "extra hours", "extra_hours")


def _header_key(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name.strip().lstrip("\ufeff").lower()).split())


def _pick(headers: dict[str, int], names) -> int | None:
    for name in names:
        key = _header_key(name)
        if key in headers:
            return headers[key]
    return None


@dataclass
class Extensions:
    """Each student's own due time: their extension, else the class's."""
    due: datetime | None
    own: dict[str, datetime] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def due_for(self, student_id: str) -> datetime | None:
        return self.own.get(student_id, self.due)

    def unknown(self, student_ids) -> list[str]:
        """Students with an extension who are not among ``student_ids`` (to report)."""
        known = set(student_ids)
        return sorted(s for s in self.own if s not in known)


def parse_extensions(text: str, due: datetime | None, *, default_zone: tzinfo | None = None,
                     name: str = "extensions") -> Extensions:
    """:class:`Extensions` from CSV text (see the module docstring); ``ValueError`` naming the row."""
    rows = list(csv.reader(text.lstrip("\ufeff").splitlines()))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return Extensions(due)
    headers = {}
    for i, h in enumerate(rows[0]):
        headers.setdefault(_header_key(h), i)
    sid_col = _pick(headers, _STUDENT_HEADERS)
    due_col, days_col, hours_col = (_pick(headers, _DUE_HEADERS), _pick(headers, _DAYS_HEADERS),
                                    _pick(headers, _HOURS_HEADERS))
    if sid_col is None:
        raise ValueError(f"{name}: no student_id column (found: {', '.join(rows[0])})")
    if due_col is None and days_col is None and hours_col is None:
        raise ValueError(f"{name}: needs a 'due' column (a new due time) or a 'days' column (extra days); "
                         f"found: {', '.join(rows[0])}")
    result = Extensions(due)
    zone_notes = 0
    for line, row in enumerate(rows[1:], start=2):
        def cell(col):
            return row[col].strip() if col is not None and col < len(row) else ""
        sid = cell(sid_col)
        if not sid:
            raise ValueError(f"{name}, row {line}: no student id")
        if sid in result.own:
            raise ValueError(f"{name}, row {line}: {sid} is listed twice")
        new_due, days, hours = cell(due_col), cell(days_col), cell(hours_col)
        if new_due and (days or hours):
            raise ValueError(f"{name}, row {line}: {sid} has both a due time and extra days: give one")
        if new_due:
            at, note = parse_time(new_due, default_zone=default_zone, what=f"{name}, row {line}")
            zone_notes += bool(note)
        elif days or hours:
            if due is None:
                raise ValueError(f"{name}, row {line}: extra days for {sid} need --due")
            try:
                extra = float(days or 0) * DAY + float(hours or 0) * HOUR
            except ValueError:
                raise ValueError(f"{name}, row {line}: {days or hours!r} is not a number of days/hours") from None
            if not math.isfinite(extra) or extra < 0 or extra > 3650 * DAY:
                raise ValueError(f"{name}, row {line}: {days or hours!r} is not a sensible extension")
            at = due + timedelta(seconds=extra)
        else:
            raise ValueError(f"{name}, row {line}: {sid} has neither a due time nor extra days")
        result.own[sid] = at
    if zone_notes:
        where = "this machine's local time zone" if default_zone is None else str(default_zone)
        result.notes.append(f"{name}: {zone_notes} due time(s) without a time zone, read in {where}")
    return result


def read_extensions(path, due: datetime | None, *, default_zone: tzinfo | None = None) -> Extensions:
    """:func:`parse_extensions` of the instructor's file (UTF-8, with or without BOM); ``None``
    gives an empty set."""
    if path is None:
        return Extensions(due)
    with open(path, encoding="utf-8-sig", newline="") as f:
        return parse_extensions(f.read(), due, default_zone=default_zone, name=str(path))


# ------------------------------------------------------------ late policy ----

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_AMOUNT = r"(%|points?|pts?)"
_PERIOD = r"(days?|d|hours?|h)"
_RATE = re.compile(rf"^{_NUMBER}\s*{_AMOUNT}\s*(?:/|per)\s*{_PERIOD}$")
_MAX_PERIODS = re.compile(rf"^max(?:imum)?\s+{_NUMBER}\s*{_PERIOD}$")
_MAX_AMOUNT = re.compile(rf"^max(?:imum)?\s+{_NUMBER}\s*{_AMOUNT}$")
_THEN_ZERO = re.compile(r"^then\s+(?:0|zero)$")
_GRACE = re.compile(rf"^grace\s+{_NUMBER}\s*(minutes?|mins?|m|hours?|h)$")
_ZERO = re.compile(r"^(?:0|zero)\s+after\s+(?:the\s+)?due(?:\s+(?:time|date))?$")
_EXAMPLES = ('"10%/day, max 3 days, then 0", "5%/hour", "2 points/day, max 6 points", "0 after due", '
             '"none", "grace 15 minutes"')


def _period_seconds(word: str) -> float:
    return DAY if word.startswith("d") else HOUR


@dataclass(frozen=True)
class Penalty:
    """What lateness costs one submission."""
    late_days: int  # whole days late, partial days rounded up; 0 when on time or no time known
    penalty: float  # points taken (never more than the raw score)
    score: float | None  # raw_score - penalty, never below 0 (None when raw_score is None)
    raw_score: float | None
    late_seconds: float = 0.0  # exact lateness past the due time (0 within the grace)
    note: str = ""  # one line for the row's reason, "" when on time


@dataclass(frozen=True)
class LatePolicy:
    """A parsed ``--late-policy``; see the module docstring for the grammar."""
    spec: str = "none"
    kind: str = "none"  # "none", "zero" or "rate"
    rate: float = 0.0  # per period: percent of the maximum, or points
    percent: bool = True
    period: float = DAY  # seconds
    max_periods: int | None = None
    max_penalty: float | None = None  # same unit as rate (percent of maximum, or points)
    then_zero: bool = False
    grace: float = 0.0  # seconds

    def describe(self) -> str:
        """The policy in words, for the run's summary."""
        if self.kind == "none":
            text = "no late penalty"
        elif self.kind == "zero":
            text = "0 for any late submission"
        else:
            unit = "% of the maximum" if self.percent else " points"
            per = "day" if self.period == DAY else "hour"
            text = f"{self.rate:g}{unit} per {per} late (a partial {per} counts as a whole one)"
            if self.max_periods is not None:
                text += f", for at most {self.max_periods} {per}s" + (", then 0" if self.then_zero else "")
            if self.max_penalty is not None:
                text += f", at most {self.max_penalty:g}{unit} in all"
        if self.grace:
            text += f"; {self.grace / MINUTE:g} minutes' grace"
        return text

    def penalty(self, raw_score: float | None, max_score: float, submitted_at: datetime | None,
                due: datetime | None) -> Penalty:
        """The late days, the points taken and the final score of one submission. No due time or
        no submission time: nothing is taken. Aware datetimes only (naive ones are refused)."""
        raw_score = None if raw_score is None else float(raw_score)
        if submitted_at is None or due is None:
            return Penalty(0, 0.0, raw_score, raw_score)
        if submitted_at.tzinfo is None or due.tzinfo is None:
            raise ValueError("penalty() needs aware datetimes (with a time zone)")
        # in UTC: Python subtracts two times of one zone object by wall clock, blind to DST changes
        late = (submitted_at.astimezone(timezone.utc) - due.astimezone(timezone.utc)).total_seconds()
        if late <= 0 or late <= self.grace:
            return Penalty(0, 0.0, raw_score, raw_score)
        days = math.ceil(late / DAY)
        what = f"{days} day{'s' if days != 1 else ''} late"
        if self.period == HOUR and self.kind == "rate":
            hours = math.ceil(late / HOUR)
            what = f"{hours} hour{'s' if hours != 1 else ''} late"
        if raw_score is None:
            return Penalty(days, 0.0, None, None, late, what)
        raw = float(raw_score)
        if self.kind == "none":
            return Penalty(days, 0.0, raw, raw, late, what + " (no late penalty)")
        periods = math.ceil(late / self.period)
        if self.kind == "zero" or (self.then_zero and self.max_periods is not None and periods > self.max_periods):
            taken = max(raw, 0.0)
            why = "0 after the due time" if self.kind == "zero" else f"0 after {self.max_periods} {self._per()}s"
            return Penalty(days, _clean(taken), _clean(raw - taken), raw, late, f"{what}: {why} (-{_clean(taken):g})")
        charged = periods if self.max_periods is None else min(periods, self.max_periods)
        unit_points = self.rate / 100.0 * max_score if self.percent else self.rate
        cost = unit_points * charged
        if self.max_penalty is not None:
            cap = self.max_penalty / 100.0 * max_score if self.percent else self.max_penalty
            cost = min(cost, cap)
        taken = min(max(cost, 0.0), max(raw, 0.0))
        unit = "%" if self.percent else " points"
        return Penalty(days, _clean(taken), _clean(max(raw - taken, 0.0)), raw, late,
                       f"{what}: -{_clean(taken):g} ({self.rate:g}{unit}/{self._per()})")

    def _per(self) -> str:
        return "day" if self.period == DAY else "hour"


def _clean(x: float) -> float:
    return round(x, 9) + 0.0


def parse_policy(spec: str | None) -> LatePolicy:
    """A :class:`LatePolicy` from ``spec`` (grammar in the module docstring); ``None`` or empty
    is ``"none"``. ``ValueError`` quoting the part that could not be read."""
    if spec is None or not spec.strip():
        return LatePolicy()
    text = " ".join(spec.strip().lower().split())
    clauses = [c.strip() for c in re.split(r"[,;]", text)]
    if any(not c for c in clauses):
        raise ValueError(f"late policy {spec!r}: an empty clause (two separators in a row?)")
    head, rest = clauses[0], clauses[1:]
    if head == "none":
        if rest:
            raise ValueError(f"late policy {spec!r}: 'none' takes nothing after it (got {rest[0]!r})")
        return LatePolicy(spec=spec.strip())
    fields: dict = {"spec": spec.strip()}
    if _ZERO.match(head):
        fields["kind"] = "zero"
        allowed = (_GRACE,)
    else:
        m = _RATE.match(head)
        if not m:
            raise ValueError(f"late policy {spec!r}: cannot read {head!r} as a rate "
                             f"(expected e.g. '10%/day', '5% per hour', '2 points/day', 'none' or '0 after due')")
        rate = float(m[1])
        percent = m[2] == "%"
        if rate <= 0:
            raise ValueError(f"late policy {spec!r}: the rate in {head!r} must be more than 0")
        if percent and rate > 100:
            raise ValueError(f"late policy {spec!r}: {head!r} takes more than 100% per period")
        fields.update(kind="rate", rate=rate, percent=percent, period=_period_seconds(m[3]))
        allowed = (_MAX_PERIODS, _MAX_AMOUNT, _THEN_ZERO, _GRACE)
    seen = set()
    for clause in rest:
        pattern = next((p for p in allowed if p.match(clause)), None)
        if pattern is None:
            hint = ("only 'grace N minutes' may follow '0 after due'" if fields["kind"] == "zero"
                    else "expected 'max 3 days', 'max 30%', 'max 6 points', 'then 0' or 'grace 15 minutes'")
            raise ValueError(f"late policy {spec!r}: cannot read {clause!r} ({hint}; examples: {_EXAMPLES})")
        if pattern in seen:
            raise ValueError(f"late policy {spec!r}: {clause!r} repeats a clause already given")
        seen.add(pattern)
        m = pattern.match(clause)
        if pattern is _MAX_PERIODS:
            n = float(m[1])
            if n != int(n) or n < 1:
                raise ValueError(f"late policy {spec!r}: {clause!r} needs a whole number of periods, at least 1")
            span = n * _period_seconds(m[2]) / fields["period"]  # "5%/hour, max 2 days": 48 hours
            if span != int(span):
                raise ValueError(f"late policy {spec!r}: {clause!r} is not a whole number of the rate's "
                                 f"periods ({head!r})")
            fields["max_periods"] = int(span)
        elif pattern is _MAX_AMOUNT:
            if (m[2] == "%") != fields["percent"]:
                raise ValueError(f"late policy {spec!r}: {clause!r} is in another unit than the rate")
            fields["max_penalty"] = float(m[1])
        elif pattern is _THEN_ZERO:
            fields["then_zero"] = True
        else:
            unit = m[2]
            fields["grace"] = float(m[1]) * (HOUR if unit.startswith("h") else MINUTE)
    if fields.get("then_zero") and fields.get("max_periods") is None:
        raise ValueError(f"late policy {spec!r}: 'then 0' needs 'max N days' (or hours) before it")
    return LatePolicy(**fields)


# ---------------------------------------------------------------- columns ----

def trailing_columns(submitted_at: datetime | None, p: Penalty | None) -> list[str]:
    """The values of :data:`TRAILING_COLUMNS` for one row: ``submitted_at`` in UTC (empty when
    unknown), ``late_days``, ``penalty`` and ``raw_score`` (empty when there is no score)."""
    if p is None:
        return [format_time(submitted_at), "", "", ""]
    raw = "" if p.raw_score is None else f"{p.raw_score:g}"
    return [format_time(submitted_at), str(p.late_days), f"{p.penalty:g}", raw]
