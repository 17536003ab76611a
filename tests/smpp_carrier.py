"""A test carrier: the SMSC-side peer that connects to the gateway's SMPP listener (issue 9).

    carrier = await Carrier.connect(port)
    assert await carrier.bind("transmitter", "carrier1", "pw") == ESME_ROK
    status = await carrier.deliver(source="48600100200", destination="48500000001", short_message=b"Hi")

It either binds as an ESME (``bind``) or sends ``outbind`` (SMPP 3.4 §4.1.7.1) and answers the bind the
gateway sends back (``outbind``). PDUs are built with the struct codec of :mod:`smsc` (written from the
specification, independent of the gateway's smpplib-based codec). A reader task answers
``enquire_link`` and ``unbind`` (and records them), ``submit_sm`` (a transceiver bound back) with an id,
and hands responses to whoever waits for their sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import struct
from dataclasses import dataclass, field

from smsc import (
    BIND_RECEIVER,
    BIND_TRANSCEIVER,
    BIND_TRANSMITTER,
    DELIVER_SM,
    ENQUIRE_LINK,
    ENQUIRE_LINK_RESP,
    ESM_DELIVERY_RECEIPT,
    ESM_UDHI,
    ESME_ROK,
    GENERIC_NACK,
    RESP,
    SUBMIT_SM,
    SUBMIT_SM_RESP,
    UNBIND,
    UNBIND_RESP,
    encode_pdu,
    encode_sm,
)

OUTBIND = 0x0000000B
DATA_SM = 0x00000103
_BINDS = {"transmitter": BIND_TRANSMITTER, "receiver": BIND_RECEIVER, "transceiver": BIND_TRANSCEIVER}
_HEADER = struct.Struct(">IIII")
OPEN: list[Carrier] = []


async def close_all() -> None:
    """Close every carrier connection still open (end of a test)."""
    while OPEN:
        await OPEN.pop().close()


def cstr(value: str) -> bytes:
    return value.encode("latin-1") + b"\0"


@dataclass
class Received:
    command_id: int
    status: int
    seq: int
    body: bytes


@dataclass
class Carrier:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Received] = field(default_factory=list)  # what the gateway sent us, in order
    submits: list[Received] = field(default_factory=list)
    bind_status: int = ESME_ROK  # how we answer the gateway's bind after an outbind
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[Received]] = field(default_factory=dict)
    _unmatched: list[Received] = field(default_factory=list)  # responses nobody waited for
    _bound_back: asyncio.Future[Received] | None = None
    _task: asyncio.Task[None] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        host: str = "127.0.0.1",
        local_host: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Carrier:
        local = (local_host, 0) if local_host else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local, ssl=tls)
        carrier = cls(reader, writer)
        carrier._task = asyncio.create_task(carrier._read_loop())
        OPEN.append(carrier)
        return carrier

    # ---- raw I/O ----------------------------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(self, command_id: int, body: bytes = b"", timeout: float = 10.0) -> Received:
        """Send a request; its response (or a generic_nack with its sequence)."""
        seq = self.next_seq()
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = future
        self.write(encode_pdu(command_id, ESME_ROK, seq, body))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(seq, None)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    def responses(self) -> list[Received]:
        """Responses that came with no request waiting (e.g. to raw bytes we wrote)."""
        return list(self._unmatched)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _read_loop(self) -> None:
        try:
            while True:
                length, command_id, status, seq = _HEADER.unpack(await self.reader.readexactly(16))
                body = await self.reader.readexactly(length - 16)
                pdu = Received(command_id, status, seq, body)
                if command_id & RESP:
                    future = self._waiting.get(seq)
                    if future is not None and not future.done():
                        future.set_result(pdu)
                    else:
                        self._unmatched.append(pdu)
                    continue
                self.requests.append(pdu)
                if command_id == ENQUIRE_LINK:
                    self.write(encode_pdu(ENQUIRE_LINK_RESP, ESME_ROK, seq))
                elif command_id == UNBIND:
                    self.write(encode_pdu(UNBIND_RESP, ESME_ROK, seq))
                elif command_id in _BINDS.values():
                    body = cstr("CARRIERSMSC") if self.bind_status == ESME_ROK else b""
                    self.write(encode_pdu(command_id | RESP, self.bind_status, seq, body))
                    if self._bound_back is not None and not self._bound_back.done():
                        self._bound_back.set_result(pdu)
                elif command_id == SUBMIT_SM:
                    self.submits.append(pdu)
                    self.write(encode_pdu(SUBMIT_SM_RESP, ESME_ROK, seq, cstr(f"C{seq:06d}")))
                else:
                    self.write(encode_pdu(GENERIC_NACK, 0x03, seq))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.writer.close()
            self.closed.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("closed by the gateway"))

    # ---- SMPP -------------------------------------------------------------------------------------

    async def bind(self, mode: str, system_id: str, password: str) -> int:
        """Bind as an ESME (§4.1.1); the command_status of the answer."""
        body = cstr(system_id) + cstr(password) + cstr("") + bytes((0x34, 0, 0)) + cstr("")
        return (await self.request(_BINDS[mode], body)).status

    async def outbind(self, system_id: str, password: str, timeout: float = 10.0) -> Received:
        """Send outbind (§4.1.7.1) and answer the bind the gateway sends back; that bind."""
        self._bound_back = asyncio.get_running_loop().create_future()
        self.write(encode_pdu(OUTBIND, ESME_ROK, self.next_seq(), cstr(system_id) + cstr(password)))
        return await asyncio.wait_for(self._bound_back, timeout)

    async def deliver(
        self,
        source: str,
        destination: str,
        short_message: bytes = b"",
        *,
        command_id: int = DELIVER_SM,
        **sm: int,
    ) -> int:
        """A deliver_sm (or ``command_id``: data_sm/submit_sm with the same layout); its answer's status."""
        body = encode_sm(
            source_addr=source,
            source_ton=1,
            source_npi=1,
            dest_addr=destination,
            dest_npi=1,
            short_message=short_message,
            **sm,
        )
        resp = await self.request(command_id, body)
        return resp.status if resp.command_id != GENERIC_NACK else -resp.status

    async def mo_concat(
        self, source: str, destination: str, parts: list[bytes], ref: int, order: list[int]
    ) -> list[int]:
        """Parts with an 8-bit-reference concatenation UDH (3GPP TS 23.040 §9.2.3.24.1), in ``order``."""
        statuses = []
        for index in order:
            udh = bytes((5, 0x00, 3, ref & 0xFF, len(parts), index + 1))
            statuses.append(
                await self.deliver(source, destination, udh + parts[index], esm_class=ESM_UDHI, data_coding=0)
            )
        return statuses

    async def receipt(self, source: str, destination: str, message_id: str, stat: str = "DELIVRD") -> int:
        """An Appendix B delivery receipt (esm_class 0x04, §5.2.12) for ``message_id``."""
        dates = "submit date:2611241200 done date:2611241201"
        text = f"id:{message_id} sub:001 dlvrd:001 {dates} stat:{stat} err:000 text:".encode()
        return await self.deliver(source, destination, text, esm_class=ESM_DELIVERY_RECEIPT)

    async def data_sm(self, source: str, destination: str, payload: bytes, data_coding: int = 0) -> int:
        """A data_sm (§4.7.1): its own short layout, the text in message_payload (§5.3.2.32)."""
        body = (
            cstr("")
            + bytes((1, 1))
            + cstr(source)
            + bytes((0, 1))
            + cstr(destination)
            + bytes((0, 0, data_coding))  # esm_class, registered_delivery, data_coding
            + struct.pack(">HH", 0x0424, len(payload))
            + payload
        )
        resp = await self.request(DATA_SM, body)
        return resp.status if resp.command_id != GENERIC_NACK else -resp.status

    async def unbind(self) -> int:
        return (await self.request(UNBIND)).status
