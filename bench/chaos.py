"""Faults injected into a real local mesh, one row each: `make chaos`.

Starts `modelpress up --replicas quantizer=2,gateway=2 --nats-cluster 3` (free ports, its own home)
and, on all-MiniLM-L6-v2 (builtin and uploaded), runs:

  load      N concurrent jobs of mixed recipes, half on an uploaded artifact
  worker    a quantizer replica SIGKILLed mid-stage (the stage goes to the other replica)
  gateway   the gateway running a job SIGKILLed after its first stage (the other takes it over)
  nats      the NATS server leading the job records SIGKILLed with jobs in flight

and counts, per row, jobs submitted / succeeded / failed / lost (not found, or not ended by the
deadline), with submit-to-done p50/p95 and what the fault cost. Every job must end SUCCEEDED, its
events gap-free and its output downloadable whole (the store checks each sha256).

    python bench/chaos.py [--jobs 50] [--only load,worker,gateway,nats]

Writes bench/results/chaos.json and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine_record import machine_record  # bench/ (this folder is on sys.path)
from modelpress import Client
from modelpress.v1 import common_pb2
from services.common.store import nats_conn
from services.common.models import builtin_models
from services.gateway.job_store import BUCKET as JOBS
from services.common.runtime.settings import default_cache
from services.cli import launcher

ROOT = Path(__file__).resolve().parent.parent
MODEL = "minilm-l6"
RECIPES = ["fp16", "int8-weight-only", "w8a8-dynamic", "prune-magnitude-50", "onnx-int8"]
NO_EVAL = common_pb2.EvaluationSpec(skip=True)
SHORT_EVAL = common_pb2.EvaluationSpec(sequence_length=32, latency_iterations=3, quality_windows=1,
                                       quality_sentences=20)
# Long enough on MiniLM that a kill lands mid-stage.
SLOW_GPTQ = {"calibration_samples": 256, "calibration_sequence_length": 256}
KILL_AT_BLOCK = 4  # with a walk checkpoint every few seconds, one was saved by then
JOB_DEADLINE_S = 1800.0
TERMINAL = {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}


class Outcome:
    """One submitted job as the bench saw it."""

    def __init__(self, job_id: str, submitted: float) -> None:
        self.job_id = job_id
        self.submitted = submitted
        self.ended: float | None = None
        self.state = "LOST"
        self.error = ""
        self.events: list[common_pb2.JobEvent] = []


def follow(client: Client, outcome: Outcome, on_event=None) -> Outcome:
    """Watches the job to its end (re-watching across a gateway that went away) and checks it."""
    deadline = time.monotonic() + JOB_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            seen = []
            for event in client.watch(outcome.job_id):
                seen.append(event)
                if on_event:
                    on_event(event)
            outcome.events = seen
            job = client.get_job(outcome.job_id)
        except Exception as exc:  # noqa: BLE001 - a gateway or NATS server being killed: watch again
            outcome.error = f"{type(exc).__name__}: {exc}"
            time.sleep(1)
            continue
        if job.state not in TERMINAL:
            time.sleep(1)
            continue
        outcome.ended = time.monotonic()
        outcome.state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
        outcome.error = job.error
        gaps = [e.sequence for e in outcome.events] != list(range(1, len(outcome.events) + 1))
        if job.state == common_pb2.JOB_STATE_SUCCEEDED and gaps:
            outcome.state, outcome.error = "LOST", "events with gaps: " + str([e.sequence for e in outcome.events][:20])
        elif job.state == common_pb2.JOB_STATE_SUCCEEDED:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    client.download(Path(tmp) / "out", job_id=outcome.job_id)
                except Exception as exc:  # noqa: BLE001
                    outcome.state, outcome.error = "LOST", f"output not downloadable: {exc}"
        return outcome
    outcome.error = outcome.error or "not ended by the deadline"
    return outcome


def row(fault: str, outcomes: list[Outcome], **extra) -> dict:
    took = sorted(o.ended - o.submitted for o in outcomes if o.ended is not None)
    count = {state: sum(o.state == state for o in outcomes) for state in ("SUCCEEDED", "FAILED", "CANCELLED", "LOST")}
    return {
        "fault": fault, "jobs": len(outcomes), "succeeded": count["SUCCEEDED"],
        "failed": count["FAILED"] + count["CANCELLED"], "lost": count["LOST"],
        "p50_s": round(statistics.median(took), 1) if took else None,
        "p95_s": round(took[max(0, int(round(0.95 * len(took))) - 1)], 1) if took else None,
        "errors": sorted({o.error for o in outcomes if o.state != "SUCCEEDED"}),
        **extra,
    }


def submit(client: Client, model: str, recipe, overrides=None, evaluation=NO_EVAL) -> Outcome:
    started = time.monotonic()
    job = client.create_job(model, recipe, overrides=overrides or {}, evaluation=evaluation, recompute=True)
    return Outcome(job.job_id, started)


def _pid_listening_on(state: launcher.MeshState, port: str) -> tuple[str, int]:
    for name, info in state.services.items():
        if info["listen"].endswith(f":{port}"):
            return name, info["pid"]
    raise LookupError(f"no mesh process listens on port {port}")


# ---- scenarios ----------------------------------------------------------------------------


def load(client: Client, models: list[str], jobs: int) -> dict:
    plan = [(models[i % 2], RECIPES[i % len(RECIPES)], SHORT_EVAL if i % 10 == 0 else NO_EVAL) for i in range(jobs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        submitted = list(pool.map(lambda p: submit(client, p[0], p[1], evaluation=p[2]), plan))
        outcomes = list(pool.map(lambda o: follow(client, o), submitted))
    return row(f"{jobs} concurrent jobs ({len(RECIPES)} recipes, half on an upload)", outcomes)


def worker_kill(client: Client, state: launcher.MeshState, model: str) -> dict:
    outcome = submit(client, model, "w4a16-gptq", SLOW_GPTQ)
    seen: dict = {"port": ""}

    def on_event(event: common_pb2.JobEvent) -> None:
        if event.kind != common_pb2.EVENT_KIND_STAGE_PROGRESS:
            return
        worker = event.metrics["worker"] if "worker" in event.metrics else ""
        block = event.metrics["block"] if "block" in event.metrics else -1
        if worker and "killed" not in seen:
            seen["port"] = worker.rpartition(":")[2]
        elif worker and not worker.endswith(f":{seen['port']}") and "taken_by" not in seen:
            seen.update(taken_by=worker, retaken_after_s=round(time.monotonic() - seen["at"], 1))
        elif "killed" not in seen and seen["port"] and block >= KILL_AT_BLOCK:
            name, pid = _pid_listening_on(state, seen["port"])
            os.kill(pid, signal.SIGKILL)
            seen.update(killed=name, at=time.monotonic())

    follow(client, outcome, on_event)
    job = client.get_job(outcome.job_id)
    resumed = [e.message for e in outcome.events if "resumed from the checkpoint" in e.message]
    return row("quantizer replica SIGKILLed mid-stage (2 replicas)", [outcome],
               recovery=f"killed {seen.get('killed', '?')} in block {KILL_AT_BLOCK} of GPTQ on MiniLM's 6; the stage "
                        f"went on on {seen.get('taken_by', '?')} {seen.get('retaken_after_s', '?')} s later, "
                        + (resumed[0] if resumed else "from its first block (no checkpoint had been saved)"),
               stage_worker=job.stages[0].worker if job.stages else "")


def gateway_kill(state: launcher.MeshState, model: str) -> dict:
    survivor = Client(state.services["gateway"]["listen"], timeout_s=60)
    doomed_listen, doomed_pid = state.services["gateway-2"]["listen"], state.services["gateway-2"]["pid"]
    pipeline = [{"name": "fp16", "technique": "quantizer", "method": "fp16"},
                {"name": "int8", "technique": "quantizer", "method": "rtn"}]
    outcome = submit(Client(doomed_listen, timeout_s=60), model, pipeline, evaluation=SHORT_EVAL)
    while survivor.get_job(outcome.job_id).stages[0].state != common_pb2.JOB_STATE_SUCCEEDED:
        time.sleep(0.1)
    os.kill(doomed_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    resumed: dict = {}

    def on_event(event: common_pb2.JobEvent) -> None:
        if "resumed by gateway" in event.message and not resumed:
            resumed["after_s"] = round(time.monotonic() - killed_at, 1)
            resumed["message"] = event.message

    follow(survivor, outcome, on_event)
    starts = [e.stage_name for e in outcome.events if e.kind == common_pb2.EVENT_KIND_STAGE_STARTED]
    return row("gateway SIGKILLed after stage 1 of 2 (2 gateways)", [outcome],
               recovery=f"taken over {resumed.get('after_s', '?')} s after the kill (lease 15 s); "
                        f"stages started: {', '.join(starts)}")


async def _leader(url: str, stream: str) -> str:
    nc = await nats_conn.connect(url, name="chaos")
    try:
        return (await nats_conn.jetstream(nc).stream_info(stream)).cluster.leader
    finally:
        await nc.close()


def nats_kill(client: Client, state: launcher.MeshState, models: list[str], jobs: int) -> dict:
    pipeline = [{"name": "fp16", "technique": "quantizer", "method": "fp16"},
                {"name": "int8", "technique": "quantizer", "method": "rtn"}]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        submitted = list(pool.map(lambda i: submit(client, models[i % 2], pipeline, evaluation=SHORT_EVAL),
                                  range(jobs)))
        while not any(client.get_job(o.job_id).stages[0].state == common_pb2.JOB_STATE_SUCCEEDED for o in submitted):
            time.sleep(0.2)
        leader = asyncio.run(_leader(state.nats_url, f"KV_{JOBS}"))
        index = int(leader.rpartition("-")[2]) - 1
        os.kill(state.nats_pids[index], signal.SIGKILL)
        outcomes = list(pool.map(lambda o: follow(client, o), submitted))
    return row(f"NATS server SIGKILLed (1 of 3, the job records' leader {leader}), {jobs} jobs in flight",
               outcomes, recovery="a new leader elected by the other two; services reconnected")


# ---- main ---------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    header = ["fault", "jobs", "succeeded", "failed", "lost", "p50 s", "p95 s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['fault']} | {r['jobs']} | {r['succeeded']} | {r['failed']} | {r['lost']} | {r['p50_s']} | "
              f"{r['p95_s']} |")
    for r in rows:
        if r.get("recovery"):
            print(f"- {r['fault']}: {r['recovery']}")
        for error in r["errors"]:
            print(f"  ! {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--only", default="load,worker,gateway,nats")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = parser.parse_args()
    only = set(args.only.split(","))
    home = Path(tempfile.mkdtemp(prefix="mp-chaos-"))
    # Built-in models are materialised once per cache: share the usual one.
    os.environ.setdefault("MODELPRESS_CACHE", str(default_cache()))
    os.environ["MODELPRESS_MAX_JOBS_PER_TENANT"] = str(max(64, args.jobs + 8))
    os.environ["MODELPRESS_CHECKPOINT_EVERY_S"] = "2"
    print(f"starting the mesh in {home} (quantizer x2, gateway x2, 3 NATS servers) ...", file=sys.stderr)
    started = time.monotonic()
    state = launcher.up(home, free_ports=True, replicas={"quantizer": 2, "gateway": 2}, nats_cluster=3)
    print(f"mesh up in {time.monotonic() - started:.0f} s", file=sys.stderr)
    rows = []
    try:
        client = Client(state.gateway, timeout_s=120)
        folder = builtin_models.builtin_folder(MODEL, default_cache())
        upload = client.upload(folder)
        models = [f"builtin:{MODEL}", f"artifact:{upload.id}"]
        if "load" in only:
            rows.append(load(client, models, args.jobs))
            print_table(rows[-1:])
        if "worker" in only:
            rows.append(worker_kill(client, state, models[1]))
            print_table(rows[-1:])
        if "gateway" in only:
            rows.append(gateway_kill(state, models[1]))
            print_table(rows[-1:])
        if "nats" in only:
            rows.append(nats_kill(client, state, models, 10))
            print_table(rows[-1:])
    finally:
        launcher.down(home)
    print()
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_record(), "model": MODEL, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0 if all(r["lost"] == 0 and r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
