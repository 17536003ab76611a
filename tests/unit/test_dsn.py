"""Classifying mail that comes back to a bounce address (RFC 3464 DSNs, RFC 3834 auto-replies)."""

from __future__ import annotations

from smtp_sink import make_dsn

from gateway.domain.dsn import MAX_REASON, classify


def test_a_failed_dsn() -> None:
    report = classify(make_dsn(to="bounce+x@d"))
    assert report.kind == "failed" and report.status == "5.1.1" and report.recipient == "jan@example.com"
    assert report.diagnostic == "smtp; 550 5.1.1 <jan@example.com>: Recipient address rejected: User unknown"
    assert report.original_message_id == "<original@example>"
    assert (
        report.reason == "5.1.1 smtp; 550 5.1.1 <jan@example.com>: Recipient address rejected: User unknown"
    )


def test_lf_line_endings_and_long_diagnostics() -> None:
    raw = make_dsn(to="b@d", diagnostic="smtp; 550 " + "x" * 400).replace(b"\r\n", b"\n")
    report = classify(raw)
    assert report.kind == "failed" and len(report.reason) == MAX_REASON and report.reason.endswith("…")


def test_failed_wins_over_delayed_and_delayed_is_not_a_failure() -> None:
    assert classify(make_dsn(to="b@d", action="delayed", status="4.4.1")).kind == "delayed"
    assert classify(make_dsn(to="b@d", action="delivered", status="2.0.0")).kind == "other_dsn"
    two = make_dsn(to="b@d", action="delayed").replace(
        b"Action: delayed\r\n", b"Action: delayed\r\n\r\nFinal-Recipient: rfc822; b@x\r\nAction: failed\r\n"
    )
    assert classify(two).kind == "failed"


def test_auto_replies_and_other_mail() -> None:
    for marker in (b"Auto-Submitted: auto-replied", b"X-Autoreply: yes", b"Precedence: auto_reply"):
        assert classify(marker + b"\r\nSubject: Out of office\r\n\r\nAway\r\n").kind == "auto_reply"
    assert classify(b"Auto-Submitted: no\r\nSubject: hi\r\n\r\nhi\r\n").kind == "unrecognised"
    assert classify(b"Subject: hi\r\n\r\nhi\r\n").kind == "unrecognised"
    assert classify(b"").kind == "unrecognised"
    # A report of another type (a feedback report, RFC 5965) is no delivery status.
    arf = make_dsn(to="b@d").replace(b"report-type=delivery-status", b"report-type=feedback-report")
    assert classify(arf).kind == "auto_reply"  # still carries the MTA's Auto-Submitted
