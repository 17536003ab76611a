"""Business hours and delays (issue 8): when may a message go out? Pure functions, no I/O.

A tenant's ``business_hours`` (optionally one set per location) is a time zone (IANA, read with
:mod:`zoneinfo`), opening hours per weekday as local wall-clock intervals, and closed dates. The
question answered here is "the earliest instant at or after T at which the business is open".

Wall-clock times are turned into instants per calendar date, so a daylight-saving change moves the
UTC instant and not the local opening: 09:00 in Europe/Warsaw is 08:00 UTC in winter and 07:00 UTC
in summer. A wall time that does not exist that day (the hour skipped in spring) means the first
instant at which the clock reads that time or later, i.e. the moment of the change; a wall time that
happens twice (the hour repeated in autumn) means its first occurrence (PEP 495 ``fold=0``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
MINUTES_PER_DAY = 24 * 60
MAX_INTERVALS_PER_DAY = 12
MAX_CLOSED_DATES = 1000
MAX_LOCATIONS = 200
_INTERVAL_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ScheduleError(ValueError):
    """A business-hours document or a duration is not acceptable. ``field`` names the offending part
    (``business_hours.weekly.mon[1]``, ``delay``), ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Hours:
    """One place's opening hours. ``weekly[d]`` are sorted, non-overlapping (start, end) minute
    offsets from local midnight for weekday ``d`` (0 = Monday); ``end`` may be 1440 (24:00)."""

    tz: ZoneInfo
    weekly: tuple[tuple[tuple[int, int], ...], ...]
    closed: frozenset[date] = frozenset()


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """A tenant's hours and its locations' (each location inherits what it does not set)."""

    default: Hours
    locations: Mapping[str, Hours] = field(default_factory=dict)

    def at(self, location: str | None) -> Hours | None:
        """The hours of ``location`` (None: the tenant's own); None for an unknown location."""
        if location is None:
            return self.default
        return self.locations.get(location)


# --- parsing -------------------------------------------------------------------------------------


