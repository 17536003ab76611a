"""The SMTP listener's fast path for "<local@domain>" must answer exactly what the RFC 5322 parser
(aiosmtpd's, from the email package) answers for every input it takes."""

from __future__ import annotations

from email._header_value_parser import get_angle_addr  # the parser aiosmtpd uses
from email.errors import HeaderParseError
from types import SimpleNamespace

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.smtp.server import _PLAIN_ANGLE_ADDR, _Smtp

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atom = st.text(alphabet=ATEXT, min_size=1, max_size=8)
label = st.text(alphabet="abcXYZ019-", min_size=1, max_size=8)
noise = st.text(alphabet=ATEXT + ' .@<>()"\\[]:;,\t', max_size=12)


def full(arg: str) -> tuple[str | None, str | None]:
    try:
        address, rest = get_angle_addr(arg)
    except (HeaderParseError, IndexError, AttributeError, ValueError):
        return None, None
    return address.addr_spec, rest


def ours(arg: str) -> tuple[str | None, str | None]:
    listener_session = SimpleNamespace(local_part_limit=0)
    return _Smtp._getaddr(listener_session, arg)  # type: ignore[arg-type]


@given(st.lists(atom, min_size=1, max_size=3), st.lists(label, min_size=1, max_size=3), noise)
@example(["jan"], ["example", "com"], " SIZE=4096 BODY=8BITMIME")
def test_plain_addresses_parse_the_same(local: list[str], domain: list[str], rest: str) -> None:
    arg = f"<{'.'.join(local)}@{'.'.join(domain)}>{rest}"
    assert _PLAIN_ANGLE_ADDR.match(arg) is not None  # the fast path takes it
    assert ours(arg) == full(arg)


@given(noise, noise)
@example('"quoted local"@x', "")
@example("a..b@x", "")
@example("@route:a@x", "")
@example("a@[127.0.0.1]", "")
@example("a(comment)@x", "")
@example("a@x", " (comment) SIZE=1")
@example("a@x", "\t SIZE=1")
@example("0@[", "")  # the parser returns an address whose addr_spec raises AttributeError
def test_anything_the_fast_path_takes_parses_the_same(inside: str, rest: str) -> None:
    arg = f"<{inside}>{rest}"
    answer = ours(arg)  # never raises: hostile input is a syntax error (None, None)
    if _PLAIN_ANGLE_ADDR.match(arg) is not None:
        assert answer == full(arg)
