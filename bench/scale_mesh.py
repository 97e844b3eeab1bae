"""A real-size model through the mesh: upload, GPTQ, download of a TinyLlama-1.1B-shaped checkpoint.

    python bench/scale_mesh.py [--shape tinyllama-1.1b] [--recipe w4a16-gptq]

Starts its own mesh (`modelpress up --detach --free-ports` in a temporary MODELPRESS_HOME), builds
the random-weight bf16 checkpoint bench/scale.py builds, uploads it with the client (streamed),
runs the recipe as a job at its default calibration, downloads the result, and checks it: the
index names every tensor the config implies and the quantized Linears carry packed codes. Records
each phase's seconds, the sizes, and the peak RSS of the client and of the quantizer worker
(VmHWM of its process) -> bench/results/scale_mesh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine_record import machine_record  # noqa: E402 -- bench/ on the path, as the other benches

MODELPRESS = [sys.executable, "-m", "services.cli.main"]
RESULTS = ROOT / "bench" / "results" / "scale_mesh.json"


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _check(folder: Path) -> dict:
    """The download is a whole compressed-tensors checkpoint: every block's Linears packed."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    index = folder / "model.safetensors.index.json"
    files = sorted({*json.loads(index.read_text())["weight_map"].values()}) if index.exists() else ["model.safetensors"]
    names = set()
    for file in files:
        with safe_open(str(folder / file), "pt") as f:
            names.update(f.keys())
    layers = config["num_hidden_layers"]
    packed = [n for n in names if n.endswith(".weight_packed")]
    if len(packed) != 7 * layers:
        raise AssertionError(f"{len(packed)} packed Linears, expected {7 * layers}")
    if config["quantization_config"]["quant_method"] != "compressed-tensors":
        raise AssertionError("not a compressed-tensors checkpoint")
    return {"files": len(files), "tensors": len(names), "packed_linears": len(packed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tinyllama-1.1b")
    parser.add_argument("--recipe", default="w4a16-gptq")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "modelpress-scale")
    args = parser.parse_args()
    from modelpress import Client
    from modelpress.v1 import common_pb2
    from services.cli import launcher

    src = args.work / args.shape
    # Built in another process, so this one's peak RSS is the client's.
    subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'bench')!r}]; "
                    f"import scale; from pathlib import Path; scale.build({args.shape!r}, Path({str(src)!r}))"],
                   check=True)
    checkpoint_mb = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 2**20
    with tempfile.TemporaryDirectory(prefix="mp-scale-mesh-", dir=args.work) as tmp:
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
            quantizer_pid = state.services["quantizer"]["pid"]
            row: dict = {"shape": args.shape, "recipe": args.recipe, "checkpoint_mb": round(checkpoint_mb),
                         "checkpoint_dtype": "bfloat16"}
            with Client(state.gateway, timeout_s=600) as client:
                started = time.perf_counter()
                uploaded = client.upload(src, name=args.shape)
                row["upload_s"] = round(time.perf_counter() - started, 1)
                row["upload_mb"] = round(uploaded.size_bytes / 2**20)
                started = time.perf_counter()
                # The compression alone (its evaluation is the evaluator's bench, not this one's).
                job = client.create_job(f"artifact:{uploaded.id}", args.recipe,
                                        evaluation=common_pb2.EvaluationSpec(skip=True))
                for event in client.watch(job.job_id):
                    pass
                finished = client.get_job(job.job_id)
                row["job_s"] = round(time.perf_counter() - started, 1)
                row["job_state"] = common_pb2.JobState.Name(finished.state)
                if finished.state != common_pb2.JOB_STATE_SUCCEEDED:
                    raise RuntimeError(f"job {job.job_id} {row['job_state']}: {finished.error}")
                out = Path(tmp) / "download"
                started = time.perf_counter()
                downloaded = client.download(out, job_id=job.job_id)
                row["download_s"] = round(time.perf_counter() - started, 1)
                row["download_mb"] = round(downloaded.size_bytes / 2**20)
            row["check"] = _check(out)
            row["client_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            row["quantizer_peak_rss_mb"] = round(_hwm_mb(quantizer_pid))
            row["load_average_1m"] = round(os.getloadavg()[0], 1)
        finally:
            subprocess.run([*MODELPRESS, "down"], env=env, capture_output=True, timeout=120, check=False)
    print(json.dumps(row, indent=1))
    RESULTS.write_text(json.dumps({
        "what": "a random-weight bf16 checkpoint of a real shape uploaded, compressed and downloaded through a "
                "local mesh (bench/scale_mesh.py); client_peak_rss_mb: this process's peak (the checkpoint is "
                "built in another process)",
        "machine": machine_record(threads=os.cpu_count()),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": [row]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
