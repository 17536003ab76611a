"""Shared fixtures. Every storage test runs on SQLite and on PostgreSQL (``db_target``).

PostgreSQL comes from ``GATEWAY_TEST_PG_URL`` (default: the local server, database ``test``); each test
run migrates a fresh schema ``gw_test_<random>`` once and drops it at the end; tests truncate it.
SQLite: one migrated template file per run, copied for each test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.http.app import build_app
from gateway.http.context import ApiContext
from gateway.services.contacts import ContactService
from gateway.services.conversations import ConversationService
from gateway.services.events import EventHub
from gateway.services.outbound import EmailSettings, MessageQueries, OutboundService, SmsSettings
from gateway.services.tenants import TenantService
from gateway.storage import senders
from gateway.storage.db import Database, make_engine
from gateway.storage.migrate import upgrade
from gateway.storage.tables import metadata

PG_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class DbTarget:
    """Where a test's database lives: pass ``url`` and ``pg_schema`` to Database.open / make_engine."""

    backend: str
    url: str
    pg_schema: str | None = None

    def env(self) -> dict[str, str]:
        """Environment for a child process (gateway CLI, worker) that should use this database."""
        env = {"GATEWAY_DATABASE__URL": self.url}
        if self.pg_schema:
            env["GATEWAY_DATABASE__SCHEMA"] = self.pg_schema
        return env


def run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion on a private loop (session fixtures are set up from async ones)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    run_blocking(upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    schema = f"gw_test_{secrets.token_hex(4)}"
    run_blocking(upgrade(PG_URL, pg_schema=schema))
    yield schema

    async def _drop() -> None:
        engine = make_engine(PG_URL, null_pool=True)
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()

    run_blocking(_drop())


async def _truncate_pg(schema: str) -> None:
    engine = make_engine(PG_URL, null_pool=True, pg_schema=schema)
    names = ", ".join(f'"{schema}"."{t.name}"' for t in metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> DbTarget:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "gateway.sqlite3"
        shutil.copyfile(template, path)
        return DbTarget("sqlite", f"sqlite+aiosqlite:///{path}")
    schema: str = request.getfixturevalue("pg_schema")
    await _truncate_pg(schema)
    return DbTarget("postgresql", PG_URL, schema)


@pytest.fixture
async def db(db_target: DbTarget) -> AsyncIterator[Database]:
    database = await Database.open(db_target.url, pg_schema=db_target.pg_schema)
    yield database
    await database.close()


ADMIN_TOKEN = "test-admin-token-0123456789"
MAIL_DOMAIN = "mail.example.test"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


POOL = ("+48500000001", "+48500000002")
SMS_SETTINGS = SmsSettings(
    allowed_regions=("PL", "DE"),
    default_region="PL",
    max_parts=10,
    reply_window=timedelta(days=15),
    max_attempts=5,
)
MESSAGE_ID_KEY = b"test-message-id-secret-0123"
EMAIL_SETTINGS = EmailSettings(mail_domain=MAIL_DOMAIN, message_id_key=MESSAGE_ID_KEY, max_attempts=5)


@pytest.fixture
async def api_context(db: Database, clock: FakeClock, tmp_path: Path) -> ApiContext:
    await db.write(lambda conn: senders.sync_pool(conn, POOL, clock()))
    hub = EventHub()
    db.on_commit = hub.notify
    return ApiContext(
        db=db,
        tenants=TenantService(db, clock, mail_domain=MAIL_DOMAIN, default_quota_bytes=100 * 2**20),
        contacts=ContactService(db, clock, default_region="PL"),
        admin_token=ADMIN_TOKEN,
        outbound=OutboundService(db, clock, SMS_SETTINGS, email=EMAIL_SETTINGS),
        messages=MessageQueries(db, clock),
        conversations=ConversationService(db, clock, hub, data_dir=tmp_path / "data", poll_interval=0.2),
    )


@pytest.fixture
async def api(aiohttp_client: Any, api_context: ApiContext) -> Any:
    """An aiohttp test client on the real app over the test database, with admin helpers."""
    client = await aiohttp_client(build_app(api_context))
    client.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return client
