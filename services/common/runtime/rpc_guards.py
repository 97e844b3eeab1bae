"""Server-side wrapping of RPC handlers, shared by every service: replacing a handler's behaviour
whatever its streaming shape, and refusing requests that cannot be decoded.

A request nested past protobuf's decode depth (100) fails in gRPC's deserializer, which answers
UNKNOWN; DecodeGuard turns it into INVALID_ARGUMENT before any servicer code runs. NatsAwayGuard
answers UNAVAILABLE when NATS did not answer in time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from services.common.store.nats_conn import NATS_AWAY

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# wrap(behaviour, requests_stream, responses_stream) -> the new behaviour
Wrap = Callable[[Callable, bool, bool], Callable]


async def responses_of(behaviour: Callable, request, context) -> AsyncIterator:
    """What a response-streaming behaviour sends, for a wrapper to pass on, whichever shape the
    behaviour has: an async generator yields its responses; a coroutine (grpc's aio
    HealthServicer.Watch) sends them itself with context.write and yields nothing here. Iterating
    the coroutine instead failed every Health/Watch with UNKNOWN."""
    outcome = behaviour(request, context)
    if hasattr(outcome, "__aiter__"):
        async for response in outcome:
            yield response
    else:
        await outcome


def replace_behaviour(handler: grpc.RpcMethodHandler, wrap: Wrap) -> grpc.RpcMethodHandler:
    for kind in KINDS:
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            requests, responses = kind.split("_")
            return handler._replace(**{kind: wrap(behaviour, requests == "stream", responses == "stream")})
    return handler


class _Undecodable:
    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _message_of(undecodable: _Undecodable) -> str:
    return f"request: cannot be decoded ({undecodable.error}); nesting is limited to 100 levels"


def _lenient(deserializer):
    def decode(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(exc)

    return decode


def _refusing_undecodable(behaviour, requests_stream: bool, responses_stream: bool):
    if requests_stream:
        async def checked(request_iterator, context):
            async for request in request_iterator:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message_of(request))
                yield request
        if responses_stream:
            async def stream_stream(request_iterator, context):
                async for response in responses_of(behaviour, checked(request_iterator, context), context):
                    yield response
            return stream_stream

        async def stream_unary(request_iterator, context):
            return await behaviour(checked(request_iterator, context), context)
        return stream_unary

    if responses_stream:
        async def unary_stream(request, context):
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message_of(request))
            async for response in responses_of(behaviour, request, context):
                yield response
        return unary_stream

    async def unary_unary(request, context):
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message_of(request))
        return await behaviour(request, context)
    return unary_unary


class DecodeGuard(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT for a request protobuf cannot decode (instead of gRPC's UNKNOWN)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        handler = handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        return replace_behaviour(handler, _refusing_undecodable)




def _nats_away_message(exc: BaseException) -> str:
    return f"NATS JetStream did not answer ({type(exc).__name__}); the mesh's store is failing over or down: try again"


def _unavailable_when_nats_is_away(behaviour, requests_stream: bool, responses_stream: bool):
    if responses_stream:
        async def streaming(request, context):
            try:
                async for response in responses_of(behaviour, request, context):
                    yield response
            except NATS_AWAY as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _nats_away_message(exc))
        return streaming

    async def single(request, context):
        try:
            return await behaviour(request, context)
        except NATS_AWAY as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _nats_away_message(exc))
    return single


class NatsAwayGuard(grpc.aio.ServerInterceptor):
    """UNAVAILABLE (retryable) for an RPC that failed because NATS did not answer, past the
    JetStream retries (nats_conn.ReplicatedJetStream), instead of gRPC's UNKNOWN."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return replace_behaviour(handler, _unavailable_when_nats_is_away)
