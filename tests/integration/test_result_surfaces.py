"""One job, three surfaces, one schema: the CLI's `--json` (a subprocess), the client and the in-process
run agree field by field; a figure that was not measured is null everywhere and fails the gate that
names it, saying why."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import modelpress
from modelpress import Client
from modelpress.results import job_document
from modelpress.v1 import common_pb2

# A short evaluation: one tiny shape, few timed passes, few held-out sentences.
FAST = common_pb2.EvaluationSpec(batch_size=1, sequence_length=16, latency_iterations=3, quality_sentences=16,
                                 threads=1)
FAST_FLAGS = ["--batch-size", "1", "--sequence-length", "16", "--iterations", "3", "--sentences", "16",
              "--threads", "1"]
RECIPE = "onnx-int8"


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


def cli_json(home, gateway: str, *args: str) -> dict:
    """`modelpress --gateway G ARGS --json` in its own process (reading no local mesh's state under
    `home`); its JSON document from stdout."""
    env = {**os.environ, "MODELPRESS_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "--gateway", gateway, *args, "--json"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    start = next((i for i, line in enumerate(done.stdout.splitlines()) if line.startswith("{")), None)
    assert start is not None, f"no JSON on stdout: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return json.loads("\n".join(done.stdout.splitlines()[start:]))


def keys(value: dict | None) -> set[str]:
    return set(value or {})


async def test_the_cli_the_client_and_the_in_process_run_agree_on_one_job(gateway, bert_dir, tmp_path):
    from_cli = await call(cli_json, tmp_path / "home", gateway, "compress", f"path:{bert_dir}", "--recipe", RECIPE,
                          "--wait", *FAST_FLAGS)
    client = Client(gateway)
    from_client = await call(client.job_document, from_cli["job_id"])
    # The CLI prints the job document (it may add keys of its own; every document key is the same).
    assert {name: from_cli.get(name) for name in from_client} == from_client
    assert from_client["state"] == "JOB_STATE_SUCCEEDED", from_client["error"]
    result = from_client["result"]
    # An encoder has no perplexity and an ONNX graph no FLOPs count: null with why, never 0.
    assert result["perplexity_increase"] is None and result["original_perplexity"] is None
    assert result["not_measured"]["perplexity_increase"] == "an encoder has no perplexity"
    assert result["compressed"]["flops"] is None and result["original"]["flops"] > 0
    assert "ONNX graph" in result["compressed"]["not_measured"]["flops"]
    assert isinstance(result["original_model_size_bytes"], int) and result["compression_ratio"] > 1
    # The client's message carries the same headline the documents do.
    message = (await call(client.get_result, from_cli["job_id"])).result
    assert (message.headline.text, message.headline.colour) == (result["headline"]["text"],
                                                                result["headline"]["colour"])
    assert not message.HasField("perplexity_increase") and message.HasField("compression_ratio")

    run = await call(modelpress.compress, bert_dir, RECIPE, tmp_path / "out")
    local = run.document()
    assert local == job_document(run.job)
    # The same schema: the same keys at every level, the same stage, format and config.
    assert keys(local) == keys(from_client) and keys(local["result"]) == keys(result)
    assert keys(local["result"]["headline"]) == keys(result["headline"])
    mesh_stage, local_stage = from_client["stages"][0], local["stages"][0]
    assert keys(local_stage) == keys(mesh_stage) and keys(local_stage["output"]) == keys(mesh_stage["output"])
    assert local_stage["spec"] == mesh_stage["spec"]
    assert local_stage["output"]["format"] == mesh_stage["output"]["format"] == "ARTIFACT_FORMAT_ONNX"
    assert keys(local_stage["metrics"]) == keys(mesh_stage["metrics"])
    assert (local["recipe"], local["state"]) == (from_client["recipe"], from_client["state"])
    assert (run.stages[0].technique, run.stages[0].result.format) == ("TECHNIQUE_OPTIMIZER",
                                                                      "ARTIFACT_FORMAT_ONNX")
    # Nothing is measured in-process: null with why, as for a job whose evaluation was skipped.
    assert local["result"]["compression_ratio"] is None and local["result"]["not_measured"]["compression_ratio"]


async def test_a_job_without_evaluation_reads_null_not_zero(gateway, bert_dir, tmp_path):
    document = await call(cli_json, tmp_path / "home", gateway, "compress", f"path:{bert_dir}", "--recipe", RECIPE,
                          "--wait", "--no-eval")
    result = document["result"]
    assert document["state"] == "JOB_STATE_SUCCEEDED"
    assert result["compression_ratio"] is None and result["original_model_size_bytes"] is None
    assert result["compressed_model_size_bytes"] == document["output"]["size_bytes"] > 0
    assert "evaluation skipped" in result["not_measured"]["compression_ratio"]
    assert "no before/after measurement was made" in result["headline"]["text"]


async def test_a_gate_on_figures_that_were_not_measured_fails_naming_why(gateway, bert_dir):
    """The reported case: `perplexity_increase<=0.10, flops_ratio<=0.5` on an encoder exported to ONNX."""
    pipeline = {"name": "onnx-int8-gated", "stages": [
        {"name": "export", "technique": "optimizer", "method": "onnx-int8"},
        {"name": "check", "technique": "evaluator", "gate": "perplexity_increase<=0.10, flops_ratio<=0.5"}]}
    client = Client(gateway)
    job = await call(client.create_job, f"path:{bert_dir}", pipeline, evaluation=FAST)
    events = await call(lambda: list(client.watch(job.job_id)))
    job = await call(client.get_job, job.job_id)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.startswith("FAILED_PRECONDITION: stages[1] (check): gate ")
    assert "perplexity_increase was not measured: an encoder has no perplexity (bound <= 0.1)" in job.error
    assert "flops_ratio was not measured: " in job.error and "ONNX graph" in job.error
    assert not any("passed" in e.message for e in events)
    check = job_document(job)["stages"][1]
    assert "perplexity_increase" not in check["metrics"] and check["metrics"]["size_ratio"] > 0
    assert check["metrics"]["not_measured"]["perplexity_increase"] == "an encoder has no perplexity"
    assert job_document(job)["result"]["headline"]["colour"] == "red"
