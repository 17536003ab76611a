"""Bring a database to the newest schema with Alembic (``gateway migrate``)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from gateway.storage.db import make_engine

#: ``migrations/`` sits beside the package in the source tree, which is how the gateway is deployed
#: (a checkout with its virtualenv, see systemd/gateway.service).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config() -> AlembicConfig:
    # Alembic narrates every step at INFO; our own log line says what was done.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


async def upgrade(url: str, *, pg_schema: str | None = None, revision: str = "head") -> None:
    """Migrate to ``revision``. With ``pg_schema`` the schema is created first (tests)."""
    engine = make_engine(url, null_pool=True, pg_schema=pg_schema)
    try:
        async with engine.connect() as conn:
            if pg_schema and engine.dialect.name == "postgresql":
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"'))
                await conn.commit()
            cfg = alembic_config()

            def _run(sync_conn: Connection) -> None:
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, revision)

            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


async def current_revision(url: str, *, pg_schema: str | None = None) -> str | None:
    engine = make_engine(url, null_pool=True, pg_schema=pg_schema)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
