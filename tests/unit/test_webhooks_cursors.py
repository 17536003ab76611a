"""Webhook signatures, the SSRF address rule, the retry schedule and pagination cursors (issue 7)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import cursors
from gateway.domain.webhooks import (
    RetrySchedule,
    address_problem,
    ip_literal,
    sign,
    url_problem,
    verify,
)

secrets_ = st.text(min_size=1, max_size=64)
bodies = st.binary(max_size=2048)
times = st.integers(min_value=0, max_value=2**40)


# --- signatures ------------------------------------------------------------------------------------


@given(secret=secrets_, timestamp=times, body=bodies)
def test_a_signature_verifies_and_is_the_documented_hmac(secret: str, timestamp: int, body: bytes) -> None:
    signature = sign(secret, timestamp, body)
    # What the README tells receivers to compute, spelled out independently of the code under test.
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == f"v1={mac}"
    assert verify(secret, str(timestamp), signature, body, now=timestamp)
    # Several signatures (a secret being rotated): any one matching is enough.
    assert verify(secret, str(timestamp), f"v1={'0' * 64}, {signature}", body, now=timestamp + 299)


@given(secret=secrets_, other=secrets_, timestamp=times, body=bodies, extra=st.binary(min_size=1, max_size=8))
def test_anything_changed_fails(secret: str, other: str, timestamp: int, body: bytes, extra: bytes) -> None:
    signature = sign(secret, timestamp, body)
    assert not verify(secret, str(timestamp), signature, body + extra, now=timestamp)
    assert not verify(secret, str(timestamp + 1), signature, body, now=timestamp)  # timestamp is signed
    if other != secret:
        assert not verify(other, str(timestamp), signature, body, now=timestamp)


@given(secret=secrets_, timestamp=times, body=bodies, drift=st.integers(min_value=301, max_value=10**6))
def test_an_old_or_future_timestamp_is_refused(secret: str, timestamp: int, body: bytes, drift: int) -> None:
    signature = sign(secret, timestamp, body)
    assert not verify(secret, str(timestamp), signature, body, now=timestamp + drift)
    assert not verify(secret, str(timestamp), signature, body, now=timestamp - drift)


@given(garbage=st.text(max_size=40))
def test_garbage_headers_never_verify_or_raise(garbage: str) -> None:
    assert not verify("secret", garbage, garbage, b"{}", now=0)


# --- which addresses a webhook may reach --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),  # cloud metadata services
        ("fe80::1", "link_local"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "not_public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("nonsense", "not_an_address"),
        ("8.8.8.8", None),
        ("2a00:1450:4001:80b::200e", None),
    ],
)
def test_address_rule(ip: str, reason: str | None) -> None:
    assert address_problem(ip) == reason


def test_url_shapes() -> None:
    assert url_problem("https://hooks.example.com/gw?x=1") is None
    assert url_problem("http://[2a00:1450::1]:8080/x") is None
    assert url_problem("ftp://example.com/") is not None
    assert url_problem("https:///path") is not None
    assert url_problem("https://example.com:99999/") is not None
    assert url_problem("https://exa mple.com/") is not None
    assert url_problem("") is not None
    assert ip_literal("[::1]") == "::1" and ip_literal("127.0.0.1") == "127.0.0.1"
    assert ip_literal("example.com") is None


# --- retries --------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@given(
    attempts=st.integers(min_value=1, max_value=200),
    elapsed=st.integers(min_value=0, max_value=26 * 3600),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_retries_back_off_within_the_window(attempts: int, elapsed: int, rand: float) -> None:
    schedule = RetrySchedule(base=timedelta(seconds=10), cap=timedelta(hours=1), window=timedelta(hours=24))
    now = T0 + timedelta(seconds=elapsed)
    nxt = schedule.next_attempt(attempts, T0, now, rand)
    if elapsed >= 24 * 3600:
        assert nxt is None  # the window is over: failed for good
        return
    assert nxt is not None
    ceiling = min(3600.0, 10 * 2.0 ** (attempts - 1))
    delay = (nxt - now).total_seconds()
    deadline = (T0 + timedelta(hours=24) - now).total_seconds()
    assert delay == pytest.approx(min(deadline, ceiling / 2 + rand * ceiling / 2))
    assert 0 < delay <= 3600


# --- cursors -------------------------------------------------------------------------------------------

keys = st.lists(st.one_of(st.text(max_size=60), st.integers(min_value=-(2**62), max_value=2**62)), max_size=3)


@given(kind=st.sampled_from(["threads", "drops", "messages"]), key=keys)
def test_cursor_round_trip(kind: str, key: list[str | int]) -> None:
    token = cursors.encode(kind, key)
    assert token.isascii() and "=" not in token and "/" not in token and "+" not in token  # URL-safe
    types = [type(k) for k in key]
    assert cursors.decode(kind, token, types) == tuple(key)


@given(key=keys)
def test_a_cursor_is_only_good_for_its_own_list(key: list[str | int]) -> None:
    token = cursors.encode("threads", key)
    with pytest.raises(cursors.CursorError):
        cursors.decode("drops", token, [type(k) for k in key])
    with pytest.raises(cursors.CursorError):
        cursors.decode("threads", token, [str] * (len(key) + 1))


@given(text=st.text(max_size=100))
def test_garbage_is_a_cursor_error_never_a_crash(text: str) -> None:
    with contextlib.suppress(cursors.CursorError):
        cursors.decode("threads", text, [str, str])


def test_booleans_do_not_pass_for_integers() -> None:
    token = cursors.encode("drops", ["2026-01-01T00:00:00+00:00", True])  # type: ignore[list-item]
    with pytest.raises(cursors.CursorError):
        cursors.decode("drops", token, [str, int])
