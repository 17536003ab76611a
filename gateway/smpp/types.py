"""Public value types of the SMPP layer.

``SubmitPart``/``SubmitResult`` are re-exported from :mod:`gateway.domain.ports`. ``SubmitPart.tlvs`` maps
smpplib's optional parameter names (``sar_msg_ref_num``, ``message_payload``...) to values, or
``"0x1403"``-style tags to raw bytes (vendor TLVs); ``ref`` is opaque, echoed to ``on_late_response``.

``SubmitResult.status_name`` is the SMPP command status name (``ESME_RINVDSTADR``) when the SMSC answered,
else one of the reason names below (``command_status`` is then None):

========================  ===========  ===================================================================
status_name               outcome      meaning
========================  ===========  ===================================================================
``ESME_ROK``              ok           accepted; ``message_id`` is the SMSC's id
``ESME_...`` (any other)  failed       rejected by a ``submit_sm_resp`` or a ``generic_nack`` (permanent
                                       as far as this layer knows; the job layer may retry some by name)
``ESME_RTHROTTLED``,      retry        the SMSC said throttled / queue full more than
``ESME_RMSGQFUL``                      ``max_transient_retries`` times in a row for this part
``QUEUE_TIMEOUT``         retry        ``timeout`` ran out before the part was written (no bind, window,
                                       token, or a throttling pause), or it was due to be queued again
                                       after the timeout (throttled, or its bind lost before writing it);
                                       not accepted by the SMSC, so resubmitting cannot duplicate
``CONNECTION_LOST``       retry        the bind went down before the part was written (the pool re-routes
                                       these itself and only returns them when the timeout ran out)
``SHUTDOWN``              retry        the session stopped before the part was written
``CONNECTION_LOST``       unknown      written, then the connection died before the ``submit_sm_resp``
``RESPONSE_TIMEOUT``      unknown      written, no ``submit_sm_resp`` within ``response_timeout_seconds``
``NO_ROUTE``              no_route     pool only: no connector was bound during the whole ``timeout``
``ENCODE_ERROR``          failed       the part cannot be encoded (address too long, unknown TLV...)
========================  ===========  ===================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The part/result types are the domain's (``SmsTransport`` port): ConnectorPool implements that port.
from gateway.domain.ports import InboundSms, SubmitOutcome, SubmitPart, SubmitResult

__all__ = [
    "CONNECTION_LOST",
    "ENCODE_ERROR",
    "NO_ROUTE",
    "QUEUE_TIMEOUT",
    "RESPONSE_TIMEOUT",
    "SHUTDOWN",
    "DeliverSm",
    "SubmitOutcome",
    "SubmitPart",
    "SubmitResult",
]

QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
CONNECTION_LOST = "CONNECTION_LOST"
SHUTDOWN = "SHUTDOWN"
RESPONSE_TIMEOUT = "RESPONSE_TIMEOUT"
NO_ROUTE = "NO_ROUTE"
ENCODE_ERROR = "ENCODE_ERROR"


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """An inbound ``deliver_sm`` (MO message or delivery receipt) or ``data_sm`` (``command`` says which).

    Strings are decoded as Latin-1 (lossless). ``tlvs`` holds the optional parameters smpplib knows, by
    its names and with its value types (ints, bytes), plus any other TLV by tag (``"0x1403"``) as raw
    bytes. A ``data_sm`` has no ``short_message`` (its text is in ``tlvs["message_payload"]``) and no
    ``protocol_id`` (0). ``received_at`` is the UTC time the PDU was decoded.
    """

    sequence: int
    service_type: str
    source_addr: str
    source_ton: int
    source_npi: int
    destination_addr: str
    dest_ton: int
    dest_npi: int
    esm_class: int
    protocol_id: int
    data_coding: int
    short_message: bytes
    tlvs: dict[str, Any]
    received_at: datetime
    command: str = "deliver_sm"


def to_inbound(connector: str, pdu: DeliverSm) -> InboundSms:
    """The domain's view of a deliver_sm/data_sm (a data_sm carries its text in message_payload)."""
    payload = pdu.short_message
    if not payload:
        raw = pdu.tlvs.get("message_payload")
        if isinstance(raw, bytes | bytearray):
            payload = bytes(raw)
        elif isinstance(raw, str):
            payload = raw.encode("latin-1")
    return InboundSms(
        connector=connector,
        source_addr=pdu.source_addr,
        source_ton=pdu.source_ton,
        destination_addr=pdu.destination_addr,
        dest_ton=pdu.dest_ton,
        esm_class=pdu.esm_class,
        data_coding=pdu.data_coding,
        short_message=payload,
        tlvs=pdu.tlvs,
        received_at=pdu.received_at,
    )
