"""Mesh tickets: the gateway's signature on every call it makes to a technique service, so a worker
runs only what a gateway admitted.

The gateway checks tokens, tenants, grants and quotas; a worker checks none of them. Anyone who
reached a worker's port could otherwise skip the gateway: evaluate another tenant's upload, store
artifacts, publish progress into another job's event stream. So the gateway signs each call with a
secret the mesh shares (a file), and a worker started with that secret serves signed calls alone:

    x-modelpress-ticket: v1.<unix_ms>.<hex HMAC-SHA256(secret, method \\n unix_ms \\n sha256(request))>

The whole request is signed (its deterministic serialization), so the job id, stage index, input
model and config a worker runs are exactly what a gateway sent. The time bounds a captured ticket
to FRESH_FOR_S; capture itself is what mutual TLS between gateway and workers prevents. HMAC is
symmetric: whoever verifies could sign, so a worker that is broken into can call its peers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from services.common.runtime.auth import PUBLIC_METHOD_PREFIXES
from services.common.runtime.rpc_guards import replace_behaviour, responses_of

TICKET_HEADER = "x-modelpress-ticket"
VERSION = "v1"
TICKET_SHAPE = re.compile(rf"{VERSION}\.([0-9]{{1,16}})\.([0-9a-f]{{64}})", re.ASCII)
# How far a ticket's time may be from the worker's clock, either way: long enough for clock skew
# between machines, short enough that a ticket seen in a log is useless soon after.
FRESH_FOR_S = 300
# A shorter secret could be guessed offline from one captured ticket.
MIN_SECRET_BYTES = 32


class MeshSecretError(ValueError):
    """The mesh secret file cannot be used (missing, or too short to sign with)."""


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        raise MeshSecretError(f"mesh secret file {path} does not exist") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise MeshSecretError(f"mesh secret file {path}: {len(secret)} bytes; a mesh secret has at least "
                              f"{MIN_SECRET_BYTES} (`modelpress mesh-certs` writes one)")
    return secret


def _mac(secret: bytes, method: str, unix_ms: int, request) -> str:
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    return hmac.new(secret, f"{method}\n{unix_ms}\n{digest}".encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, request, now_s: float | None = None) -> str:
    """The ticket for calling `method` (its full path, /package.Service/Method) with `request`."""
    unix_ms = int((time.time() if now_s is None else now_s) * 1000)
    return f"{VERSION}.{unix_ms}.{_mac(secret, method, unix_ms, request)}"


def problem(secret: bytes, method: str, request, ticket: str | None, now_s: float | None = None) -> str | None:
    """What is wrong with `ticket` for this call, in words for the caller; None: it is good."""
    if ticket is None:
        return (f"no mesh ticket: technique services serve the gateway alone ({TICKET_HEADER} missing; "
                "send your requests to the gateway)")
    shape = TICKET_SHAPE.fullmatch(ticket)
    if shape is None:
        return f"malformed mesh ticket: expected {VERSION}.<unix_ms>.<HMAC-SHA256 hex>"
    stamp, mac = shape.groups()
    # Constant time: a comparison that stops at the first wrong byte tells a forger how far it got.
    # A request that could not be decoded (rpc_guards) matches no ticket, and the caller is not told
    # it was malformed: as with tokens, one without a good ticket learns nothing of its request.
    decoded = hasattr(request, "SerializeToString")
    if not decoded or not hmac.compare_digest(mac, _mac(secret, method, int(stamp), request)):
        return "bad mesh ticket signature: not signed with this mesh's secret for this method and request"
    age_s = (time.time() if now_s is None else now_s) - int(stamp) / 1000
    if abs(age_s) > FRESH_FOR_S:
        when = f"{age_s:.0f} s ago" if age_s > 0 else f"{-age_s:.0f} s in the future"
        return (f"expired mesh ticket: signed {when}; tickets are good for {FRESH_FOR_S} s "
                "(are the gateway's and this worker's clocks in step?)")
    return None


def _ticket_of(metadata) -> str | None:
    for key, value in metadata or ():
        if key == TICKET_HEADER:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


class TicketInterceptor(grpc.aio.ServerInterceptor):
    """A technique service's check: UNAUTHENTICATED, naming what is wrong, for a call whose ticket is
    missing, forged, for another request or stale. Checked inside the handler, where the decoded
    request is at hand to be digested; health and reflection stay public."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_METHOD_PREFIXES):  # health and reflection, as for tokens
            return handler
        ticket = _ticket_of(handler_call_details.invocation_metadata)

        def checking(behaviour, requests_stream: bool, responses_stream: bool):
            def refusal(request) -> str | None:
                if requests_stream:  # no single request to sign; no technique service has such a method
                    return "mesh tickets sign one request: a streamed request cannot be checked"
                return problem(self._secret, method, request, ticket, self._clock())

            if responses_stream:
                async def stream(request, context):
                    if wrong := refusal(request):
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED, wrong)
                    async for response in responses_of(behaviour, request, context):
                        yield response
                return stream

            async def unary(request, context):
                if wrong := refusal(request):
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, wrong)
                return await behaviour(request, context)
            return unary

        return replace_behaviour(handler, checking)


class _Signer:
    def __init__(self, secret: bytes, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._clock = clock

    def _signed(self, details: grpc.aio.ClientCallDetails, request) -> grpc.aio.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        ticket = sign(self._secret, method, request, self._clock())
        metadata = grpc.aio.Metadata(*(details.metadata or ()), (TICKET_HEADER, ticket))
        return details._replace(metadata=metadata)


class _UnarySigner(_Signer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._signed(client_call_details, request), request)


class _StreamSigner(_Signer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._signed(client_call_details, request), request)


def signers(secret: bytes, clock: Callable[[], float] = time.time) -> list[grpc.aio.ClientInterceptor]:
    """The gateway's side: client interceptors that put a fresh ticket on every call of a channel
    (grpc.aio sorts interceptors by kind, so one per call shape the technique services serve)."""
    return [_UnarySigner(secret, clock), _StreamSigner(secret, clock)]
