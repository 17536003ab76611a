"""Contacts, the SMS preview, the operations endpoints and the OpenAPI document over HTTP."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
async def tenant(api: Any) -> dict[str, Any]:
    resp = await api.post("/v1/tenants", json={"name": "Serwis"}, headers=api.admin)
    t = await resp.json()
    t["auth"] = {"Authorization": f"Bearer {t['api_key']}"}
    return t


JAN = {
    "name": "Jan Kowalski",
    "phones": ["+48 500 100 200", "48601200300"],
    "emails": ["Jan.Kowalski@Example.COM"],
    "consent": {"sms": True, "email": True, "marketing": False},
}


async def test_put_contact_normalizes_and_finds_by_either_number(api: Any, tenant: dict[str, Any]) -> None:
    resp = await api.put("/v1/contacts/+48500100200", json=JAN, headers=tenant["auth"])
    assert resp.status == 201, await resp.text()
    c = await resp.json()
    assert c["id"] == "+48500100200"
    assert c["phones"] == ["+48500100200", "+48601200300"]
    assert c["phone_details"][0] == {
        "number": "+48500100200",
        "type": "mobile",
        "region": "PL",
        "sms_capable": True,
    }
    assert c["emails"] == ["jan.kowalski@example.com"]
    for form in ("+48500100200", "48500100200", "500 100 200", "0048500100200", "+48601200300", "601200300"):
        resp = await api.get("/v1/contacts", params={"phone": form}, headers=tenant["auth"])
        assert resp.status == 200
        assert [x["id"] for x in (await resp.json())["contacts"]] == ["+48500100200"], form
    resp = await api.get("/v1/contacts", params={"email": "JAN.KOWALSKI@example.com"}, headers=tenant["auth"])
    assert [x["id"] for x in (await resp.json())["contacts"]] == ["+48500100200"]
    resp = await api.get("/v1/contacts/+48500100200", headers=tenant["auth"])
    assert (await resp.json())["name"] == "Jan Kowalski"


async def test_replace_and_shared_numbers(api: Any, tenant: dict[str, Any]) -> None:
    await api.put("/v1/contacts/+48500100200", json=JAN, headers=tenant["auth"])
    anna = {"name": "Anna Kowalska", "phones": ["+48601200300"], "consent": {"sms": False}}
    resp = await api.put("/v1/contacts/anna", json=anna, headers=tenant["auth"])
    assert resp.status == 201
    assert (await resp.json())["consent"] == {"sms": False, "email": True, "marketing": False}
    resp = await api.get("/v1/contacts", params={"phone": "+48601200300"}, headers=tenant["auth"])
    assert sorted(x["id"] for x in (await resp.json())["contacts"]) == ["+48500100200", "anna"]
    # PUT replaces: the second number is gone from Jan, so only Anna matches now
    resp = await api.put(
        "/v1/contacts/+48500100200", json={**JAN, "phones": ["+48500100200"]}, headers=tenant["auth"]
    )
    assert resp.status == 200
    resp = await api.get("/v1/contacts", params={"phone": "+48601200300"}, headers=tenant["auth"])
    assert [x["id"] for x in (await resp.json())["contacts"]] == ["anna"]
    resp = await api.put("/v1/contacts/anna", json={**anna, "blocked": True}, headers=tenant["auth"])
    assert (await resp.json())["blocked"] is True


async def test_bad_contacts_name_the_field_and_write_nothing(api: Any, tenant: dict[str, Any]) -> None:
    cases = [
        ({"phones": ["+48500100200", "not a number"]}, "phones[1]"),
        ({"phones": ["+48 123"]}, "phones[0]"),
        ({"emails": ["jan@"]}, "emails[0]"),
        ({"emails": ["ok@example.com", "two@@example.com"]}, "emails[1]"),
        ({"consent": {"sms": "yes"}}, "consent.sms"),
        ({"phones": "+48500100200"}, "phones"),
        ({"nickname": "J"}, "nickname"),
    ]
    for body, field in cases:
        resp = await api.put("/v1/contacts/c1", json={"name": "C", **body}, headers=tenant["auth"])
        assert resp.status == 422, body
        assert (await resp.json())["error"]["details"]["field"] == field, body
    assert (await api.get("/v1/contacts/c1", headers=tenant["auth"])).status == 404
    resp = await api.get("/v1/contacts", params={"phone": "+48500100200"}, headers=tenant["auth"])
    assert (await resp.json())["contacts"] == []
    for params in ({}, {"phone": "1", "email": "a@b.example"}, {"phone": "abc"}, {"colour": "red"}):
        resp = await api.get("/v1/contacts", params=params, headers=tenant["auth"])
        assert resp.status == 422, params


async def test_sms_preview(api: Any, tenant: dict[str, Any]) -> None:
    async def preview(text: str) -> dict[str, Any]:
        resp = await api.post("/v1/sms/preview", json={"text": text}, headers=tenant["auth"])
        assert resp.status == 200
        return await resp.json()

    assert await preview("Twój rower jest gotowy") == {
        "encoding": "ucs2",
        "chars": 22,
        "parts": 1,
        "chars_left_in_part": 48,
    }
    assert await preview("a" * 160) == {"encoding": "gsm7", "chars": 160, "parts": 1, "chars_left_in_part": 0}
    assert (await preview("a" * 161))["parts"] == 2
    assert (await preview("Cena: 10€ {promo}"))["chars"] == 20
    assert (await preview("😀" * 35))["parts"] == 1
    assert (await preview("😀" * 36))["parts"] == 2
    resp = await api.post("/v1/sms/preview", json={"text": 5}, headers=tenant["auth"])
    assert resp.status == 422


async def test_operations_endpoints(api: Any, tenant: dict[str, Any]) -> None:
    assert await (await api.get("/healthz")).json() == {"status": "ok"}
    resp = await api.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ready" and body["checks"]["database"]["ok"] is True
    resp = await api.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and "gateway_http_requests_total" in text
    resp = await api.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await api.delete("/v1/tenants")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    for _ in range(2):
        await api.get("/healthz")
    text = await (await api.get("/metrics")).text()
    counted = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("gateway_http_requests_total{", "gateway_http_request_seconds_count{"))
    }
    assert counted['gateway_http_requests_total{method="GET",route="/healthz",status="200"}'] == 3
    assert counted['gateway_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert counted['gateway_http_request_seconds_count{route="/healthz"}'] == 3


async def test_readyz_reports_a_failing_component(api: Any, api_context: Any) -> None:
    async def smpp() -> tuple[bool, dict[str, Any]]:
        return False, {"binds": [{"name": "main", "state": "connecting"}]}

    api_context.ready_checks["smpp"] = smpp
    resp = await api.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "not_ready"
    assert body["checks"]["smpp"]["binds"][0]["state"] == "connecting"


async def test_openapi_describes_every_route(api: Any) -> None:
    doc = await (await api.get("/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    served = {(r.method.lower(), r.resource.canonical) for r in api.app.router.routes() if r.method != "HEAD"}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == described
    create = doc["paths"]["/v1/tenants"]["post"]
    schema_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.split("/")[-1] in doc["components"]["schemas"]