def parse_business_hours(raw: Mapping[str, Any], where: str = "business_hours") -> BusinessHours:
    """Validate the JSON document (see README "Notifications") and build :class:`BusinessHours`.

    ``{"timezone": "Europe/Warsaw", "weekly": {"mon": ["09:00-17:00"], …}, "closed": ["2026-12-24"],
    "locations": {"krakow": {"weekly": {…}, "closed": […]}}}``. A weekday that is missing or empty is
    closed all day. A location's ``timezone`` and ``weekly`` replace the tenant's, its ``closed``
    dates add to the tenant's (public holidays are usually shared, local closures are not).
    """
    if not isinstance(raw, Mapping):
        raise ScheduleError(where, "must be an object")
    _only(raw, {"timezone", "weekly", "closed", "locations"}, where)
    if "timezone" not in raw:
        raise ScheduleError(f"{where}.timezone", "is required (an IANA name such as Europe/Warsaw)")
    if "weekly" not in raw:
        raise ScheduleError(f"{where}.weekly", 'is required, e.g. {"mon": ["09:00-17:00"]}')
    default = Hours(
        tz=_zone(raw["timezone"], f"{where}.timezone"),
        weekly=_weekly(raw["weekly"], f"{where}.weekly"),
        closed=_closed(raw.get("closed", []), f"{where}.closed"),
    )
    locations_raw = raw.get("locations", {})
    if not isinstance(locations_raw, Mapping):
        raise ScheduleError(f"{where}.locations", "must be an object of location name -> hours")
    if len(locations_raw) > MAX_LOCATIONS:
        raise ScheduleError(f"{where}.locations", f"at most {MAX_LOCATIONS} locations")
    locations: dict[str, Hours] = {}
    for name, loc in locations_raw.items():
        at = f"{where}.locations.{name}"
        if not isinstance(name, str) or not _LOCATION_RE.match(name):
            raise ScheduleError(at, "a location name is 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(loc, Mapping):
            raise ScheduleError(at, "must be an object")
        _only(loc, {"timezone", "weekly", "closed"}, at)
        locations[name] = Hours(
            tz=_zone(loc["timezone"], f"{at}.timezone") if "timezone" in loc else default.tz,
            weekly=_weekly(loc["weekly"], f"{at}.weekly") if "weekly" in loc else default.weekly,
            closed=default.closed | _closed(loc.get("closed", []), f"{at}.closed"),
        )
    return BusinessHours(default=default, locations=locations)


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ScheduleError(f"{where}.{key}", "unknown field")


def _zone(value: Any, where: str) -> ZoneInfo:
    if not isinstance(value, str) or not value or len(value) > 64 or value.startswith(("/", ".")):
        raise ScheduleError(where, "must be an IANA time zone name such as Europe/Warsaw")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(where, f"unknown time zone {value!r}") from None


def _weekly(value: Any, where: str) -> tuple[tuple[tuple[int, int], ...], ...]:
    if not isinstance(value, Mapping):
        raise ScheduleError(where, 'must be an object such as {"mon": ["09:00-17:00"]}')
    _only(value, set(DAYS), where)
    days: list[tuple[tuple[int, int], ...]] = []
    for name in DAYS:
        items = value.get(name) or []
        if not isinstance(items, list) or len(items) > MAX_INTERVALS_PER_DAY:
            raise ScheduleError(
                f"{where}.{name}", f'must be a list of at most {MAX_INTERVALS_PER_DAY} "HH:MM-HH:MM"'
            )
        intervals = sorted(_interval(item, f"{where}.{name}[{i}]") for i, item in enumerate(items))
        for (_, end), (start, _) in itertools.pairwise(intervals):
            if start < end:
                raise ScheduleError(f"{where}.{name}", "intervals overlap")
        days.append(tuple(intervals))
    return tuple(days)


def _interval(item: Any, where: str) -> tuple[int, int]:
    match = _INTERVAL_RE.match(item) if isinstance(item, str) else None
    if match is None:
        raise ScheduleError(where, 'must be "HH:MM-HH:MM" (24-hour local time, e.g. "09:00-17:00")')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > MINUTES_PER_DAY:
        raise ScheduleError(where, "not a time of day (00:00 to 24:00)")
    if end <= start:
        # An interval past midnight is two: "22:00-24:00" on one day and "00:00-02:00" on the next.
        raise ScheduleError(where, "must end after it starts; split a night across midnight in two")
    return start, end


def _closed(value: Any, where: str) -> frozenset[date]:
    if not isinstance(value, list) or len(value) > MAX_CLOSED_DATES:
        raise ScheduleError(where, f'must be a list of at most {MAX_CLOSED_DATES} dates "YYYY-MM-DD"')
    out: set[date] = set()
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str) or len(item) != 10:
                raise ValueError(item)
            out.add(date.fromisoformat(item))
        except ValueError:
            raise ScheduleError(f"{where}[{i}]", 'must be a date "YYYY-MM-DD"') from None
    return frozenset(out)


# --- the next opening ----------------------------------------------------------------------------


