"""Message-IDs and VERP addresses: they round-trip, and nothing altered or made up is accepted."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage

from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.domain.email_ids import make_message_id, make_verp, parse_message_id, parse_verp

KEY = b"unit-test-message-id-key"
ids = st.from_regex(r"(msg|thr|ten)_[0-9a-f]{24}", fullmatch=True)
keys = st.binary(min_size=16, max_size=64)


@given(keys, ids, ids, ids)
def test_message_id_round_trip(key: bytes, message_id: str, thread_id: str, tenant_id: str) -> None:
    mid = make_message_id(
        key, "mail.example.com", tenant_id=tenant_id, thread_id=thread_id, message_id=message_id
    )
    assert mid.startswith("<") and mid.endswith("@mail.example.com>") and len(mid) < 200
    ref = parse_message_id(key, mid)
    assert ref is not None and (ref.message_id, ref.thread_id, ref.tenant_id) == (
        message_id,
        thread_id,
        tenant_id,
    )
    # As a header value it is a valid msg-id (RFC 5322 §3.6.4) that survives parsing unchanged.
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Message-ID"] = mid
    assert parse_message_id(key, str(msg["Message-ID"])) == ref
    assert parse_message_id(key, mid.upper()) == ref  # some systems change case; ids are lower case


@given(keys, ids, ids, ids, st.data())
def test_an_altered_message_id_is_rejected(
    key: bytes, message_id: str, thread_id: str, tenant_id: str, data: st.DataObject
) -> None:
    mid = make_message_id(
        key, "mail.example.com", tenant_id=tenant_id, thread_id=thread_id, message_id=message_id
    )
    local = mid[1 : mid.index("@")]
    pos = data.draw(st.integers(0, len(local) - 1))
    char = data.draw(st.sampled_from("0123456789abcdef_"))
    assume(local[pos] != char and local[pos] != ".")
    forged = "<" + local[:pos] + char + local[pos + 1 :] + mid[mid.index("@") :]
    assert parse_message_id(key, forged) is None


@given(keys, keys, ids, ids, ids)
def test_another_key_or_swapped_fields_do_not_verify(
    key: bytes, other: bytes, message_id: str, thread_id: str, tenant_id: str
) -> None:
    assume(key != other)
    mid = make_message_id(key, "d.example", tenant_id=tenant_id, thread_id=thread_id, message_id=message_id)
    assert parse_message_id(other, mid) is None
    a, b, c, mac = mid[1 : mid.index("@")].split(".")
    assume(a != b)
    assert parse_message_id(key, f"<{b}.{a}.{c}.{mac}@d.example>") is None  # another tenant's thread


@given(st.text(max_size=80))
def test_junk_is_not_ours(text: str) -> None:
    assert parse_message_id(KEY, text) is None
    assert parse_verp(KEY, text) is None


@given(keys, ids)
def test_verp_round_trip_and_forgery(key: bytes, message_id: str) -> None:
    address = make_verp(key, "mail.example.com", message_id)
    local, _, domain = address.partition("@")
    assert domain == "mail.example.com" and local.startswith("bounce+")
    assert parse_verp(key, local) == message_id
    assert parse_verp(key, local.upper()) == message_id
    assert parse_verp(key + b"x", local) is None
    assert parse_verp(key, local[:-1] + ("0" if local[-1] != "0" else "1")) is None
    assert parse_verp(key, local.replace("bounce+", "other+")) is None
    # A Message-ID's MAC is no VERP MAC: the two kinds cannot stand in for each other.
    mid = make_message_id(key, "d", tenant_id=message_id, thread_id=message_id, message_id=message_id)
    assert parse_verp(key, "bounce+" + mid[1 : mid.index("@")]) is None


def test_ids_that_could_break_the_syntax_are_refused() -> None:
    for bad in ("msg.1", "MSG_1", "msg 1", "msg@1", "", "x" * 41):
        try:
            make_verp(KEY, "d", bad)
        except ValueError:
            continue
        raise AssertionError(bad)
