"""``gateway`` command line: run | migrate | check-config | tenant create.

Exit codes (SPEC 2.1): 0 ok, 2 bad usage or config (one line naming the key), 1 runtime failure.
No business logic here: parse arguments, load the config, call runtime or a service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway import config as config_mod
from gateway.config import Config, ConfigError
from gateway.logs import setup_logging

log = logging.getLogger("gateway.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="Messaging gateway: SMS (SMPP) and email (SMTP).")
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "-c", "--config", metavar="FILE", help="TOML config (default conf/gateway.toml if present)"
        )
        return sp

    with_config(sub.add_parser("run", help="run the daemon"))
    with_config(sub.add_parser("migrate", help="bring the database schema to the newest version"))
    with_config(
        sub.add_parser("check-config", help="validate and print the effective config (secrets masked)")
    )
    tenant = sub.add_parser("tenant", help="manage tenants")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    create = with_config(
        tsub.add_parser("create", help="create a tenant; prints its id, mailbox and API key")
    )
    create.add_argument("name")
    create.add_argument("--prefix", help="mailbox prefix ([a-z0-9-]{3,32}); default derived from NAME")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config, os.environ)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    if args.command == "check-config":
        print(json.dumps(config_mod.to_masked_dict(cfg), indent=2, sort_keys=False))
        problem = config_mod.admin_token_problem(cfg)
        if problem:
            print(f"gateway: config error: http.admin_token: {problem}", file=sys.stderr)
            return 2
        return 0
    if args.command == "migrate":
        return _run_async(_migrate(cfg))
    if args.command == "tenant":
        return _run_async(_tenant_create(cfg, args.name, args.prefix))
    if args.command == "run":
        problem = config_mod.admin_token_problem(cfg)
        if problem:
            print(f"gateway: config error: http.admin_token: {problem}", file=sys.stderr)
            return 2
        return _run_async(_run(cfg, args.config))
    raise AssertionError(args.command)


def _run_async(coro: object) -> int:
    from gateway.runtime import StartupError

    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    except Exception as exc:
        log.exception("failed")
        print(f"gateway: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _migrate(cfg: Config) -> int:
    from gateway.storage.migrate import current_revision, upgrade

    schema = cfg.database.schema or None
    await upgrade(cfg.database.url, pg_schema=schema)
    revision = await current_revision(cfg.database.url, pg_schema=schema)
    log.info("database migrated", extra={"revision": revision})
    print(f"database at revision {revision}")
    return 0


async def _tenant_create(cfg: Config, name: str, prefix: str | None) -> int:
    from gateway.domain.model import SenderMode
    from gateway.runtime import utc_now
    from gateway.services.errors import ServiceError
    from gateway.services.tenants import TenantService, TenantSettings
    from gateway.storage.db import Database

    db = await Database.open(cfg.database.url, pg_schema=cfg.database.schema or None)
    try:
        service = TenantService(
            db,
            utc_now,
            mail_domain=cfg.smtp.mail_domain,
            default_quota_bytes=cfg.storage.attachments_quota_bytes_default,
        )
        try:
            created = await service.create(
                TenantSettings(name=name, mailbox_prefix=prefix, sms_sender_mode=SenderMode.POOL)
            )
        except ServiceError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return 2
    finally:
        await db.close()
    t = created.tenant
    print(f"id: {t.id}")
    print(f"mailbox: {service.mailbox_address(t.mailbox_prefix)}")
    print(f"api_key: {created.api_key}")
    return 0


async def _run(cfg: Config, path: str | None) -> int:
    from gateway.runtime import Runtime

    runtime = Runtime(config=cfg, config_path=path, environ=dict(os.environ))
    await runtime.run()
    return 0
