"""Benchmark: inbound email from Postfix's smtp-source into the daemon's SMTP listener, against a bare
aiosmtpd handler that discards, in the same run.

    .venv/bin/python tests/perf/smtp_in.py [--backend sqlite|postgresql|both] [--messages 10000]
        [--concurrency 20] [--size 4096] [--reuse] [--no-bare] [--profile FILE]

Per backend: a fresh database, Postfix's ``smtp-sink`` (the relay for the setup's outbound mail),
a DNS stub on a loopback UDP port (this process: SPF ``ip4:127.0.0.0/8 -all`` and DMARC ``p=reject``
for the customers' domain, NXDOMAIN with an SOA for every other name; the daemon's ``[mailauth]
nameservers``/``dns_port`` point at it, so the full SPF + DMARC path runs and no real DNS is asked),
and ``gateway run`` (its own process) with the SMTP listener on a free loopback port. Setup through
the HTTP API: one tenant, ``--concurrency`` + 1 contacts, one outbound email to each (relayed to the
sink); their Message-IDs are then read from the database.

The load: ``--concurrency`` smtp-source processes at once, process *i* sending
``--messages / --concurrency`` messages (one session, a new connection per message unless
``--reuse``) from contact *i* (``-f``) to the tenant's mailbox, payload ``--size`` bytes (``-l``).
smtp-source writes From, To, Date, a Message-Id unique per message (pid, descriptor, counter) and
Subject; the Subject argument carries two more header lines after a CRLF, ``In-Reply-To`` and
``References`` naming contact *i*'s outbound Message-ID, so every message is a threaded reply, and
each is stored (the pipeline's dedupe key is sender + Message-ID). The run checks that the database
then holds exactly that many inbound messages and no drop records.

Time to 250: smtp-source reports no latency, so a probe in this process sends one more threaded
reply (same shape, from the extra contact, a new connection each) every ``--probe-interval`` seconds
during the load, at most 4 in flight, and times the final ``.`` to the ``250`` reply; its p50/p99 are
printed (its messages are counted in the stored total, not in the rate).

The same smtp-source load then goes to a bare aiosmtpd server (a subprocess of this script, default
``handle_DATA`` semantics: accept and discard), once per run; ``ratio`` is gateway msgs/s / bare
msgs/s. Prints one JSON line for the bare server and one per backend. CPU and peak RSS are of the
server process (the daemon, or the bare server). Bounded: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(__file__).resolve())
# tests/perf/queue.py would shadow the stdlib queue module (aiosqlite imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdataclass  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.rrset  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from perf_support import (  # noqa: E402
    TOKEN,
    bounded,
    drop_database,
    free_port,
    fresh_database,
    proc_stats,
    start_daemon,
    start_profiler,
    start_sink,
    stop_daemon,
    stop_process,
    stop_profiler,
    tool,
    wait_port,
)

from gateway.storage.db import make_engine  # noqa: E402
from gateway.storage.tables import drops, messages  # noqa: E402

SMTP_SOURCE = tool("smtp-source")
MAIL_DOMAIN = "mail.bench.example"
CUSTOMERS = "klienci.example"  # the contacts' domain (the DNS stub publishes SPF and DMARC for it)
DNS_RECORDS = {
    CUSTOMERS: ["v=spf1 ip4:127.0.0.0/8 -all"],
    f"_dmarc.{CUSTOMERS}": ["v=DMARC1; p=reject"],
}
_SENT = re.compile(r'^gateway_email_relay\{result="sent"\} ([0-9.e+]+)$', re.M)


def customer(i: int) -> str:
    return f"klient{i}@{CUSTOMERS}"


# --- the DNS stub ---------------------------------------------------------------------------------


class DnsStub(asyncio.DatagramProtocol):
    """Authoritative-looking answers from ``DNS_RECORDS`` (TXT only); every other name or type:
    NXDOMAIN / NODATA with an SOA in the authority section (RFC 2308 §3), so the daemon's resolver
    caches the negative answer as it would from a real server."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0
        self._soa = dns.rrset.from_text(
            "example.", 300, "IN", "SOA", "ns.example. hostmaster.example. 1 3600 600 86400 300"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queries += 1
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        (question,) = query.question
        name = question.name.to_text(omit_final_dot=True).lower()
        texts = DNS_RECORDS.get(name)
        if texts is not None and question.rdtype == dns.rdatatype.TXT:
            resp.answer.append(
                dns.rrset.from_text_list(question.name, 3600, "IN", "TXT", [f'"{t}"' for t in texts])
            )
        else:
            if texts is None:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(self._soa)
        assert self.transport is not None
        self.transport.sendto(resp.to_wire(), addr)


# --- servers ---------------------------------------------------------------------------------------


def bare_server(port: int) -> None:
    """The comparison: aiosmtpd's SMTP with a handler whose DATA hook accepts and discards."""
    from aiosmtpd.smtp import SMTP

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 2.0.0 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Discard(), hostname="bare.bench.example"), "127.0.0.1", port, backlog=256
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# --- load ----------------------------------------------------------------------------------------


