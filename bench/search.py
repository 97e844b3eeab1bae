"""A search through a real mesh, as a user runs it: the best pipeline for a model on this CPU under a
quality floor, found within a budget; then the same search again (its stored measurements reused),
and the winner beside the best single built-in and the original in one interleaved comparison on
held-out text.

    python bench/search.py [--model builtin:smollm2-135m] [--min-quality 0.99] [--budget 30] [--phase decode]
                           [--also-batch 32] [--out bench/results/search_minilm.json]

Starts its own mesh (`modelpress up --detach --free-ports` in a temporary MODELPRESS_HOME) and writes
bench/results/search.json: the machine, the constraints, every trial (screen and full on the
validation split, the closing one on the held-out split), why each candidate was dropped, the winner,
both searches' wall time, and the side-by-side comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine_record import machine_record  # bench/ on the path, as the other benches

MODELPRESS = [sys.executable, "-m", "services.cli.main"]
RESULTS = ROOT / "bench" / "results" / "search.json"


def _until_done(client, job_id: str, limit_s: float):
    from modelpress.v1 import common_pb2

    deadline = time.monotonic() + limit_s
    ended = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
    while (job := client.get_job(job_id)).state not in ended:
        if time.monotonic() > deadline:
            client.cancel_job(job_id)
            raise TimeoutError(f"search {job_id} still running after {limit_s:.0f} s: cancelled")
        time.sleep(5)
    return job


def _trials(job) -> list[dict]:
    rows = []
    for t in job.search_result.trials:
        rows.append({"candidate": t.candidate, "fidelity": t.fidelity, "job_id": t.job_id, "reused": t.reused,
                     "speedup": round(t.speedup.speedup, 3), "speedup_ci95": [round(t.speedup.ci95_low, 3),
                                                                            round(t.speedup.ci95_high, 3)],
                     "quality_kept": round(t.quality_kept, 4) if t.HasField("quality_kept") else None,
                     "size_ratio": round(t.size_ratio, 3),
                     "memory_ratio": round(t.memory_ratio, 3) if t.HasField("memory_ratio") else None,
                     "error": t.error})
    return rows


def _best_other_builtin(job, min_quality: float):
    """The built-in to set beside the winner: the best single built-in among the finalists, or, where that is
    the winner itself, the fastest other built-in whose most thorough trial kept the quality."""
    from services.common.contract.recipes import RECIPES

    found = job.search_result
    order = {"screen": 0, "full": 1}
    latest = {}
    for t in found.trials:
        if t.candidate in RECIPES and t.fidelity in order and not t.error and t.job_id:
            if t.candidate not in latest or order[t.fidelity] >= order[latest[t.candidate].fidelity]:
                latest[t.candidate] = t
    wanted = found.best_builtin if found.best_builtin != found.winner else ""
    if wanted and wanted in latest:
        return latest[wanted]
    kept = [t for name, t in latest.items() if name != found.winner and t.HasField("quality_kept")
            and t.quality_kept >= min_quality]
    return max(kept, key=lambda t: t.speedup.speedup, default=None)


def _comparison(client, model: str, artifacts: dict[str, str], batch_size: int = 1) -> dict:
    from modelpress.v1 import common_pb2

    names = ["original", *artifacts]
    comparison = client.compare([model, *(f"artifact:{a}" for a in artifacts.values())],
                                spec=common_pb2.EvaluationSpec(latency_iterations=20, quality_windows=8,
                                                               decode_tokens=16, batch_size=batch_size))
    rows = {}
    for name, row in zip(names, comparison.rows):
        speeds = {s.phase or f"phase{i}": {"speedup": round(s.speedup, 3), "ci95": [round(s.ci95_low, 3),
                                                                                   round(s.ci95_high, 3)]}
                  for i, s in enumerate(row.speed)}
        rows[name] = {"model": row.model, "size_ratio": row.size_ratio if row.HasField("size_ratio") else None,
                      "memory_ratio": row.memory_ratio if row.HasField("memory_ratio") else None,
                      "quality_kept": row.quality_retention if row.HasField("quality_retention") else None,
                      "perplexity": row.metrics.perplexity if row.metrics.HasField("perplexity") else None,
                      "speed": speeds}
    return {"comparison_id": comparison.comparison_id, "interleaved_rounds": comparison.interleaved_rounds,
            "batch_size": batch_size, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--min-quality", type=float, default=0.99)
    parser.add_argument("--budget", type=float, default=30.0, help="minutes")
    parser.add_argument("--phase", default="", choices=("", "prefill", "decode"))
    parser.add_argument("--objective", default="fastest", choices=("fastest", "smallest"))
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--also-batch", type=int, action="append", default=[],
                        help="compare the winner again at this batch size (repeatable; e.g. 32 for an encoder)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "modelpress-search")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from modelpress import Client
    from modelpress.v1 import common_pb2
    from services.cli import launcher

    args.work.mkdir(parents=True, exist_ok=True)
    spec = {"min_quality_kept": args.min_quality, "budget_minutes": args.budget, "phase": args.phase,
            "objective": args.objective, "no_training": args.no_training}
    record: dict = {"what": "a search through a local mesh, then the same search again, then the winner beside "
                            "the best single built-in in one interleaved comparison",
                    "model": args.model, "spec": spec, "machine": machine_record()}
    with tempfile.TemporaryDirectory(prefix="mp-search-", dir=args.work) as tmp:
        home = Path(tmp) / "home"
        env = {k: v for k, v in os.environ.items() if k not in ("MODELPRESS_GATEWAY", "MODELPRESS_TOKEN",
                                                                 "MODELPRESS_ALLOWED_ROOTS")}
        env.update(MODELPRESS_HOME=str(home), PYTHONPATH=str(ROOT))
        up = subprocess.run([*MODELPRESS, "up", "--detach", "--free-ports"], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
        if up.returncode != 0:
            raise RuntimeError(f"modelpress up failed:\n{up.stderr}")
        try:
            state = launcher.read_state(home)
            with Client(state.gateway, timeout_s=600) as client:
                limit = 60 * args.budget * 2 + 1800
                started = time.perf_counter()
                first = _until_done(client, client.search(args.model, name="bench search", **spec).job_id, limit)
                record["first_search_s"] = round(time.perf_counter() - started, 1)
                record["state"] = first.error or "succeeded"
                found = first.search_result
                record.update(isa_class=found.isa_class, winner=found.winner, recipe=found.recipe,
                              best_builtin=found.best_builtin, stopped_early=found.stopped_early,
                              trials=_trials(first), left_out=dict(found.left_out),
                              dropped={c.name: c.dropped for c in found.candidates},
                              candidates=len(found.candidates), headline=first.result.headline.text)
                print(json.dumps({k: record[k] for k in ("first_search_s", "winner", "best_builtin", "headline")},
                                 indent=1), flush=True)
                if first.state != common_pb2.JOB_STATE_SUCCEEDED or not found.winner:
                    return
                started = time.perf_counter()
                second = _until_done(client, client.search(args.model, name="bench search again", **spec).job_id,
                                     limit)
                record["second_search_s"] = round(time.perf_counter() - started, 1)
                record["second_reused_all"] = all(t.reused for t in second.search_result.trials
                                                  if t.fidelity != "heldout")
                artifacts = {found.winner: first.output.id}
                rival = _best_other_builtin(first, args.min_quality)
                if rival is not None:
                    artifacts[rival.candidate] = client.get_job(rival.job_id).output.id
                    record["compared_builtin"] = rival.candidate
                record["comparison"] = _comparison(client, args.model, artifacts)
                record["comparisons_at"] = {str(b): _comparison(client, args.model, artifacts, b)
                                            for b in args.also_batch}
        finally:
            subprocess.run([*MODELPRESS, "down"], env=env, capture_output=True, timeout=120, check=False)
            record["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
