"""Sans-IO SMPP 3.4 codec: values in, bytes out; bytes in, objects out.

smpplib is the codec only (``smpplib.smpp.make_pdu(...).generate()`` and ``smpplib.smpp.parse_pdu``);
nothing here does I/O or keeps connection state. Sequence numbers are given by the caller when building
(build once, then :func:`with_sequence` stamps the number chosen at write time) and come from the header
when parsing. ``parse_pdu`` gets our :class:`SequenceGenerator` as smpplib's ``client`` together with the
header's sequence, so parsing consumes no sequence number.

smpplib quirks handled here: it truncates over-long strings silently (we refuse them with
:class:`PduEncodeError`); it raises ``KeyError`` on a TLV it knows but not for that command, and only logs
(then drops) TLVs it does not know, so inbound TLVs are split first: smpplib parses the ones it accepts for
the command and the others are kept raw under their name or ``"0x%04x"`` tag.

The listener side (:mod:`gateway.smpp.listener`, where carriers bind to us) also needs what an SMSC
decodes and answers: ``bind_*`` and ``outbind`` requests are decoded here by hand (smpplib has no
``outbind`` class and keeps the password out of its ``Pdu``), ``submit_sm`` decodes like ``deliver_sm``
(same mandatory layout, SMPP 3.4 §4.4.1/§4.6.1), and the answers with a body (``bind_*_resp``,
``submit_sm_resp``) are built with ``struct``: an error answer has no body (§4.1.2, §4.4.2).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from smpplib import command as _command  # type: ignore[import-untyped]
from smpplib import command_codes as _codes
from smpplib import consts as _consts
from smpplib import exceptions as _exceptions
from smpplib import ptypes as _ptypes
from smpplib import smpp as _smpp

from gateway.domain.udh import UdhError, split_udh
from gateway.smpp.errors import PduDecodeError, PduEncodeError
from gateway.smpp.types import DeliverSm, SubmitPart

HEADER = struct.Struct(">IIII")
HEADER_LENGTH = HEADER.size
#: Longest PDU we accept; a larger command_length means the framing is lost (the connection is reset).
MAX_PDU_LENGTH = 65536
MAX_SEQUENCE = 0x7FFFFFFF
RESPONSE_BIT = 0x80000000

ESME_ROK = 0x00
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RBINDFAIL = 0x0D
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64
ESME_RINVOPTPARSTREAM = 0xC0

BindMode = Literal["transceiver", "transmitter", "receiver"]
BIND_MODES: dict[str, BindMode] = {
    "bind_transmitter": "transmitter",
    "bind_receiver": "receiver",
    "bind_transceiver": "transceiver",
}
_COMMAND_IDS = {
    "bind_receiver": 0x01,
    "bind_transmitter": 0x02,
    "submit_sm": 0x04,
    "bind_transceiver": 0x09,
    "outbind": 0x0B,
}

_STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix("SMPP_")
    for name, value in vars(_consts).items()
    if name.startswith("SMPP_ESME_") and isinstance(value, int)
}
_TLV_NAMES: dict[int, str] = {code: name for name, code in _consts.OPTIONAL_PARAMS.items()}
_MESSAGE_CLASSES: dict[str, Any] = {
    "deliver_sm": _command.DeliverSM,
    "data_sm": _command.DataSM,
    "submit_sm": _command.SubmitSM,  # only a carrier bound to our listener sends one
}
_RESPONSES = ("enquire_link_resp", "unbind_resp", "deliver_sm_resp", "data_sm_resp", "generic_nack")


def status_name(status: int) -> str:
    """``ESME_RTHROTTLED`` for 0x58 (names from ``smpplib.consts``); ``0x00000400`` for unlisted ones."""
    return _STATUS_NAMES.get(status, f"0x{status:08X}")


def command_name(command_id: int) -> str | None:
    """smpplib's name for a command id (``submit_sm_resp``), None when it has none."""
    return _COMMAND_NAMES.get(command_id)


# smpplib's table, inverted once (its get_command_name searches the table on every call).
_COMMAND_NAMES: dict[int, str] = {}
for _name, _code in _codes.commands.items():
    _COMMAND_NAMES.setdefault(_code, str(_name))


