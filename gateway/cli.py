"""``gateway`` command line: run | migrate | check-config | tenant create | dkim-keygen.

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
    keygen = with_config(
        sub.add_parser("dkim-keygen", help="write a DKIM key pair and print the DNS TXT record to publish")
    )
    keygen.add_argument("--selector", help="default [dkim] selector")
    keygen.add_argument("--domain", help="default [smtp] mail_domain")
    keygen.add_argument(
        "--out", metavar="DIR", help="default: the directory of [dkim] private_key_file, else DATA_DIR/dkim"
    )
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--ed25519", action="store_true", help="an ed25519 key (RFC 8463) instead of RSA")
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
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
        if email := config_mod.email_problem(cfg):
            print(f"gateway: config error: {email[0]}: {email[1]}", file=sys.stderr)
            return 2
        return 0
    if args.command == "migrate":
        return _run_async(_migrate(cfg))
    if args.command == "tenant":
        return _run_async(_tenant_create(cfg, args.name, args.prefix))
    if args.command == "dkim-keygen":
        return _dkim_keygen(cfg, args)
    if args.command == "run":
        problem = config_mod.admin_token_problem(cfg)
        if problem:
            print(f"gateway: config error: http.admin_token: {problem}", file=sys.stderr)
            return 2
        if email := config_mod.email_problem(cfg):
            print(f"gateway: config error: {email[0]}: {email[1]}", file=sys.stderr)
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


def _dkim_keygen(cfg: Config, args: argparse.Namespace) -> int:
    """Write ``SELECTOR.private`` (mode 0600) and ``SELECTOR.txt`` under the output directory and
    print the zone-file line to publish (RFC 6376 §3.6.2.1: ``SELECTOR._domainkey.DOMAIN``)."""
    import base64
    import importlib
    from pathlib import Path

    from gateway.config._rules import ConfigError as _ConfigError
    from gateway.config._rules import _check_domain, _Invalid
    from gateway.smtp.dkim_keys import dns_record, generate_rsa, txt_record_lines

    selector = args.selector or (cfg.dkim.ed25519_selector if args.ed25519 else "") or cfg.dkim.selector
    domain = args.domain or cfg.smtp.mail_domain
    try:
        selector, domain = _check_domain(selector), _check_domain(domain)
    except _Invalid as exc:
        print(f"gateway: {_ConfigError('dkim-keygen', exc.reason)}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
    elif cfg.dkim.private_key_file:
        out = Path(cfg.dkim.private_key_file).parent
    else:
        out = Path(cfg.storage.data_dir) / "dkim"
    key_path = out / f"{selector}.{'ed25519' if args.ed25519 else 'private'}"
    txt_path = out / f"{selector}.txt"
    if not args.force and (key_path.exists() or txt_path.exists()):
        print(f"gateway: {key_path} or {txt_path} exists; use --force to replace them", file=sys.stderr)
        return 2
    if args.ed25519:
        try:
            signing = importlib.import_module("nacl.signing")
        except ImportError:
            print("gateway: ed25519 keys need PyNaCl (pip install pynacl)", file=sys.stderr)
            return 2
        key = signing.SigningKey.generate()
        private = base64.b64encode(bytes(key)) + b"\n"  # dkimpy reads the base64 seed
        name, value = dns_record(selector, domain, bytes(key.verify_key), key_type="ed25519")
    else:
        if args.bits < 1024 or args.bits > 8192 or args.bits % 2:
            print("gateway: --bits must be an even number from 1024 to 8192", file=sys.stderr)
            return 2
        rsa = generate_rsa(args.bits)
        private = rsa.private_pem()
        name, value = dns_record(selector, domain, rsa.public_der())
    record = txt_record_lines(name, value)
    out.mkdir(parents=True, exist_ok=True)
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    txt_path.write_text(record + "\n")
    which = "ed25519_private_key_file" if args.ed25519 else "private_key_file"
    print(f"private key: {key_path}  (set [dkim] {which} to it)")
    print(f"DNS record (also in {txt_path}):")
    print(record)
    return 0


async def _run(cfg: Config, path: str | None) -> int:
    from gateway.runtime import Runtime
    from gateway.runtime.gc_tuning import tune_after_start

    runtime = Runtime(config=cfg, config_path=path, environ=dict(os.environ))

    async def tune_when_started() -> None:
        await runtime.started.wait()
        tune_after_start()

    tuning = asyncio.create_task(tune_when_started())
    try:
        await runtime.run()
    finally:
        tuning.cancel()
    return 0
