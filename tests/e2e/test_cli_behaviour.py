"""The `modelpress` command as a person meets it, through real subprocesses on one local mesh
(`modelpress up --detach --free-ports` with its own MODELPRESS_HOME): Ctrl-C detaches with the
commands to come back, a closed pipe ends quietly, events arrive on stdout, an artifact id
downloads, --version, and the message when no gateway answers. A tiny Llama keeps it fast."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import modelpress
from services.cli import launcher

pytestmark = pytest.mark.e2e

MODELPRESS = [sys.executable, "-m", "services.cli.main"]
# A distillation that would train for minutes: still running when Ctrl-C arrives, cancelled after.
LONG_TRAINING = ["--set", "max_steps=0", "--set", "max_minutes=5", "--set", "calibration_samples=24",
                 "--set", "calibration_sequence_length=32", "--set", "batch_size=4",
                 "--set", "validate_every=1000"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, tiny_llama_dir):
    home = tmp_path_factory.mktemp("mp-home")
    models = tmp_path_factory.mktemp("mp-models")
    shutil.copytree(tiny_llama_dir, models / "tiny")
    env = {k: v for k, v in os.environ.items() if k not in ("MODELPRESS_GATEWAY", "MODELPRESS_TOKEN")}
    env.update(MODELPRESS_HOME=str(home), MODELPRESS_ALLOWED_ROOTS=str(models))
    up = subprocess.run([*MODELPRESS, "up", "--detach", "--free-ports"], env=env, capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    try:
        yield env, f"path:{models / 'tiny'}"
    finally:
        subprocess.run([*MODELPRESS, "down"], env=env, capture_output=True, timeout=120)
        assert launcher.read_state(home) is None


def cli(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*MODELPRESS, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(mesh) -> dict:
    """One quick job to the end: its JSON document (`jobs get --json`'s)."""
    env, model = mesh
    run = cli(env, "compress", model, "--recipe", "int8-weight-only", "--no-eval", "--wait", "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["state"] == "JOB_STATE_SUCCEEDED" and document["output"]["id"].startswith("a-"), document
    return document


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version():
    run = subprocess.run([*MODELPRESS, "--version"], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (0, f"modelpress {modelpress.__version__}\n", "")


def test_with_no_mesh_answering_it_says_to_start_one(tmp_path):
    port = _free_port()
    env = dict(os.environ, MODELPRESS_HOME=str(tmp_path), MODELPRESS_GATEWAY=f"127.0.0.1:{port}")
    run = cli(env, "jobs", "list", timeout=60)
    assert run.returncode == 1
    assert run.stderr == (f"no modelpress gateway answers at 127.0.0.1:{port}: start it with `modelpress up` "
                          "(or pass --gateway HOST:PORT)\n")
    assert "UNAVAILABLE" not in run.stderr and run.stdout == ""


def test_watch_writes_the_stage_events_to_stdout(mesh, finished):
    env, _ = mesh
    job_id = finished["job_id"]
    run = cli(env, "watch", job_id, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("stage 0 rtn started") for line in lines), lines
    assert any(line.startswith("stage 0 rtn finished") for line in lines), lines
    assert lines[-1] == f"job {job_id}: succeeded"
    # 14 Linear layers quantized: a bounded number of progress lines, not one per layer and event.
    assert len(lines) <= 14, lines
    # --json: one event per line under the result schema's rules (snake_case, numbers, enum names).
    events = [json.loads(line) for line in cli(env, "watch", job_id, "--json", timeout=60).stdout.splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["job_state"] == "JOB_STATE_SUCCEEDED" and events[-1]["job_id"] == job_id
    assert sum(e["kind"] == "EVENT_KIND_STAGE_PROGRESS" for e in events) > len(lines)  # the lines are throttled
    # As a person types it: the events go through the pipe.
    piped = subprocess.run(["bash", "-c", f"{' '.join(MODELPRESS)} watch {job_id} | grep stage"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "stage 0 rtn started" in piped.stdout, piped


def test_download_takes_an_artifact_id(mesh, finished, tmp_path):
    env, _ = mesh
    artifact_id = finished["output"]["id"]
    run = cli(env, "download", artifact_id, "--out", str(tmp_path / "by-artifact"), timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"artifact {artifact_id} " in run.stdout
    written = {p.name for p in (tmp_path / "by-artifact").iterdir()}
    assert {"config.json", "modelpress.json"} <= written and any(n.endswith(".safetensors") for n in written)
    assert json.loads((tmp_path / "by-artifact" / "modelpress.json").read_text())  # the artifact's manifest
    by_job = cli(env, "download", finished["job_id"], "--out", str(tmp_path / "by-job"), timeout=120)
    assert by_job.returncode == 0 and f"artifact {artifact_id} " in by_job.stdout, by_job.stderr
    missing = cli(env, "download", "a-00000000000000000000", "--out", str(tmp_path / "missing"), timeout=60)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr
    assert "neither a job" in missing.stderr and "nor an artifact" in missing.stderr


def _quiet_end(process: subprocess.Popen) -> str:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, (process.returncode, err)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err
    return err


def test_a_closed_pipe_ends_quietly(mesh, finished):
    env, _ = mesh
    # `jobs list` whose reader is already gone.
    reader, writer = os.pipe()
    os.close(reader)
    process = subprocess.Popen([*MODELPRESS, "jobs", "list"], env=env, stdout=writer, stderr=subprocess.PIPE,
                               text=True)
    os.close(writer)
    assert _quiet_end(process) == ""
    # A reader that takes one line and closes, while the CLI still writes: a one-page pipe and a listing
    # (`methods`) several pages long, so the write after the close cannot have landed before it.
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
    process = subprocess.Popen([*MODELPRESS, "methods"], env=env, stdout=writer, stderr=subprocess.PIPE,
                               text=True)
    os.close(writer)
    with os.fdopen(reader) as lines:
        first = lines.readline()
    assert first.startswith("quantizer/") or "/" in first, first
    assert _quiet_end(process) == ""
    # And as a person types it.
    shell = subprocess.run(["bash", "-c", f"{' '.join(MODELPRESS)} jobs list | head -1"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shell.stdout.split() == ["job", "model", "recipe", "status", "done", "artifact"], shell
    assert shell.stderr == ""


def test_ctrl_c_during_wait_detaches_and_prints_how_to_come_back(mesh):
    env, model = mesh
    command = [*MODELPRESS, "compress", model, "--recipe", "distill-response", *LONG_TRAINING, "--no-eval",
               "--recompute", "--wait"]
    # As from a terminal: a suite started as a background job of a script (`make test &`) hands its
    # children SIGINT ignored, and a process that ignores Ctrl-C rightly keeps ignoring it.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in process.stdout:  # events on stdout, one line as it happens
        seen.append(line)
        if " started" in line:
            break
    assert seen and seen[-1].startswith("stage 0"), seen
    job_id = seen[0].split()[1].rstrip(":")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"modelpress watch {job_id}" in err and f"modelpress jobs cancel {job_id}" in err
    # The job kept running; the printed command cancels it.
    state = json.loads(cli(env, "jobs", "get", job_id, "--json", timeout=60).stdout)["state"]
    assert state == "JOB_STATE_RUNNING", state
    cancel = cli(env, *f"jobs cancel {job_id}".split(), timeout=120)
    assert cancel.returncode == 0, cancel.stderr
    deadline = time.monotonic() + 60
    while state != "JOB_STATE_CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.5)
        state = json.loads(cli(env, "jobs", "get", job_id, "--json", timeout=60).stdout)["state"]
    assert state == "JOB_STATE_CANCELLED"
