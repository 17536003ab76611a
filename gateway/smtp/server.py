"""The SMTP listener (aiosmtpd's protocol, served by our own event loop; not its threaded Controller).

The protocol side: sessions, limits, shutdown. What each recipient and message means to us is the
handler's business (gateway.smtp.handler.InboundHandler); any object with aiosmtpd's ``handle_RCPT``
/ ``handle_DATA`` (and optionally ``handle_exception``) hooks will do.

What we do differently from aiosmtpd 1.4.6 (its ``_handle_client`` and ``smtp_DATA`` are replaced
here, so aiosmtpd is pinned to 1.4.x in pyproject.toml; the rest of its state machine is reused):

- **Line endings (SMTP smuggling, CVE-2023-51764 family).** RFC 5321 §2.3.8: CR and LF appear only
  together, as the line terminator. Only ``CRLF.CRLF`` ends DATA (§4.1.1.4); a bare CR or LF never
  does and never starts anything. A DATA line holding a bare CR or LF makes the whole message
  refused: we read on (keeping nothing) to the real ``CRLF.CRLF`` and answer ``550 5.6.0`` there, so
  the handler never sees that message, and whatever was "smuggled" inside it was only ever data to
  us. A command line ending in a bare LF or holding a bare CR is answered ``500 5.5.2`` and the
  connection is closed, as Postfix (``smtpd_forbid_bare_newline``) does: such a client does not
  speak SMTP's line discipline, and continuing only invites it to end its DATA with ``LF.LF``.
- **Oversize** (RFC 1870): ``SIZE=`` above the limit at MAIL, or a body above it, is ``552 5.3.4``
  (RFC 3463: message too big for system). The body is read to its end without keeping anything past
  the limit, so a session holds at most ``max_message_bytes`` (plus one line).
- **Limits**: recipients per transaction (``452 4.5.3``, RFC 5321 §4.5.3.1.10), connections in
  total, per client IP and per client IP per minute (``421 4.7.0`` at connect, then close), idle
  and total session time (``421 4.4.2``), commands per session and error replies per session
  (``421 4.7.0``, like Postfix's ``smtpd_hard_error_limit``).
- **Exceptions** anywhere in a session become ``451 4.3.0`` (RFC 5321 §4.2.5), never our exception
  text (aiosmtpd's default answer names the exception), and the listener keeps serving.
- EHLO offers SIZE, 8BITMIME, SMTPUTF8, PIPELINING, and STARTTLS when a certificate is configured;
  never AUTH (we are an MX, nobody logs in here).
- Shutdown: stop accepting, let transactions in DATA finish (bounded), then ``421 4.3.2`` and close
  the remaining sessions (RFC 5321 §3.8).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import logging
import re
import ssl
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException, _AuthMechAttr
from prometheus_client import CollectorRegistry, Gauge

from gateway.domain.ipaddr import parse_ip
from gateway.smtp.errors import SmtpTlsError
from gateway.tls import server_context

log = logging.getLogger(__name__)

__all__ = ["ConnectionGate", "SmtpLimits", "SmtpListener", "server_tls_context"]

#: RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. MAIL may carry
#: ``SIZE=`` (RFC 1870 §3: +26), ``SMTPUTF8`` (RFC 6531 §3.4: +10) and ``BODY=8BITMIME`` (+15).
COMMAND_LINE = 512
MAIL_LINE = COMMAND_LINE + 26 + 10 + 15

TEMPFAIL = "451 4.3.0 Temporary server error, please try again later"
BARE_NEWLINE_DATA = "550 5.6.0 Message refused: bare CR or LF in the data (RFC 5321 section 2.3.8)"
BARE_NEWLINE_COMMAND = "500 5.5.2 Bare CR or LF in a command line (RFC 5321 section 2.3.8)"
TOO_BIG = "552 5.3.4 Message too big for system"
LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.6)"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"

_REPLY = re.compile(r"[45][0-9][0-9][ -][^\r\n]*")


class Refusal:
    """Why a session or message was turned away: the ``reason`` label of ``gateway_smtp_refused``."""

    CONNECTIONS = "connections"  # max_connections reached
    IP_CONNECTIONS = "ip_connections"  # max_connections_per_ip reached
    IP_RATE = "ip_rate"  # connection_rate_per_ip exhausted
    BARE_NEWLINE_DATA = "bare_newline_data"
    BARE_NEWLINE_COMMAND = "bare_newline_command"
    SIZE_DECLARED = "size_declared"  # MAIL FROM ... SIZE= above the limit
    SIZE = "size"  # body above the limit
    LINE_TOO_LONG = "line_too_long"  # a DATA line above 1000 octets
    COMMAND_TOO_LONG = "command_too_long"
    RECIPIENTS = "recipients"  # max_recipients reached in one transaction
    COMMANDS = "commands"  # max_commands reached in one session
    ERRORS = "errors"  # max_errors reached in one session
    IDLE_TIMEOUT = "idle_timeout"
    SESSION_TIMEOUT = "session_timeout"
    EXCEPTION = "exception"  # an exception answered 451 4.3.0


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpLimits:
    """Session limits. 0 turns a count/rate limit off. Defaults are the ``[smtp]`` config defaults."""

    #: RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per transaction.
    max_recipients: int = 100
    #: Each session in DATA may hold up to max_message_bytes: this bounds that memory too.
    max_connections: int = 100
    max_connections_per_ip: int = 20
    #: New connections per client IP (IPv6: per /64) per minute, a token bucket of that size.
    connection_rate_per_ip: int = 60
    #: Clients exempt from the per-IP limits (Postfix exempts $mynetworks the same way).
    exempt_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for the next command.
    idle_timeout: float = 300.0
    max_session_seconds: float = 1800.0
    max_commands: int = 10_000
    #: Error replies (4xx/5xx) before we give up on a client; a delivered message starts it afresh.
    max_errors: int = 20


def client_key(ip: str) -> str:
    """The unit the per-IP limits count: the address, or its /64 for IPv6 (one subscriber's share)."""
    addr = parse_ip(ip)
    if addr is None:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ConnectionGate:
    """Admission at connect: total and per-client connection counts, and a per-client token bucket.

    Memory is bounded: per-client counts exist only while that client is connected (at most
    ``max_connections`` entries) and buckets are kept for at most ``max_tracked`` clients, least
    recently seen dropped first (a dropped client starts again with a full bucket: lenient, never
    unfair to anyone else)."""

    def __init__(
        self,
        limits: SmtpLimits,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        max_tracked: int = 10_000,
    ) -> None:
        self.limits = limits
        self.monotonic = monotonic
        self.max_tracked = max_tracked
        self.exempt = tuple(ipaddress.ip_network(n) for n in limits.exempt_networks)
        self.open = 0
        self.per_client: Counter[str] = Counter()
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._keys: dict[str, str | None] = {}  # ip -> its limit key, None when exempt

    def _key(self, ip: str | None) -> str | None:
        """The per-client key ``ip`` is counted under, None when exempt (remembered: parsing the
        address and matching the exempt networks twice per connection was a visible cost)."""
        if not ip:
            return None
        try:
            return self._keys[ip]
        except KeyError:
            pass
        key = None if self._exempt(ip) else client_key(ip)
        if len(self._keys) >= self.max_tracked:
            self._keys.clear()
        self._keys[ip] = key
        return key

    def _exempt(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None:
            return False
        return any(addr.version == net.version and addr in net for net in self.exempt)

    def admit(self, ip: str | None) -> str | None:
        """None when the connection may proceed (it is counted: call :meth:`release` later), else
        the :class:`Refusal` reason."""
        lim = self.limits
        if lim.max_connections and self.open >= lim.max_connections:
            return Refusal.CONNECTIONS
        key = self._key(ip)
        if key is not None:
            if lim.max_connections_per_ip and self.per_client[key] >= lim.max_connections_per_ip:
                return Refusal.IP_CONNECTIONS
            if lim.connection_rate_per_ip and not self._take_token(key):
                return Refusal.IP_RATE
            self.per_client[key] += 1
        self.open += 1
        return None

    def release(self, ip: str | None) -> None:
        self.open = max(0, self.open - 1)
        key = self._key(ip)
        if key is not None and key in self.per_client:
            self.per_client[key] -= 1
            if self.per_client[key] <= 0:
                del self.per_client[key]

    def _take_token(self, key: str) -> bool:
        capacity = float(self.limits.connection_rate_per_ip)
        now = self.monotonic()
        tokens, at = self.buckets.pop(key, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * capacity / 60.0)
        ok = tokens >= 1.0
        self.buckets[key] = (tokens - 1.0 if ok else tokens, now)  # re-inserted: most recent last
        while len(self.buckets) > self.max_tracked:
            self.buckets.popitem(last=False)
        return ok


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The STARTTLS context (RFC 3207) from a PEM certificate chain and its key.

    No client certificates are asked for (an MX cannot know its peers' CAs), TLS 1.2 or newer."""
    try:
        return server_context(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SmtpTlsError("smtp.tls_cert", f"cannot load {cert_file} / {key_file}: {exc}") from None


#: "<local@domain>" where both sides are RFC 5322 dot-atoms (§3.2.3) of ASCII atext: no quotes,
#: comments, routes or empty labels, so the full parser would return the same address unchanged.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ANGLE_ADDR = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)\Z", re.DOTALL
)


class _Smtp(SMTP):
    """One session. See the module docstring for what differs from aiosmtpd."""

    def __init__(self, listener: SmtpListener, **kwargs: Any) -> None:
        loop: asyncio.AbstractEventLoop = kwargs["loop"]
        template = listener._session_template
        if template is None or template[0] is not loop or template[1] is not kwargs["tls_context"]:
            super().__init__(listener.handler, **kwargs)
            listener._session_template = (loop, kwargs["tls_context"], dict(self.__dict__))
        else:
            # aiosmtpd's __init__ walks every attribute of the session and of the handler
            # (inspect.getmembers, dir) to build its command and hook tables: the same tables for
            # every session of a listener, and a tenth of a session's cost (tests/perf/smtp_in.py).
            # So the first session's state, taken right after that __init__, is copied: only the
            # stream protocol is new, and the tables of bound methods are bound to this session.
            asyncio.StreamReaderProtocol.__init__(
                self,
                asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
                client_connected_cb=self._cb_client_connected,
                loop=loop,
            )
            own = self.__dict__
            own.update({k: v for k, v in template[2].items() if k not in own})
            self._smtp_methods = {c: getattr(self, m.__name__) for c, m in self._smtp_methods.items()}
            self._auth_methods = {
                name: _AuthMechAttr(getattr(self, a.method.__name__), True) if a.is_builtin else a
                for name, a in self._auth_methods.items()
            }
        self.listener = listener
        self.limits = listener.limits
        # aiosmtpd keeps these in a class-level dict that every EHLO of every session grows; ours
        # are per session and fixed.
        self.command_size_limits = collections.defaultdict(lambda: COMMAND_LINE, {"MAIL": MAIL_LINE})
        self.admitted = False
        self.refused = False
        self._tls_up = False
        self.client_ip: str | None = None
        self._released = False
        self._session_timer: asyncio.TimerHandle | None = None
        self._in_hook = False
        self._close_with: tuple[str, str] | None = None  # (reply, reason) once the hook is done
        self._errors = 0
        self._active_at = 0.0  # loop time of the last valid command or DATA line (see _timeout_cb)

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.admitted:  # the TCP connection (later calls are the STARTTLS upgrade)
            peer = transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if peer else None
            reason = self.listener.gate.admit(self.client_ip)
            if reason is not None:
                self.refused = True
                self.listener.refused[reason] += 1
                log.info("smtp connection refused", extra={"peer": self.client_ip, "reason": reason})
                with contextlib.suppress(Exception):
                    msg = f"421 4.7.0 {self.hostname} Too many connections, try again later\r\n"
                    transport.write(msg.encode())  # type: ignore[attr-defined]
                transport.close()
                return
            self.admitted = True
            self.listener.sessions.add(self)
            if self.limits.max_session_seconds:
                self._session_timer = self.loop.call_later(
                    self.limits.max_session_seconds, self._expire, Refusal.SESSION_TIMEOUT
                )
        else:
            self._tls_up = True  # the STARTTLS handshake is done
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return  # aiosmtpd never saw this connection
        if not self._released:
            self._released = True
            self.listener.gate.release(self.client_ip)
            self.listener.sessions.discard(self)
            if self._session_timer is not None:
                self._session_timer.cancel()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def _timeout_cb(self) -> None:
        # Commands and DATA lines only note when they arrived (re-arming the timer for each cost
        # more than storing the time, tests/perf/smtp_in.py): the idle time counts from the last.
        idle_until = self._active_at + self._timeout_duration
        if idle_until > self.loop.time():
            self._timeout_handle = self.loop.call_at(idle_until, self._timeout_cb)
            return
        # aiosmtpd closes silently; RFC 5321 §3.8 wants a 421 first.
        self._expire(Refusal.IDLE_TIMEOUT)

    def _expire(self, reason: str) -> None:
        what = "Idle timeout" if reason == Refusal.IDLE_TIMEOUT else "Session time limit reached"
        reply = f"421 4.4.2 {self.hostname} {what}, closing connection"
        if self._in_hook:  # a message is being committed: its answer goes out first
            self._close_with = (reply, reason)
            return
        self.close(reply, reason)

    def close(self, reply: str, reason: str | None = None) -> None:
        """Say ``reply`` (a 421) and close; ``reason`` counts it as a refusal."""
        if self._released:
            return
        if reason is not None:
            self.listener.refused[reason] += 1
        log.info("smtp session closed", extra={"peer": self.client_ip, "reason": reason or reply})
        if self._original_transport is not None and not self._tls_up:
            # Stuck in the STARTTLS handshake: no reply can be read, and the TLS layer will never
            # report the loss to us (the session would hold its connection slot forever).
            self._original_transport.close()
            self.connection_lost(None)
            return
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(Exception):
                transport.write(reply.encode() + b"\r\n")
            transport.close()

    # -- replies ----------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            if status.startswith("552 Error: message size exceeds"):  # aiosmtpd's SIZE= refusal
                self.listener.refused[Refusal.SIZE_DECLARED] += 1
                status = TOO_BIG
            if status[:1] in ("4", "5") and status != TOO_MANY_RECIPIENTS:
                # (452 4.5.3 is the client's cue to send the rest later, not a fault: a message to
                # 150 recipients must still reach its first 100.)
                self._errors += 1
        await super().push(status)

    async def handle_exception(self, error: Exception) -> str:
        """Log, count, answer 451 4.3.0. The handler's own ``handle_exception`` is asked first, but
        whatever it does (raise, return something that is not a 4xx/5xx reply) the peer gets a
        plain reply, never our exception's text."""
        self.listener.refused[Refusal.EXCEPTION] += 1
        hook = getattr(self.event_handler, "handle_exception", None)
        status: Any = None
        if hook is None:
            log.error("smtp session error", exc_info=error, extra={"peer": self.client_ip})
        else:
            try:
                status = await hook(error)
            except Exception:
                log.exception("smtp handle_exception failed", extra={"peer": self.client_ip})
        if not (isinstance(status, str) and _REPLY.fullmatch(status)):
            status = TEMPFAIL
        return str(status)

    # -- the command loop (replaces aiosmtpd's _handle_client) -------------------------------

    async def _handle_client(self) -> None:
        try:
            await self._serve()
        except (ConnectionError, TimeoutError):
            log.debug("smtp connection lost", extra={"peer": self.client_ip})
        except Exception:  # a bug of ours: this session ends, the listener goes on
            log.exception("smtp session failed", extra={"peer": self.client_ip})
        finally:
            transport: Any = self.transport
            if transport is not None and not transport.is_closing():
                transport.close()

    async def _serve(self) -> None:
        assert self.session is not None
        await self.push(f"220 {self.hostname} {self.__ident__}")
        commands = 0
        while self.transport is not None:
            line = await self._read_command()
            if self.transport is None or self.transport.is_closing():
                return
            commands += 1
            if self.limits.max_commands and commands > self.limits.max_commands:
                self.close(
                    f"421 4.7.0 {self.hostname} Too many commands, closing connection", Refusal.COMMANDS
                )
                return
            if line is None:
                self.listener.refused[Refusal.COMMAND_TOO_LONG] += 1
                await self.push(LINE_TOO_LONG)
            elif not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                self.listener.refused[Refusal.BARE_NEWLINE_COMMAND] += 1
                await self.push(BARE_NEWLINE_COMMAND)
                self.transport.close()
                return
            else:
                await self._command(line[:-2])
            if self._close_with is not None:
                self.close(*self._close_with)
                return
            if self.limits.max_errors and self._errors >= self.limits.max_errors:
                self.close(f"421 4.7.0 {self.hostname} Too many errors, closing connection", Refusal.ERRORS)
                return

    async def _read_command(self) -> bytes | None:
        """One line up to LF; None when it was longer than the reader's limit (then drained)."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._reader.read(exc.consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return None
            except asyncio.LimitOverrunError as exc:
                await self._reader.read(exc.consumed)

    async def _command(self, line: bytes) -> None:
        assert self.session is not None
        if not line:
            await self.push("500 5.5.2 Error: bad syntax")
            return
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            await self.push("500 5.5.2 Error: bad syntax")
            return
        # SMTPUTF8 (RFC 6531) is offered: arguments may be UTF-8; surrogateescape keeps odd bytes.
        arg = str(arg_bytes.strip(), "utf-8", errors="surrogateescape") if arg_bytes.strip() else None
        limit = self.command_size_limits[command] if self.session.extended_smtp else COMMAND_LINE
        if len(line) + 2 > limit:
            self.listener.refused[Refusal.COMMAND_TOO_LONG] += 1
            await self.push(LINE_TOO_LONG)
            return
        if not self._tls_handshake_okay and command != "QUIT":
            await self.push("554 5.7.0 Command refused due to lack of security")
            return
        method = self._smtp_methods.get(command)
        if method is None:
            await self.push("500 5.5.1 Command not recognized")
            return
        # A valid command: the idle clock starts again. Noted, not re-armed (cancelling and
        # scheduling a timer per command cost more than this; _timeout_cb re-arms when it fires).
        self._active_at = self.loop.time()
        try:
            await method(arg)
        except TLSSetupException as error:
            # A failed handshake (scanners do this all day): the TLS layer will not report the
            # loss to us, so we do, as aiosmtpd does.
            log.info("smtp STARTTLS failed", extra={"peer": self.client_ip, "error": str(error.__cause__)})
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(error)
        except Exception as error:
            await self.push(await self.handle_exception(error))

    # -- commands ---------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd 1.4's ``_getaddr`` (the same parse, the same answers) without the
        ``typing.Protocol`` class it builds on every call, which cost more than the parse."""
        if not arg:
            return "", ""
        plain = _PLAIN_ANGLE_ADDR.match(arg)
        rest = plain.group(2).lstrip(" \t") if plain is not None else ""
        if plain is not None and not rest.startswith("("):  # a comment after it: the full parser
            # The common case, "<dot.atom@dot.atom>" and the parameters after it: what the full
            # RFC 5322 parser answers for it, for a fraction of its cost (tested against it).
            given: str = plain.group(1)
            if self.local_part_limit and len(given.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return given, rest  # like the full parser, without the white space after the ">"
        address: Any
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
            addr: str = address.addr_spec  # raises too for some ("<0@[>": a defect, no value)
        except (HeaderParseError, IndexError, AttributeError, ValueError):
            # The email package's parser raises more than HeaderParseError on some hostile input
            # (found by the property test): a syntax error to the client, not a 451.
            return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    def _reset_envelope(self) -> None:
        # aiosmtpd's _set_rset_state / _set_post_data_state (untyped) do exactly this.
        self.envelope = self._create_envelope()

    async def smtp_EHLO(self, hostname: str) -> None:
        """RFC 5321 §4.1.1.1; our extensions only (aiosmtpd's would add AUTH after STARTTLS)."""
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._reset_envelope()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname]
        if self.data_size_limit:
            lines.append(f"SIZE {self.data_size_limit}")  # RFC 1870
        lines += ["8BITMIME", "SMTPUTF8", "PIPELINING"]  # RFC 6152, RFC 6531, RFC 2920
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")  # RFC 3207
        await self.push("\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}")

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH not available")  # RFC 5321 §4.2.4: not implemented

    async def smtp_RCPT(self, arg: str | None) -> None:
        env = self.envelope
        if (
            self.limits.max_recipients
            and env is not None
            and env.mail_from
            and len(env.rcpt_tos) >= self.limits.max_recipients
        ):
            # RFC 5321 §4.5.3.1.10: 452, the client sends the rest in another transaction.
            self.listener.refused[Refusal.RECIPIENTS] += 1
            await self.push(TOO_MANY_RECIPIENTS)
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body, problem = await self._read_data()
        if problem is not None:
            self.listener.refused[problem] += 1
            self._reset_envelope()  # RFC 5321 §4.1.1.4: a refused DATA ends the transaction
            await self.push(
                {
                    Refusal.BARE_NEWLINE_DATA: BARE_NEWLINE_DATA,
                    Refusal.SIZE: TOO_BIG,
                    Refusal.LINE_TOO_LONG: LINE_TOO_LONG,
                }[problem]
            )
            return
        self.envelope.content = body
        self.envelope.original_content = body
        self._in_hook = True
        self.listener.hook_started()
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._in_hook = False
            self.listener.hook_finished()
            self._reset_envelope()
        status = "250 2.0.0 OK" if status is MISSING else status
        if isinstance(status, str) and status.startswith("2"):
            self._errors = 0
        await self.push(status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """The message up to ``CRLF.CRLF`` (RFC 5321 §4.1.1.4), dot-unstuffed (§4.5.2), and the first
        problem met (a :class:`Refusal` reason). After a problem the rest is read but not kept."""
        lines: list[bytes] = []
        size = 0
        limit = self.data_size_limit or 0
        problem: str | None = None
        continued = False  # inside an over-long line (its start was drained already)
        while True:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # More than the reader's limit (1001 octets) without a CRLF: drain it. A chunk never
                # ends in the CR of a CRLF (readuntil leaves a possible separator start in place),
                # so any CR or LF in it is bare.
                chunk = await self._reader.read(exc.consumed)
                size += len(chunk)
                bare = b"\r" in chunk or b"\n" in chunk
                problem = _worst(problem, Refusal.BARE_NEWLINE_DATA if bare else Refusal.LINE_TOO_LONG)
                lines.clear()
                continued = True
                self._active_at = self.loop.time()
                continue
            self._active_at = self.loop.time()  # the idle timer runs between lines (_timeout_cb)
            if continued:  # the end of an over-long line
                continued = False
                if b"\r" in line[:-2] or b"\n" in line[:-2]:
                    problem = _worst(problem, Refusal.BARE_NEWLINE_DATA)
                size += len(line)
                continue
            if line == b".\r\n":
                break
            size += len(line)
            if b"\r" in line[:-2] or b"\n" in line[:-2]:
                # The whole smuggling family: \n.\r\n, \n.\n, \r.\r\n, \r\n.\r, \r\r\n all land
                # here, inside a line that only CRLF ends.
                problem = _worst(problem, Refusal.BARE_NEWLINE_DATA)
                lines.clear()
            if limit and size > limit:
                problem = _worst(problem, Refusal.SIZE)
                lines.clear()
            if problem is None:
                lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines), problem


#: Which refusal a DATA answers when it has several problems: the smuggling attempt first.
_DATA_PROBLEMS = (Refusal.BARE_NEWLINE_DATA, Refusal.SIZE, Refusal.LINE_TOO_LONG)


def _worst(current: str | None, new: str) -> str:
    if current is None:
        return new
    return min(current, new, key=_DATA_PROBLEMS.index)


class SmtpListener:
    """Serves an aiosmtpd handler on ``host:port`` in the running loop."""

    def __init__(
        self,
        handler: Any,
        *,
        host: str,
        port: int,
        hostname: str,
        max_message_bytes: int,
        limits: SmtpLimits | None = None,
        timeout: float | None = None,
        tls_cert: str = "",
        tls_key: str = "",
        tls_context: ssl.SSLContext | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.hostname = hostname
        self.max_message_bytes = max_message_bytes
        limits = limits or SmtpLimits()
        if timeout is not None:  # the older keyword: the idle timeout
            limits = dataclasses.replace(limits, idle_timeout=timeout)
        self.limits = limits
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.tls_context = tls_context
        self.gate = ConnectionGate(limits, monotonic)
        self.refused: Counter[str] = Counter()  # for /metrics, by Refusal reason
        self.sessions: weakref.WeakSet[_Smtp] = weakref.WeakSet()
        self._in_hook = 0
        self._idle = asyncio.Event()  # set while no session is inside handle_DATA
        self._idle.set()
        self._server: asyncio.Server | None = None
        #: (loop, TLS context, a fresh session's attributes): what _Smtp.__init__ copies.
        self._session_template: tuple[asyncio.AbstractEventLoop, Any, dict[str, Any]] | None = None

    def hook_started(self) -> None:
        self._in_hook += 1
        self._idle.clear()

    def hook_finished(self) -> None:
        self._in_hook -= 1
        if not self._in_hook:
            self._idle.set()

    def _protocol(self) -> _Smtp:
        return _Smtp(
            self,
            hostname=self.hostname,
            ident="ESMTP",
            data_size_limit=self.max_message_bytes,
            enable_SMTPUTF8=True,
            timeout=self.limits.idle_timeout,
            tls_context=self.tls_context,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0). Raises :class:`SmtpTlsError` for
        an unusable certificate, OSError when the address cannot be bound."""
        aiosmtpd_log = logging.getLogger("mail.log")
        if aiosmtpd_log.level == logging.NOTSET:
            # aiosmtpd logs every connection, sender and recipient at INFO: addresses do not belong
            # in our logs by default, and the volume costs at MX rates. Ours say what matters.
            aiosmtpd_log.setLevel(logging.WARNING)
        if self.tls_context is None and (self.tls_cert or self.tls_key):
            if not (self.tls_cert and self.tls_key):
                raise SmtpTlsError("smtp.tls_key", "smtp.tls_cert and smtp.tls_key go together")
            self.tls_context = server_tls_context(self.tls_cert, self.tls_key)
        self._server = await asyncio.get_running_loop().create_server(self._protocol, self.host, self.port)
        sockets = self._server.sockets or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.port
        log.info(
            "smtp listening", extra={"host": self.host, "port": self.port, "tls": bool(self.tls_context)}
        )
        return self.port

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def connections(self) -> int:
        return self.gate.open

    def metrics(self, registry: CollectorRegistry) -> Callable[[], Awaitable[None]]:
        """Gauges in ``registry`` and the refresher that sets them before /metrics renders."""
        refused = Gauge(
            "gateway_smtp_refused",
            "SMTP sessions, messages and commands refused since start, by reason",
            ["reason"],
            registry=registry,
        )
        current = Gauge("gateway_smtp_connections", "Open SMTP connections", registry=registry)

        async def refresh() -> None:
            for reason, n in self.refused.items():
                refused.labels(reason).set(n)
            current.set(self.gate.open)

        return refresh

    async def stop(self, timeout: float) -> None:
        if self._server is None:
            return
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)  # a DATA in progress answers first
        for proto in list(self.sessions):
            proto.close(f"421 4.3.2 {self.hostname} Service shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), max(0.1, deadline - loop.time()))
        self._server = None
