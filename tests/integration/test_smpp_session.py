"""SmppSession and ConnectorPool against the test SMSC (tests/smsc.py) over real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from smsc import SmscSimulator

from gateway.config import SmppConnectorConfig
from gateway.smpp.link import backoff_delay
from gateway.smpp.pool import ConnectorPool
from gateway.smpp.session import SmppSession, TokenBucket
from gateway.smpp.types import DeliverSm, SubmitPart, SubmitResult

ESME_RINVDSTADR = 0x0B
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64


def config(sim: SmscSimulator | int, **overrides: Any) -> SmppConnectorConfig:
    values: dict[str, Any] = {
        "name": "c1",
        "host": "127.0.0.1",
        "port": sim if isinstance(sim, int) else sim.port,
        "system_id": "gw",
        "password": "secret",
        "tps": 1000.0,
        "window": 10,
        "enquire_link_seconds": 0.5,
        "response_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return SmppConnectorConfig(**values)


def session(
    sim: SmscSimulator | int, *, kwargs: dict[str, Any] | None = None, **overrides: Any
) -> SmppSession:
    options: dict[str, Any] = {
        "rng": random.Random(7),
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.3,
        "throttle_backoff_min_seconds": 0.05,
        "throttle_backoff_max_seconds": 0.2,
        "queue_full_backoff_min_seconds": 0.5,
        "queue_full_backoff_max_seconds": 1.0,
        "unbind_timeout_seconds": 0.5,
    }
    options.update(kwargs or {})
    return SmppSession(config(sim, **overrides), **options)


def part(n: int = 0, **overrides: Any) -> SubmitPart:
    values: dict[str, Any] = {
        "source_addr": "ACME",
        "source_ton": 5,
        "source_npi": 0,
        "destination_addr": f"48600{n:06d}",
        "short_message": b"hello",
        "ref": n,
    }
    values.update(overrides)
    return SubmitPart(**values)


@contextlib.asynccontextmanager
async def running(runner: SmppSession | ConnectorPool) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (session state has no event to wait on) until it holds or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


async def submit_all(target: SmppSession | ConnectorPool, parts: list[SubmitPart]) -> list[SubmitResult]:
    async with asyncio.timeout(15):
        return await asyncio.gather(*(target.submit(p, timeout=10) for p in parts))


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator() as simulator:
        yield simulator


# --------------------------------------------------------------------------- building blocks


def test_token_bucket_on_a_fake_clock() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10.0, burst=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert bucket.take() == pytest.approx(0.1)  # nothing taken: one token in 0.1 s
    now[0] += 0.05
    assert bucket.take() == pytest.approx(0.05)
    now[0] += 0.05
    assert bucket.take() == 0.0
    now[0] += 60
    assert [bucket.take() for _ in range(4)][-1] > 0  # refills up to the burst only
    assert TokenBucket(rate=0.0, burst=1.0).take() == 0.0  # tps 0: unlimited


def test_backoff_delay_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(3)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 30.0), (500, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# --------------------------------------------------------------------------- bind, submit, unbind


async def test_bind_submit_and_clean_unbind(sim: SmscSimulator) -> None:
    s = session(sim)
    async with running(s):
        await sim.wait_bound(1, 5)
        await until(lambda: s.is_bound)
        result = await s.submit(
            part(1, esm_class=0x40, data_coding=8, short_message=b"\x05\0\x03\x01\x02\x01AB"), timeout=5
        )
        assert result.outcome == "ok"
        assert result.status_name == "ESME_ROK" and result.command_status == 0 and result.connector == "c1"
        (sub,) = sim.submits
        assert result.message_id == sub.message_id
        assert (sub.source_addr, sub.source_ton, sub.dest_addr, sub.dest_ton) == ("ACME", 5, "48600000001", 1)
        assert (sub.esm_class, sub.data_coding, sub.registered_delivery) == (0x40, 8, 1)
        assert sub.udh is not None and sub.payload == b"AB"
        assert sim.binds[0]["mode"] == "transceiver" and sim.binds[0]["interface_version"] == 0x34
        snap = s.snapshot()
        assert (snap["state"], snap["submitted"], snap["acked"], snap["window"]) == ("bound", 1, 1, 10)
    assert s.state == "disconnected"
    await until(lambda: sim.bound_count == 0)
    assert sim.protocol_errors == []
    assert s.reconnects == 0


async def test_bind_failure_keeps_retrying_with_backoff(sim: SmscSimulator) -> None:
    sim.password = "other"
    s = session(sim)
    states: list[str] = []
    s.add_state_listener(lambda sess: states.append(sess.state))
    async with running(s):
        await until(lambda: len(sim.bind_failures) >= 3)
        assert not s.is_bound
        assert s.bind_failures >= 2 and s.reconnects >= 2
        assert s.last_error is not None and "ESME_RBINDFAIL" in s.last_error
        assert {"connecting", "binding", "disconnected"} <= set(states) and "bound" not in states
        sim.password = "secret"  # the SMSC accepts us now: the next attempt binds
        await sim.wait_bound(1, 5)
        await until(lambda: s.is_bound)
        assert (await s.submit(part(), timeout=5)).outcome == "ok"


async def test_queue_timeout_when_never_bound(sim: SmscSimulator) -> None:
    s = session(sim)  # not running
    result = await s.submit(part(), timeout=0.1)
    assert (result.outcome, result.status_name, result.command_status) == ("retry", "QUEUE_TIMEOUT", None)
    bad = await s.submit(part(destination_addr="4" * 30), timeout=0.1)
    assert (bad.outcome, bad.status_name) == ("failed", "ENCODE_ERROR")


async def test_cancelled_caller_withdraws_its_queued_part(sim: SmscSimulator) -> None:
    sim.response_delay = 0.3
    s = session(sim, window=1)
    async with running(s):
        await sim.wait_bound(1, 5)
        first = asyncio.ensure_future(s.submit(part(1), timeout=5))
        second = asyncio.ensure_future(s.submit(part(2), timeout=5))
        await sim.wait_until(lambda: sim.submit_count >= 1, 5)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert (await first).outcome == "ok"
        assert (await s.submit(part(3), timeout=5)).outcome == "ok"
    assert [sub.dest_addr for sub in sim.submits] == [part(1).destination_addr, part(3).destination_addr]


# --------------------------------------------------------------------------- window, tps, throttling


async def test_window_is_respected(sim: SmscSimulator) -> None:
    sim.response_delay = 0.05
    s = session(sim, window=5)
    async with running(s):
        await sim.wait_bound(1, 5)
        results = await submit_all(s, [part(n) for n in range(50)])
    assert [r.outcome for r in results] == ["ok"] * 50
    assert 2 <= sim.max_window_seen <= 5
    assert len({r.message_id for r in results}) == 50


async def test_tps_token_bucket(sim: SmscSimulator) -> None:
    s = session(sim, tps=20.0, window=10)  # burst = min(tps, window) = 10: 20 more at 20/s >= 1 s
    async with running(s):
        await sim.wait_bound(1, 5)
        started = time.monotonic()
        results = await submit_all(s, [part(n) for n in range(30)])
        elapsed = time.monotonic() - started
    assert all(r.outcome == "ok" for r in results)
    assert elapsed >= 0.8


async def test_throttled_part_is_resent_before_newer_parts(sim: SmscSimulator) -> None:
    sim.throttle_next = 2
    s = session(sim, window=1)
    async with running(s):
        await sim.wait_bound(1, 5)
        results = await submit_all(s, [part(n) for n in range(5)])
    assert all(r.outcome == "ok" for r in results)
    assert [sub.dest_addr for sub in sim.rejected] == [part(0).destination_addr] * 2
    assert [sub.dest_addr for sub in sim.submits] == [part(n).destination_addr for n in range(5)]
    assert s.snapshot()["throttled"] == 2


async def test_throttled_parts_keep_their_place_with_a_window(sim: SmscSimulator) -> None:
    sim.throttle_next = 3
    sim.response_delay = 0.02
    s = session(sim, window=5)
    async with running(s):
        await sim.wait_bound(1, 5)
        results = await submit_all(s, [part(n) for n in range(10)])
    assert all(r.outcome == "ok" for r in results)
    throttled = [sub.dest_addr for sub in sim.rejected]
    assert len(throttled) == 3
    accepted = [sub.dest_addr for sub in sim.submits]
    first_new = accepted.index(part(5).destination_addr)  # parts 5.. were never sent before
    assert all(accepted.index(dest) < first_new for dest in throttled)


async def test_throttled_too_often_is_retry(sim: SmscSimulator) -> None:
    sim.throttle_every = 1
    s = session(sim, window=1, kwargs={"max_transient_retries": 2})
    async with running(s):
        await sim.wait_bound(1, 5)
        result = await s.submit(part(), timeout=5)
    assert (result.outcome, result.command_status, result.status_name) == (
        "retry",
        ESME_RTHROTTLED,
        "ESME_RTHROTTLED",
    )
    assert sim.submit_count == 3


async def test_queue_full_backs_off_longer(sim: SmscSimulator) -> None:
    sim.queue_full_next = 1
    s = session(sim, window=1)  # queue-full backoff: 0.5 s base -> a pause of 0.25..0.5 s
    async with running(s):
        await sim.wait_bound(1, 5)
        started = time.monotonic()
        result = await s.submit(part(), timeout=5)
        elapsed = time.monotonic() - started
    assert result.outcome == "ok"
    assert elapsed >= 0.25
    assert s.snapshot()["queue_full"] == 1


async def test_permanent_failure_returns_the_status_name(sim: SmscSimulator) -> None:
    sim.fail_destinations = {part(9).destination_addr: ESME_RINVDSTADR}
    s = session(sim)
    async with running(s):
        await sim.wait_bound(1, 5)
        bad, good = await submit_all(s, [part(9), part(1)])
    assert (bad.outcome, bad.status_name, bad.command_status, bad.message_id) == (
        "failed",
        "ESME_RINVDSTADR",
        ESME_RINVDSTADR,
        None,
    )
    assert good.outcome == "ok"
    assert s.snapshot()["failed"] == 1


# --------------------------------------------------------------------------- liveness, reconnects


async def test_missing_response_is_unknown_and_a_late_one_is_reported(sim: SmscSimulator) -> None:
    late: list[tuple[int, Any, str | None, int]] = []
    s = session(sim, kwargs={"on_late_response": lambda *args: late.append(args)})
    async with running(s):
        await sim.wait_bound(1, 5)
        sim.stall_submits = True
        result = await s.submit(part(1, ref="part-1"), timeout=5)
        assert (result.outcome, result.status_name, result.command_status) == (
            "unknown",
            "RESPONSE_TIMEOUT",
            None,
        )
        assert s.is_bound and s.reconnects == 0  # enquire_link still answered: no reset
        sim.stall_submits = False
        assert (await s.submit(part(2), timeout=5)).outcome == "ok"
        assert await sim.release_stalled() == 1
        await until(lambda: len(late) == 1)
    (seq, ref, message_id, status) = late[0]
    assert (ref, status) == ("part-1", 0)
    assert message_id == next(
        sub.message_id for sub in sim.submits if sub.dest_addr == part(1).destination_addr
    )
    assert seq > 0
    assert len(sim.binds) == 1
    snap = s.snapshot()
    assert (snap["unknown"], snap["late_responses"], snap["acked"]) == (1, 1, 1)


async def test_unanswered_enquire_link_resets_the_session(sim: SmscSimulator) -> None:
    s = session(sim)
    async with running(s):
        await sim.wait_bound(1, 5)
        sim.stall_enquire_link = True
        await until(lambda: len(sim.binds) >= 2 and s.is_bound, timeout=6)
        sim.stall_enquire_link = False
        assert s.reconnects >= 1
        assert s.last_error is not None and "enquire_link" in s.last_error
        assert (await s.submit(part(), timeout=5)).outcome == "ok"


async def test_dropped_connection_reconnects_and_waiting_parts_go_through(sim: SmscSimulator) -> None:
    sim.response_delay = 0.3
    s = session(sim, window=2)
    async with running(s):
        await sim.wait_bound(1, 5)
        pending = asyncio.ensure_future(submit_all(s, [part(n) for n in range(8)]))
        await sim.wait_until(lambda: sim.submit_count >= 2, 5)
        await sim.drop_connections()
        results = await pending
        outcomes = [r.outcome for r in results]
        # The two written parts may or may not have gone out; the six waiting for the window did after
        # the reconnect.
        assert outcomes == ["unknown"] * 2 + ["ok"] * 6
        assert {r.status_name for r in results[:2]} == {"CONNECTION_LOST"}
        assert len(sim.binds) == 2 and s.reconnects == 1
        assert (await s.submit(part(99), timeout=5)).outcome == "ok"


async def test_unbind_from_the_smsc_is_answered_and_rebinds(sim: SmscSimulator) -> None:
    s = session(sim)
    async with running(s):
        await sim.wait_bound(1, 5)
        await sim.unbind_all(timeout=2)
        await until(lambda: len(sim.binds) == 2 and s.is_bound)
        assert (await s.submit(part(), timeout=5)).outcome == "ok"
    assert sim.protocol_errors == []


async def test_stop_returns_queued_parts_as_retry(sim: SmscSimulator) -> None:
    sim.response_delay = 0.2
    s = session(sim, window=1)
    async with running(s) as stop:
        await sim.wait_bound(1, 5)
        pending = asyncio.ensure_future(submit_all(s, [part(n) for n in range(4)]))
        await sim.wait_until(lambda: sim.submit_count >= 1, 5)
        stop.set()
        results = await pending
    assert results[0].outcome == "ok"  # the unbind waited for its response
    assert {(r.outcome, r.status_name) for r in results[1:]} == {("retry", "SHUTDOWN")}


async def test_generic_nack_and_unserved_requests_against_a_scripted_smsc() -> None:
    """What the simulator does not do: a generic_nack for a submit_sm, a request we do not serve."""
    seen: list[tuple[int, int, int]] = []  # (command_id, command_status, sequence) from the client
    handlers: set[asyncio.Task[Any]] = set()

    def pdu(command_id: int, status: int, seq: int, body: bytes = b"") -> bytes:
        return struct.pack(">IIII", 16 + len(body), command_id, status, seq) + body

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        answers = {0x09: b"SCRIPT\0", 0x06: b"", 0x15: b""}  # bind_transceiver, unbind, enquire_link
        try:
            while True:
                length, command_id, status, seq = struct.unpack(">IIII", await reader.readexactly(16))
                await reader.readexactly(length - 16)
                seen.append((command_id, status, seq))
                if command_id in answers:
                    writer.write(pdu(command_id | 0x80000000, 0, seq, answers[command_id]))
                if command_id == 0x09:
                    writer.write(pdu(0x00000099, 0, 500))  # a command id nobody knows
                    writer.write(pdu(0x00000102, 0, 501, b"\x01\x01123\0\x01\x01456\0"))  # alert_notification
                elif command_id == 0x04:
                    writer.write(pdu(0x80000000, 0x08, seq))  # generic_nack ESME_RSYSERR
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        s = session(server.sockets[0].getsockname()[1])
        async with running(s):
            await until(lambda: s.is_bound)
            result = await s.submit(part(), timeout=5)
            await until(lambda: {(0x80000000, 0x03, 500), (0x80000000, 0x03, 501)} <= set(seen))
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
    assert (result.outcome, result.status_name, result.command_status) == ("failed", "ESME_RSYSERR", 0x08)
    assert s.snapshot()["failed"] == 1 and s.reconnects == 0


# --------------------------------------------------------------------------- inbound


async def test_transmitter_receiver_pair(sim: SmscSimulator) -> None:
    received: list[DeliverSm] = []

    async def on_deliver(name: str, message: DeliverSm) -> None:
        received.append(message)

    s = session(sim, bind="transmitter_receiver", kwargs={"on_deliver": on_deliver})
    async with running(s):
        await sim.wait_bound(2, 5)
        await until(lambda: s.is_bound and s.receiver_state == "bound")
        assert sorted(b["mode"] for b in sim.binds) == ["receiver", "transmitter"]
        result = await s.submit(part(1), timeout=5)
        assert result.outcome == "ok"
        await sim.wait_deliver_resps(1, 5)  # the receipt comes on the receiver bind
    (receipt,) = received
    assert receipt.esm_class == 0x04
    assert receipt.tlvs["receipted_message_id"] == result.message_id.encode()  # type: ignore[union-attr]
    assert receipt.source_addr == part(1).destination_addr
    assert sim.deliver_resps[0][1] == 0
    assert s.snapshot()["receiver_state"] == "disconnected"


async def test_deliver_sm_resp_is_sent_after_the_callback_returns(sim: SmscSimulator) -> None:
    sim.receipts = False
    release = asyncio.Event()
    received: list[tuple[str, DeliverSm]] = []

    async def on_deliver(name: str, message: DeliverSm) -> None:
        received.append((name, message))
        await release.wait()

    s = session(sim, kwargs={"on_deliver": on_deliver})
    async with running(s):
        await sim.wait_bound(1, 5)
        seq = await sim.send_mo(
            "48600111222", "1234", "zażółć".encode("utf-16-be"), data_coding=8, tlvs={0x1403: b"v"}
        )
        await until(lambda: len(received) == 1)
        await asyncio.sleep(0.2)
        assert sim.deliver_resps == []  # not acknowledged while the callback runs
        release.set()
        assert await sim.wait_deliver_resps(1, 5) == [(seq, 0)]
    name, message = received[0]
    assert name == "c1"
    assert (message.source_addr, message.source_ton, message.destination_addr) == ("48600111222", 1, "1234")
    assert message.short_message.decode("utf-16-be") == "zażółć" and message.data_coding == 8
    assert message.tlvs == {"0x1403": b"v"}
    assert message.sequence == seq


async def test_deliver_callback_failure_or_timeout_answers_temporary_error(sim: SmscSimulator) -> None:
    sim.receipts = False

    async def on_deliver(name: str, message: DeliverSm) -> None:
        if message.short_message == b"boom":
            raise RuntimeError("database down")
        await asyncio.sleep(5)

    s = session(sim, kwargs={"on_deliver": on_deliver, "deliver_timeout_seconds": 0.2})
    async with running(s):
        await sim.wait_bound(1, 5)
        first = await sim.send_mo("48600111222", "1234", b"boom")
        second = await sim.send_mo("48600111222", "1234", b"slow")
        resps = await sim.wait_deliver_resps(2, 5)
    assert sorted(resps) == sorted([(first, ESME_RX_T_APPN), (second, ESME_RX_T_APPN)])
    assert s.snapshot()["delivered"] == 0


# --------------------------------------------------------------------------- pool


@pytest.fixture
async def sim2() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator() as simulator:
        yield simulator


def pool(*sessions: SmppSession) -> ConnectorPool:
    return ConnectorPool(sessions)


Send = Callable[[ConnectorPool, list[SubmitPart]], Awaitable[list[SubmitResult]]]


@pytest.fixture(params=["one_by_one", "many"])
def send(request: pytest.FixtureRequest) -> Send:
    """A pool's two ways to send: ``submit`` per part (concurrently), or ``submit_many``."""

    async def many(p: ConnectorPool, parts: list[SubmitPart]) -> list[SubmitResult]:
        async with asyncio.timeout(15):
            return await p.submit_many(parts, timeout=10)

    return submit_all if request.param == "one_by_one" else many


