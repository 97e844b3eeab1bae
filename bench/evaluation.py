"""The evaluator through the real mesh: jobs, an interleaved comparison per model, a
recommendation, a hardware benchmark. Starts its own mesh (`modelpress up`) and stops it.

    python bench/evaluation.py [--models smollm2-135m,minilm-l6] [--recipes int8-weight-only,w4a16-gptq,w4a16-rtn]

Writes bench/results/evaluation.json and prints the tables (the README's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import json_format

from machine_record import machine_record  # bench/ (this folder is on sys.path)
from modelpress.v1 import common_pb2
from services.cli import launcher
from services.cli.evaluation import print_comparison
from modelpress import Client

ROOT = Path(__file__).resolve().parent.parent
MODELPRESS = [sys.executable, "-m", "services.cli.main"]
# Encoders are timed at a serving batch; causal LMs at one prompt.
SHAPES = {"smollm2-135m": (1, 128), "minilm-l6": (8, 128)}
THRESHOLDS = {"smollm2-135m": "seed-int8", "minilm-l6": "recovery-99"}


def _without_samples(value):
    """Raw latency samples make the file large and say nothing the percentiles and spread do not."""
    if isinstance(value, dict):
        return {k: _without_samples(v) for k, v in value.items() if k != "samplesMs"}
    if isinstance(value, list):
        return [_without_samples(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="smollm2-135m,minilm-l6")
    parser.add_argument("--recipes", default="int8-weight-only,w4a16-gptq,w4a16-rtn")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "evaluation.json")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mp-bench-eval-"))
    env = dict(os.environ, MODELPRESS_HOME=str(home))
    subprocess.run([*MODELPRESS, "up", "--detach", "--free-ports"], env=env, check=True, cwd=ROOT)
    results: dict = {"models": {}}
    try:
        with Client(launcher.read_state(home).gateway, timeout_s=60) as client:
            for name in args.models.split(","):
                batch, length = SHAPES.get(name, (1, 128))
                spec = common_pb2.EvaluationSpec(batch_size=batch, sequence_length=length)
                artifacts = {}
                for recipe in args.recipes.split(","):
                    job = client.create_job(f"builtin:{name}", recipe, evaluation=spec)
                    for _ in client.watch(job.job_id):
                        pass
                    job = client.get_job(job.job_id)
                    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
                        raise SystemExit(f"{recipe} on {name} failed: {job.error}")
                    artifacts[recipe] = job.output.id
                comparison = client.compare([f"builtin:{name}", *(f"artifact:{a}" for a in artifacts.values())],
                                            spec=spec, threshold_set=THRESHOLDS.get(name, ""))
                print_comparison(comparison)
                recommendation = client.recommend(f"builtin:{name}", target="edge", min_quality_retention=0.9,
                                                  candidate_recipes=list(artifacts), stored_only=True,
                                                  evaluation=spec)
                for r in recommendation.recommendations:
                    print(f"{r.rank}. {r.strategy.recipe}: {r.reason}")
                benchmarks = client.run_benchmark(f"builtin:{name}", batch_sizes=[1, 4], sequence_lengths=[128, 512])
                results["models"][name] = {
                    "recipes": artifacts,
                    "comparison": json_format.MessageToDict(comparison),
                    "recommendation": json_format.MessageToDict(recommendation),
                    "benchmarks": [json_format.MessageToDict(b) for b in benchmarks],
                }
    finally:
        subprocess.run([*MODELPRESS, "down"], env=env, cwd=ROOT)
    text = json.dumps({"machine": machine_record(), **_without_samples(results)}, indent=1)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text) // 1024} KiB)")


if __name__ == "__main__":
    main()
