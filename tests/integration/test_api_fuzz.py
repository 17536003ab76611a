"""Random bodies and paths against every route: never a 5xx, every 4xx in the error shape.

A seeded generator (bounded: a fixed number of requests per route) rather than hypothesis, because
the aiohttp test client is a per-test async fixture.
"""

from __future__ import annotations

import json
import random
from typing import Any

FIELDS = [
    "name",
    "mailbox_prefix",
    "phones",
    "emails",
    "consent",
    "sms_sender",
    "attachments",
    "text",
    "amount",
    "trusted_domains",
    "blocked",
    "mode",
    "alphanumeric",
    "save",
    "quota_bytes",
    "sms",
]


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), 160, 1.5, 1e308])
    if kind == 3:
        return rng.choice(
            [
                "",
                "a",
                "+48500100200",
                "ab",
                "x" * 300,
                "postmaster",
                "\u0000",
                "😀" * 80,
                "jan@example.com",
                "pool",
                "alphanumeric",
                "SERWIS",
                "€{}[]",
                "\ud83d",
            ]
        )
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.choice(FIELDS)
    if kind == 6:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): value(rng, depth + 1) for _ in range(rng.randrange(5))}


async def test_random_input_never_breaks_the_api(api: Any) -> None:
    rng = random.Random(20261124)
    resp = await api.post("/v1/tenants", json={"name": "Fuzz"}, headers=api.admin)
    tenant = await resp.json()
    tenant_auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    targets = [
        ("POST", "/v1/tenants", api.admin),
        ("PATCH", f"/v1/tenants/{tenant['id']}", api.admin),
        ("POST", f"/v1/tenants/{tenant['id']}/credits", api.admin),
        ("PUT", "/v1/contacts/{id}", tenant_auth),
        ("POST", "/v1/sms/preview", tenant_auth),
        ("GET", "/v1/contacts?phone={id}", tenant_auth),
    ]
    for method, path, headers in targets:
        for _ in range(60):
            body = value(rng) if rng.random() < 0.3 else {f: value(rng) for f in rng.sample(FIELDS, 3)}
            ident = rng.choice(["+48500100200", "x", "%2F", "a%00b", "ą", "1" * 120])
            raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
            if rng.random() < 0.1:
                raw = raw[: rng.randrange(len(raw) + 1)]
            resp = await api.request(
                method,
                path.replace("{id}", ident),
                data=raw,
                headers={**headers, "Content-Type": "application/json"},
            )
            text = await resp.text()
            assert resp.status < 500, (method, path, raw[:200], text[:300])
            if resp.status >= 400:
                err = json.loads(text)["error"]
                assert set(err) == {"code", "message", "details"}, text


async def test_nul_characters_are_refused_naming_the_field(api: Any) -> None:
    for body, field in (
        ({"name": "A\u0000B"}, "name"),
        ({"name": "A", "business_hours": {"mon": ["08:00\u0000"]}}, "business_hours"),
        ({"name": "A", "trusted_domains": ["a.example", "b\u0000.example"]}, "trusted_domains"),
    ):
        resp = await api.post("/v1/tenants", json=body, headers=api.admin)
        assert resp.status == 422, await resp.text()
        assert (await resp.json())["error"]["details"]["field"] == field
