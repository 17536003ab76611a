"""SMPP listener: carriers connect to us (issue 9), to ``outbind`` or to bind as an ESME.

One :class:`SmppListener` per ``[[smpp.listeners]]``. A connection goes through:

1. **Source network**, before any byte is read: the peer address must be in the ``networks`` of some
   carrier of this listener, else the connection is closed (``rejected_network``). (With TLS the
   handshake comes first: asyncio calls us once it is done, bounded by the bind timeout.)
2. **Handshake**, all of it within ``bind_timeout_seconds`` (else closed, ``bind_timeout``): PDUs are
   framed by hand. A ``command_length`` below 16 or above :data:`~gateway.smpp.codec.MAX_PDU_LENGTH`
   is answered ``generic_nack ESME_RINVCMDLEN`` and the connection closed *without reading the body*
   (a 100 MB length allocates nothing). An unknown command id gets ``generic_nack ESME_RINVCMDID``, a
   request other than a bind ``generic_nack ESME_RINVBNDSTS`` (SMPP 3.4 §2.3: only binds and
   ``outbind`` in the open state); after :data:`MAX_JUNK` of those the connection is closed.
3. **Bind** (``bind_transmitter/receiver/transceiver``, §4.1): the system_id must be a carrier of this
   listener, the password equal, the peer in *that* carrier's networks, and the carrier under its
   ``max_connections``; otherwise ``bind_*_resp ESME_RBINDFAIL`` (counted) and close. A malformed bind
   gets ``ESME_RSYSERR``. On success we answer with our ``system_id``, then the connection runs a
   :class:`~gateway.smpp.session.SmppSession` that starts bound (``send_bind=False``).
   **Outbind** (§2.2.1, §4.1.7.1): same checks, and the carrier must have ``outbind = true``; a
   failure closes the connection (there is no ``outbind_resp``), counted ``outbind_failed``. On success
   a session with the *connector's* configuration (our system_id/password at that carrier, its
   window, timers, message id format) sends ``bind_receiver`` (or ``bind_transceiver``, which also
   joins the connector pool as a route for submits) over the same connection.
4. **Session**: the same :class:`~gateway.smpp.link.Link` as our outbound binds: enquire_link (one
   outstanding at a time, no answer within ``response_timeout_seconds`` resets), ``deliver_sm``/
   ``data_sm`` (and ``submit_sm`` when ``accept_submit``) handed to ``on_deliver`` under the carrier's
   connector name, answered only after it returns (``ESME_RX_T_APPN`` when it fails), at most
   ``window`` at once. ``unbind`` is answered and the connection closed.

Shutdown (:meth:`SmppListener.close`): stop accepting, close the handshakes, have every session
unbind (each waits for its inbound messages, then ``unbind`` and up to ``unbind_timeout`` for the
answer), then cancel what is left after ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import ssl
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import SmppCarrierConfig, SmppConnectorConfig, SmppListenerConfig
from gateway.domain.ipaddr import parse_ip
from gateway.smpp.codec import (
    BIND_MODES,
    ESME_RBINDFAIL,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_ROK,
    ESME_RSYSERR,
    HEADER_LENGTH,
    BindMode,
    Pdu,
    SequenceGenerator,
    command_name,
    decode,
    decode_header,
    encode_bind_resp,
    encode_response,
)
from gateway.smpp.errors import PduDecodeError
from gateway.smpp.pool import ConnectorPool
from gateway.smpp.session import OnDeliver, SmppSession
from gateway.smpp.types import DeliverSm

log = logging.getLogger(__name__)

#: Undecodable or out-of-state PDUs tolerated before a bind; then the connection is closed.
MAX_JUNK = 8

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Refused(Exception):
    """The handshake ends without a session; ``outcome`` is the counter to bump."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


@dataclass(eq=False)
class _Live:
    """One bound (or binding back) carrier session, for snapshots."""

    carrier: str
    kind: str  # "bind" or "outbind"
    mode: BindMode
    peer: str
    session: SmppSession


@dataclass
class _Carrier:
    config: SmppCarrierConfig
    networks: tuple[IpNetwork, ...]
    sessions: list[_Live] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


def peer_address(writer: asyncio.StreamWriter) -> tuple[IpAddress | None, str]:
    """The peer's IP (an IPv4-mapped IPv6 address as IPv4) and ``host:port`` for logs."""
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return None, "?"
    host = str(peer[0]).split("%", 1)[0]
    ip = parse_ip(host)
    return (ip, f"{host}:{peer[1]}") if ip is not None else (None, str(peer[0]))