class SequenceGenerator:
    """Sequence numbers 1..0x7FFFFFFF, wrapping; smpplib's ``client`` protocol (``.sequence`` is the last
    number issued, ``.next_sequence()`` issues the next)."""

    def __init__(self, start: int = 0) -> None:
        self.sequence = start

    def next_sequence(self) -> int:
        self.sequence = 1 if self.sequence >= MAX_SEQUENCE else self.sequence + 1
        return self.sequence


@dataclass(frozen=True, slots=True)
class Header:
    length: int
    command_id: int
    command_status: int
    sequence: int

    @property
    def command(self) -> str | None:
        return command_name(self.command_id)

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)


@dataclass(frozen=True, slots=True)
class Pdu:
    """Any decoded PDU but ``deliver_sm``/``data_sm``: the header plus the body fields we use."""

    command_id: int
    command: str | None
    command_status: int
    sequence: int
    message_id: str | None = None  # submit_sm_resp, data_sm_resp
    system_id: str | None = None  # bind_*_resp; bind_* and outbind requests
    password: str | None = None  # bind_* and outbind requests
    system_type: str | None = None  # bind_* requests

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)


def decode_header(data: bytes) -> Header:
    """The 16-byte header; :class:`PduDecodeError` when short or ``command_length`` is out of range."""
    if len(data) < HEADER_LENGTH:
        raise PduDecodeError(f"header needs {HEADER_LENGTH} bytes, got {len(data)}")
    header = Header(*HEADER.unpack_from(data))
    if not HEADER_LENGTH <= header.length <= MAX_PDU_LENGTH:
        raise PduDecodeError(
            f"command_length {header.length} out of range",
            command_id=header.command_id,
            sequence=header.sequence,
        )
    return header


def with_sequence(raw: bytes, sequence: int) -> bytes:
    """The same PDU with another sequence number."""
    return raw[:12] + struct.pack(">I", sequence) + raw[HEADER_LENGTH:]


_NO_CLIENT = SequenceGenerator()  # builds always pass an explicit sequence: never advanced


@contextlib.contextmanager
def _smpplib_errors(command: str) -> Iterator[None]:
    """smpplib's own refusals (ValueError, struct.error, TypeError, UnicodeError...) as ours."""
    try:
        yield
    except Exception as exc:
        raise PduEncodeError(command, "*", f"{type(exc).__name__}: {exc}") from exc


def _build(command: str, sequence: int, **fields: Any) -> bytes:
    with _smpplib_errors(command):
        pdu = _smpp.make_pdu(command, client=_NO_CLIENT, sequence=sequence, **fields)
        pdu.sequence = sequence  # smpplib ignores sequence= when the client has one
        return bytes(pdu.generate())


_PROTOTYPES: dict[str, Any] = {}


def _fresh(command: str) -> Any:
    """What ``make_pdu(command)`` returns, without running smpplib's ``__init__`` again (it sets
    every parameter one by one, most of the cost of a small PDU): a copy of one made at first use.
    Fields are then set on the copy, or parsed into it, as on a new one."""
    prototype = _PROTOTYPES.get(command)
    if prototype is None:
        prototype = _smpp.make_pdu(command, client=_NO_CLIENT, sequence=1, allow_unknown_opt_params=True)
        _PROTOTYPES[command] = prototype
    return copy.copy(prototype)


class _SubmitSmBuilder:
    """``make_pdu("submit_sm", ...).generate()`` for the send path, with the same bytes and a third
    of the cost. smpplib's ``SubmitSM.__init__`` sets each of its 45 parameters one by one, and its
    ``generate`` walks all of them, the 27 optional ones included, whatever the PDU carries: about
    70 µs a PDU here, a tenth of the whole send path's CPU. So a :func:`_fresh` copy gets the given
    fields as ``make_pdu`` would set them, and generates only the mandatory parameters and the
    optional ones that are set (an unset optional parameter contributes no bytes to smpplib's
    output anyway). Still smpplib's encoding of every field; ``test_smpp_codec_fastpaths`` checks
    the bytes equal ``make_pdu``'s for arbitrary parts."""

    def __init__(self) -> None:
        sample = _fresh("submit_sm")
        order = _command.SubmitSM.params_order
        self._mandatory = tuple(f for f in order if not sample.field_is_optional(f))
        self._optional = tuple(f for f in order if sample.field_is_optional(f))

    def build(self, sequence: int, fields: dict[str, Any]) -> bytes:
        pdu = _fresh("submit_sm")
        for name, value in fields.items():
            setattr(pdu, name, value)
        pdu.sequence = sequence
        present = [f for f in self._optional if getattr(pdu, f, None) is not None]
        pdu.params_order = (*self._mandatory, *present) if present else self._mandatory
        return bytes(pdu.generate())


