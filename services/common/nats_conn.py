"""One NATS connection per process, reconnecting forever while the process lives."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import unquote, urlsplit

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

log = logging.getLogger(__name__)


class NatsRefused(ConnectionError):
    """The NATS server refused this process's credentials (retrying would never succeed)."""


async def connect(url: str, *, name: str, connect_timeout_s: float = 5.0) -> NATS:
    """Connects, waiting for a server that is not up yet; credentials may ride in the URL
    (`nats://user:password@host:port`, percent-encoded)."""
    shown = without_secret(url)
    parts = urlsplit(url)
    credentials = {}
    if parts.username is not None:
        # nats-py reads user and password from the URL without percent-decoding them.
        credentials = {"user": unquote(parts.username), "password": unquote(parts.password or "")}
        url = shown
    refused: list[Exception] = []

    async def on_disconnect() -> None:
        log.warning("NATS disconnected from %s; reconnecting", shown)

    async def on_reconnect() -> None:
        log.info("NATS reconnected to %s", shown)

    async def on_error(err: Exception) -> None:
        if "authorization violation" in str(err).lower():
            refused.append(err)
        log.warning("NATS error: %s", err)

    connecting = asyncio.ensure_future(nats.connect(
        servers=[url],
        name=name,
        connect_timeout=connect_timeout_s,
        # A service outlives NATS restarts: keep trying, never give up.
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        **credentials,
    ))
    # A server that is not up yet is waited for; one that refuses the credentials is an error now.
    while not connecting.done():
        await asyncio.wait({connecting}, timeout=0.2)
        if refused and not connecting.done():
            connecting.cancel()
            given = "the credentials given" if credentials else "a client without credentials"
            raise NatsRefused(f"NATS at {shown} refused {given}: {refused[0]}")
    return connecting.result()


def jetstream(nc: NATS) -> JetStreamContext:
    # Large artifact chunks take longer than the 5 s default to be acknowledged under load.
    return nc.jetstream(timeout=30.0)


def requires_auth(nc: NATS) -> bool:
    """Whether the server this connection reached asks clients for credentials (its INFO says)."""
    return bool(nc._server_info.get("auth_required"))


def without_secret(url: str) -> str:
    """The URL as logs and errors may show it: user and password dropped."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2]
