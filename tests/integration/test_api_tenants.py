"""Tenants over the HTTP API, on both databases: create, read, rename prefixes, credits, auth."""

from __future__ import annotations

from typing import Any

from conftest import MAIL_DOMAIN


async def create(api: Any, **body: Any) -> dict[str, Any]:
    resp = await api.post("/v1/tenants", json={"name": "Serwis Kowalski", **body}, headers=api.admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_create_tenant_returns_key_and_mailbox(api: Any) -> None:
    t = await create(api, mailbox_prefix="serwis-kowalski", trusted_domains=["Kowalski.PL"], sms_credits=10)
    assert t["id"].startswith("ten_")
    assert t["api_key"].startswith("gwk_")
    assert t["mailbox_address"] == f"serwis-kowalski@{MAIL_DOMAIN}"
    assert t["mailbox_aliases"] == []
    assert t["trusted_domains"] == ["kowalski.pl"]
    assert t["sms_sender"] == {"mode": "pool", "alphanumeric": None, "allowed": []}
    assert t["sms_credits"] == 10
    resp = await api.get(f"/v1/tenants/{t['id']}", headers=api.admin)
    got = await resp.json()
    assert "api_key" not in got and got["mailbox_prefix"] == "serwis-kowalski"
    # the tenant's own key reads its own tenant
    resp = await api.get(f"/v1/tenants/{t['id']}", headers=bearer(t["api_key"]))
    assert resp.status == 200


async def test_prefix_defaults_from_the_name_and_never_collides(api: Any) -> None:
    a = await create(api, name="Serwis Łódź")
    b = await create(api, name="Serwis Łódź")
    assert a["mailbox_prefix"] == "serwis-lodz"
    assert b["mailbox_prefix"] == "serwis-lodz-2"


async def test_rename_keeps_old_prefix_as_alias_and_prefixes_stay_unique(api: Any) -> None:
    a = await create(api, mailbox_prefix="alpha")
    b = await create(api, name="Other", mailbox_prefix="bravo")
    resp = await api.patch(f"/v1/tenants/{a['id']}", json={"mailbox_prefix": "alpha-new"}, headers=api.admin)
    assert resp.status == 200, await resp.text()
    t = await resp.json()
    assert t["mailbox_prefix"] == "alpha-new"
    assert t["mailbox_address"] == f"alpha-new@{MAIL_DOMAIN}"
    assert t["mailbox_aliases"] == ["alpha"]
    # b may take neither a's current prefix nor its alias; nothing of b changes
    for taken in ("alpha", "alpha-new"):
        resp = await api.patch(
            f"/v1/tenants/{b['id']}", json={"name": "Renamed", "mailbox_prefix": taken}, headers=api.admin
        )
        assert resp.status == 409
        err = (await resp.json())["error"]
        assert err["code"] == "prefix_taken" and err["details"]["field"] == "mailbox_prefix"
    resp = await api.get(f"/v1/tenants/{b['id']}", headers=api.admin)
    assert (await resp.json())["name"] == "Other"
    resp = await api.post("/v1/tenants", json={"name": "X", "mailbox_prefix": "alpha"}, headers=api.admin)
    assert resp.status == 409
    # a may go back to its own alias; the prefix it leaves becomes an alias in turn
    resp = await api.patch(f"/v1/tenants/{a['id']}", json={"mailbox_prefix": "alpha"}, headers=api.admin)
    t = await resp.json()
    assert t["mailbox_prefix"] == "alpha" and t["mailbox_aliases"] == ["alpha-new"]


async def test_bad_prefixes_name_the_field(api: Any) -> None:
    for bad in ("ab", "UPPER", "with_underscore", "x" * 33, "-lead", "postmaster"):
        resp = await api.post("/v1/tenants", json={"name": "X", "mailbox_prefix": bad}, headers=api.admin)
        assert resp.status == 422, bad
        assert (await resp.json())["error"]["details"]["field"] == "mailbox_prefix"


async def test_alphanumeric_sender_rules(api: Any) -> None:
    t = await create(api, sms_sender={"mode": "alphanumeric", "alphanumeric": "SERWIS"})
    assert t["sms_sender"] == {"mode": "alphanumeric", "alphanumeric": "SERWIS", "allowed": []}
    for bad in (
        {"mode": "alphanumeric"},
        {"mode": "alphanumeric", "alphanumeric": "TWELVE-CHARS"},
        {"mode": "alphanumeric", "alphanumeric": "123"},
    ):
        resp = await api.post("/v1/tenants", json={"name": "X", "sms_sender": bad}, headers=api.admin)
        assert resp.status == 422
        assert (await resp.json())["error"]["details"]["field"] == "sms_sender.alphanumeric"
    resp = await api.post("/v1/tenants", json={"name": "X", "sms_sender": {"mode": "fax"}}, headers=api.admin)
    assert (await resp.json())["error"]["details"]["field"] == "sms_sender.mode"


async def test_credits_top_up(api: Any) -> None:
    t = await create(api)
    resp = await api.post(f"/v1/tenants/{t['id']}/credits", json={"amount": 250}, headers=api.admin)
    assert resp.status == 200 and (await resp.json())["sms_credits"] == 250
    for bad in ({"amount": 0}, {"amount": -5}, {"amount": "5"}, {"amount": 1.5}, {}):
        resp = await api.post(f"/v1/tenants/{t['id']}/credits", json=bad, headers=api.admin)
        assert resp.status == 422, bad
        assert (await resp.json())["error"]["details"]["field"] == "amount"
    resp = await api.post("/v1/tenants/ten_nope/credits", json={"amount": 1}, headers=api.admin)
    assert resp.status == 404


async def test_patch_settings(api: Any) -> None:
    t = await create(api)
    resp = await api.patch(
        f"/v1/tenants/{t['id']}",
        json={
            "trusted_domains": ["b.example", "a.example"],
            "attachments": {"save": True, "quota_bytes": 5000},
            "webhook_url": "https://app.example/hook",
        },
        headers=api.admin,
    )
    got = await resp.json()
    assert got["trusted_domains"] == ["a.example", "b.example"]
    assert got["attachments"] == {"save": True, "quota_bytes": 5000, "used_bytes": 0}
    assert got["webhook_url"] == "https://app.example/hook"
    resp = await api.patch(
        f"/v1/tenants/{t['id']}", json={"trusted_domains": ["not a domain"]}, headers=api.admin
    )
    assert (await resp.json())["error"]["details"]["field"] == "trusted_domains[0]"


async def test_bad_bodies_get_the_error_shape(api: Any) -> None:
    cases = [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b'{"name": "X", "colour": "red"}', 422, "validation_error", "colour"),
        (b'{"name": 5}', 422, "validation_error", "name"),
        (b'{"name": "X", "attachments": {"save": "yes"}}', 422, "validation_error", "attachments.save"),
        (
            b'{"name": "X", "trusted_domains": ["ok.example", 7]}',
            422,
            "validation_error",
            "trusted_domains[1]",
        ),
    ]
    for body, status, code, field in cases:
        resp = await api.post(
            "/v1/tenants", data=body, headers={**api.admin, "Content-Type": "application/json"}
        )
        assert resp.status == status, body
        err = (await resp.json())["error"]
        assert err["code"] == code and isinstance(err["message"], str)
        if field:
            assert err["details"]["field"] == field, body


