"""One NATS connection per process, reconnecting forever while the process lives."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

log = logging.getLogger(__name__)


async def connect(url: str, *, name: str, connect_timeout_s: float = 5.0) -> NATS:
    async def on_disconnect() -> None:
        log.warning("NATS disconnected from %s; reconnecting", url)

    async def on_reconnect() -> None:
        log.info("NATS reconnected to %s", url)

    async def on_error(err: Exception) -> None:
        log.warning("NATS error: %s", err)

    return await nats.connect(
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
    )


def jetstream(nc: NATS) -> JetStreamContext:
    # Large artifact chunks take longer than the 5 s default to be acknowledged under load.
    return nc.jetstream(timeout=30.0)
