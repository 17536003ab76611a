"""Tests for gateway.domain.schedule: business hours (zoneinfo, DST) and durations."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.schedule import (
    DAYS,
    Hours,
    ScheduleError,
    is_open,
    last_opening,
    next_opening,
    parse_business_hours,
    parse_duration,
    wall_instant,
)

WARSAW = ZoneInfo("Europe/Warsaw")
OFFICE = parse_business_hours(
    {
        "timezone": "Europe/Warsaw",
        "weekly": {d: ["09:00-17:00"] for d in DAYS[:5]},
        "closed": ["2026-12-24", "2026-12-25"],
        "locations": {
            "krakow": {"weekly": {"sat": ["10:00-14:00"]}, "closed": ["2026-12-28"]},
            "london": {"timezone": "Europe/London"},
        },
    }
)


def warsaw(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=WARSAW)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "expected", "why"),
    [
        (warsaw(2026, 11, 24, 12, 0), warsaw(2026, 11, 24, 12, 0), "open now: now"),
        (warsaw(2026, 11, 24, 22, 0), warsaw(2026, 11, 25, 9, 0), "22:00 Tuesday: 9:00 Wednesday"),
        (warsaw(2026, 11, 24, 17, 0), warsaw(2026, 11, 25, 9, 0), "closing time is closed"),
        (warsaw(2026, 11, 24, 8, 59), warsaw(2026, 11, 24, 9, 0), "a minute before opening"),
        (warsaw(2026, 11, 27, 22, 0), warsaw(2026, 11, 30, 9, 0), "Friday night: Monday"),
        (warsaw(2026, 12, 23, 22, 0), warsaw(2026, 12, 28, 9, 0), "over the closed dates and weekend"),
        # Spring: Saturday 28 March 2026 22:00 CET (UTC+1) -> Monday 30 March 09:00 CEST (UTC+2).
        (warsaw(2026, 3, 28, 22, 0), utc(2026, 3, 30, 7, 0), "across the spring change"),
        (warsaw(2026, 3, 27, 22, 0), utc(2026, 3, 30, 7, 0), "Friday before the spring change"),
        # Autumn: Friday 23 October 2026 22:00 CEST -> Monday 26 October 09:00 CET (UTC+1).
        (warsaw(2026, 10, 23, 22, 0), utc(2026, 10, 26, 8, 0), "across the autumn change"),
    ],
)
def test_next_opening(at: datetime, expected: datetime, why: str) -> None:
    got = next_opening(OFFICE.default, at)
    assert got == expected.astimezone(UTC), why


def test_last_opening() -> None:
    office = OFFICE.default
    assert last_opening(office, warsaw(2026, 11, 24, 12, 0)) == warsaw(2026, 11, 24, 12, 0)  # open
    assert last_opening(office, warsaw(2026, 11, 24, 22, 0)) == warsaw(2026, 11, 24, 9, 0)
    assert last_opening(office, warsaw(2026, 11, 29, 8, 30)) == warsaw(2026, 11, 27, 9, 0)  # Sunday
    assert last_opening(office, warsaw(2026, 12, 27, 8, 30)) == warsaw(2026, 12, 23, 9, 0)  # closed days
    assert last_opening(office, warsaw(2026, 3, 30, 8, 0)) == utc(2026, 3, 27, 8, 0)  # before the change


def test_locations_inherit_and_add() -> None:
    krakow = OFFICE.at("krakow")
    london = OFFICE.at("london")
    assert krakow is not None and london is not None and OFFICE.at("nowhere") is None
    # Krakow opens only on Saturdays, and is closed on the tenant's closed dates and its own.
    assert next_opening(krakow, warsaw(2026, 11, 24, 12, 0)) == warsaw(2026, 11, 28, 10, 0)
    assert next_opening(krakow, warsaw(2026, 12, 26, 15, 0)) == warsaw(2027, 1, 2, 10, 0)
    # London keeps the weekly hours but in its own zone: 9:00 London is 10:00 Warsaw.
    assert next_opening(london, warsaw(2026, 11, 24, 8, 0)) == warsaw(2026, 11, 24, 10, 0)


def test_never_open() -> None:
    none = parse_business_hours({"timezone": "UTC", "weekly": {}})
    assert next_opening(none.default, utc(2026, 1, 1)) is None
    one_day = parse_business_hours({"timezone": "UTC", "weekly": {"mon": ["00:00-24:00"]}})
    assert next_opening(one_day.default, utc(2026, 1, 1)) == utc(2026, 1, 5)  # 5 Jan 2026 is a Monday
    assert is_open(one_day.default, utc(2026, 1, 5, 23, 59))
    assert not is_open(one_day.default, utc(2026, 1, 6))


def test_wall_times_across_changes() -> None:
    # 02:30 does not exist on 29 March 2026 in Warsaw: the clock jumps 02:00 -> 03:00 at 01:00 UTC.
    assert wall_instant(WARSAW, date(2026, 3, 29), 150) == utc(2026, 3, 29, 1, 0)
    # 02:30 happens twice on 25 October 2026: the first time (CEST) counts.
    assert wall_instant(WARSAW, date(2026, 10, 25), 150) == utc(2026, 10, 25, 0, 30)
    assert wall_instant(WARSAW, date(2026, 10, 25), 24 * 60) == utc(2026, 10, 25, 23, 0)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"weekly": {}}, "business_hours.timezone"),
        ({"timezone": "Mars/Olympus", "weekly": {}}, "business_hours.timezone"),
        ({"timezone": "UTC"}, "business_hours.weekly"),
        ({"timezone": "UTC", "weekly": {"monday": []}}, "business_hours.weekly.monday"),
        ({"timezone": "UTC", "weekly": {"mon": ["9-17"]}}, "business_hours.weekly.mon[0]"),
        ({"timezone": "UTC", "weekly": {"mon": ["17:00-09:00"]}}, "business_hours.weekly.mon[0]"),
        ({"timezone": "UTC", "weekly": {"mon": ["24:00-24:30"]}}, "business_hours.weekly.mon[0]"),
        ({"timezone": "UTC", "weekly": {"mon": ["09:00-13:00", "12:00-17:00"]}}, "business_hours.weekly.mon"),
        ({"timezone": "UTC", "weekly": {}, "closed": ["24.12.2026"]}, "business_hours.closed[0]"),
        ({"timezone": "UTC", "weekly": {}, "hours": 1}, "business_hours.hours"),
        ({"timezone": "UTC", "weekly": {}, "locations": {"a b": {}}}, "business_hours.locations.a b"),
    ],
)
def test_bad_documents_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_business_hours(doc)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0), (90, 90), (1.5, 1.5), ("PT15M", 900), ("P1D", 86400), ("P1DT2H", 93600), ("P2W", 1209600),
     ("pt0.5s", 0.5), ("PT1H30M", 5400)],
)  # fmt: skip
def test_durations(value: int | float | str, seconds: float) -> None:
    assert parse_duration(value, "delay", maximum=timedelta(days=400)).total_seconds() == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [("P1M", "years and months"), ("P1Y", "years and months"), ("PT", "ISO 8601"), ("15m", "ISO 8601"),
     (-1, "negative"), ("P500D", "at most"), (10**12, "at most"), (True, "ISO 8601")],
)  # fmt: skip
def test_bad_durations(value: Any, reason: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_duration(value, "delay", maximum=timedelta(days=400))
    assert reason in caught.value.reason and caught.value.field == "delay"


# --- property: the next opening is open, not closed, not early, and the first ----------------------

# Boundaries on quarter hours, none strictly inside 02:00-03:00 (the hour Warsaw skips or repeats):
# there a wall-clock reading does not name one instant, and the oracle below reads wall clocks.
QUARTERS = [q for q in range(0, 24 * 60 + 1, 15) if not 120 < q < 180]


@st.composite
def week(draw: st.DrawFn) -> Hours:
    days: list[tuple[tuple[int, int], ...]] = []
    for _ in DAYS:
        points = sorted(draw(st.sets(st.sampled_from(QUARTERS), max_size=6)))
        if len(points) % 2:
            points = points[:-1]
        days.append(tuple(zip(points[::2], points[1::2], strict=True)))
    closed = draw(st.frozensets(st.dates(date(2025, 12, 20), date(2027, 1, 20)), max_size=20))
    return Hours(tz=WARSAW, weekly=tuple(days), closed=closed)


def oracle_open(hours: Hours, x: datetime) -> bool:
    """Open by reading the wall clock: independent of next_opening's instant arithmetic."""
    local = x.astimezone(hours.tz)
    if local.date() in hours.closed:
        return False
    minute = local.hour * 60 + local.minute + local.second / 60
    return any(s <= minute < e for s, e in hours.weekly[local.weekday()])