async def test_pool_routes_by_weight_and_fails_over(
    sim: SmscSimulator, sim2: SmscSimulator, send: Send
) -> None:
    a = session(sim, name="a", weight=3)
    b = session(sim2, name="b", weight=1)
    p = pool(a, b)
    async with running(p):
        await until(lambda: len(p.healthy()) == 2)
        results = await send(p, [part(n) for n in range(40)])
        assert all(r.outcome == "ok" for r in results)
        sent_to = {("a", sub.message_id): sub.dest_addr for sub in sim.submits}
        sent_to |= {("b", sub.message_id): sub.dest_addr for sub in sim2.submits}
        assert [sent_to[(r.connector, r.message_id)] for r in results] == [
            part(n).destination_addr for n in range(40)
        ]
        assert (len(sim.submits), len(sim2.submits)) == (30, 10)
        assert sum(r.connector == "a" for r in results) == 30
        await sim2.stop()
        await until(lambda: [s.name for s in p.healthy()] == ["a"])
        results = await send(p, [part(n) for n in range(10)])
        assert {r.connector for r in results} == {"a"} and all(r.outcome == "ok" for r in results)
        snap = {row["name"]: row for row in p.snapshot()}
        assert snap["a"]["state"] == "bound" and snap["b"]["state"] != "bound"
        assert snap["a"]["acked"] == 40 and snap["b"]["acked"] == 10


