"""UTCDateTime's own SQLite conversions write and read exactly what SQLAlchemy's generic ones do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

from gateway.storage.tables import UTCDateTime

DIALECT = sqlite.dialect()
zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])
moments = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=zones)


def _fast() -> UTCDateTime:
    impl = UTCDateTime().dialect_impl(DIALECT)  # what SQLAlchemy asks for its processors
    assert isinstance(impl, UTCDateTime)
    return impl


def _generic_bind(value: datetime | None) -> object:
    col = UTCDateTime().dialect_impl(DIALECT)
    proc = TypeDecorator.bind_processor(col, DIALECT)
    assert proc is not None
    return proc(value)


def _generic_result(value: str | None) -> object:
    col = UTCDateTime().dialect_impl(DIALECT)
    proc = TypeDecorator.result_processor(col, DIALECT, None)
    assert proc is not None
    return proc(value)


@given(moments)
def test_bind_matches_sqlalchemy(value: datetime) -> None:
    fast = _fast().bind_processor(DIALECT)
    text = fast(value)
    assert text == _generic_bind(value)
    assert fast(value) == text  # from the memo
    assert _fast().result_processor(DIALECT, None)(text) == _generic_result(text) == value


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30)))
def test_result_matches_sqlalchemy_for_text_without_fraction(value: datetime) -> None:
    text = value.replace(microsecond=0).isoformat(" ")
    assert _fast().result_processor(DIALECT, None)(text) == _generic_result(text)


def test_none_and_naive() -> None:
    fast = _fast().bind_processor(DIALECT)
    assert fast(None) is None
    assert _fast().result_processor(DIALECT, None)(None) is None
    with pytest.raises(ValueError, match="naive"):
        fast(datetime(2026, 1, 1))