_SUBMIT_SM = _SubmitSmBuilder()


def _check_text(command: str, name: str, value: str, max_len: int) -> None:
    if not value.isascii() or "\0" in value:
        raise PduEncodeError(command, name, "must be ASCII without NUL")
    if len(value) > max_len:
        raise PduEncodeError(command, name, f"longer than {max_len} characters")


def _check_octet(command: str, name: str, value: int) -> None:
    if not 0 <= value <= 255:
        raise PduEncodeError(command, name, "must be 0..255")


def _vendor_tag(key: str) -> int | None:
    if not key.lower().startswith("0x"):
        return None
    try:
        tag = int(key, 16)
    except ValueError:
        return None
    return tag if 0 <= tag <= 0xFFFF else None


def udh_to_sar(part: SubmitPart) -> SubmitPart:
    """The same part for an SMSC that wants SAR TLVs instead of a UDH (SMPP 3.4 §5.3.2.22-24).

    The concatenation IE moves into sar_msg_ref_num / sar_total_segments / sar_segment_seqnum and the
    UDH leaves short_message (UDHI cleared): never both, or the handset would see the header twice.
    Parts keep their UDH-sized payload, because the SMSC adds the header back on the air interface.
    A part without a concatenation IE is returned unchanged.
    """
    if not part.esm_class & 0x40:
        return part
    try:
        udh, payload = split_udh(part.short_message)
    except UdhError:
        return part
    if udh.concat is None or udh.other:
        return part  # other IEs can only travel in a UDH
    c = udh.concat
    tlvs = {**part.tlvs, "sar_msg_ref_num": c.ref, "sar_total_segments": c.total, "sar_segment_seqnum": c.seq}
    return dataclasses.replace(part, esm_class=part.esm_class & ~0x40, short_message=payload, tlvs=tlvs)


def encode_submit_sm(part: SubmitPart, sequence: int = 0) -> bytes:
    """A ``submit_sm`` for ``part`` (registered_delivery, data_coding, esm_class... as given)."""
    fields, vendor = submit_sm_fields(part)
    with _smpplib_errors("submit_sm"):
        raw = _SUBMIT_SM.build(sequence, fields)
    if vendor:
        raw = struct.pack(">I", len(raw) + len(vendor)) + raw[4:] + vendor
    return raw


def submit_sm_fields(part: SubmitPart) -> tuple[dict[str, Any], bytes]:
    """The smpplib fields of ``part``'s ``submit_sm`` (checked), and its vendor TLVs as bytes to
    append (smpplib knows only the standard ones)."""
    cmd = "submit_sm"
    _check_text(cmd, "source_addr", part.source_addr, 20)
    _check_text(cmd, "destination_addr", part.destination_addr, 20)
    octets = {
        "source_addr_ton": part.source_ton,
        "source_addr_npi": part.source_npi,
        "dest_addr_ton": part.dest_ton,
        "dest_addr_npi": part.dest_npi,
        "esm_class": part.esm_class,
        "data_coding": part.data_coding,
        "registered_delivery": part.registered_delivery,
    }
    for name, value in octets.items():
        _check_octet(cmd, name, value)
    if len(part.short_message) > 254:
        raise PduEncodeError(cmd, "short_message", "longer than 254 octets (use message_payload)")
    fields: dict[str, Any] = {"service_type": "", "source_addr": part.source_addr}
    fields.update(octets, destination_addr=part.destination_addr, short_message=bytes(part.short_message))
    vendor = b""
    for key, value in part.tlvs.items():
        tag = _vendor_tag(key)
        if tag is not None:
            if not isinstance(value, bytes | bytearray) or len(value) > 0xFFFF:
                raise PduEncodeError(cmd, key, "a vendor TLV value must be bytes")
            vendor += struct.pack(">HH", tag, len(value)) + bytes(value)
        elif key in _consts.OPTIONAL_PARAMS and key in _command.SubmitSM.params:
            fields[key] = value
        else:
            raise PduEncodeError(cmd, key, "not a submit_sm optional parameter")
    return fields, vendor