async def test_pool_moves_parts_waiting_on_a_dead_connector(
    sim: SmscSimulator, sim2: SmscSimulator, send: Send
) -> None:
    sim2.response_delay = 2.0  # b holds one part in flight, the others wait for its window
    a = session(sim, name="a")
    b = session(sim2, name="b", window=1, response_timeout_seconds=3.0)
    p = pool(a, b)
    async with running(p):
        await until(lambda: len(p.healthy()) == 2)
        pending = asyncio.ensure_future(send(p, [part(n) for n in range(10)]))
        await sim2.wait_until(lambda: sim2.submit_count == 1, 5)
        await sim.wait_submits(5, 5)
        await sim2.drop_connections()
        results = await pending
    by_outcome = sorted((r.outcome, r.connector) for r in results)
    assert by_outcome == [("ok", "a")] * 9 + [("unknown", "b")]
    assert len(sim.submits) == 9


async def test_pool_no_route_then_waits_for_a_bind(sim: SmscSimulator) -> None:
    sim.password = "other"
    p = pool(session(sim, name="a"))
    async with running(p):
        result = await p.submit(part(), timeout=0.2)
        assert (result.outcome, result.status_name, result.connector) == ("no_route", "NO_ROUTE", None)
        waiting = asyncio.ensure_future(p.submit(part(), timeout=5))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        sim.password = "secret"
        result = await asyncio.wait_for(waiting, 6)
        assert (result.outcome, result.connector) == ("ok", "a")


