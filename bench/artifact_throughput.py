"""Artifact store throughput: put and get of a model-sized file through JetStream.

    python bench/artifact_throughput.py [--mb 512] [--repeats 3]

Starts its own nats-server on a free port. Prints a table with the median MB/s of
modelpress' streaming put/get beside nats-py's stock object-store put/get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from machine_record import machine_record  # bench/ (this folder is on sys.path)
from services.common.store import nats_conn
from services.common.store.artifact_store import ArtifactStore
from services.common.store.nats_server import start_nats_server
from modelpress.v1 import common_pb2

SETTLE_S = 3.0
CONCURRENT = 8
RESULTS = Path(__file__).resolve().parent / "results"


async def run(mb: int, repeats: int) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "blob.bin"
        with open(src, "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1024 * 1024))
        proc, url = start_nats_server(tmp_path / "nats")
        try:
            nc = await nats_conn.connect(url, name="bench")
            js = nats_conn.jetstream(nc)
            store = await ArtifactStore(js, bucket="bench").ensure()
            stock = await js.object_store("bench")
            times: dict[str, list[float]] = {"put": [], "get": [], "get (no disk)": [], "stock put": [],
                                             "stock get": [], "disk write": []}
            for i in range(repeats):
                # The ceiling for any get: writing the same bytes to this disk from memory.
                payload = src.read_bytes()
                t = time.perf_counter()
                with open(tmp_path / "disk.bin", "wb") as f:
                    for start in range(0, len(payload), 1 << 20):
                        f.write(payload[start:start + (1 << 20)])
                times["disk write"].append(time.perf_counter() - t)
                del payload
                (tmp_path / "disk.bin").unlink()
                t = time.perf_counter()
                ref = await store.put_file(src, fmt=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS)
                times["put"].append(time.perf_counter() - t)
                # Let nats-server finish flushing the object to disk so the read is timed alone.
                await asyncio.sleep(SETTLE_S)
                t = time.perf_counter()
                await store.get_file(ref.id, tmp_path / "out.bin")
                times["get"].append(time.perf_counter() - t)
                (tmp_path / "out.bin").unlink()
                t = time.perf_counter()
                async for _chunk in store.iter_chunks(ref.id):  # JetStream read + sha256, no file
                    pass
                times["get (no disk)"].append(time.perf_counter() - t)
                await store.delete(ref.id)
                t = time.perf_counter()
                with open(src, "rb") as f:
                    await stock.put(f"stock-{i}", f)
                times["stock put"].append(time.perf_counter() - t)
                await asyncio.sleep(SETTLE_S)
                t = time.perf_counter()
                with open(tmp_path / "out2.bin", "wb") as f:
                    await stock.get(f"stock-{i}", writeinto=f)
                times["stock get"].append(time.perf_counter() - t)
                await stock.delete(f"stock-{i}")
            # Eight reads at once on one connection (a worker running eight jobs): total MB/s.
            parts = []
            for k in range(CONCURRENT):
                part = tmp_path / f"part{k}.bin"
                with open(src, "rb") as whole, open(part, "wb") as out:
                    out.write(whole.read(mb // CONCURRENT * 2**20))
                parts.append(await store.put_file(part, fmt=common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS))
            await asyncio.sleep(SETTLE_S)
            t = time.perf_counter()
            await asyncio.gather(*(store.get_file(ref.id, tmp_path / f"got{k}.bin") for k, ref in enumerate(parts)))
            times[f"{CONCURRENT} gets at once"] = [time.perf_counter() - t]
            await nc.close()
        finally:
            proc.terminate()
            proc.wait()
    return [(name, mb * 1.048576 / statistics.median(ts)) for name, ts in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = asyncio.run(run(args.mb, args.repeats))
    print(f"artifact store throughput, {args.mb} MiB object, median of {args.repeats}")
    print(f"{'path':<18} {'MB/s':>8}")
    for name, rate in rows:
        print(f"{name:<18} {rate:>8.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "artifact_throughput.json").write_text(json.dumps(
        {"machine": machine_record(threads=os.cpu_count()), "object_mib": args.mb, "repeats": args.repeats,
         "mb_per_s": {name: round(rate, 1) for name, rate in rows}}, indent=2))


if __name__ == "__main__":
    main()
