"""One IMAP connection (aioimaplib underneath) with every wait bounded.

aioimaplib leaves a command waiting forever when the server goes away: nothing fails a pending
command on ``connection_lost``, ``idle_start`` waits for the continuation without a deadline, and a
greeting that is not OK leaves ``wait_hello_from_server`` waiting until its own timeout. So every
call here races the command against the connection-lost signal and a deadline; either ending raises
``ImapDisconnected`` and the connection is dropped (its protocol state is unknown after that). The
poller (gateway/imap/poller.py) reconnects.

The response parsers are pure functions over aioimaplib's ``Response.lines`` (``bytes`` for lines,
``bytearray`` for literals; the last line is the tagged status text), tested on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aioimaplib  # type: ignore[import-untyped]

from gateway.imap.errors import ImapCommandFailed, ImapDisconnected, ImapError

__all__ = [
    "ImapConnection",
    "ImapSettings",
    "SelectInfo",
    "imap_quote",
    "parse_fetch_body",
    "parse_fetch_sizes",
    "parse_search",
    "parse_select",
    "tls_context",
    "uid_set",
]

_T = TypeVar("_T")

# aioimaplib logs every untagged response it does not route (Dovecot sends FLAGS/PERMANENTFLAGS
# updates after a new keyword appears) at INFO: noise in our logs, not news.
logging.getLogger("aioimaplib.aioimaplib").setLevel(logging.WARNING)

TlsMode = Literal["tls", "starttls", "none"]

#: Bytes of a message body we expect at least per second when fetching it: the deadline of a body
#: FETCH grows with the message (aioimaplib's own timeout only catches silence between chunks).
MIN_FETCH_RATE = 65536


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    tls: TlsMode
    username: str
    password: str
    timeout: float = 30.0  # connect + greeting, and each command


@dataclass(frozen=True, slots=True)
class SelectInfo:
    """What SELECT told us (RFC 3501 6.3.1). ``permanent_flags`` is None when the server did not
    say (then every flag, keywords included, may be stored)."""

    exists: int
    uidvalidity: int | None
    permanent_flags: tuple[str, ...] | None

    @property
    def keywords_allowed(self) -> bool:
        # "\*" in PERMANENTFLAGS: new keywords may be created (RFC 3501 7.1).
        return self.permanent_flags is None or "\\*" in self.permanent_flags


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificate and host name verified (RFC 8314 section 5.1 wants no less); ``ca_file`` adds a
    private CA. Built once at start-up (it reads files)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def imap_quote(value: str) -> str:
    """An RFC 3501 section 9 ``quoted`` string (CR, LF and NUL cannot be quoted: aioimaplib refuses
    them before they reach the wire)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Iterable[int]) -> str:
    """A compact sequence set (RFC 3501 section 9 ``sequence-set``): 1,2,3,7 -> ``1:3,7``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty uid set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


_SEARCH_RE = re.compile(rb"(?:SEARCH)?((?: ?[0-9]+)*)", re.IGNORECASE)
_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY ([0-9]+)\]", re.IGNORECASE)
_PERMANENTFLAGS_RE = re.compile(rb"\[PERMANENTFLAGS \(([^)]*)\)\]", re.IGNORECASE)
_EXISTS_RE = re.compile(rb"([0-9]+) EXISTS\s*$", re.IGNORECASE)
_FETCH_RE = re.compile(rb"[0-9]+ FETCH \(", re.IGNORECASE)
_UID_RE = re.compile(rb"\bUID ([0-9]+)", re.IGNORECASE)
_SIZE_RE = re.compile(rb"\bRFC822\.SIZE ([0-9]+)", re.IGNORECASE)
_BODY_LITERAL_RE = re.compile(rb"\bBODY\[\] \{([0-9]+)\}$", re.IGNORECASE)


def _text_lines(lines: Sequence[Any]) -> list[bytes]:
    # Literals come as bytearray; only the response lines proper are bytes.
    return [bytes(line) for line in lines if isinstance(line, bytes)]


def parse_search(lines: Sequence[Any]) -> list[int]:
    """UIDs of ``* SEARCH n n n`` lines (RFC 3501 7.2.5), sorted. aioimaplib hands an async
    command's untagged lines over without their name (``b"1 2 3"``); both forms are read. The
    last line is the tagged status text, never data."""
    uids: set[int] = set()
    for line in _text_lines(lines)[:-1]:
        match = _SEARCH_RE.fullmatch(line.strip())
        if match:
            uids.update(int(n) for n in match.group(1).split())
    return sorted(uids)


def parse_select(lines: Sequence[Any]) -> SelectInfo:
    exists = 0
    uidvalidity: int | None = None
    permanent: tuple[str, ...] | None = None
    for line in _text_lines(lines):
        if m := _EXISTS_RE.match(line.strip()):
            exists = int(m.group(1))
        if m := _UIDVALIDITY_RE.search(line):
            uidvalidity = int(m.group(1))
        if m := _PERMANENTFLAGS_RE.search(line):
            permanent = tuple(m.group(1).decode("ascii", "replace").split())
    return SelectInfo(exists=exists, uidvalidity=uidvalidity, permanent_flags=permanent)


def parse_fetch_sizes(lines: Sequence[Any]) -> dict[int, int]:
    """{uid: RFC822.SIZE} from ``* n FETCH (UID u RFC822.SIZE s)`` lines; lines without both
    (unsolicited flag updates) are skipped."""
    sizes: dict[int, int] = {}
    for line in _text_lines(lines):
        if not _FETCH_RE.match(line):
            continue
        uid, size = _UID_RE.search(line), _SIZE_RE.search(line)
        if uid and size:
            sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


def parse_fetch_body(lines: Sequence[Any], uid: int) -> bytes | None:
    """The ``BODY[]`` literal of message ``uid``, or None when the answer has none (the message was
    expunged meanwhile). The UID item may come before the literal or after it (RFC 3501 7.4.2 does
    not fix the order), so the text after the literal is looked at too."""
    for i, line in enumerate(lines):
        if not isinstance(line, bytes) or not _FETCH_RE.match(line):
            continue
        if not _BODY_LITERAL_RE.search(line) or i + 1 >= len(lines):
            continue
        literal = lines[i + 1]
        if not isinstance(literal, bytearray):
            continue
        after = lines[i + 2] if i + 2 < len(lines) and isinstance(lines[i + 2], bytes) else b""
        found = _UID_RE.search(line) or _UID_RE.search(after)
        if found is None or int(found.group(1)) == uid:
            return bytes(literal)
    return None


class ImapConnection:
    """A logged-in connection. Open with ``await ImapConnection.open(settings, ssl_context)``;
    every method raises ``ImapDisconnected`` (drop the connection) or ``ImapCommandFailed``."""

    def __init__(self, settings: ImapSettings, ssl_context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self._ssl = ssl_context
        self._lost = asyncio.Event()
        self._imap: Any = None

    @classmethod
    async def open(cls, settings: ImapSettings, ssl_context: ssl.SSLContext | None) -> ImapConnection:
        conn = cls(settings, ssl_context)
        try:
            await conn._open()
        except BaseException:
            conn.abort()
            raise
        return conn

    # -- state --------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def has(self, capability: str) -> bool:
        caps = self._imap.protocol.capabilities if self._imap is not None else ()
        return capability.upper() in {str(c).upper() for c in caps}

    # -- commands -----------------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        if s.tls != "none" and self._ssl is None:
            raise ImapError("connect", f"tls={s.tls!r} needs an SSL context")
        self._imap = aioimaplib.IMAP4(
            host=s.host,
            port=s.port,
            timeout=s.timeout,
            conn_lost_cb=self._on_lost,
            ssl_context=self._ssl if s.tls == "tls" else None,
        )
        await self._bounded("connect", self._imap.wait_hello_from_server())
        if s.tls == "starttls":
            await self._starttls()
        if self.has("LOGINDISABLED"):
            # RFC 3501 6.2.3: the server forbids LOGIN here (typically: not over TLS).
            raise ImapCommandFailed("LOGIN", "NO", "server advertises LOGINDISABLED on this connection")
        protocol = self._imap.protocol
        response = await self._bounded("LOGIN", protocol.login(imap_quote(s.username), s.password))
        self._check("LOGIN", response)
        # Capabilities may change after login (RFC 3501 6.2.3; Dovecot announces MOVE, UIDPLUS only
        # then), and aioimaplib's parse of the [CAPABILITY ...] response code is unreliable.
        await self._bounded("CAPABILITY", protocol.capability())

    async def _starttls(self) -> None:
        # RFC 3501 6.2.1 / RFC 2595: never fall back to clear text when STARTTLS is missing.
        if not self.has("STARTTLS"):
            raise ImapCommandFailed("STARTTLS", "NO", "server does not offer STARTTLS")
        protocol = self._imap.protocol
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        self._check("STARTTLS", await self._bounded("STARTTLS", protocol.execute(command)))
        loop = asyncio.get_running_loop()
        assert self._ssl is not None  # checked in _open
        transport = await self._bounded(
            "STARTTLS",
            loop.start_tls(protocol.transport, protocol, self._ssl, server_hostname=self.settings.host),
        )
        protocol.transport = transport
        # What the server said in clear text must be forgotten (RFC 3501 6.2.1).
        await self._bounded("CAPABILITY", protocol.capability())

    async def select(self, mailbox: str) -> SelectInfo:
        response = await self._bounded("SELECT", self._imap.protocol.select(imap_quote(mailbox)))
        self._check("SELECT", response)
        return parse_select(response.lines)

    async def create(self, mailbox: str) -> bool:
        """CREATE; False when the server says NO (most often: it exists already, RFC 5530
        ALREADYEXISTS)."""
        response = await self._simple("CREATE", imap_quote(mailbox))
        return bool(response.result == "OK")

    async def noop(self) -> None:
        self._check("NOOP", await self._simple("NOOP"))

    async def uid_search(self, *criteria: str) -> list[int]:
        # charset=None: criteria are ASCII keywords, and some servers refuse CHARSET UTF-8.
        response = await self._bounded(
            "UID SEARCH", self._imap.protocol.search(*criteria, charset=None, by_uid=True)
        )
        self._check("UID SEARCH", response)
        return parse_search(response.lines)

    async def uid_fetch_sizes(self, uids: Sequence[int], chunk: int = 500) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for start in range(0, len(uids), chunk):
            response = await self._fetch(uid_set(uids[start : start + chunk]), "(UID RFC822.SIZE)")
            sizes.update(parse_fetch_sizes(response.lines))
        return sizes

    async def uid_fetch_body(self, uid: int, size: int) -> bytes | None:
        # BODY.PEEK[]: fetching must not set \Seen (RFC 3501 6.4.5); a message the gateway could
        # not take stays as it was.
        response = await self._fetch(str(uid), "(UID BODY.PEEK[])", size=size)
        return parse_fetch_body(response.lines, uid)

    async def uid_store(self, uid: int, flags: str) -> None:
        # .SILENT: no FETCH echo to route back (RFC 3501 6.4.6).
        response = await self._bounded(
            "UID STORE",
            self._imap.protocol.store(str(uid), "+FLAGS.SILENT", f"({flags})", by_uid=True),
        )
        self._check("UID STORE", response)

    async def uid_move(self, uid: int, folder: str) -> None:
        """UID MOVE (RFC 6851) when offered, else COPY, \\Deleted and UID EXPUNGE (RFC 4315 UIDPLUS)
        or, without UIDPLUS, a plain EXPUNGE (which also removes what other clients marked
        \\Deleted in this mailbox: that is what they asked for)."""
        protocol = self._imap.protocol
        target = imap_quote(folder)
        if self.has("MOVE"):
            self._check(
                "UID MOVE", await self._bounded("UID MOVE", protocol.move(str(uid), target, by_uid=True))
            )
            return
        self._check("UID COPY", await self._bounded("UID COPY", protocol.copy(str(uid), target, by_uid=True)))
        await self.uid_store(uid, "\\Deleted")
        if self.has("UIDPLUS"):
            response = await self._bounded("UID EXPUNGE", protocol.expunge(str(uid), by_uid=True))
        else:
            response = await self._bounded("EXPUNGE", protocol.expunge())
        self._check("EXPUNGE", response)

    async def idle(self, wait: float, stop: asyncio.Event) -> bool:
        """IDLE (RFC 2177) until the server reports new mail (EXISTS), ``wait`` seconds passed or
        ``stop`` is set; then DONE. True when new mail was reported. Other pushes (EXPUNGE, flag
        changes, Dovecot's "Still here") keep waiting."""
        imap = self._imap
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        idle_task = await self._bounded("IDLE", imap.idle_start(timeout=wait))
        pushed = False
        try:
            while not pushed and not stop.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                item = await self._next_push(stop, remaining)
                if item is None or item == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                pushed = any(isinstance(line, bytes) and _EXISTS_RE.match(line.strip()) for line in item)
        finally:
            if not self._lost.is_set():
                with contextlib.suppress(Exception):
                    imap.idle_done()  # DONE; a failed write shows up as the lost signal below
        self._check("IDLE", await self._bounded("IDLE", idle_task))
        return pushed

    async def _next_push(self, stop: asyncio.Event, timeout: float) -> list[Any] | None:
        get = asyncio.ensure_future(self._imap.protocol.idle_queue.get())
        stopped = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {get, stopped, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (get, stopped, lost):
                waiter.cancel()
        if get in done:
            item: list[Any] = get.result()
            return item
        if lost in done:
            raise ImapDisconnected("IDLE", "connection lost")
        return None

    async def logout(self, timeout: float) -> None:
        """LOGOUT (bounded, errors ignored: we are leaving anyway), then close the socket."""
        try:
            if self._imap is not None and not self._lost.is_set():
                await self._bounded("LOGOUT", self._imap.protocol.logout(), timeout)
        except ImapError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now and cancel aioimaplib's helper tasks (no LOGOUT)."""
        imap = self._imap
        if imap is None:
            return
        helpers = (*getattr(imap, "tasks", ()), *getattr(imap.protocol, "tasks", ()), imap._client_task)
        for task in helpers:
            task.cancel()
        transport = imap.protocol.transport
        if transport is not None:
            transport.abort()
        self._lost.set()

    # -- plumbing -----------------------------------------------------------------------------

    def _on_lost(self, exc: Exception | None) -> None:
        self._lost.set()

    async def _simple(self, name: str, *args: str) -> Any:
        return await self._bounded(name, self._imap.protocol.simple_command(name, *args))

    async def _fetch(self, uids: str, items: str, size: int = 0) -> Any:
        limit = self.settings.timeout + size / MIN_FETCH_RATE
        response = await self._bounded(
            "UID FETCH",
            self._imap.protocol.fetch(uids, items, by_uid=True, timeout=self.settings.timeout),
            limit,
        )
        self._check("UID FETCH", response)
        return response

    def _check(self, command: str, response: Any) -> None:
        if response.result == "OK":
            return
        lines = _text_lines(response.lines)
        text = lines[-1].decode("utf-8", "replace")[:300] if lines else ""
        raise ImapCommandFailed(command, str(response.result), text)

    async def _bounded(self, command: str, aw: Awaitable[_T], timeout: float | None = None) -> _T:
        """``aw``'s result, unless the connection is lost or ``timeout`` (default: the settings')
        passes first: then ``ImapDisconnected``. aioimaplib's own errors (protocol confusion,
        its timeouts, socket and TLS errors) become ``ImapDisconnected`` too."""
        task = asyncio.ensure_future(aw)
        if self._lost.is_set():
            task.cancel()
            raise ImapDisconnected(command, "connection lost")
        limit = self.settings.timeout if timeout is None else timeout
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            if lost in done:
                raise ImapDisconnected(command, "connection lost")
            raise ImapDisconnected(command, f"no answer within {limit:g}s", timed_out=True)
        try:
            return task.result()
        except (TimeoutError, aioimaplib.CommandTimeout):
            raise ImapDisconnected(command, "timed out", timed_out=True) from None
        except (aioimaplib.AioImapException, OSError, EOFError) as exc:
            raise ImapDisconnected(command, f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # aioimaplib refuses CR/LF/NUL in arguments
            raise ImapCommandFailed(command, "BAD", str(exc)) from None