class SmppListener:
    """An SMPP endpoint for the carriers of one ``[[smpp.listeners]]`` entry.

    ``on_deliver(connector_name, DeliverSm)`` is the same callback as our own sessions' (the MO and
    receipt pipeline); ``connectors`` are the ``[[smpp.connectors]]`` by name (outbind binds back with
    them); ``pool`` gets outbind transceiver sessions as extra routes. ``session_options`` go to every
    :class:`SmppSession` (``unbind_timeout_seconds``, ``deliver_timeout_seconds``...).
    """

    def __init__(
        self,
        config: SmppListenerConfig,
        *,
        on_deliver: OnDeliver | None,
        connectors: Mapping[str, SmppConnectorConfig] | None = None,
        pool: ConnectorPool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **session_options: Any,
    ) -> None:
        self.config = config
        self.name = config.name
        self._on_deliver = on_deliver
        self._connectors = dict(connectors or {})
        self._pool = pool
        self._ssl = ssl_context
        self._session_options = session_options
        self._carriers = {
            c.system_id: _Carrier(c, tuple(ipaddress.ip_network(n) for n in c.networks))
            for c in config.carriers
        }
        self._all_networks = tuple(net for c in self._carriers.values() for net in c.networks)
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._seq = SequenceGenerator()
        self.counters: Counter[str] = Counter()  # connection outcomes, for /metrics
        self.port: int | None = None

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._server = await asyncio.start_server(
            self._accept,
            cfg.host,
            cfg.port,
            ssl=self._ssl,
            ssl_handshake_timeout=cfg.bind_timeout_seconds if self._ssl else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("smpp listener %s on %s:%s", self.name, cfg.host, self.port)

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def run(self, stop: asyncio.Event, timeout: float = 10.0) -> None:
        """Serve until ``stop`` is set, then :meth:`close` within ``timeout``."""
        if self._server is None:
            await self.start()
        await stop.wait()
        await self.close(timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop accepting; sessions unbind; whatever is left after ``timeout`` seconds is cancelled."""
        if self._server is not None:
            self._server.close()
        self._stop.set()
        for task in self._handshakes:
            task.cancel()  # nobody is bound there: nothing to drain
        pending = {*self._handshakes, *self._handlers}
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    # ---- one connection ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._connection(reader, writer, task)
        except Exception:  # a bug in one connection must not reach the server (asyncio logs, moves on)
            log.exception("smpp listener %s: connection failed", self.name)
        finally:
            self._handlers.discard(task)
            self._handshakes.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[Any]
    ) -> None:
        ip, peer = peer_address(writer)
        if ip is None or not any(ip in net for net in self._all_networks):
            # Before reading a byte: an address none of our carriers uses learns nothing.
            self.counters["rejected_network"] += 1
            log.warning("smpp listener %s: %s is not in any carrier's networks", self.name, peer)
            return
        if self._stop.is_set():
            return
        self._handshakes.add(task)
        try:
            async with asyncio.timeout(self.config.bind_timeout_seconds):
                carrier, pdu = await self._handshake(reader, writer, ip, peer)
        except TimeoutError:
            self.counters["bind_timeout"] += 1
            log.warning("smpp listener %s: %s did not bind in time", self.name, peer)
            return
        except _Refused as refused:
            self.counters[refused.outcome] += 1
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.counters["closed_before_bind"] += 1
            return
        finally:
            self._handshakes.discard(task)
        await self._run_session(carrier, pdu, reader, writer, peer)

    async def _read_pdu(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        head = await reader.readexactly(HEADER_LENGTH)
        try:
            header = decode_header(head)
        except PduDecodeError as exc:
            # Framing lost (§3.2): answer, and close without reading (or allocating) the body.
            writer.write(encode_response("generic_nack", exc.sequence or 0, ESME_RINVCMDLEN))
            await writer.drain()
            raise _Refused("bad_length") from None
        return head + await reader.readexactly(header.length - HEADER_LENGTH)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: IpAddress, peer: str
    ) -> tuple[_Carrier, Pdu]:
        """Read PDUs until a bind or outbind that passes the checks (else raise ``_Refused``)."""
        junk = 0
        while True:
            raw = await self._read_pdu(reader, writer)
            try:
                pdu = decode(raw, self._seq)
            except PduDecodeError as exc:
                seq = exc.sequence or 0
                if exc.command_id is not None and (
                    mode := BIND_MODES.get(command_name(exc.command_id) or "")
                ):
                    writer.write(encode_bind_resp(mode, seq, ESME_RSYSERR))  # a malformed bind
                    await writer.drain()
                    raise _Refused("bad_bind") from None
                writer.write(encode_response("generic_nack", seq, exc.nack_status))
                pdu = None
            if pdu is not None and (pdu.command == "outbind" or pdu.command in BIND_MODES):
                assert isinstance(pdu, Pdu)
                return await self._authenticate(pdu, writer, ip, peer), pdu
            if isinstance(pdu, DeliverSm) or (pdu is not None and not pdu.is_response):
                writer.write(encode_response("generic_nack", pdu.sequence, _not_bound_status(pdu)))
            await writer.drain()
            junk += 1
            if junk >= MAX_JUNK:
                raise _Refused("junk")

    async def _authenticate(
        self, pdu: Pdu, writer: asyncio.StreamWriter, ip: IpAddress, peer: str
    ) -> _Carrier:
        command = pdu.command or ""
        carrier = self._carriers.get(pdu.system_id or "")
        outbind = command == "outbind"
        why = None
        if carrier is None:
            why = "unknown system_id"
        elif not hmac.compare_digest((pdu.password or "").encode(), carrier.config.password.encode()):
            why = "wrong password"
        elif not any(ip in net for net in carrier.networks):
            why = "address not in this carrier's networks"
        elif outbind and not carrier.config.outbind:
            why = "outbind not allowed"
        elif len(carrier.sessions) >= carrier.config.max_connections:
            why = "too many connections"
        if why is None and carrier is not None:
            if not outbind:
                mode = BIND_MODES[command]
                writer.write(encode_bind_resp(mode, pdu.sequence, ESME_ROK, system_id=self.config.system_id))
                await writer.drain()
            return carrier
        outcome = (
            "over_limit" if why == "too many connections" else f"{'outbind' if outbind else 'bind'}_failed"
        )
        if carrier is not None:
            carrier.counters[outcome] += 1
        log.warning(
            "smpp listener %s: %s from %s as %r refused: %s", self.name, command, peer, pdu.system_id, why
        )
        if not outbind:  # an outbind has no response (§4.1.7): the connection is closed
            writer.write(encode_bind_resp(BIND_MODES[command], pdu.sequence, ESME_RBINDFAIL))
            await writer.drain()
        raise _Refused(outcome)

    def _traffic_name(self, carrier: SmppCarrierConfig) -> str:
        """The connector name the carrier's MO and receipts count for (receipt matching, MO keys)."""
        return carrier.connector or f"{self.name}.{carrier.system_id}"

    async def _run_session(
        self,
        carrier: _Carrier,
        pdu: Pdu,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        cfg, lcfg = carrier.config, self.config
        options: dict[str, Any] = {
            "on_deliver": self._on_deliver,
            "accept_submit": cfg.accept_submit,
            "max_inbound": lcfg.window,
            **self._session_options,
        }
        outbind = pdu.command == "outbind"
        if outbind:
            mode: BindMode = "transceiver" if cfg.outbind_bind == "transceiver" else "receiver"
            session = SmppSession(self._connectors[cfg.connector], modes=(mode,), **options)
        else:
            mode = BIND_MODES[pdu.command or ""]
            host, _, port = peer.rpartition(":")
            config = SmppConnectorConfig(
                name=self._traffic_name(cfg),
                host=host,
                port=int(port) if port.isdigit() else 0,
                system_id=cfg.system_id,
                window=lcfg.window,
                enquire_link_seconds=lcfg.enquire_link_seconds,
                response_timeout_seconds=lcfg.response_timeout_seconds,
            )
            session = SmppSession(config, modes=(mode,), **options)
        live = _Live(cfg.system_id, "outbind" if outbind else "bind", mode, peer, session)
        carrier.sessions.append(live)
        carrier.counters[live.kind] += 1
        self.counters[live.kind] += 1
        routed = outbind and mode == "transceiver" and self._pool is not None
        if routed:
            assert self._pool is not None
            self._pool.attach(session)
        log.info("smpp listener %s: %s %s from %s (%s)", self.name, cfg.system_id, live.kind, peer, mode)
        try:
            # A carrier's bind carries nothing of ours: sends=False. An outbind transceiver does.
            await session.serve_connection(reader, writer, self._stop, send_bind=outbind, sends=routed)
        finally:
            if routed:
                assert self._pool is not None
                self._pool.detach(session)
            carrier.sessions.remove(live)
            log.info("smpp listener %s: %s %s from %s ended", self.name, cfg.system_id, live.kind, peer)

    # ---- reporting --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """For /readyz and /metrics: the listener, its carriers and their live sessions."""
        carriers = []
        for sid, carrier in self._carriers.items():
            sessions = []
            for live in carrier.sessions:
                snap = live.session.snapshot()
                sessions.append(
                    {
                        "kind": live.kind,
                        "mode": live.mode,
                        "peer": live.peer,
                        "state": snap["state"],
                        "delivered": snap["delivered"],
                        "refused_inbound": snap["refused_inbound"],
                        "last_error": snap["last_error"],
                    }
                )
            carriers.append(
                {
                    "system_id": sid,
                    "connector": self._traffic_name(carrier.config),
                    "bound": sum(1 for s in sessions if s["state"] == "bound"),
                    "sessions": sessions,
                    "counters": dict(carrier.counters),
                }
            )
        return {
            "name": self.name,
            "port": self.port,
            "serving": self.serving,
            "carriers": carriers,
            "counters": dict(self.counters),
        }


def _not_bound_status(pdu: Pdu | DeliverSm) -> int:
    """A request before any bind: known ones are out of state (§2.3), others unknown."""
    if isinstance(pdu, DeliverSm) or pdu.command:
        return ESME_RINVBNDSTS
    return ESME_RINVCMDID