@settings(max_examples=300, deadline=None)
@given(
    hours=week(),
    at=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
)
def test_next_opening_property(hours: Hours, at: datetime) -> None:
    got = next_opening(hours, at)
    if got is None:
        assert not any(hours.weekly) or all(
            d in hours.closed or not hours.weekly[d.weekday()]
            for d in (at.date() + timedelta(days=i) for i in range(400))
        )
        return
    assert got >= at
    assert oracle_open(hours, got), (got, got.astimezone(WARSAW))
    assert got.astimezone(WARSAW).date() not in hours.closed
    # Minimal: every boundary is a quarter hour and Warsaw's offsets are whole hours, so "open" is
    # constant on each UTC quarter hour; checking `at` and every quarter mark before `got` is exact.
    mark = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0) + timedelta(minutes=15)
    assert got == at or not oracle_open(hours, at)
    while mark < got:
        assert not oracle_open(hours, mark), (at, mark, got)
        mark += timedelta(minutes=15)


@settings(max_examples=200, deadline=None)
@given(
    hours=week(),
    at=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
)
def test_last_opening_property(hours: Hours, at: datetime) -> None:
    got = last_opening(hours, at)
    if got is None:
        return
    assert got <= at and oracle_open(hours, got)
    # Either `at` is open, or `got` is an opening: closed a quarter hour before (or a closed day).
    assert (
        got == at
        or not oracle_open(hours, got - timedelta(minutes=15))
        or (got.astimezone(WARSAW).date() != (got - timedelta(minutes=15)).astimezone(WARSAW).date())
    )
