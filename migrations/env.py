"""Alembic environment: runs migrations on the connection ``gateway migrate`` hands over.

``gateway migrate`` (gateway/storage/migrate.py) opens the async engine and passes a sync connection
in ``config.attributes["connection"]``. Developers running the ``alembic`` command directly get an
engine from ``sqlalchemy.url`` (or ``GATEWAY_DATABASE__URL``).
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from gateway.storage.db import make_engine
from gateway.storage.tables import metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = make_engine(url, null_pool=True)
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("GATEWAY_DATABASE__URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set GATEWAY_DATABASE__URL or sqlalchemy.url")
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `gateway migrate`")
run_migrations_online()