async def test_pool_submit_many_gives_up_on_parts_still_queued_at_the_deadline(sim: SmscSimulator) -> None:
    sim.response_delay = 1.5  # the window of 2 stays full past the deadline
    p = pool(session(sim, name="a", window=2, response_timeout_seconds=3.0))
    async with running(p):
        await until(lambda: len(p.healthy()) == 1)
        results = await p.submit_many([part(n) for n in range(5)], timeout=0.5)
        assert [(r.outcome, r.status_name) for r in results] == [("ok", "ESME_ROK")] * 2 + [
            ("retry", "QUEUE_TIMEOUT")
        ] * 3
        assert [sub.dest_addr for sub in sim.submits] == [part(n).destination_addr for n in range(2)]


async def test_pool_submit_many_without_a_bind_waits_for_one_or_says_no_route(sim: SmscSimulator) -> None:
    sim.password = "other"
    p = pool(session(sim, name="a"))
    async with running(p):
        results = await p.submit_many([part(1), part(2)], timeout=0.2)
        assert [(r.outcome, r.status_name, r.connector) for r in results] == [
            ("no_route", "NO_ROUTE", None)
        ] * 2
        waiting = asyncio.ensure_future(p.submit_many([part(3), part(4)], timeout=5))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        sim.password = "secret"
        results = await asyncio.wait_for(waiting, 6)
        assert [(r.outcome, r.connector) for r in results] == [("ok", "a")] * 2


async def test_pool_submit_many_moves_a_dead_connectors_parts_at_once(
    sim: SmscSimulator, sim2: SmscSimulator
) -> None:
    """Parts waiting on a connector that goes down are re-routed right away, not once the batch's
    other parts (slow to be answered here) have their answers."""
    sim.response_delay = 1.5
    sim2.response_delay = 2.0  # b holds one part in flight, four more wait for its window
    a = session(sim, name="a", response_timeout_seconds=3.0)
    p = pool(a, session(sim2, name="b", window=1, response_timeout_seconds=3.0))
    async with running(p):
        await until(lambda: len(p.healthy()) == 2)
        pending = asyncio.ensure_future(p.submit_many([part(n) for n in range(10)], timeout=10))
        await sim2.wait_until(lambda: sim2.submit_count == 1, 5)
        await sim.wait_submits(5, 5)
        await sim2.drop_connections()
        await sim.wait_submits(9, 1.0)  # before a answers anything (1.5 s)
        results = await asyncio.wait_for(pending, 10)
    assert sorted((r.outcome, r.connector) for r in results) == [("ok", "a")] * 9 + [("unknown", "b")]
