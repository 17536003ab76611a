"""A real Dovecot for the IMAP tests: a config written into a private directory, ``dovecot -F`` as a
child process on a free loopback port, stopped at teardown. Plus a plain IMAP client (stdlib imaplib,
run in a thread so the event loop under test keeps running) to deliver and inspect mail, and a TCP
proxy that can cut or freeze connections.

Skips (never fails) when the ``dovecot`` binary is missing or the server does not come up:
``apt-get install dovecot-imapd`` provides it (its postinst may start a system Dovecot on 143/993:
stop it, these tests need none).

As root, Dovecot refuses uid 0 for mail (and root for login processes), so mail belongs to the
``dovecot`` user (else ``nobody``), login processes run as ``dovenull``, and the directory lives
under /tmp (0755) rather than under pytest's 0700 tmp_path, which those users cannot enter.
As another user, everything runs as that user in tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import self_signed_cert

PASSWORD = "secret-pw"


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Dovecot:
    """``port``: plain IMAP (STARTTLS offered when ``tls``); ``tls_port``: implicit TLS (or None)."""

    workdir: Path
    port: int
    tls_port: int | None
    cert: Path | None
    process: subprocess.Popen[bytes]
    own_workdir: bool
    users: dict[str, MailboxClient] = field(default_factory=dict)

    @classmethod
    def start_or_skip(cls, tmp_path: Path, *, tls: bool = False, capability: str | None = None) -> Dovecot:
        """Start one; ``capability`` replaces the post-login CAPABILITY list (to hide IDLE or MOVE)."""
        binary = dovecot_binary()
        if binary is None:
            pytest.skip("dovecot not installed (apt-get install dovecot-imapd)")
        root = os.geteuid() == 0
        if root:
            workdir = Path(tempfile.mkdtemp(prefix="gateway-dovecot-"))
            workdir.chmod(0o755)
        else:
            workdir = tmp_path / "dovecot"
            workdir.mkdir()
        try:
            server = cls._launch(binary, workdir, root=root, tls=tls, capability=capability)
        except BaseException:
            if root:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        return server

    @classmethod
    def _launch(cls, binary: str, workdir: Path, *, root: bool, tls: bool, capability: str | None) -> Dovecot:
        mail = workdir / "mail"
        mail.mkdir()
        if root:
            try:
                owner = pwd.getpwnam("dovecot")
            except KeyError:
                owner = pwd.getpwnam("nobody")
            os.chown(mail, owner.pw_uid, owner.pw_gid)
            try:
                login_user = pwd.getpwnam("dovenull").pw_name
            except KeyError:
                login_user = "nobody"
            internal_user, internal_group = "root", "root"
            uid, gid = owner.pw_uid, owner.pw_gid
        else:
            me = pwd.getpwuid(os.geteuid())
            login_user = internal_user = me.pw_name
            internal_group = str(os.getegid())
            uid, gid = me.pw_uid, me.pw_gid
        cert = key = None
        if tls:
            cert, key = self_signed_cert(workdir)
        port = free_port()
        tls_port = free_port() if tls else None
        ssl_lines = (
            f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\nssl_min_protocol = TLSv1.2\n"
            if tls
            else "ssl = no\n"
        )
        conf = workdir / "dovecot.conf"
        conf.write_text(
            f"""
instance_name = gateway-test-{port}
base_dir = {workdir}/run
state_dir = {workdir}/state
log_path = {workdir}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl_lines}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{mail}/%u
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 1
first_valid_gid = 1
{f"imap_capability = {capability}" if capability else ""}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port or 0}
  }}
}}
service anvil {{
  chroot =
}}
"""
        )
        process = subprocess.Popen(
            [binary, "-F", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        server = cls(workdir, port, tls_port, cert, process, own_workdir=root)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                server.stop()
                pytest.skip(f"dovecot did not start: {err.strip()[-500:] or server.log_tail()}")
            if _greets(port) and (tls_port is None or _accepts(tls_port)):
                return server
            time.sleep(0.05)
        tail = server.log_tail()
        server.stop()
        pytest.skip(f"dovecot did not listen on 127.0.0.1:{port} within 15 s: {tail}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "dovecot.log").read_text(errors="replace")[-800:]
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        for client in self.users.values():
            client.close()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def client(self, user: str) -> MailboxClient:
        """A test-side IMAP client for ``user`` (cached; any user name logs in)."""
        if user not in self.users:
            self.users[user] = MailboxClient("127.0.0.1", self.port, user)
        return self.users[user]


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(100).startswith(b"* OK")
    except OSError:
        return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


_FLAGS_RE = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)")


class MailboxClient:
    """Blocking imaplib client; call its methods through ``asyncio.to_thread`` (``await c.a(...)``)."""

    def __init__(self, host: str, port: int, user: str) -> None:
        self.host, self.port, self.user = host, port, user
        self._imap: imaplib.IMAP4 | None = None

    def _conn(self) -> imaplib.IMAP4:
        if self._imap is None:
            imap = imaplib.IMAP4(self.host, self.port, timeout=10)
            imap.login(self.user, PASSWORD)
            self._imap = imap
        return self._imap

    def close(self) -> None:
        if self._imap is not None:
            with contextlib.suppress(Exception):
                self._imap.logout()
            self._imap = None

    def append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        typ, data = self._conn().append(mailbox, "", None, raw)
        assert typ == "OK", data

    def create(self, mailbox: str) -> None:
        self._conn().create(mailbox)

    def flags(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """{uid: flags} of every message in ``mailbox``."""
        imap = self._conn()
        typ, data = imap.select(mailbox)
        assert typ == "OK", data
        if int(data[0] or 0) == 0:
            return {}
        typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS)")
        assert typ == "OK", data
        out: dict[int, set[str]] = {}
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            m = _FLAGS_RE.search(line)
            if m:
                uid = int(m.group(1) or m.group(4))
                flags = (m.group(2) if m.group(2) is not None else m.group(3)).decode()
                out[uid] = set(flags.split())
        return out

    async def a_append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        await asyncio.to_thread(self.append, raw, mailbox)

    async def a_flags(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        return await asyncio.to_thread(self.flags, mailbox)


class TcpProxy:
    """127.0.0.1:port -> target; ``drop()`` closes every connection (a server going away with a FIN),
    ``freeze()`` stops forwarding without closing (a server or NAT that silently forgot us)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.frozen = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def drop(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def freeze(self) -> None:
        self.frozen = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.frozen:
                        continue  # swallowed: the other side hears nothing, and no FIN either
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                if not self.frozen:
                    dst.close()

        for coro in (pump(reader, up_writer), pump(up_reader, writer)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@contextlib.contextmanager
def dovecot_server(tmp_path: Path, **kw: object) -> Iterator[Dovecot]:
    server = Dovecot.start_or_skip(tmp_path, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
