"""The webhook sender: aiohttp client POSTs that cannot be pointed at our own network (SSRF).

Every connection goes through :class:`GuardedResolver`: the host is resolved with the injected
resolver and *every* address is checked (gateway.domain.webhooks.address_problem) before aiohttp may
connect, and aiohttp connects to exactly the addresses that were checked, so a name that resolves
to a public address for the check and to 127.0.0.1 for the connection (DNS rebinding) gets nowhere.
IP-literal URLs skip aiohttp's resolver, so they are checked here before the request. Redirects are
not followed (a 3xx is a failed delivery): a redirect could point anywhere. Proxies from the
environment are ignored for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from gateway import __version__
from gateway.domain.webhooks import Resolver, address_problem, ip_literal
from gateway.services.webhooks import DeliveryResult

log = logging.getLogger(__name__)

#: Of the receiver's answer we read at most this much (and ignore it): only the status counts.
MAX_RESPONSE_BYTES = 64 * 1024


class RefusedAddressError(OSError):
    """The webhook's host resolves to an address webhooks may not reach."""


async def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo, as the daemon resolves (tests inject their own)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedResolver(AbstractResolver):
    def __init__(self, resolve: Resolver, allow_private: bool) -> None:
        self._resolve = resolve
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._resolve(host, port)
        if not addresses:
            raise OSError(f"{host} does not resolve")
        if not self._allow_private:
            for address in addresses:
                if (reason := address_problem(address)) is not None:
                    raise RefusedAddressError(f"{host} resolves to a refused address ({address}: {reason})")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class AiohttpWebhookSender:
    """One ClientSession for every tenant (connections are pooled per host). Use as ``async with``."""

    def __init__(self, resolver: Resolver, *, allow_private: bool, max_connections: int = 100) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AiohttpWebhookSender:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._resolver, self._allow_private),
            limit=self._max_connections,
            # Re-resolve (and so re-check) at least every minute; aiohttp caches answers meanwhile.
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            headers={"User-Agent": f"gateway-webhooks/{__version__}"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> DeliveryResult:
        assert self._session is not None, "use AiohttpWebhookSender as an async context manager"
        try:
            host = URL(url).host or ""
        except ValueError as exc:
            return DeliveryResult(False, None, f"invalid URL: {exc}")
        literal = ip_literal(host)
        if literal is not None and not self._allow_private and (reason := address_problem(literal)):
            return DeliveryResult(False, None, f"refused: {literal} is a {reason} address")
        try:
            async with self._session.post(
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)
                if 200 <= resp.status < 300:
                    return DeliveryResult(True, resp.status)
                return DeliveryResult(False, resp.status, f"HTTP {resp.status}")
        except TimeoutError:
            return DeliveryResult(False, None, f"no answer within {timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddressError):
                return DeliveryResult(False, None, f"refused: {exc.os_error}")
            return DeliveryResult(False, None, f"cannot connect: {exc.os_error}")
        except (aiohttp.ClientError, OSError) as exc:
            return DeliveryResult(False, None, f"{type(exc).__name__}: {exc}")
