"""The client installs alone: a fresh venv with only the client distribution (grpcio, protobuf)
imports it without torch or the server package and runs a job through the real mesh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import modelpress
from modelpress import Client, InvalidArgument
from modelpress.v1 import common_pb2

gateway, model_dir = sys.argv[1], sys.argv[2]
with Client(gateway) as mp:
    try:
        mp.create_job("builtin:smollm2-135m", "no-such-recipe")
        refused = None
    except InvalidArgument as exc:
        refused = exc.details()
    model = mp.upload(model_dir)
    job = mp.create_job(f"artifact:{model.id}", "int8-compact", evaluation=common_pb2.EvaluationSpec(skip=True))
    events = [e.kind for e in mp.watch(job.job_id)]
    done = mp.get_job(job.job_id)
    result = mp.get_result(job.job_id).result
try:
    modelpress.compress(model_dir, "int8-compact", "out")
    in_process = None
except modelpress.FailedPrecondition as exc:
    in_process = exc.details()
heavy = sorted(m for m in ("torch", "transformers", "services", "nats", "pydantic", "openvino", "onnxruntime")
               if m in sys.modules)
print(json.dumps({"file": modelpress.__file__, "heavy": heavy, "refused": refused, "in_process": in_process, "events": len(events),
                  "state": common_pb2.JobState.Name(done.state), "error": done.error,
                  "size": result.compressed_model_size_bytes, "artifact": result.compressed_artifact_id}))
"""


@pytest.fixture(scope="module")
def client_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not installed & {"torch", "transformers", "openvino", "nncf", "onnxruntime", "nats-py", "pydantic"}
    return python


async def test_the_client_alone_runs_a_job_without_torch_or_services(client_python, gateway, tiny_llama_dir,
                                                                     tmp_path):
    import asyncio

    run = await asyncio.to_thread(subprocess.run, [str(client_python), "-c", SCRIPT, gateway, str(tiny_llama_dir)],
                                  capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert "site-packages" in found["file"] and found["heavy"] == []
    assert found["refused"] and found["refused"].startswith("recipe:")
    # In-process runs need the server install: a clear refusal of the client's own family, no ModuleNotFoundError.
    assert found["in_process"] and "server install" in found["in_process"]
    assert found["state"] == "JOB_STATE_SUCCEEDED", found["error"]
    assert found["size"] > 0 and found["artifact"].startswith("a-") and found["events"] >= 3