def encode_bind(
    mode: BindMode,
    sequence: int,
    *,
    system_id: str,
    password: str,
    system_type: str = "",
    addr_ton: int = 0,
    addr_npi: int = 0,
    address_range: str = "",
) -> bytes:
    """``bind_transceiver`` / ``bind_transmitter`` / ``bind_receiver`` (interface_version 0x34)."""
    cmd = f"bind_{mode}"
    for name, value, max_len in (
        ("system_id", system_id, 15),
        ("password", password, 8),
        ("system_type", system_type, 12),
        ("address_range", address_range, 40),
    ):
        _check_text(cmd, name, value, max_len)
    _check_octet(cmd, "addr_ton", addr_ton)
    _check_octet(cmd, "addr_npi", addr_npi)
    return _build(
        cmd,
        sequence,
        system_id=system_id,
        password=password,
        system_type=system_type,
        addr_ton=addr_ton,
        addr_npi=addr_npi,
        address_range=address_range,
    )


def encode_enquire_link(sequence: int) -> bytes:
    return _build("enquire_link", sequence)


def encode_unbind(sequence: int) -> bytes:
    return _build("unbind", sequence)


def encode_response(command: str, sequence: int, status: int = ESME_ROK) -> bytes:
    """A body-less answer: ``enquire_link_resp``, ``unbind_resp``, ``deliver_sm_resp``, ``data_sm_resp``
    (message_id empty) or ``generic_nack``."""
    if command not in _RESPONSES:
        raise PduEncodeError(command, "command", f"not one of {', '.join(_RESPONSES)}")
    # smpplib's bytes for (command, status) differ only in the header's sequence: built once (each
    # receipt is answered with one; make_pdu cost more than the rest of the answer).
    built = _RESPONSE_BYTES.get((command, status))
    if built is None:
        built = _build(command, 0, status=status)
        if len(_RESPONSE_BYTES) < 256:
            _RESPONSE_BYTES[(command, status)] = built
    return with_sequence(built, sequence)


_RESPONSE_BYTES: dict[tuple[str, int], bytes] = {}


def _header_only(command_id: int, sequence: int, status: int) -> bytes:
    return HEADER.pack(HEADER_LENGTH, command_id, status, sequence)


def _with_body(command_id: int, sequence: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER_LENGTH + len(body), command_id, ESME_ROK, sequence) + body


def _c_octets(command: str, name: str, value: str, max_len: int) -> bytes:
    _check_text(command, name, value, max_len)
    return value.encode("ascii") + b"\0"


def encode_bind_resp(mode: BindMode, sequence: int, status: int = ESME_ROK, *, system_id: str = "") -> bytes:
    """``bind_<mode>_resp`` (§4.1.2-§4.1.6): our ``system_id`` and ``sc_interface_version`` 0x34 when
    ``ESME_ROK``; a header alone otherwise."""
    command_id = _COMMAND_IDS[f"bind_{mode}"] | RESPONSE_BIT
    if status != ESME_ROK:
        return _header_only(command_id, sequence, status)
    body = _c_octets(f"bind_{mode}_resp", "system_id", system_id, 15) + struct.pack(">HHB", 0x0210, 1, 0x34)
    return _with_body(command_id, sequence, body)


def encode_submit_sm_resp(sequence: int, status: int = ESME_ROK, message_id: str = "") -> bytes:
    """``submit_sm_resp`` (§4.4.2): the message id when ``ESME_ROK``, no body otherwise."""
    command_id = _COMMAND_IDS["submit_sm"] | RESPONSE_BIT
    if status != ESME_ROK:
        return _header_only(command_id, sequence, status)
    return _with_body(command_id, sequence, _c_octets("submit_sm_resp", "message_id", message_id, 64))


def encode_outbind(sequence: int, *, system_id: str, password: str) -> bytes:
    """``outbind`` (§4.1.7.1), what a carrier's SMSC sends to have us bind back."""
    body = _c_octets("outbind", "system_id", system_id, 15) + _c_octets("outbind", "password", password, 8)
    return _with_body(_COMMAND_IDS["outbind"], sequence, body)


