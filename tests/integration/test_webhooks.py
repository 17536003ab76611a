"""Webhooks (issue 7): signed POSTs of every event, at least once and in order per tenant, retries with
backoff, failure for good after the window (visible in the API and a metric), per-tenant concurrency,
and the SSRF guard at tenant create/patch and at delivery time (DNS injected). Both databases.

The receivers are aiohttp test servers on 127.0.0.1 (port 0), so the daemon under test runs with
``[webhooks] allow_private = true`` where a delivery is meant to arrive.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import DbTarget, FakeClock
from smsc import SmscSimulator
from test_conversations import JAN, _contact, _get, _send, _tenant, eventually, gateway

from gateway.domain.webhooks import RetrySchedule, verify
from gateway.http.context import ApiContext
from gateway.http.webhook_client import AiohttpWebhookSender
from gateway.services.webhooks import DeliveryResult, WebhookDispatcher, WebhookSettings, check_webhook_url
from gateway.storage import messages as repo
from gateway.storage import webhooks as webhooks_repo
from gateway.storage.db import Database


class Receiver:
    """An application's webhook endpoint: answers ``fail_first`` requests with 500, then 200."""

    def __init__(self, secret: str = "", fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.requests: list[tuple[int, dict[str, Any], bool]] = []  # (status, body, signature ok)
        self.accepted: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ok = verify(
            self.secret,
            request.headers.get("Gateway-Timestamp", ""),
            request.headers.get("Gateway-Signature", ""),
            raw,
            now=time.time(),
        )
        body = json.loads(raw)
        assert request.headers["Gateway-Event-Id"] == str(body["id"])
        status = 500 if len(self.requests) < self.fail_first else 200
        self.requests.append((status, body, ok))
        if status == 200:
            self.accepted.append(body)
        return web.Response(status=status, text="ok" if status == 200 else "down")


async def _serve(aiohttp_server: Any, receiver: Receiver) -> str:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    return f"http://127.0.0.1:{server.port}/hook"


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(system_id="gw", password="secret") as s:
        yield s


WEBHOOKS_FOR_TESTS = """
[webhooks]
allow_private = true
retry_base_seconds = 0.05
retry_max_seconds = 0.2
poll_interval_seconds = 0.05
timeout_seconds = 2
"""


async def test_a_receiver_that_fails_twice_gets_every_event_once_in_order_signed(
    db_target: DbTarget, tmp_path: Path, sim: SmscSimulator, aiohttp_server: Any
) -> None:
    receiver = Receiver(fail_first=2)
    url = await _serve(aiohttp_server, receiver)
    async with gateway(db_target, tmp_path, sim, WEBHOOKS_FOR_TESTS) as gw:
        shop = await gw.tenant("Serwis", webhook_url=url)
        receiver.secret = shop["secret"]
        await gw.contact(shop, "jan", JAN)
        [sms] = await gw.send(shop, contact_id="jan", text="Rower gotowy")
        await gw.wait_status(shop, sms["id"], {"delivered"})
        await gw.reply(shop, JAN, sms["sms"]["sender"], "Dzieki, bede jutro")
        await gw.reply(shop, JAN, sms["sms"]["sender"], "STOP")
        feed: list[dict[str, Any]] = []

        async def all_delivered() -> bool:
            feed[:] = (await gw.get(shop, "/v1/events", limit=200))["events"]
            kinds = {e["type"] for e in feed}
            return kinds >= {"message.status", "message.received", "contact.opted_out"} and [
                e["id"] for e in receiver.accepted
            ] == [e["id"] for e in feed]

        await eventually(all_delivered, "every event accepted by the receiver")
        # Every event once, in order, exactly as the feed lists it; every POST signed.
        assert receiver.accepted == feed
        assert all(ok for _, _, ok in receiver.requests)
        # The two failures were the first event, tried again (nothing overtook it).
        assert [(s, b["id"]) for s, b, _ in receiver.requests[:3]] == [(500, feed[0]["id"])] * 2 + [
            (200, feed[0]["id"])
        ]
        status = await gw.get(shop, "/v1/webhooks")
        assert status["url"] == url and status["pending"] == 0 and status["attempts"] == 0
        assert status["delivered_through"] == feed[-1]["id"] and status["last_error"] is None
        assert (await gw.get(shop, "/v1/webhooks/failed"))["failures"] == []
        async with gw.http.get(gw.base + "/metrics") as resp:
            metrics = await resp.text()
        assert 'gateway_webhook_deliveries{result="retried"} 2.0' in metrics
        assert f'gateway_webhook_deliveries{{result="delivered"}} {float(len(feed))}' in metrics
        assert "gateway_webhook_failed_events 0.0" in metrics
        async with gw.http.get(gw.base + "/readyz") as resp:
            assert (await resp.json())["checks"]["webhooks"]["ok"] is True


# --- the dispatcher on its own, with an injected clock and HTTP client ---------------------------------


class FakeSender:
    """Answers per URL: ``down`` URLs fail, ``slow`` URLs wait for their gate; records every POST."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.gates: dict[str, asyncio.Event] = {}
        self.posts: list[tuple[str, int]] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> DeliveryResult:
        if url in self.gates:
            await self.gates[url].wait()
        self.posts.append((url, json.loads(body)["id"]))
        if url in self.down:
            return DeliveryResult(False, 503, "HTTP 503")
        return DeliveryResult(True, 200)


async def rounds_until(
    dispatcher: WebhookDispatcher,
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    also: WebhookDispatcher | None = None,
) -> None:
    """Delivery rounds until ``check`` holds (bounded). More than one round may be needed on
    PostgreSQL: an event stays invisible while an older transaction anywhere on the server runs."""

    async def step() -> bool:
        for d in (dispatcher, also):
            if d is not None:
                await d.round()
                await d.settle()
        result = check()
        return await result if inspect.isawaitable(result) else result

    await eventually(step, what, timeout=10)


def _dispatcher(db: Database, clock: FakeClock, sender: Any, **kw: Any) -> WebhookDispatcher:
    settings = WebhookSettings(
        timeout=1,
        schedule=RetrySchedule(base=timedelta(minutes=1), cap=timedelta(hours=1), window=timedelta(hours=24)),
        **kw,
    )
    return WebhookDispatcher(db, clock, sender, settings, owner="test", rand=lambda: 0.5)


async def _event(db: Database, tenant_id: str, clock: FakeClock, n: int) -> None:
    await db.write(lambda conn: repo.add_event(conn, tenant_id, "message.status", {"n": n}, clock()))


async def _tenant_with_hook(api: Any, name: str, url: str) -> dict[str, str]:
    auth = await _tenant(api, name)
    resp = await api.patch(f"/v1/tenants/{auth['id']}", json={"webhook_url": url}, headers=api.admin)
    assert resp.status == 200, await resp.text()
    return auth


async def test_an_event_fails_for_good_after_the_window_and_later_ones_go_on(
    api: Any, api_context: ApiContext, db: Database, clock: FakeClock
) -> None:
    url = "https://hooks.example.com/gw"
    shop = await _tenant_with_hook(api, "Serwis", url)
    sender = FakeSender()
    sender.down.add(url)
    dispatcher = _dispatcher(db, clock, sender)
    await _event(db, shop["id"], clock, 1)

    await rounds_until(dispatcher, lambda: len(sender.posts) == 1, "the first attempt")
    status = await _get(api, shop, "/v1/webhooks")
    assert status["attempts"] == 1 and status["last_error"] == "HTTP 503" and status["pending"] == 1
    assert status["next_attempt_at"] is not None and status["failing_since"] is not None
    assert await dispatcher.round() == 0  # backing off: not due yet
    # Backoff doubles (60 s, 120 s, 240 s ... with rand 0.5: three quarters of each) while the clock moves.
    for n in range(3):
        clock.advance(hours=1)
        await rounds_until(dispatcher, lambda n=n: len(sender.posts) == n + 2, "another attempt")
    assert len(sender.posts) == 4
    clock.advance(hours=12)
    await _event(db, shop["id"], clock, 2)  # a later event, 12 h younger
    clock.advance(hours=12, minutes=1)  # event 1 is now past its 24 h
    await rounds_until(dispatcher, lambda: len(sender.posts) == 6, "the last attempt and the next event")
    [failure] = (await _get(api, shop, "/v1/webhooks/failed"))["failures"]
    assert failure["event"]["data"] == {"n": 1} and failure["attempts"] == 5 and failure["url"] == url
    assert failure["last_error"] == "HTTP 503"
    assert dispatcher.failed == 1
    assert await db.read(webhooks_repo.counts) == (1, 1)  # gateway_webhook_failed_events, tenants failing
    # Event 2 was tried right after (the failed one does not block it), failed, and waits its turn.
    assert sender.posts[-1] == (url, failure["event_id"] + 1)
    status = await _get(api, shop, "/v1/webhooks")
    assert status["delivered_through"] == failure["event_id"] and status["pending"] == 1

    sender.down.clear()  # the endpoint is back
    clock.advance(hours=1)
    await rounds_until(dispatcher, lambda: len(sender.posts) == 7, "event 2 delivered")
    status = await _get(api, shop, "/v1/webhooks")
    assert status["pending"] == 0 and status["failing_since"] is None and status["last_error"] is None
    assert await db.read(webhooks_repo.counts) == (1, 0)
    # Failures page like every list.
    page = await _get(api, shop, "/v1/webhooks/failed", limit=1)
    assert page["next_cursor"] is None


async def test_a_slow_endpoint_never_slows_another_tenant(
    api: Any, api_context: ApiContext, db: Database, clock: FakeClock
) -> None:
    slow_url, fast_url = "https://slow.example.com/h", "https://fast.example.com/h"
    slow = await _tenant_with_hook(api, "Slow", slow_url)
    fast = await _tenant_with_hook(api, "Fast", fast_url)
    sender = FakeSender()
    sender.gates[slow_url] = asyncio.Event()
    dispatcher = _dispatcher(db, clock, sender)
    for n in range(3):
        await _event(db, slow["id"], clock, n)
        await _event(db, fast["id"], clock, n)
    stop = asyncio.Event()
    runner = asyncio.create_task(dispatcher.run(stop))
    try:

        async def fast_done() -> bool:
            return [u for u, _ in sender.posts].count(fast_url) == 3

        await eventually(fast_done, "the fast tenant's three events", timeout=5)
        assert slow_url not in [u for u, _ in sender.posts]  # still stuck in its first POST
        assert (await _get(api, fast, "/v1/webhooks"))["pending"] == 0
        sender.gates[slow_url].set()

        async def slow_done() -> bool:
            return [u for u, _ in sender.posts].count(slow_url) == 3

        await eventually(slow_done, "the slow tenant's three events", timeout=5)
        slow_ids = [i for u, i in sender.posts if u == slow_url]
        assert slow_ids == sorted(slow_ids)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
    # A removed webhook stops deliveries (and a new one starts at the next event, not the backlog).
    resp = await api.patch(f"/v1/tenants/{fast['id']}", json={"webhook_url": None}, headers=api.admin)
    assert resp.status == 200
    assert (await _get(api, fast, "/v1/webhooks"))["url"] is None
    await _event(db, fast["id"], clock, 99)
    await _tenant_patch(api, fast["id"], fast_url)
    assert (await _get(api, fast, "/v1/webhooks"))["pending"] == 0


async def _tenant_patch(api: Any, tenant_id: str, url: str) -> None:
    resp = await api.patch(f"/v1/tenants/{tenant_id}", json={"webhook_url": url}, headers=api.admin)
    assert resp.status == 200, await resp.text()


# --- SSRF ----------------------------------------------------------------------------------------------

DNS = {
    "hooks.example.com": ["93.184.216.34"],
    "internal.example.com": ["10.0.0.5"],
    "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "v6.example.com": ["::1"],
}


class FakeDns:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = dict(table)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"{host}: Name or service not known")
        return self.table[host]


async def test_webhook_urls_that_reach_private_addresses_are_refused(
    api: Any, api_context: ApiContext
) -> None:
    dns = FakeDns(DNS)
    api_context.tenants.webhook_url_check = functools.partial(
        check_webhook_url, resolver=dns, allow_private=False
    )
    for url, ok in (
        ("https://hooks.example.com/gw", True),
        ("https://not-yet-in-dns.example.com/gw", True),  # checked again at every delivery
        ("https://internal.example.com/gw", False),
        ("https://mixed.example.com/gw", False),  # one bad address is enough
        ("http://metadata.example.com/latest", False),
        ("https://v6.example.com/", False),
        ("http://127.0.0.1:8080/hook", False),
        ("http://[::ffff:10.0.0.1]/hook", False),
        ("http://192.168.0.10/hook", False),
        ("ftp://hooks.example.com/", False),
    ):
        resp = await api.post("/v1/tenants", json={"name": "T", "webhook_url": url}, headers=api.admin)
        body = await resp.json()
        assert resp.status == (201 if ok else 422), (url, body)
        if not ok:
            assert body["error"]["details"]["field"] == "webhook_url", body
    resp = await api.post("/v1/tenants", json={"name": "P"}, headers=api.admin)
    tenant = await resp.json()
    resp = await api.patch(
        f"/v1/tenants/{tenant['id']}",
        json={"webhook_url": "https://internal.example.com/x"},
        headers=api.admin,
    )
    assert resp.status == 422 and (await resp.json())["error"]["details"]["field"] == "webhook_url"
    # With [webhooks] allow_private = true (tests, a private deployment), the same URL is fine.
    api_context.tenants.webhook_url_check = functools.partial(
        check_webhook_url, resolver=dns, allow_private=True
    )
    resp = await api.patch(
        f"/v1/tenants/{tenant['id']}",
        json={"webhook_url": "https://internal.example.com/x"},
        headers=api.admin,
    )
    assert resp.status == 200


async def test_delivery_checks_the_address_again_after_resolving(
    api: Any, api_context: ApiContext, db: Database, clock: FakeClock, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    local = await _serve(aiohttp_server, receiver)
    port = local.split(":")[2].split("/")[0]
    dns = FakeDns({"hooks.example.com": ["93.184.216.34"]})
    api_context.tenants.webhook_url_check = functools.partial(
        check_webhook_url, resolver=dns, allow_private=False
    )
    url = f"http://hooks.example.com:{port}/hook"
    shop = await _tenant_with_hook(api, "Serwis", url)  # public when it was set ...
    dns.table["hooks.example.com"] = ["127.0.0.1"]  # ... loopback now (DNS rebinding)
    await _contact(api, shop, "jan", JAN)
    await _send(api, shop, contact_id="jan")

    async def attempted() -> bool:
        return bool((await _get(api, shop, "/v1/webhooks"))["attempts"])

    async with AiohttpWebhookSender(dns, allow_private=False) as guarded:
        await rounds_until(_dispatcher(db, clock, guarded), attempted, "a refused attempt")
    assert receiver.requests == []  # nothing reached the address behind the name
    status = await _get(api, shop, "/v1/webhooks")
    assert (
        status["attempts"] == 1 and "refused" in status["last_error"] and "127.0.0.1" in status["last_error"]
    )

    # The same delivery where private addresses are allowed reaches exactly the resolved address.
    clock.advance(hours=1)
    async with AiohttpWebhookSender(dns, allow_private=True) as open_sender:
        await rounds_until(_dispatcher(db, clock, open_sender), lambda: bool(receiver.requests), "a delivery")
    [(status_code, body, _)] = receiver.requests
    assert status_code == 200 and body["type"] == "message.status"

    # An IP-literal URL skips DNS: it is checked before the request.
    async with AiohttpWebhookSender(dns, allow_private=False) as guarded:
        result = await guarded.post(local, b"{}", {}, timeout=1)
    assert not result.ok and result.error is not None and "loopback" in result.error
    assert len(receiver.requests) == 1


async def test_two_daemons_share_the_tenants_and_never_deliver_one_twice(
    api: Any, api_context: ApiContext, db: Database, clock: FakeClock
) -> None:
    urls = [f"https://t{n}.example.com/h" for n in range(6)]
    tenants = [await _tenant_with_hook(api, f"T{n}", url) for n, url in enumerate(urls)]
    for t in tenants:
        for n in range(3):
            await _event(db, t["id"], clock, n)
    senders = [FakeSender(), FakeSender()]
    for sender in senders:  # both daemons' POSTs hang until released: each holds what it claimed
        for url in urls:
            sender.gates[url] = asyncio.Event()
    first = WebhookDispatcher(db, clock, senders[0], WebhookSettings(concurrency=3), owner="daemon-a")
    second = WebhookDispatcher(db, clock, senders[1], WebhookSettings(concurrency=10), owner="daemon-b")
    assert await first.round() == 3
    assert await second.round() == 3  # the other three: the first three are leased
    assert await second.round() == 0
    for sender in senders:
        for gate in sender.gates.values():
            gate.set()

    def everything() -> bool:
        return sum(len(sender.posts) for sender in senders) >= 18

    # (On PostgreSQL an event may stay invisible for a moment behind another transaction; a tenant
    # released early is claimed again by whichever daemon looks first.)
    await rounds_until(first, everything, "all events", also=second)
    delivered = sorted(i for sender in senders for _, i in sender.posts)
    assert delivered == list(range(1, 19))  # every event once, across both daemons