async def test_auth(api: Any) -> None:
    t = await create(api)
    assert (await api.post("/v1/tenants", json={"name": "X"})).status == 401
    resp = await api.post("/v1/tenants", json={"name": "X"}, headers=bearer("wrong"))
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await api.post("/v1/tenants", json={"name": "X"}, headers=bearer(t["api_key"]))
    assert resp.status == 403
    resp = await api.put("/v1/contacts/c1", json={}, headers=api.admin)
    assert resp.status == 403  # tenant data needs a tenant key


async def test_tenant_isolation(api: Any) -> None:
    a = await create(api, name="A")
    b = await create(api, name="B")
    resp = await api.put(
        "/v1/contacts/+48500100200",
        json={"name": "Jan", "phones": ["+48500100200"]},
        headers=bearer(a["api_key"]),
    )
    assert resp.status == 201
    assert (await api.get("/v1/contacts/+48500100200", headers=bearer(b["api_key"]))).status == 404
    resp = await api.get("/v1/contacts", params={"phone": "+48500100200"}, headers=bearer(b["api_key"]))
    assert (await resp.json())["contacts"] == []
    resp = await api.get(f"/v1/tenants/{a['id']}", headers=bearer(b["api_key"]))
    assert resp.status == 404
    # b's contact with the same id is b's own
    resp = await api.put(
        "/v1/contacts/+48500100200",
        json={"name": "Other Jan", "phones": ["+48500100200"]},
        headers=bearer(b["api_key"]),
    )
    assert resp.status == 201
    resp = await api.get("/v1/contacts/+48500100200", headers=bearer(a["api_key"]))
    assert (await resp.json())["name"] == "Jan"