def encode_message_resp(command: str, sequence: int, status: int = ESME_ROK, message_id: str = "") -> bytes:
    """The answer to an inbound ``deliver_sm``/``data_sm``/``submit_sm`` (``command``)."""
    if command == "submit_sm":
        return encode_submit_sm_resp(sequence, status, message_id)
    return encode_response(f"{command}_resp", sequence, status)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def decode(raw: bytes, seqgen: SequenceGenerator, *, received_at: datetime | None = None) -> Pdu | DeliverSm:
    """Decode one whole PDU (header included).

    ``deliver_sm``/``data_sm``/``submit_sm`` become :class:`DeliverSm`, anything else a :class:`Pdu`. A
    response whose body smpplib cannot parse still decodes (body fields None): the header is what
    matches it to its request. Raises :class:`PduDecodeError` for a bad header, an unknown or
    unsupported request, or a malformed ``deliver_sm``/``data_sm``/``submit_sm``/``bind_*``/``outbind``;
    ``nack_status`` is the status for the ``generic_nack``.
    """
    header = decode_header(raw)
    where = {"command_id": header.command_id, "sequence": header.sequence}
    if header.length != len(raw):
        raise PduDecodeError(f"command_length {header.length} but {len(raw)} bytes", **where)
    name = header.command
    if name in _MESSAGE_CLASSES:
        return _decode_message(raw, header, name, seqgen, received_at or datetime.now(UTC))
    if name == "outbind" or name in BIND_MODES:
        return _decode_bind(raw, header, name)
    try:
        pdu = _smpp.parse_pdu(raw, client=seqgen, sequence=header.sequence, allow_unknown_opt_params=True)
    except Exception as exc:  # unknown/unsupported command, or a body smpplib chokes on
        if header.is_response:
            return Pdu(header.command_id, name, header.command_status, header.sequence)
        status = ESME_RINVCMDID if isinstance(exc, _exceptions.UnknownCommandError) else ESME_RSYSERR
        reason = f"cannot decode {name or 'request'}: {exc}"
        raise PduDecodeError(reason, nack_status=status, **where) from exc
    return Pdu(
        header.command_id,
        name,
        header.command_status,
        header.sequence,
        message_id=_opt_text(getattr(pdu, "message_id", None)),
        system_id=_opt_text(getattr(pdu, "system_id", None)),
    )


# SMPP 3.4 §4.1.1 / §4.1.7.1: the C-Octet String sizes, NUL included.
_BIND_STRINGS = (("system_id", 16), ("password", 9), ("system_type", 13))
_ADDRESS_RANGE_SIZE = 41


def _c_string(body: bytes, pos: int, size: int, field: str, where: dict[str, int]) -> tuple[str, int]:
    nul = body.find(b"\0", pos, pos + size)
    if nul < 0:
        raise PduDecodeError(f"{field} is not a C-Octet String of at most {size} octets", **where)
    return body[pos:nul].decode("latin-1"), nul + 1


def _decode_bind(raw: bytes, header: Header, name: str) -> Pdu:
    """A ``bind_*`` (§4.1.1) or ``outbind`` (§4.1.7.1) request; TLVs after the fields are ignored."""
    where = {"command_id": header.command_id, "sequence": header.sequence}
    body = raw[HEADER_LENGTH:]
    values: dict[str, str] = {}
    pos = 0
    for field, size in _BIND_STRINGS[:2] if name == "outbind" else _BIND_STRINGS:
        values[field], pos = _c_string(body, pos, size, field, where)
    if name != "outbind":
        if pos + 3 > len(body):  # interface_version, addr_ton, addr_npi
            raise PduDecodeError("bind ends before interface_version/addr_ton/addr_npi", **where)
        _c_string(body, pos + 3, _ADDRESS_RANGE_SIZE, "address_range", where)
    return Pdu(header.command_id, name, header.command_status, header.sequence, **values)