def wall_instant(tz: ZoneInfo, day: date, minute: int) -> datetime:
    """The first instant (aware UTC) at which the clock of ``tz`` reads ``day`` at ``minute`` past
    midnight or later. 1440 is the next day's midnight."""
    if minute >= MINUTES_PER_DAY:
        return wall_instant(tz, day + timedelta(days=1), minute - MINUTES_PER_DAY)
    naive = datetime.combine(day, time(minute // 60, minute % 60))
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists; fold=0 is its first occurrence when it happens twice
    # In a gap (clocks moved forward): fold=0 and fold=1 map to instants on either side of the
    # change; the wanted instant is the change itself, found by bisection to the second.
    other = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(first, other), max(first, other)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return hi


def next_opening(hours: Hours, at: datetime) -> datetime | None:
    """The earliest instant >= ``at`` at which the place is open (``at`` itself when it is open), as
    aware UTC; None when it never opens (no weekly hours, or every open day closed).

    Every interval is looked at in order of its day and start, and the starts only grow, so the first
    interval not over yet gives the answer: ``at`` if it has begun, else its start.
    """
    if at.tzinfo is None:
        raise ValueError("next_opening needs an aware datetime")
    if not any(hours.weekly):
        return None
    at = at.astimezone(UTC)
    first_day = at.astimezone(hours.tz).date() - timedelta(days=1)
    # A run of days without an opening is at most the closed dates plus a week of closed weekdays.
    horizon = 7 * (len(hours.closed) + 2)
    for offset in range(horizon):
        day = first_day + timedelta(days=offset)
        if day in hours.closed:
            continue
        for start, end in hours.weekly[day.weekday()]:
            opens = wall_instant(hours.tz, day, start)
            closes = wall_instant(hours.tz, day, end)
            if closes <= at or closes <= opens:
                continue
            return max(opens, at)
    return None


def last_opening(hours: Hours, at: datetime) -> datetime | None:
    """The latest instant <= ``at`` at which an opening interval began or ``at`` itself when open
    (aware UTC); None when nothing opened in the horizon before it. For a reminder whose next
    opening would come after the event it reminds of: it goes at the start of the last opening
    before its due time instead."""
    if at.tzinfo is None:
        raise ValueError("last_opening needs an aware datetime")
    at = at.astimezone(UTC)
    last_day = at.astimezone(hours.tz).date() + timedelta(days=1)
    horizon = 7 * (len(hours.closed) + 2)
    for offset in range(horizon):
        day = last_day - timedelta(days=offset)
        if day in hours.closed:
            continue
        for start, end in reversed(hours.weekly[day.weekday()]):
            opens = wall_instant(hours.tz, day, start)
            closes = wall_instant(hours.tz, day, end)
            if opens > at or closes <= opens:
                continue
            return at if at < closes else opens
    return None


def is_open(hours: Hours, at: datetime) -> bool:
    return next_opening(hours, at) == at.astimezone(UTC)


# --- durations -----------------------------------------------------------------------------------

_DURATION_RE = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:[.,]\d+)?)S)?)?$"
)


def parse_duration(value: int | float | str, where: str, *, maximum: timedelta) -> timedelta:
    """Seconds (a number) or an ISO 8601 duration (``PT15M``, ``P1D``, ``P1DT2H``, ``PT90S``, ``P2W``).

    Years and months are refused: their length depends on the date (ISO 8601 §4.4.3.2 leaves it to
    the parties), and "P1M" in a reminder is more likely a slip for "PT1M" than a month.
    """
    if isinstance(value, bool):
        raise ScheduleError(where, "must be seconds or an ISO 8601 duration such as PT15M")
    if isinstance(value, int | float):
        if value < 0 or value != value:  # NaN != NaN
            raise ScheduleError(where, "must not be negative")
        if value > maximum.total_seconds():
            raise ScheduleError(where, f"must be at most {int(maximum.total_seconds())} seconds")
        return timedelta(seconds=value)
    text = value.strip().upper()
    match = _DURATION_RE.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        if re.match(r"^P[^T]*[YM]", text):
            raise ScheduleError(where, "years and months have no fixed length; use days (P30D)")
        raise ScheduleError(where, "must be seconds or an ISO 8601 duration such as PT15M, P1D, P1DT2H")
    parts = {k: float((v or "0").replace(",", ".")) for k, v in match.groupdict().items()}
    try:
        out = timedelta(
            weeks=parts["w"], days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"]
        )
    except OverflowError:
        out = timedelta.max
    if out > maximum:
        raise ScheduleError(where, f"must be at most {maximum}")
    return out
