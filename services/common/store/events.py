"""Job events on the JetStream stream `modelpress.jobs.<job_id>.events`.

Any process (gateway or technique service) publishes; a watcher replays the job's whole
history in order, then follows live events until the job reaches a terminal state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors

from google.protobuf import timestamp_pb2
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from modelpress.structs import to_struct
from modelpress.v1 import common_pb2

STREAM = "MODELPRESS_EVENTS"
SUBJECT_PREFIX = "modelpress.jobs"
TERMINAL_STATES = frozenset(
    {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
)


def subject(job_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{job_id}.events"


def is_terminal(event: common_pb2.JobEvent) -> bool:
    return event.kind == common_pb2.EVENT_KIND_JOB_STATE and event.job_state in TERMINAL_STATES


def make_event(job_id: str, kind: int, **fields) -> common_pb2.JobEvent:
    metrics = fields.pop("metrics", None)
    event = common_pb2.JobEvent(job_id=job_id, kind=kind, **fields)
    event.time.CopyFrom(timestamp_pb2.Timestamp())
    event.time.GetCurrentTime()
    if metrics:
        event.metrics.CopyFrom(to_struct(metrics))
    return event


class EventLog:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def ensure(self) -> "EventLog":
        try:
            await self._js.stream_info(STREAM)
        except NotFoundError:
            await self._js.add_stream(
                api.StreamConfig(
                    name=STREAM,
                    subjects=[f"{SUBJECT_PREFIX}.*.events"],
                    storage=api.StorageType.FILE,
                    retention=api.RetentionPolicy.LIMITS,
                    # A week of history is plenty for watching and for reports.
                    max_age=7 * 24 * 3600.0,
                )
            )
        return self

    async def publish(self, event: common_pb2.JobEvent) -> None:
        # The id lets the stream drop a copy a retried publish stored twice (within 2 minutes).
        await self._js.publish(subject(event.job_id), event.SerializeToString(), stream=STREAM,
                               headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def replay(
        self,
        job_id: str,
        *,
        follow: bool = True,
        is_finished: Callable[[], Awaitable[bool]] | None = None,
        poll_s: float = 1.0,
    ) -> AsyncIterator[common_pb2.JobEvent]:
        """Yields the job's events from the first, numbering them 1..N.

        With `follow`, keeps waiting for new events until a terminal job-state event
        (or, when the stream is idle, until `is_finished()` says the job is over, which
        covers a job whose last event was never written). Without it, stops once the
        stored history is drained.
        """
        sub = await self._js.subscribe(
            subject(job_id), stream=STREAM, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
        )
        sequence = 0
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=poll_s)
                except nats.errors.TimeoutError:
                    if not follow or (is_finished is not None and await is_finished()):
                        return
                    continue
                event = common_pb2.JobEvent.FromString(msg.data)
                sequence += 1
                event.sequence = sequence
                yield event
                if is_terminal(event):
                    return
        finally:
            await sub.unsubscribe()

    async def purge(self, job_id: str) -> None:
        await self._js.purge_stream(STREAM, subject=subject(job_id))