def _mandatory_end(cls: Any, body: bytes, where: dict[str, int]) -> int:
    """Offset in ``body`` where the TLVs of a ``cls`` PDU start (walks the mandatory fields)."""
    pos = 0
    ints: dict[str, int] = {}
    for field in cls.params_order:
        if field in _consts.OPTIONAL_PARAMS or pos >= len(body):
            break  # like smpplib: a body may stop early
        param = cls.params[field]
        if param.type is int:
            ints[field] = int.from_bytes(body[pos : pos + param.size], "big")
            pos += param.size
        elif param.type is str:
            nul = body.find(b"\0", pos)
            if nul < 0:
                raise PduDecodeError(f"{field} is not NUL-terminated", **where)
            pos = nul + 1
        else:
            pos += ints.get(param.len_field, 0)
    if pos > len(body):
        raise PduDecodeError("mandatory fields run past the end of the PDU", **where)
    return pos


def _split_tlvs(cls: Any, tlvs: bytes, where: dict[str, int]) -> tuple[bytes, dict[str, Any]]:
    """(the TLVs smpplib accepts for ``cls``, the others by name or tag)."""
    kept = bytearray()
    others: dict[str, Any] = {}
    pos = 0
    while pos < len(tlvs):
        if pos + 4 > len(tlvs):
            raise PduDecodeError("truncated TLV header", nack_status=ESME_RINVOPTPARSTREAM, **where)
        tag, length = struct.unpack_from(">HH", tlvs, pos)
        end = pos + 4 + length
        if end > len(tlvs):
            reason = f"TLV 0x{tag:04x} overruns the PDU"
            raise PduDecodeError(reason, nack_status=ESME_RINVOPTPARSTREAM, **where)
        name = _TLV_NAMES.get(tag)
        param = cls.params.get(name) if name else None
        if param is None:
            others[name or f"0x{tag:04x}"] = bytes(tlvs[pos + 4 : end])
        elif param.type is _ptypes.flag:
            others[name] = True  # type: ignore[index]
        elif param.type is int and length != param.size:
            others[name] = bytes(tlvs[pos + 4 : end])  # type: ignore[index]
        else:
            kept += tlvs[pos:end]
        pos = end
    return bytes(kept), others


def _parse_message(name: str, clean: bytes) -> Any:
    """``parse_pdu(clean, ...)`` for a deliver_sm/data_sm/submit_sm: a :func:`_fresh` PDU parses
    the bytes. Every field the bytes carry is set by the parse, every other keeps the new object's
    value, as with ``parse_pdu`` (``test_smpp_codec_fastpaths`` compares the two)."""
    pdu = _fresh(name)
    pdu.parse(clean)
    return pdu


def _decode_message(
    raw: bytes, header: Header, name: str, seqgen: SequenceGenerator, received_at: datetime
) -> DeliverSm:
    cls = _MESSAGE_CLASSES[name]
    where = {"command_id": header.command_id, "sequence": header.sequence}
    body = raw[HEADER_LENGTH:]
    end = _mandatory_end(cls, body, where)
    kept, others = _split_tlvs(cls, body[end:], where)
    length = HEADER_LENGTH + end + len(kept)
    clean = struct.pack(">I", length) + raw[4:HEADER_LENGTH] + body[:end] + kept
    try:
        pdu = _parse_message(name, clean)
    except Exception as exc:
        raise PduDecodeError(f"cannot decode {name}: {exc}", **where) from exc
    tlvs: dict[str, Any] = {
        field: getattr(pdu, field)
        for field in cls.params_order
        if field in _consts.OPTIONAL_PARAMS and getattr(pdu, field, None) is not None
    }
    tlvs.update(others)
    return DeliverSm(
        sequence=header.sequence,
        service_type=_text(pdu.service_type),
        source_addr=_text(pdu.source_addr),
        source_ton=int(pdu.source_addr_ton or 0),
        source_npi=int(pdu.source_addr_npi or 0),
        destination_addr=_text(pdu.destination_addr),
        dest_ton=int(pdu.dest_addr_ton or 0),
        dest_npi=int(pdu.dest_addr_npi or 0),
        esm_class=int(pdu.esm_class or 0),
        protocol_id=int(getattr(pdu, "protocol_id", None) or 0),
        data_coding=int(pdu.data_coding or 0),
        short_message=bytes(getattr(pdu, "short_message", None) or b""),
        tlvs=tlvs,
        received_at=received_at,
        command=name,
    )