def reply_subject(message_id: str) -> str:
    """smtp-source's ``-S`` value: the subject, then (after CRLF) the threading headers. smtp-source
    writes it as one line plus CRLF, so the two extra header lines arrive as header fields."""
    return f"Re: Zamowienie gotowe\r\nIn-Reply-To: {message_id}\r\nReferences: {message_id}"


async def smtp_source_load(
    port: int, n: int, concurrency: int, size: int, reuse: bool, to: str, refs: list[str]
) -> float:
    """Run the smtp-source processes; their wall time (s). Raises if one fails or a deadline passes."""
    assert SMTP_SOURCE is not None
    per = n // concurrency
    procs: list[asyncio.subprocess.Process] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(concurrency):
        args = [SMTP_SOURCE, "-m", str(per), "-s", "1", "-l", str(size), "-M", "bench-client.example"]
        args += ["-f", customer(i), "-t", to, "-S", reply_subject(refs[i])]
        args += ["-d"] if reuse else []
        args.append(f"127.0.0.1:{port}")
        procs.append(
            await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        )
    try:
        async with asyncio.timeout(max(120.0, n / 20)):
            results = await asyncio.gather(*(p.communicate() for p in procs))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    elapsed = loop.time() - t0
    failed = [
        (p.returncode, err.decode(errors="replace")[-300:])
        for p, (_, err) in zip(procs, results, strict=True)
        if p.returncode
    ]
    if failed:
        raise RuntimeError(f"smtp-source failed: {failed[:3]}")
    return elapsed


