"""IMAP ingress (issue 6): pollers that read replies from existing mailboxes and hand them to the
inbound-email pipeline (gateway.domain.inbound_mail.InboundMailSink). See gateway/imap/poller.py."""

from gateway.imap.client import ImapConnection, ImapSettings, tls_context
from gateway.imap.envelope import envelope_for
from gateway.imap.errors import ImapCommandFailed, ImapDisconnected, ImapError
from gateway.imap.poller import PROCESSED_KEYWORD, REJECTED_KEYWORD, ImapPoller, PollerSettings, PollerState

__all__ = [
    "PROCESSED_KEYWORD",
    "REJECTED_KEYWORD",
    "ImapCommandFailed",
    "ImapConnection",
    "ImapDisconnected",
    "ImapError",
    "ImapPoller",
    "ImapSettings",
    "PollerSettings",
    "PollerState",
    "envelope_for",
    "tls_context",
]
