"""Client-side memory of an upload: peak RSS growth of `Client.upload` through a real local mesh.

    python bench/upload_memory.py [--sizes-mb 256,1024] [--before]

Starts its own mesh (`modelpress up --detach --free-ports` in a temporary MODELPRESS_HOME), makes a
model folder per size (config, pooling config, and a weights file of that size, sparse on disk: read
back as zeros, sent as a plain member), and uploads each from a fresh process that reports its RSS
growth from just before the upload to its peak (VmHWM reset through /proc/self/clear_refs). `--before`
also runs the client's previous upload (the whole tar written to a temporary file, then read whole
for its sha256) for comparison. Prints a table -> bench/results/upload_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine_record import machine_record  # bench/ (this folder is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
MODELPRESS = [sys.executable, "-m", "services.cli.main"]

# Runs in a fresh process: its RSS is the client's alone (the gateway is another process).
MEASURE = r"""
import hashlib, sys, tempfile, time
from pathlib import Path
from modelpress import Client
from modelpress.folders import tar_folder
from modelpress.v1 import gateway_pb2

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

def previous_upload(client, folder):
    # The client before streaming: the tar on disk, then read whole for its digest.
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "upload.tar"
        tar_folder(folder, tar_path)
        sha = hashlib.sha256(tar_path.read_bytes()).hexdigest()
        def messages():
            yield gateway_pb2.UploadModelRequest(header=gateway_pb2.UploadHeader(name=folder.name, format=1, sha256=sha))
            with open(tar_path, "rb") as src:
                while chunk := src.read(1 << 20):
                    yield gateway_pb2.UploadModelRequest(chunk=chunk)
        return client._stub.UploadModel(messages(), timeout=3600).artifact

target, folder, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
with Client(target) as client:
    baseline = kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    started = time.perf_counter()
    ref = previous_upload(client, folder) if mode == "before" else client.upload(folder)
    seconds = time.perf_counter() - started
    print(ref.size_bytes, (kb("VmHWM:") - baseline) / 1024, baseline / 1024, seconds)
"""


def _model(folder: Path, weight_bytes: int) -> Path:
    """A folder the gateway's upload checks pass: config.json and a safetensors file whose header
    describes one U8 tensor filling the rest (its bytes a hole on disk)."""
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    data = weight_bytes - 4096
    header = json.dumps({"weights": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}).encode()
    header += b" " * (4096 - 8 - len(header))  # 8 + header = 4096: the tensor bytes start on a page
    with open(folder / "model.safetensors", "wb") as weights:
        weights.write(len(header).to_bytes(8, "little") + header)
        weights.truncate(weight_bytes)
    return folder


def _measure(target: str, folder: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", MEASURE, target, str(folder), mode], capture_output=True,
                          text=True, timeout=1800, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} upload of {folder.name} failed:\n{done.stderr}")
    size, peak_mb, baseline_mb, seconds = done.stdout.split()
    return {"client": mode, "tar_bytes": int(size), "peak_rss_growth_mb": round(float(peak_mb), 1),
            "rss_before_mb": round(float(baseline_mb), 1), "seconds": round(float(seconds), 2),
            "mb_per_s": round(int(size) / 1e6 / float(seconds), 1)}


def run(sizes_mb: list[int], before: bool) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="mp-upload-bench-") as tmp:
        tmp_path = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k not in ("MODELPRESS_GATEWAY", "MODELPRESS_TOKEN",
                                                                 "MODELPRESS_ALLOWED_ROOTS")}
        env.update(MODELPRESS_HOME=str(tmp_path / "home"))
        up = subprocess.run([*MODELPRESS, "up", "--detach", "--free-ports"], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
        if up.returncode != 0:
            raise RuntimeError(f"modelpress up failed:\n{up.stderr}")
        try:
            from services.cli import launcher

            target = launcher.read_state(tmp_path / "home").gateway
            rows = []
            for mb in sizes_mb:
                folder = _model(tmp_path / f"model-{mb}mb", mb << 20)
                for mode in (("before", "streaming") if before else ("streaming",)):
                    rows.append({"weights_mib": mb, **_measure(target, folder, mode)})
            return rows
        finally:
            subprocess.run([*MODELPRESS, "down"], env=env, capture_output=True, timeout=120, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-mb", default="256,1024", help="weights file sizes, MiB, comma-separated")
    parser.add_argument("--before", action="store_true", help="also measure the previous (whole-tar) client")
    args = parser.parse_args()
    rows = run([int(s) for s in args.sizes_mb.split(",")], args.before)
    print("client-side peak RSS growth of one upload through a local mesh")
    print(f"{'weights MiB':>11} {'client':<10} {'tar MB':>8} {'peak RSS +MB':>12} {'s':>7} {'MB/s':>7}")
    for row in rows:
        print(f"{row['weights_mib']:>11} {row['client']:<10} {row['tar_bytes'] / 1e6:>8.1f} "
              f"{row['peak_rss_growth_mb']:>12.1f} {row['seconds']:>7.2f} {row['mb_per_s']:>7.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "upload_memory.json").write_text(json.dumps(
        {"machine": machine_record(threads=os.cpu_count()), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
