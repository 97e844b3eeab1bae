"""A wrapper passes on what a response-streaming behaviour sends, whichever shape the behaviour has:
an async generator's yields, or a coroutine's own context.write calls (grpc's HealthServicer.Watch)."""

from __future__ import annotations

from services.common.runtime.rpc_guards import responses_of


class Context:
    def __init__(self) -> None:
        self.written: list[str] = []

    async def write(self, message: str) -> None:
        self.written.append(message)


async def test_an_async_generator_behaviour_is_iterated():
    async def behaviour(request, context):
        yield request + "-1"
        yield request + "-2"

    context = Context()
    assert [r async for r in responses_of(behaviour, "r", context)] == ["r-1", "r-2"] and not context.written


async def test_a_coroutine_behaviour_that_writes_itself_is_awaited_not_iterated():
    async def watch(request, context):
        await context.write(request + "-serving")

    context = Context()
    assert [r async for r in responses_of(watch, "r", context)] == []
    assert context.written == ["r-serving"]
