"""Cron schedules of timer triggers: parsing (nfaas.core.cron.parse_cron) and next fire times."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nfaas.core.cron import CronError, CronSchedule, next_fire, parse_cron

ALL_MINUTES = frozenset(range(60))
ALL_HOURS = frozenset(range(24))
ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_WEEKDAYS = frozenset(range(7))
FIELD_NAMES = {"minute", "hour", "day of month", "month", "day of week", "expression"}


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
    *,
    tz: tzinfo = UTC,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=tz)


def fires(expression: str, after: datetime, count: int) -> list[datetime]:
    schedule = parse_cron(expression)
    times = []
    for _ in range(count):
        after = next_fire(schedule, after)
        times.append(after)
    return times


# --- parsing: every syntax form -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expression", "expected"),
    [
        ("minutes", "* * * * *", ALL_MINUTES),
        ("minutes", "7 * * * *", {7}),
        ("minutes", "10-13 * * * *", {10, 11, 12, 13}),
        ("minutes", "*/15 * * * *", {0, 15, 30, 45}),
        ("minutes", "10-30/10 * * * *", {10, 20, 30}),
        ("minutes", "50/3 * * * *", {50, 53, 56, 59}),
        ("minutes", "1,2,40-42,*/30 * * * *", {0, 1, 2, 30, 40, 41, 42}),
        ("minutes", "59 * * * *", {59}),
        ("hours", "* 23 * * *", {23}),
        ("hours", "* */7 * * *", {0, 7, 14, 21}),
        ("days", "* * 1,31 * *", {1, 31}),
        ("days", "* * */10 * *", {1, 11, 21, 31}),
        ("months", "* * * jan *", {1}),
        ("months", "* * * Feb,DEC *", {2, 12}),
        ("months", "* * * mar-may *", {3, 4, 5}),
        ("months", "* * * jun/3 *", {6, 9, 12}),
        ("months", "* * * 1-12/4 *", {1, 5, 9}),
        ("weekdays", "* * * * 0", {0}),
        ("weekdays", "* * * * 7", {0}),
        ("weekdays", "* * * * sun,SAT", {0, 6}),
        ("weekdays", "* * * * Mon-Fri", {1, 2, 3, 4, 5}),
        ("weekdays", "* * * * mon-sun", ALL_WEEKDAYS),
        ("weekdays", "* * * * fri-0", {5, 6, 0}),
        ("weekdays", "* * * * sun-sun", {0}),
        ("weekdays", "* * * * 5-7", {5, 6, 0}),
        ("weekdays", "* * * * */2", {0, 2, 4, 6}),
        ("weekdays", "* * * * */7", {0}),
        ("weekdays", "* * * * 0-7", ALL_WEEKDAYS),
    ],
)
def test_field_syntax_expands_to_the_right_set(
    field: str, expression: str, expected: set[int]
) -> None:
    assert getattr(parse_cron(expression), field) == frozenset(expected)


def test_star_expression_is_everything_and_unrestricted() -> None:
    schedule = parse_cron("* * * * *")
    assert schedule == CronSchedule(
        "* * * * *",
        ALL_MINUTES,
        ALL_HOURS,
        ALL_DAYS,
        ALL_MONTHS,
        ALL_WEEKDAYS,
        day_of_month_restricted=False,
        day_of_week_restricted=False,
    )
    assert schedule.interval is None


@pytest.mark.parametrize(
    ("expression", "day_restricted", "weekday_restricted"),
    [
        ("0 0 1 * *", True, False),
        ("0 0 * * 1", False, True),
        ("0 0 1 * 1", True, True),
        # crontab(5): a field starting with "*" is unrestricted, steps included.
        ("0 0 */2 * 1", False, True),
        ("0 0 1-31 * 0-7", True, True),
    ],
)
def test_day_restriction_flags(
    expression: str, day_restricted: bool, weekday_restricted: bool
) -> None:
    schedule = parse_cron(expression)
    assert schedule.day_of_month_restricted is day_restricted
    assert schedule.day_of_week_restricted is weekday_restricted


def test_blanks_around_and_between_fields_are_ignored() -> None:
    schedule = parse_cron("  5\t4  *  *\t* \n")
    assert (schedule.minutes, schedule.hours) == ({5}, {4})
    assert schedule.expression == "  5\t4  *  *\t* \n"


@pytest.mark.parametrize(
    ("macro", "standard"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
        ("  @hourly ", "0 * * * *"),
    ],
)
def test_macros_mean_their_standard_expressions(macro: str, standard: str) -> None:
    schedule = parse_cron(macro)
    assert schedule.expression == macro
    expanded = parse_cron(standard)
    assert schedule == CronSchedule(**{**expanded.__dict__, "expression": macro})


@pytest.mark.parametrize(
    ("expression", "interval"),
    [
        ("@every 30s", timedelta(seconds=30)),
        ("@every 5m", timedelta(minutes=5)),
        ("@every 1h", timedelta(hours=1)),
        ("@every 1.5s", timedelta(seconds=1.5)),
        ("@every 90", timedelta(seconds=90)),
        ("@every 2 m", timedelta(minutes=2)),
        ("@EVERY 10s", timedelta(seconds=10)),
    ],
)
def test_every_is_an_interval(expression: str, interval: timedelta) -> None:
    assert parse_cron(expression).interval == interval


# --- parsing: every error names its field and where it starts ------------------------------


@pytest.mark.parametrize(
    ("expression", "field", "position", "text"),
    [
        ("", "expression", 0, "empty"),
        ("   ", "expression", 0, "empty"),
        ("* * * *", "expression", 7, "4 fields"),
        ("* * * * * *", "expression", 10, "6 fields"),
        ("* * * * * echo hi", "expression", 10, "7 fields"),
        ("60 * * * *", "minute", 0, "60 is out of range 0-59"),
        ("1,99 * * * *", "minute", 2, "99 is out of range 0-59"),
        ("0 24 * * *", "hour", 2, "24 is out of range 0-23"),
        ("*/5 25 * * *", "hour", 4, "25 is out of range 0-23"),
        ("0 0 0 * *", "day of month", 4, "0 is out of range 1-31"),
        ("0 0 1-32 * *", "day of month", 6, "32 is out of range 1-31"),
        ("0 0 1 13 *", "month", 6, "13 is out of range 1-12 or jan-dec"),
        ("0 0 1 0 *", "month", 6, "0 is out of range 1-12 or jan-dec"),
        ("0 0 * * 8", "day of week", 8, "8 is out of range 0-7 or sun-sat"),
        ("0 0 * * 0000001", "day of week", 8, "0000001 is out of range 0-7"),
        ("0 0 * * 1" + "0" * 5000, "day of week", 8, "out of range 0-7"),
        ("0 0 * foo *", "month", 6, "'foo' is not a number or name (allowed 1-12 or jan-dec)"),
        ("0 0 * january *", "month", 6, "'january' is not a number or name"),
        ("0 0 * * monday", "day of week", 8, "'monday' is not a number or name"),
        ("0 0 * * jan", "day of week", 8, "'jan' is not a number or name (allowed 0-7 or sun-sat)"),
        ("0 mon * * *", "hour", 2, "'mon' is not a number (allowed 0-23)"),
        ("x * * * *", "minute", 0, "'x' is not a number (allowed 0-59)"),
        ("1.5 * * * *", "minute", 0, "'1.5' is not a number"),
        ("\u0663 * * * *", "minute", 0, "is not a number"),
        ("-5 * * * *", "minute", 0, "missing value (allowed 0-59)"),
        ("5- * * * *", "minute", 2, "missing value"),
        ("1-2-3 * * * *", "minute", 2, "'2-3' is not a number"),
        ("*-5 * * * *", "minute", 0, "'*' is not a number"),
        ("1,,2 * * * *", "minute", 2, "empty list item"),
        ("1, * * * *", "minute", 2, "empty list item"),
        (",1 * * * *", "minute", 0, "empty list item"),
        ("* 5-2 * * *", "hour", 2, "range 5-2 runs backwards (allowed 0-23"),
        ("* * * dec-jan *", "month", 6, "range dec-jan runs backwards"),
        ("* * * * sat-mon", "day of week", 8, "range sat-mon runs backwards"),
        ("*/0 * * * *", "minute", 2, "step 0 is out of range 1-60"),
        ("*/61 * * * *", "minute", 2, "step 61 is out of range 1-60"),
        ("* */25 * * *", "hour", 4, "step 25 is out of range 1-24"),
        ("1-5/ * * * *", "minute", 4, "step '' is not a number (allowed 1-60)"),
        ("*/x * * * *", "minute", 2, "step 'x' is not a number"),
        ("*/2/3 * * * *", "minute", 2, "step '2/3' is not a number"),
        (
            "*/99999999999999999999 * * * *",
            "minute",
            2,
            "step 99999999999999999999 is out of range",
        ),
        ("60/0 * * * *", "minute", 0, "60 is out of range"),
        ("0 0 30 2 *", "day of month", 4, "day 30 never occurs in month feb"),
        ("0 0 31 4,6,9,11 *", "day of month", 4, "day 31 never occurs in month apr,jun,sep,nov"),
        ("0 0 30-31 feb *", "day of month", 4, "never occurs"),
        ("0 0 31/5 2 *", "day of month", 4, "day 31 never occurs in month feb"),
        ("@reboot", "expression", 0, "unknown macro '@reboot'"),
        ("  @often", "expression", 2, "unknown macro '@often'"),
        ("@", "expression", 0, "unknown macro '@'"),
        ("@daily 5", "expression", 7, "@daily takes no arguments, got '5'"),
        ("@every", "expression", 6, "@every needs a duration"),
        ("@every   ", "expression", 9, "@every needs a duration"),
        ("@every soon", "expression", 7, "'soon' is not a duration"),
        ("@every 5m 3s", "expression", 7, "'5m 3s' is not a duration"),
        ("@every -5s", "expression", 7, "'-5s' is not a duration"),
        ("@every 0s", "expression", 7, "'0s' is out of range 1s-8784h"),
        ("@every 500ms", "expression", 7, "'500ms' is out of range 1s-8784h"),
        ("@every 8785h", "expression", 7, "out of range"),
        ("@every " + "9" * 400 + "h", "expression", 7, "out of range"),
    ],
)
def test_errors_name_field_position_and_text(
    expression: str, field: str, position: int, text: str
) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(expression)
    error = caught.value
    assert (error.field, error.position) == (field, position)
    message = str(error)
    assert message.startswith(f"{field}: ")
    assert text in message
    assert message.endswith(f"(at character {position})")


def test_error_message_format_of_the_brief() -> None:
    with pytest.raises(CronError, match=r"^hour: 25 is out of range 0-23 \(at character 4\)$"):
        parse_cron("*/5 25 * * *")


def test_cron_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="minute"):
        parse_cron("99 * * * *")


def test_a_non_string_is_rejected_as_a_cron_error() -> None:
    with pytest.raises(CronError) as caught:
        parse_cron(5)  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.position) == ("expression", 0)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 29 2 *",  # leap days exist
        "0 0 31 1-3 *",  # January and March have a 31st
        "0 0 30 2 mon",  # day-of-week OR rule: Mondays in February still fire
    ],
)
def test_rare_but_possible_schedules_parse(expression: str) -> None:
    parse_cron(expression)


def test_day_that_never_comes_with_an_unrestricted_weekday_step_is_rejected() -> None:
    # "*/2" leaves the weekday unrestricted, so days must match both fields: 31 April never does.
    with pytest.raises(CronError, match="never occurs") as caught:
        parse_cron("0 0 31 4 */2")
    assert caught.value.field == "day of month"


# --- next fire times ---------------------------------------------------------------------------


def test_every_five_minutes() -> None:
    assert fires("*/5 * * * *", at(2024, 3, 1, 12, 3), 3) == [
        at(2024, 3, 1, 12, 5),
        at(2024, 3, 1, 12, 10),
        at(2024, 3, 1, 12, 15),
    ]


def test_next_fire_is_strictly_after_and_on_the_minute() -> None:
    schedule = parse_cron("*/5 * * * *")
    assert next_fire(schedule, at(2024, 3, 1, 12, 5)) == at(2024, 3, 1, 12, 10)
    assert next_fire(schedule, at(2024, 3, 1, 12, 4, 59, 999_999)) == at(2024, 3, 1, 12, 5)
    assert next_fire(schedule, at(2024, 3, 1, 12, 5, 0, 1)) == at(2024, 3, 1, 12, 10)


def test_rollover_of_hour_day_month_and_year() -> None:
    assert fires("0 0 1 1 *", at(2024, 12, 31, 23, 59), 2) == [at(2025, 1, 1), at(2026, 1, 1)]
    assert fires("59 23 * * *", at(2024, 2, 28, 23, 59), 2) == [
        at(2024, 2, 29, 23, 59),
        at(2024, 3, 1, 23, 59),
    ]
    assert fires("0 0 31 * *", at(2024, 4, 1), 3) == [
        at(2024, 5, 31),
        at(2024, 7, 31),
        at(2024, 8, 31),
    ]


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    # crontab(5): "30 4 1,15 * 5" runs on the 1st and 15th of each month, plus every Friday.
    # May 2024: the 1st and 15th are Wednesdays; Fridays are the 3rd, 10th, 17th, 24th, 31st.
    days = [fire.day for fire in fires("30 4 1,15 * 5", at(2024, 4, 30), 7)]
    assert days == [1, 3, 10, 15, 17, 24, 31]


def test_day_of_month_and_day_of_week_when_one_starts_with_star() -> None:
    # "*/2" is unrestricted, so odd days that are also Mondays: 2024-01-01, 01-15, 01-29, 02-05.
    assert fires("0 0 */2 * mon", at(2023, 12, 31), 4) == [
        at(2024, 1, 1),
        at(2024, 1, 15),
        at(2024, 1, 29),
        at(2024, 2, 5),
    ]


def test_weekday_names_and_sunday_as_seven() -> None:
    # 2024-03-03 is a Sunday.
    assert fires("0 9 * * 7", at(2024, 3, 1), 2) == [at(2024, 3, 3, 9), at(2024, 3, 10, 9)]
    assert [f.day for f in fires("0 9 * * mon-fri", at(2024, 3, 1, 10), 5)] == [4, 5, 6, 7, 8]


def test_leap_day_skips_years_that_are_not_leap() -> None:
    assert fires("0 0 29 2 *", at(2024, 3, 1), 2) == [at(2028, 2, 29), at(2032, 2, 29)]
    # 2100 is not a leap year.
    assert next_fire(parse_cron("0 0 29 2 *"), at(2096, 3, 1)) == at(2104, 2, 29)


def test_rare_and_schedule_is_found_far_ahead() -> None:
    # "*/28" is days 1 and 29 and starts with "*", so the AND rule applies: a Feb 1 or Feb 29
    # that is a Monday. None between 2021 and 2026.
    result = next_fire(parse_cron("0 0 */28 2 mon"), at(2021, 3, 1))
    assert result == at(2027, 2, 1)


def test_every_macro_fires() -> None:
    assert next_fire(parse_cron("@hourly"), at(2024, 3, 1, 12, 0)) == at(2024, 3, 1, 13)
    assert next_fire(parse_cron("@weekly"), at(2024, 3, 1)) == at(2024, 3, 3)
    assert next_fire(parse_cron("@monthly"), at(2024, 3, 1)) == at(2024, 4, 1)
    assert next_fire(parse_cron("@yearly"), at(2024, 3, 1)) == at(2025, 1, 1)


def test_every_interval_is_aligned_to_the_epoch() -> None:
    schedule = parse_cron("@every 30s")
    assert next_fire(schedule, at(2024, 3, 1, 12, 3, 10)) == at(2024, 3, 1, 12, 3, 30)
    assert next_fire(schedule, at(2024, 3, 1, 12, 3, 30)) == at(2024, 3, 1, 12, 4)
    # A restart at a different moment lands on the same grid.
    seven = parse_cron("@every 7s")
    for after in (at(2024, 3, 1, 0, 0, 1), at(2031, 7, 9, 3, 2, 1, 5)):
        fire = next_fire(seven, after)
        assert after < fire <= after + timedelta(seconds=7)
        assert (fire - at(1970, 1, 1)) % timedelta(seconds=7) == timedelta(0)


def test_result_is_in_the_timezone_of_after() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    fire = next_fire(parse_cron("0 9 * * *"), at(2024, 3, 1, 10, tz=india))
    assert fire == at(2024, 3, 2, 9, tz=india)
    assert fire.utcoffset() == timedelta(hours=5, minutes=30)
    every = next_fire(parse_cron("@every 1h"), at(2024, 3, 1, 10, 10, tz=india))
    assert every == at(2024, 3, 1, 10, 30, tz=india)  # the UTC hour, seen from +05:30
    assert every.tzinfo == india


def berlin() -> ZoneInfo:
    try:
        return ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no timezone database")


def test_wall_times_skipped_by_dst_do_not_fire() -> None:
    tz = berlin()
    # 2024-03-31 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
    assert fires("30 2 * * *", at(2024, 3, 30, 12, tz=tz), 1) == [at(2024, 4, 1, 2, 30, tz=tz)]
    assert next_fire(parse_cron("*/20 * * * *"), at(2024, 3, 31, 1, 50, tz=tz)) == at(
        2024, 3, 31, 3, 0, tz=tz
    )


def test_repeated_wall_times_fire_once() -> None:
    tz = berlin()
    # 2024-10-27 03:00 CEST falls back to 02:00 CET: 02:30 happens twice, fires at the first.
    first, second = fires("30 2 * * *", at(2024, 10, 27, tz=tz), 2)
    assert first.astimezone(UTC) == at(2024, 10, 27, 0, 30)
    assert second == at(2024, 10, 28, 2, 30, tz=tz)
    # From inside the repeated hour's second pass, the next fire is after it.
    second_pass = datetime(2024, 10, 27, 2, 45, tzinfo=tz, fold=1)
    fire = next_fire(parse_cron("*/30 * * * *"), second_pass)
    assert fire.astimezone(UTC) == at(2024, 10, 27, 2, 0)


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(parse_cron("* * * * *"), datetime(2024, 1, 1))


def test_no_fire_time_before_year_10000_is_a_cron_error() -> None:
    with pytest.raises(CronError, match="before year 10000"):
        next_fire(parse_cron("0 0 29 2 *"), at(9997, 1, 1))
    with pytest.raises(CronError, match="before year 10000"):
        next_fire(parse_cron("* * * * *"), at(9999, 12, 31, 23, 59))
    assert next_fire(parse_cron("0 0 1 1 *"), at(9998, 6, 1)) == at(9999, 1, 1)


# --- properties ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] is the name of value low + i


MINUTE = Spec(0, 59)
HOUR = Spec(0, 23)
DAY = Spec(1, 31)
MONTH = Spec(1, 12, tuple(calendar.month_abbr[1:]))
WEEKDAY = Spec(0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
SPECS = (MINUTE, HOUR, DAY, MONTH, WEEKDAY)


@st.composite
def cron_value(draw: st.DrawFn, spec: Spec, value: int, *, closing: bool = False) -> str:
    """The text of a value: its number, or (where allowed) its name in any case."""
    name_index = value - spec.low
    # Sunday's name means 7 only when it closes a range that does not start at Sunday.
    nameable = name_index < len(spec.names) or (spec is WEEKDAY and value == 7 and closing)
    if nameable and draw(st.booleans()):
        name = spec.names[name_index % 7] if spec is WEEKDAY else spec.names[name_index]
        return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in name)
    return str(value)


@st.composite
def cron_item(draw: st.DrawFn, spec: Spec) -> tuple[str, set[int]]:
    """One list item and the values it stands for, computed independently of the parser."""
    values = st.integers(spec.low, spec.high)
    step = draw(st.integers(1, spec.high - spec.low + 1))
    kind = draw(st.sampled_from(["*", "*/n", "v", "a-b", "a-b/n", "a/n"]))
    if kind == "*":
        return "*", set(range(spec.low, spec.high + 1))
    if kind == "*/n":
        return f"*/{step}", set(range(spec.low, spec.high + 1, step))
    first = draw(values)
    if kind == "v":
        return draw(cron_value(spec, first)), {first}
    if kind == "a/n":
        return f"{draw(cron_value(spec, first))}/{step}", set(range(first, spec.high + 1, step))
    last = draw(st.integers(first, spec.high))
    closing = first > 0
    text = f"{draw(cron_value(spec, first))}-{draw(cron_value(spec, last, closing=closing))}"
    if kind == "a-b":
        return text, set(range(first, last + 1))
    return f"{text}/{step}", set(range(first, last + 1, step))


@st.composite
def cron_field(draw: st.DrawFn, spec: Spec) -> tuple[str, frozenset[int]]:
    items = draw(st.lists(cron_item(spec), min_size=1, max_size=3))
    values = set().union(*(values for _, values in items))
    if spec is WEEKDAY:
        values = {value % 7 for value in values}
    return ",".join(text for text, _ in items), frozenset(values)


@dataclass(frozen=True)
class Expected:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool


@st.composite
def cron_expressions(draw: st.DrawFn) -> Expected:
    fields = [draw(cron_field(spec)) for spec in SPECS]
    blanks = [draw(st.sampled_from([" ", "  ", "\t"])) for _ in range(4)]
    text = fields[0][0] + "".join(
        blank + field for blank, (field, _) in zip(blanks, fields[1:], strict=True)
    )
    minutes, hours, days, months, weekdays = (values for _, values in fields)
    return Expected(
        text,
        minutes,
        hours,
        days,
        months,
        weekdays,
        day_restricted=not fields[2][0].startswith("*"),
        weekday_restricted=not fields[4][0].startswith("*"),
    )


def day_matches(expected: Expected, day: date) -> bool:
    weekday = int(day.strftime("%w"))  # 0 = Sunday
    in_days = day.day in expected.days
    in_weekdays = weekday in expected.weekdays
    if expected.day_restricted and expected.weekday_restricted:
        return in_days or in_weekdays
    return in_days and in_weekdays


def matches(expected: Expected, moment: datetime) -> bool:
    """Brute force: does this wall-clock minute fire?"""
    return (
        moment.second == 0
        and moment.microsecond == 0
        and moment.minute in expected.minutes
        and moment.hour in expected.hours
        and moment.month in expected.months
        and day_matches(expected, moment.date())
    )


def can_ever_fire(expected: Expected) -> bool:
    if expected.day_restricted and expected.weekday_restricted:
        return True
    leap_year = 2000
    return any(
        day <= calendar.monthrange(leap_year, month)[1]
        for day in expected.days
        for month in expected.months
    )


def no_match_between(expected: Expected, start: datetime, end: datetime) -> bool:
    """No matching minute strictly between start and end (wall clock, one fixed offset)."""
    minute = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < end:
        if minute.hour == 0 and minute.minute == 0 and not day_matches_month(expected, minute):
            minute += timedelta(days=1)  # the whole day cannot fire: skip it
            continue
        if matches(expected, minute):
            return False
        minute += timedelta(minutes=1)
    return True


def day_matches_month(expected: Expected, moment: datetime) -> bool:
    return moment.month in expected.months and day_matches(expected, moment.date())


offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 12, 31), timezones=offsets
)


@settings(max_examples=300, deadline=None)
@given(cron_expressions())
def test_parse_expands_like_an_independent_reading(expected: Expected) -> None:
    if not can_ever_fire(expected):
        with pytest.raises(CronError) as caught:
            parse_cron(expected.expression)
        assert caught.value.field == "day of month"
        return
    schedule = parse_cron(expected.expression)
    assert (
        schedule.minutes,
        schedule.hours,
        schedule.days,
        schedule.months,
        schedule.weekdays,
        schedule.day_of_month_restricted,
        schedule.day_of_week_restricted,
    ) == (
        expected.minutes,
        expected.hours,
        expected.days,
        expected.months,
        expected.weekdays,
        expected.day_restricted,
        expected.weekday_restricted,
    )


@settings(max_examples=150, deadline=None)
@given(cron_expressions(), moments)
def test_next_fire_is_the_first_matching_minute_after(expected: Expected, after: datetime) -> None:
    assume(can_ever_fire(expected))
    fire = next_fire(parse_cron(expected.expression), after)
    assert fire > after
    assert fire.tzinfo is after.tzinfo
    assert matches(expected, fire)
    # Brute-force scan, bounded to two years so that rare schedules stay fast.
    assert no_match_between(expected, after, min(fire, after + timedelta(days=731)))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1_000, 366 * 86_400_000).map(lambda ms: timedelta(milliseconds=ms)),
    moments,
)
def test_every_fires_within_one_interval_on_the_epoch_grid(
    interval: timedelta, after: datetime
) -> None:
    seconds = interval / timedelta(seconds=1)
    schedule = parse_cron(f"@every {seconds!r}s")
    assert schedule.interval == interval
    fire = next_fire(schedule, after)
    assert after < fire <= after + interval
    assert (fire - at(1970, 1, 1)) % interval == timedelta(0)


cron_alphabet = st.sampled_from([*"0123456789*/-,@ \tjanfebmonsudlyhrveis", "\u0663", ""])
garbage = st.one_of(
    st.text(),
    st.lists(cron_alphabet, max_size=30).map("".join),
    st.lists(
        st.sampled_from(["*", "*/5", "1-3", "mon", "jan", "7", "31", "2", "0"]), max_size=7
    ).map(" ".join),
)


@settings(max_examples=400, deadline=None)
@given(garbage)
def test_arbitrary_text_parses_or_raises_cron_error(text: str) -> None:
    try:
        schedule = parse_cron(text)
    except CronError as error:
        assert error.field in FIELD_NAMES
        assert 0 <= error.position <= len(text)
        assert str(error).endswith(f"(at character {error.position})")
        return
    assert next_fire(schedule, at(2024, 1, 1)) > at(2024, 1, 1)
