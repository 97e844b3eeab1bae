"""One NATS connection per process, reconnecting forever while the process lives."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import unquote, urlsplit

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

log = logging.getLogger(__name__)


# How long a JetStream request is retried while the cluster elects a new leader for a stream.
FAILOVER_S = 60.0
# NATS failures that mean "the store did not answer now", not "the request was wrong".
NATS_AWAY = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
             nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError,
             ServiceUnavailableError, NoStreamResponseError)


def is_stream_full(exc: BaseException) -> bool:
    """Whether JetStream refused a write for want of room (the stream's or the server's bound):
    an answer, never retried."""
    text = str(exc).lower()
    return "maximum bytes" in text or "insufficient resources" in text


class NatsRefused(ConnectionError):
    """The NATS server refused this process's credentials (retrying would never succeed)."""


async def connect(url: str, *, name: str, connect_timeout_s: float = 5.0) -> NATS:
    """Connects, waiting for a server that is not up yet; credentials may ride in the URL
    (`nats://user:password@host:port`, percent-encoded). A cluster is several URLs joined by
    commas: the client moves to another server when the one it uses goes away."""
    shown = without_secret(url)
    servers = shown.split(",")
    parts = urlsplit(url.split(",")[0])
    credentials = {}
    if parts.username is not None:
        # nats-py reads user and password from the URL without percent-decoding them.
        credentials = {"user": unquote(parts.username), "password": unquote(parts.password or "")}
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
        servers=servers,
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


class ReplicatedJetStream(JetStreamContext):
    """Makes every stream, KV bucket and object store it creates with `replicas` copies (on a
    JetStream cluster: losing fewer than half of them loses nothing), so the count is set once,
    where the process connects, not at each bucket. It also hands a refused asynchronous publish
    (a full stream) to the publisher, which nats-py left waiting forever."""

    def __init__(self, nc: NATS, replicas: int, failover_s: float = FAILOVER_S, **options) -> None:
        super().__init__(nc, **options)
        self.replicas = replicas
        self.failover_s = failover_s

    async def _retrying(self, call):
        """Runs `call` again while JetStream does not answer (a server of the cluster died and a
        new stream leader is being elected, or this client is moving to another server) for up to
        `failover_s`; a full stream is an answer, not a failover."""
        deadline = time.monotonic() + self.failover_s
        delay = 0.1
        while True:
            try:
                return await call()
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError,
                     ServiceUnavailableError, NoStreamResponseError) as exc:
                if is_stream_full(exc) or time.monotonic() + delay > deadline:
                    raise
                log.info("JetStream did not answer (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def publish(self, subject: str, payload: bytes = b"", timeout=None, stream=None, headers=None, **rest):
        # A retried publish the server had stored after all is dropped as a duplicate only when the
        # caller gave a Nats-Msg-Id (events do); a KV put retried is the same last value.
        return await self._retrying(lambda: super(ReplicatedJetStream, self).publish(
            subject, payload, timeout=timeout, stream=stream, headers=headers, **rest))

    @property
    def _jsm(self) -> JetStreamContext:
        # nats-py makes a plain manager here for consumers (pull_subscribe, subscribe): this one
        # retries the same way.
        return self

    async def _api_request(self, req_subject: str, req: bytes = b"", timeout: float = 5):
        return await self._retrying(lambda: super(ReplicatedJetStream, self)._api_request(req_subject, req, timeout))

    async def get_msg(self, *args, **kwargs):
        if not kwargs.get("direct"):  # the other form goes through _api_request
            return await super().get_msg(*args, **kwargs)
        return await self._retrying(lambda: super(ReplicatedJetStream, self).get_msg(*args, **kwargs))

    async def _handle_async_reply(self, msg) -> None:
        try:
            await super()._handle_async_reply(msg)
        except APIError as err:  # nats-py 2.x raises the error here instead of setting it on the future
            token = msg.subject[len(self._nc._inbox_prefix) + 22 + 2:]
            future = self._publish_async_futures.get(token)
            if future is not None and not future.done():
                future.set_exception(err)

    async def add_stream(self, config: api.StreamConfig | None = None, **params):
        config = (config or api.StreamConfig()).evolve(**params)
        if config.num_replicas is None:
            config.num_replicas = self.replicas
        return await super().add_stream(config)

    async def create_key_value(self, config: api.KeyValueConfig | None = None, **params):
        config = (config or api.KeyValueConfig(bucket=params["bucket"])).evolve(**params)
        if config.replicas == 1:  # the field's default: nothing asked for another count
            config.replicas = self.replicas
        return await super().create_key_value(config)

    async def create_object_store(self, bucket: str | None = None, config: api.ObjectStoreConfig | None = None,
                                  **params):
        config = (config or api.ObjectStoreConfig(bucket=bucket)).evolve(**params)
        if config.replicas == 1:
            config.replicas = self.replicas
        return await super().create_object_store(bucket, config)


def jetstream(nc: NATS, replicas: int = 1) -> JetStreamContext:
    # Large artifact chunks take longer than the 5 s default to be acknowledged under load.
    return ReplicatedJetStream(nc, replicas, timeout=30.0)


def requires_auth(nc: NATS) -> bool:
    """Whether the server this connection reached asks clients for credentials (its INFO says)."""
    return bool(nc._server_info.get("auth_required"))


def without_secret(url: str) -> str:
    """The URL (or comma-joined URLs of a cluster) as logs and errors may show it: user and
    password dropped."""
    return ",".join(_one_without_secret(part) for part in url.split(","))


def _one_without_secret(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url.rpartition("@")[2]
