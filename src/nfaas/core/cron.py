"""Cron schedules for timer triggers: parse crontab(5) expressions, find the next fire time.

A function's manifest declares `triggers: [{cron: "*/5 * * * *"}]`; the trigger service parses the
expression once with `parse_cron` and asks `next_fire` when to invoke next.

Semantics follow crontab(5) (Vixie cron / cronie):
- five fields `minute hour day-of-month month day-of-week`, separated by blanks;
- each field is a comma list of `*`, `n`, `a-b`, `*/s`, `a-b/s` or `a/s` (`a/s` = `a-last/s`);
- month names jan-dec and weekday names sun-sat, case-insensitive, anywhere a number may stand;
  Sunday (0 or sun) closing a range means 7, so `mon-sun` is Monday to Sunday;
- day of week 0 and 7 are both Sunday;
- when day-of-month and day-of-week are both restricted (the field does not start with `*`),
  a day matches if EITHER matches; otherwise both must match;
- macros @yearly/@annually, @monthly, @weekly, @daily/@midnight, @hourly, and `@every <duration>`
  for sub-minute timers, aligned to the Unix epoch so that restarts fire at the same instants.

Fire times are wall-clock minutes in the timezone of the `after` datetime. Where a timezone skips
an hour (DST gap) the missing minutes do not fire; where it repeats an hour they fire once, at
the first occurrence.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from nfaas.core.units import parse_duration


class CronError(ValueError):
    """A cron expression that cannot be parsed or can never fire; says which field and where."""

    def __init__(self, field: str, position: int, problem: str) -> None:
        self.field = field
        self.position = position
        self.problem = problem
        super().__init__(f"{field}: {problem} (at character {position})")


@dataclass(frozen=True)
class CronSchedule:
    """An expanded cron expression.

    Weekdays are 0-6 with 0 = Sunday. For `@every` schedules `interval` is set and the calendar
    sets are full (unused).
    """

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_of_month_restricted: bool
    day_of_week_restricted: bool
    interval: timedelta | None = None


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]

    @property
    def allowed(self) -> str:
        if not self.names:
            return f"{self.low}-{self.high}"
        first, *_, last = self.names  # dicts keep insertion order: first and last name
        return f"{self.low}-{self.high} or {first}-{last}"


_MONTH_NAMES = {name.lower(): number for number, name in enumerate(calendar.month_abbr) if name}
# Fixed English abbreviations: calendar.day_abbr follows the locale and starts on Monday.
_WEEKDAY_NAMES = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day of week", 0, 7, _WEEKDAY_NAMES),
)
_MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY = _FIELDS
_SUNDAY_AT_END = 7
_DIGITS = re.compile(r"[0-9]+")
_WORD = re.compile(r"\S+")
# Longest day of each month over all years (February has a 29th in leap years).
_MAX_DAYS = {month: calendar.monthrange(2000, month)[1] for month in range(1, 13)}

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = "@every"
_MIN_INTERVAL = timedelta(seconds=1)
_MAX_INTERVAL = timedelta(days=366)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The Gregorian calendar repeats every 400 years: a schedule that has not fired within that
# span never will.
_CALENDAR_CYCLE_YEARS = 400


def parse_cron(expression: str) -> CronSchedule:
    """Parse a 5-field cron expression, a macro such as @daily, or `@every <duration>`."""
    if not isinstance(expression, str):
        raise CronError("expression", 0, f"expected a cron expression string, got {expression!r}")
    words = list(_WORD.finditer(expression))
    if not words:
        raise CronError("expression", 0, "is empty, expected 5 fields or a macro such as @daily")
    first = words[0]
    if first.group().startswith("@"):
        return _parse_macro(expression, words)
    if len(words) != len(_FIELDS):
        position = words[len(_FIELDS)].start() if len(words) > len(_FIELDS) else len(expression)
        raise CronError(
            "expression",
            position,
            f"{expression.strip()!r} has {len(words)} fields, expected 5 "
            "(minute hour day-of-month month day-of-week)",
        )
    return _parse_fields(expression, [(word.group(), word.start()) for word in words])


def next_fire(schedule: CronSchedule, after: datetime) -> datetime:
    """The first fire time strictly after `after` (an aware datetime), in `after`'s timezone.

    Raises CronError when there is none before the year 10000 (datetime's limit).
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError(f"next_fire needs a timezone-aware datetime, got naive {after!r}")
    try:
        if schedule.interval is not None:
            return _next_interval_fire(schedule.interval, after)
        return _next_calendar_fire(schedule, after)
    except OverflowError:
        pass
    raise CronError(
        "expression", 0, f"{schedule.expression!r} has no fire time after {after} before year 10000"
    )


def _parse_macro(expression: str, words: list[re.Match[str]]) -> CronSchedule:
    macro, *arguments = words
    name = macro.group().lower()
    if name == _EVERY:
        if not arguments:
            raise CronError(
                "expression", len(expression), "@every needs a duration, such as @every 30s"
            )
        text_start = arguments[0].start()
        return _every(expression, expression[text_start:].rstrip(), text_start)
    if name not in _MACROS:
        known = ", ".join([*_MACROS, "@every <duration>"])
        raise CronError(
            "expression", macro.start(), f"unknown macro {macro.group()!r}, expected one of {known}"
        )
    if arguments:
        raise CronError(
            "expression",
            arguments[0].start(),
            f"{macro.group()} takes no arguments, got {arguments[0].group()!r}",
        )
    standard = _MACROS[name]
    fields = [(word.group(), macro.start()) for word in _WORD.finditer(standard)]
    schedule = _parse_fields(standard, fields)
    return replace(schedule, expression=expression)


def _every(expression: str, text: str, position: int) -> CronSchedule:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise CronError(
            "expression", position, f"{text!r} is not a duration such as 30s, 5m or 1h"
        ) from None
    interval = (
        timedelta(microseconds=round(seconds * 1_000_000))
        if math.isfinite(seconds) and seconds < 1e12
        else None
    )
    if interval is None or not _MIN_INTERVAL <= interval <= _MAX_INTERVAL:
        raise CronError(
            "expression",
            position,
            f"@every interval {text!r} is out of range 1s-{_MAX_INTERVAL.days * 24}h",
        )
    minutes, hours, days, months = (frozenset(range(f.low, f.high + 1)) for f in _FIELDS[:4])
    return CronSchedule(
        expression, minutes, hours, days, months, frozenset(range(7)), False, False, interval
    )


def _parse_fields(expression: str, fields: list[tuple[str, int]]) -> CronSchedule:
    minutes, hours, days, months, weekdays = (
        _parse_field(spec, text, start) for spec, (text, start) in zip(_FIELDS, fields, strict=True)
    )
    # Vixie cron: a field "is *" when it starts with '*', which includes "*/2".
    day_restricted = not fields[2][0].startswith("*")
    weekday_restricted = not fields[4][0].startswith("*")
    schedule = CronSchedule(
        expression,
        minutes,
        hours,
        days,
        months,
        frozenset(day % 7 for day in weekdays),
        day_restricted,
        weekday_restricted,
    )
    if not (day_restricted and weekday_restricted):
        _check_days_exist(schedule, fields[2][1])
    return schedule


def _check_days_exist(schedule: CronSchedule, position: int) -> None:
    """Reject schedules whose days of month never occur in their months (e.g. 30 February)."""
    if any(day <= _MAX_DAYS[month] for day in schedule.days for month in schedule.months):
        return
    days = ",".join(map(str, sorted(schedule.days)))
    months = ",".join(calendar.month_abbr[month].lower() for month in sorted(schedule.months))
    raise CronError(
        _DAY.name,
        position,
        f"day {days} never occurs in month {months}, so the schedule can never fire",
    )


def _parse_field(spec: _Field, text: str, start: int) -> frozenset[int]:
    values: set[int] = set()
    offset = 0
    for item in text.split(","):
        values.update(_parse_item(spec, item, start + offset))
        offset += len(item) + 1
    return frozenset(values)


def _parse_item(spec: _Field, item: str, start: int) -> range:
    if not item:
        raise CronError(spec.name, start, f"empty list item (allowed {spec.allowed})")
    base, slash, step_text = item.partition("/")
    low, high = _parse_bounds(spec, base, start, has_step=bool(slash))
    step = _parse_step(spec, step_text, start + len(base) + 1) if slash else 1
    return range(low, high + 1, step)


def _parse_bounds(spec: _Field, base: str, start: int, *, has_step: bool) -> tuple[int, int]:
    """The inclusive range of `*`, `a-b` or `a`; `a/s` runs from a to the end of the field."""
    if base == "*":
        return spec.low, spec.high
    low_text, dash, high_text = base.partition("-")
    low = _parse_value(spec, low_text, start)
    if not dash:
        return low, spec.high if has_step else low
    high = _parse_value(spec, high_text, start + len(low_text) + 1)
    if spec is _WEEKDAY and high == 0 < low:
        high = _SUNDAY_AT_END  # "mon-sun" means Monday to Sunday: Sunday closing a range is 7
    if low > high:
        raise CronError(
            spec.name, start, f"range {base} runs backwards (allowed {spec.allowed}, low-high)"
        )
    return low, high


def _parse_step(spec: _Field, text: str, start: int) -> int:
    span = spec.high - spec.low + 1
    if not _DIGITS.fullmatch(text):
        raise CronError(spec.name, start, f"step {text!r} is not a number (allowed 1-{span})")
    # Length check first: int() of thousands of digits is slow or refused.
    if len(text) > 3 or not 1 <= int(text) <= span:
        raise CronError(spec.name, start, f"step {text} is out of range 1-{span}")
    return int(text)


def _parse_value(spec: _Field, text: str, start: int) -> int:
    if _DIGITS.fullmatch(text):
        if len(text) > 3 or not spec.low <= int(text) <= spec.high:
            raise CronError(spec.name, start, f"{text} is out of range {spec.allowed}")
        return int(text)
    name = text.lower()
    if name in spec.names:
        return spec.names[name]
    if not text:
        raise CronError(spec.name, start, f"missing value (allowed {spec.allowed})")
    kind = "a number or name" if spec.names else "a number"
    raise CronError(spec.name, start, f"{text!r} is not {kind} (allowed {spec.allowed})")


def _next_interval_fire(interval: timedelta, after: datetime) -> datetime:
    # Exact integer microseconds: float seconds would drift over decades since the epoch.
    step = interval // timedelta(microseconds=1)
    since_epoch = (after - _EPOCH) // timedelta(microseconds=1)
    fires = since_epoch // step + 1
    return (_EPOCH + timedelta(microseconds=fires * step)).astimezone(after.tzinfo)


def _next_calendar_fire(schedule: CronSchedule, after: datetime) -> datetime:
    tz = after.tzinfo
    after_utc = after.astimezone(UTC)
    wall = after.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
    last_year = wall.year + _CALENDAR_CYCLE_YEARS + 1
    for candidate in _matching_wall_times(schedule, wall, min(last_year, datetime.max.year)):
        moment = candidate.replace(tzinfo=tz)
        moment_utc = moment.astimezone(UTC)
        # Skip wall times a DST gap removed (they do not round-trip) and, inside a repeated
        # hour, first occurrences that lie before `after`.
        if moment_utc.astimezone(tz).replace(tzinfo=None) != candidate or moment_utc <= after_utc:
            continue
        return moment
    if last_year > datetime.max.year:
        raise OverflowError
    raise CronError("expression", 0, f"{schedule.expression!r} never fires")


def _matching_wall_times(
    schedule: CronSchedule, start: datetime, last_year: int
) -> Iterator[datetime]:
    """Wall-clock minutes >= start that match, in order; skips whole months, days and hours."""
    minutes = sorted(schedule.minutes)
    hours = sorted(schedule.hours)
    months = sorted(schedule.months)
    for year in range(start.year, last_year + 1):
        for month in months:
            if (year, month) < (start.year, start.month):
                continue
            for day in range(1, calendar.monthrange(year, month)[1] + 1):
                if (year, month, day) < (start.year, start.month, start.day):
                    continue
                if not _day_matches(schedule, year, month, day):
                    continue
                same_day = (year, month, day) == (start.year, start.month, start.day)
                for hour in hours:
                    if same_day and hour < start.hour:
                        continue
                    same_hour = same_day and hour == start.hour
                    for minute in minutes:
                        if same_hour and minute < start.minute:
                            continue
                        yield datetime(year, month, day, hour, minute)


def _day_matches(schedule: CronSchedule, year: int, month: int, day: int) -> bool:
    in_days = day in schedule.days
    # date.weekday() counts from Monday = 0; cron counts from Sunday = 0.
    in_weekdays = (calendar.weekday(year, month, day) + 1) % 7 in schedule.weekdays
    if schedule.day_of_month_restricted and schedule.day_of_week_restricted:
        return in_days or in_weekdays
    return in_days and in_weekdays