def probe_message(k: int, sender: str, to: str, ref: str, size: int) -> bytes:
    """A reply shaped like smtp-source's (its headers, ``size`` bytes of 80-column lines)."""
    head = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nDate: {email.utils.formatdate()}\r\n"
        f"Message-Id: <probe.{k}.{secrets.token_hex(4)}@bench-client.example>\r\n"
        f"Subject: Re: Zamowienie gotowe\r\nIn-Reply-To: {ref}\r\nReferences: {ref}\r\n\r\n"
    )
    body = b"".join(b"X" * 78 + b"\r\n" for _ in range(size // 80 + 1))
    return head.encode() + body


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed")
        if line[3:4] != b"-":
            return line


async def probe_once(port: int, sender: str, to: str, data: bytes) -> float:
    """One transaction on a new connection; seconds from the final dot to the reply (must be 250)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for cmd in (
            None,
            b"EHLO probe.bench.example",
            f"MAIL FROM:<{sender}>".encode(),
            f"RCPT TO:<{to}>".encode(),
            b"DATA",
        ):
            if cmd is not None:
                writer.write(cmd + b"\r\n")
            line = await _reply(reader)
            if line[:1] not in (b"2", b"3"):
                raise RuntimeError(f"probe: {cmd!r} -> {line!r}")
        writer.write(data + b".\r\n")
        t = time.perf_counter()
        line = await _reply(reader)
        elapsed = time.perf_counter() - t
        if not line.startswith(b"250"):
            raise RuntimeError(f"probe: DATA -> {line!r}")
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(ConnectionError):
            await _reply(reader)
        return elapsed
    finally:
        writer.close()


async def probe_loop(
    port: int, sender: str, to: str, ref: str, size: int, interval: float, stop: asyncio.Event
) -> list[float]:
    """Paced samples (one every ``interval`` s, at most 4 in flight) until ``stop`` is set."""
    samples: list[float] = []
    slots = asyncio.Semaphore(4)
    tasks: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    async def one(k: int) -> None:
        try:
            samples.append(
                await asyncio.wait_for(
                    probe_once(port, sender, to, probe_message(k, sender, to, ref, size)), 60
                )
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            slots.release()

    k = 0
    while not stop.is_set():
        await slots.acquire()
        if stop.is_set():
            slots.release()
            break
        task = asyncio.create_task(one(k))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        k += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    async with asyncio.timeout(90):
        await asyncio.gather(*tasks)
    if errors:
        raise RuntimeError(f"{len(errors)} probe transactions failed, first: {errors[0]!r}")
    return samples


async def measured_load(
    port: int,
    pid: int,
    args: argparse.Namespace,
    to: str,
    refs: list[str],
    profile: str | None,
) -> dict[str, Any]:
    """smtp-source load + the probe against the server on ``port`` (process ``pid``)."""
    spy = await start_profiler(pid, profile)
    user0, sys0, _ = proc_stats(pid)
    stop = asyncio.Event()
    probe = asyncio.create_task(
        probe_loop(
            port, customer(args.concurrency), to, refs[args.concurrency], args.size, args.probe_interval, stop
        )
    )
    try:
        elapsed = await smtp_source_load(
            port, args.messages, args.concurrency, args.size, args.reuse, to, refs
        )
    finally:
        stop.set()
        lat = sorted(await probe)
    user1, sys1, rss = proc_stats(pid)
    await stop_profiler(spy)
    n = args.messages // args.concurrency * args.concurrency
    return {
        "messages": n,
        "msgs_per_s": round(n / elapsed),
        "probe_samples": len(lat),
        "dot_to_250_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "dot_to_250_p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 1) if lat else None,
        "cpu_s_per_1000": round((user1 - user0 + sys1 - sys0) / (n + len(lat)) * 1000, 3),
        "peak_rss_mb": round(rss, 1),
    }


# --- runs ----------------------------------------------------------------------------------------


async def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, "--bare-server", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_port(port, proc, "the bare server")
        refs = [f"<bare.{i}@{MAIL_DOMAIN}>" for i in range(args.concurrency + 1)]
        result = await measured_load(port, proc.pid, args, f"bench@{MAIL_DOMAIN}", refs, None)
    finally:
        await stop_process(proc)
    return {"bench": "smtp_in", "server": "bare aiosmtpd (discard)", **result}


async def run_gateway(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as cleanup:  # each resource is released, whatever fails
        workdir = Path(tempfile.mkdtemp(prefix="gw-bench-smtp-in-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        url, schema = await fresh_database(backend, workdir)
        cleanup.push_async_callback(drop_database, schema)
        stub = DnsStub()
        loop = asyncio.get_running_loop()
        dns_transport, _ = await loop.create_datagram_endpoint(lambda: stub, local_addr=("127.0.0.1", 0))
        cleanup.callback(dns_transport.close)
        dns_port = dns_transport.get_extra_info("sockname")[1]
        sink_port, smtp_port = free_port(), free_port()
        sink, _ = await start_sink(sink_port)
        cleanup.push_async_callback(stop_process, sink)
        result, stored, dropped = await _gateway_load(
            args, workdir, url, schema, dns_port, sink_port, smtp_port, cleanup
        )
    expected = result["messages"] + result["probe_samples"]
    if stored != expected or dropped:
        raise RuntimeError(f"stored {stored} of {expected} messages, {dropped} drop records")
    return {
        "bench": "smtp_in",
        "server": "gateway",
        "backend": backend,
        **result,
        "stored": stored,
        "dropped": dropped,
        "dns_queries": stub.queries,
    }


async def _gateway_load(
    args: argparse.Namespace,
    workdir: Path,
    url: str,
    schema: str,
    dns_port: int,
    sink_port: int,
    smtp_port: int,
    cleanup: contextlib.AsyncExitStack,
) -> tuple[dict[str, Any], int, int]:
    """The daemon on a fresh config, the setup through its API, the load; (result, stored, dropped)."""
    config = workdir / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
schema = "{schema}"
[http]
port = 0
admin_token = "{TOKEN}"
[storage]
data_dir = "{workdir / "data"}"
[smtp]
enabled = true
host = "127.0.0.1"
port = {smtp_port}
mail_domain = "{MAIL_DOMAIN}"
message_id_secret = "{secrets.token_hex(16)}"
[relay]
host = "127.0.0.1"
port = {sink_port}
starttls = false
[mailauth]
nameservers = ["127.0.0.1"]
dns_port = {dns_port}
[daemon]
log_level = "WARNING"
"""
    )
    proc, port, drain = await start_daemon(config)
    cleanup.callback(drain.cancel)
    cleanup.push_async_callback(stop_daemon, proc)
    base = f"http://127.0.0.1:{port}"
    contacts = args.concurrency + 1  # one per smtp-source process, one for the probe
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/v1/tenants",
            json={"name": "Bench Poczta"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            tenant = await resp.json()
            assert resp.status == 201, tenant
        auth = {"Authorization": f"Bearer {tenant['api_key']}"}
        ids: dict[int, str] = {}

        async def setup(i: int) -> None:
            body: dict[str, Any] = {"name": f"Klient {i}", "emails": [customer(i)]}
            async with http.put(f"{base}/v1/contacts/c{i}", json=body, headers=auth) as r:
                assert r.status == 201, await r.text()
            body = {
                "contact_id": f"c{i}",
                "channels": ["email"],
                "subject": "Zamówienie gotowe",
                "text": "Do odbioru.",
            }
            async with http.post(f"{base}/v1/messages", json=body, headers=auth) as r:
                assert r.status == 202, await r.text()
                ids[i] = (await r.json())["messages"][0]["id"]

        await bounded(setup, contacts, 8)
        async with asyncio.timeout(60):  # the setup's mail relayed: no relay work during the load
            while True:
                async with http.get(f"{base}/metrics") as r:
                    sent = _SENT.search(await r.text())
                if sent and float(sent.group(1)) >= contacts:
                    break
                await asyncio.sleep(0.1)
    refs = await _message_ids(url, schema, [ids[i] for i in range(contacts)])
    result = await measured_load(smtp_port, proc.pid, args, tenant["mailbox_address"], refs, args.profile)
    stored, dropped = await _count(url, schema)
    return result, stored, dropped


async def _message_ids(url: str, schema: str, ids: list[str]) -> list[str]:
    """The Message-ID header of each of our outbound messages, in the order of ``ids``."""
    engine = make_engine(url, null_pool=True, pg_schema=schema or None)
    try:
        async with engine.connect() as c:
            rows = await c.execute(
                sa.select(messages.c.id, messages.c.email_message_id).where(messages.c.id.in_(ids))
            )
            found = {str(r[0]): str(r[1]) for r in rows}
    finally:
        await engine.dispose()
    return [found[i] for i in ids]


async def _count(url: str, schema: str) -> tuple[int, int]:
    """Inbound messages stored (threaded: each answers one of ours) and drop records."""
    engine = make_engine(url, null_pool=True, pg_schema=schema or None)
    try:
        async with engine.connect() as c:
            stored = (
                await c.execute(
                    sa.select(sa.func.count()).where(
                        messages.c.direction == "inbound",
                        messages.c.thread_id.in_(
                            sa.select(messages.c.thread_id).where(messages.c.direction == "outbound")
                        ),
                    )
                )
            ).scalar_one()
            dropped = (await c.execute(sa.select(sa.func.count()).select_from(drops))).scalar_one()
    finally:
        await engine.dispose()
    return int(stored), int(dropped)


async def run_all(args: argparse.Namespace, backends: list[str]) -> None:
    bare = await run_bare(args) if args.bare else None
    if bare:
        print(json.dumps(bare), flush=True)
    for b in backends:
        result = await run_gateway(b, args)
        if bare:
            result["ratio_to_bare"] = round(result["msgs_per_s"] / bare["msgs_per_s"], 2)
        print(json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=20, help="smtp-source processes (one session each)")
    p.add_argument("--size", type=int, default=4096, help="payload bytes per message (smtp-source -l)")
    p.add_argument("--reuse", action="store_true", help="keep each session's connection (smtp-source -d)")
    p.add_argument("--probe-interval", type=float, default=0.1, help="seconds between probe messages")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare aiosmtpd run")
    p.add_argument("--profile", help="py-spy the daemon during the load into this file (raw stacks)")
    p.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return
    if SMTP_SOURCE is None:
        sys.exit("smtp-source not found: apt-get install postfix (the daemon need not run)")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    asyncio.run(run_all(args, backends))


if __name__ == "__main__":
    main()
