"""Ids that are not shaped like the mesh's own (NATS wildcards, dots, non-ASCII, megabytes) get
INVALID_ARGUMENT naming the field, with the input cited short, from every RPC that takes one;
never UNKNOWN or INTERNAL from a KV key or subject built out of them."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from modelpress import Client
from modelpress.v1 import common_pb2

HOSTILE = ["*", ">", "jobs.>", "é", "a\x00b", "z" * 5_000_000]


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


async def _refused(fn, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        await call(fn)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value.code(), info.value.details())
    assert info.value.details().startswith(field) and len(info.value.details()) < 300


@pytest.mark.parametrize("bad", HOSTILE, ids=["star", "gt", "subject", "non-ascii", "nul", "5MB"])
async def test_every_rpc_taking_an_id_refuses_one_of_another_shape(gateway, tmp_path, bad):
    client = Client(gateway)
    await _refused(lambda: client.get_job(bad), "job_id")
    await _refused(lambda: client.get_result(bad), "job_id")
    await _refused(lambda: client.cancel_job(bad), "job_id")
    await _refused(lambda: client.delete_job(bad), "job_id")
    await _refused(lambda: list(client.watch(bad)), "job_id")
    await _refused(lambda: client.report(job_id=bad), "job_id")
    await _refused(lambda: client.report(comparison_id=bad), "comparison_id")
    await _refused(lambda: client.lineage(bad), "artifact_id")
    await _refused(lambda: client.tag(bad, "mine"), "artifact_id")
    await _refused(lambda: client.download(tmp_path / "out", artifact_id=bad), "artifact_id")
    await _refused(lambda: client.create_job(f"artifact:{bad}", "int8-weight-only",
                                             evaluation=common_pb2.EvaluationSpec(skip=True)), "model.artifact_id")


async def test_a_job_state_outside_the_enum_is_refused_and_a_well_shaped_unknown_id_is_not_found(gateway):
    client = Client(gateway)
    await _refused(lambda: client.list_jobs(state=99), "state")
    with pytest.raises(grpc.RpcError) as info:
        await call(client.get_job, "j-0000000000000000")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_window_past_the_models_positions_is_refused_before_any_work(gateway, tiny_bert_dir):
    client = Client(gateway)
    long_window = common_pb2.EvaluationSpec(sequence_length=8192)
    await _refused(lambda: client.evaluate("builtin:minilm-l6", long_window), "spec.sequence_length")
    upload = await call(client.upload, tiny_bert_dir)  # its config.json says 512 positions
    await _refused(lambda: client.create_job(f"artifact:{upload.id}", "fp16", evaluation=long_window),
                   "evaluation.sequence_length")
    await _refused(lambda: client.run_benchmark(f"artifact:{upload.id}", sequence_lengths=[128, 1024]),
                   "sequence_lengths")


async def test_a_grid_point_past_the_work_budget_is_resource_exhausted(gateway):
    client = Client(gateway)
    huge = common_pb2.EvaluationSpec(batch_size=256, sequence_length=8192)
    for fn in (lambda: client.evaluate("builtin:smollm2-135m", huge),
               lambda: client.run_benchmark("builtin:smollm2-135m", batch_sizes=[256], sequence_lengths=[8192])):
        with pytest.raises(grpc.RpcError) as info:
            await call(fn)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "work budget" in info.value.details()
