"""Serving under load: compressed and original artifacts deployed side by side on one machine, each
on its own serving replica (`python -m services.serving`), driven by a bounded local load generator.

    python bench/serve.py [--seconds 20] [--lm-tokens 128] [--lm-compressed FOLDER] [--skip-lm] [--skip-encoder]

Every measured mode is its own replica process, started one at a time (never two replicas under
load at once), warmed up, loaded for `--seconds` by a closed-loop generator in this process, then
its /metrics scraped and its peak RSS (VmHWM) read before it is stopped.

MiniLM-L6 through OIP gRPC: 32 client threads, each with its own tritonclient.grpc client, each
request one held-out pydoc sentence (BYTES `text` [1] -> `embedding`). Modes: the original FP32
folder (PyTorch) with dynamic batching (max_batch_size 16), its onnx-int8 artifact (made here once
by the optimizer's method, reused from --work) with the same batching, and the onnx-int8 artifact at
max_batch_size 1. Bars: compressed >= 3x the original's requests/s at a p95 no worse; dynamic
batching >= 1.5x batch-1 on the same artifact.

SmolLM2-135M through the OpenAI API: 8 concurrent streams (openai.AsyncOpenAI, streaming
completions, greedy, max_tokens --lm-tokens), each issuing held-out sentences as prompts until
--seconds is over (requests in flight then finish). Modes: the original FP32 folder and the
compressed folder (--lm-compressed, default: the quantizer's bf16 cast made here once) with
continuous batching (max_batch_size 8), and the compressed folder at max_batch_size 1 (the 8 streams
served one at a time). Bars: compressed >= 2x the original's tokens/s; continuous batching >= 2x
one at a time. Time to first token p50/p95 is reported.

Quality as served: cosine of the compressed vs the original embeddings of the same sentences
(MiniLM), and greedy token agreement of original vs compressed completions of a few prompts
(SmolLM2; the completions re-tokenized with the model's tokenizer).

Writes bench/results/serving.json (a skipped part keeps the figures the file already had) and prints
a table. The load generator shares the machine's cores with the replica: its own CPU seconds and
the replica's are recorded per mode, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Self

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "serving.json"
ENCODER, LM = "minilm-l6", "smollm2-135m"
ENCODER_CLIENTS, LM_STREAMS = 32, 8
QUALITY_SENTENCES, QUALITY_PROMPTS, QUALITY_TOKENS = 64, 6, 32


# --- text ---------------------------------------------------------------------------------------

def heldout_sentences(min_chars: int = 30, max_chars: int = 300) -> list[str]:
    """Prose sentences of the held-out pydoc topics, in order (code blocks, which pydoc indents,
    and lines of markup are left out)."""
    from services.common.datasets.corpus import heldout_text

    sentences = []
    for paragraph in re.split(r"\n\s*\n", heldout_text()):
        lines = paragraph.splitlines()
        if not lines or any(line.startswith((" ", "\t")) for line in lines):
            continue
        prose = " ".join(line.strip() for line in lines)
        if set(prose) <= set("=-*~^ "):
            continue
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", prose):
            if min_chars <= len(sentence) <= max_chars and len(sentence.split()) >= 5:
                sentences.append(sentence)
    return sentences


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


# --- artifacts ----------------------------------------------------------------------------------

def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20, 1)


def describe_artifact(folder: Path, made_by: str) -> dict:
    """Where the artifact is, its format and size, and what made it (with the compression its own
    manifest states, where it has one)."""
    from services.common.models.artifact_format import detect_format

    figures = {"folder": str(folder), "format": detect_format(folder), "made_by": made_by, "size_mb": folder_mb(folder)}
    manifest, packed = Path(folder) / "modelpress.json", Path(folder) / "quantization.json"
    if manifest.exists():
        figures["compression"] = json.loads(manifest.read_text()).get("compression")
    elif packed.exists():
        figures["compression"] = {"scheme": json.loads(packed.read_text()).get("scheme")}
    return figures


def built_once(dst: Path, build) -> Path:
    """`build(partial_folder)` once; a finished folder under --work is reused."""
    if (dst / "config.json").exists():
        return dst
    partial = dst.with_name(dst.name + ".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    partial.mkdir(parents=True)
    build(partial)
    partial.rename(dst)
    return dst


def encoder_artifacts(work: Path, onnx_fp32: bool) -> dict[str, dict]:
    """The original folder, its onnx-int8 artifact and (where asked) its plain FP32 ONNX export."""
    from services.common.contract.config import parse_config
    from services.common.contract.engine_api import ProgressReporter
    from services.common.models.builtin_models import builtin_folder
    from services.common.runtime.settings import default_cache
    from services.optimizer.configs import OnnxConfig, OnnxInt8Config
    from services.optimizer.engine import run_onnx, run_onnx_int8

    original = builtin_folder(ENCODER, default_cache())
    compressed = built_once(work / f"{ENCODER}-onnx-int8", lambda dst: run_onnx_int8(
        parse_config(OnnxInt8Config, {}), original, dst, ProgressReporter()))
    artifacts = {"original": describe_artifact(original, f"builtin:{ENCODER}"),
                 "compressed": describe_artifact(compressed, "optimizer onnx-int8 (default config)")}
    if onnx_fp32:
        reference = built_once(work / f"{ENCODER}-onnx", lambda dst: run_onnx(
            parse_config(OnnxConfig, {}), original, dst, ProgressReporter()))
        artifacts["onnx_fp32"] = describe_artifact(reference, "optimizer onnx (default config: FP32, fused)")
    return artifacts


def lm_artifacts(work: Path, given: Path | None) -> tuple[dict, dict]:
    from services.common.models.builtin_models import builtin_folder
    from services.common.runtime.settings import default_cache

    original = builtin_folder(LM, default_cache())
    if given is not None:
        return describe_artifact(original, f"builtin:{LM}"), describe_artifact(given, "given (--lm-compressed)")
    from services.common.contract.config import parse_config
    from services.common.contract.engine_api import ProgressReporter
    from services.quantizer.engine import METHODS

    # The bf16 cast: served through PyTorch, it computes in bf16 where the CPU has bf16 dot products
    # (avx512_bf16, AMX); the packed INT8 artifact widens its weights on every call (slower than FP32).
    method = METHODS["bf16"]
    compressed = built_once(work / f"{LM}-bf16", lambda dst: method.run(
        parse_config(method.config_cls, {}), original, dst, ProgressReporter()))
    return (describe_artifact(original, f"builtin:{LM}"),
            describe_artifact(compressed, "quantizer bf16 cast (the bf16 recipe)"))


# --- replicas -----------------------------------------------------------------------------------

class Replica:
    """One `python -m services.serving` process serving one model, until stop()."""

    def __init__(self, name: str, folder: Path, config: dict, work: Path) -> None:
        self.name, self.config = name, config
        self.ready = Path(tempfile.mkstemp(prefix="ready-", suffix=".json", dir=work)[1])
        self.ready.unlink()
        self.log = work / f"replica-{name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.serving", "--model", f"{name}={folder}",
                                          "--config", json.dumps(config), "--grpc", "127.0.0.1:0",
                                          "--http", "127.0.0.1:0", "--ready-file", str(self.ready)],
                                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 900
        try:
            while not self.ready.exists() or not self.ready.read_text().strip():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the replica of {name} exited ({self.proc.returncode}):\n"
                                       f"{self.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica of {name} did not load in 900 s")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        ports = json.loads(self.ready.read_text())
        self.grpc = f"127.0.0.1:{ports['grpc_port']}"
        self.http = f"127.0.0.1:{ports['http_port']}"
        self.rss_after_load_mb = self.status_mb("VmRSS")

    def status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
        raise KeyError(key)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def metrics(self) -> dict:
        """The batch-size histogram and generated tokens of this replica's deployment, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://{self.http}/metrics", timeout=30).read().decode()
        found = {"batch_sum": 0.0, "batch_count": 0.0, "buckets": {}, "tokens": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("deployment") != self.name:
                    continue
                if sample.name == "modelpress_serving_batch_size_sum":
                    found["batch_sum"] = sample.value
                elif sample.name == "modelpress_serving_batch_size_count":
                    found["batch_count"] = sample.value
                elif sample.name == "modelpress_serving_batch_size_bucket":
                    found["buckets"][sample.labels["le"]] = sample.value
                elif sample.name == "modelpress_serving_generated_tokens_total":
                    found["tokens"] = sample.value
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ready.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def batching_between(before: dict, after: dict) -> dict:
    """Engine calls (encoders) or decode steps (LMs) of the measured window, and their mean size."""
    calls = after["batch_count"] - before["batch_count"]
    buckets = {le: int(after["buckets"][le] - before["buckets"].get(le, 0)) for le in after["buckets"]}
    return {"engine_calls": int(calls),
            "mean_batch_size": round((after["batch_sum"] - before["batch_sum"]) / calls, 2) if calls else None,
            "batch_size_cumulative_buckets": buckets}


def measured(replica: Replica, load) -> dict:
    """`load()` against the replica, with the replica's batching, CPU and memory around it."""
    before, server_cpu, client_cpu = replica.metrics(), replica.cpu_s(), time.process_time()
    figures = load()
    figures["server_cpu_s"] = round(replica.cpu_s() - server_cpu, 1)
    figures["client_cpu_s"] = round(time.process_time() - client_cpu, 1)
    after = replica.metrics()
    figures["batching"] = batching_between(before, after)
    if after["tokens"] or before["tokens"]:
        figures["server_generated_tokens"] = int(after["tokens"] - before["tokens"])
    figures["rss_after_load_mb"] = replica.rss_after_load_mb
    figures["peak_rss_mb"] = replica.status_mb("VmHWM")
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    return figures


# --- MiniLM through OIP gRPC --------------------------------------------------------------------

def grpc_client_module():
    from tests.protocol_clients import tritonclient_grpc_apart

    return tritonclient_grpc_apart()


def encoder_load(address: str, model: str, sentences: list[str], clients: int, seconds: float) -> dict:
    """Closed loop: `clients` threads, each with its own gRPC client, one sentence per request, until
    `seconds` have passed since they all started (a request in flight then finishes)."""
    from tritonclient.utils import InferenceServerException

    grpcclient = grpc_client_module()
    clock: dict[str, float] = {}
    barrier = threading.Barrier(clients, action=lambda: clock.update(start=time.perf_counter()))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    ended = [0.0] * clients

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(address)
        wanted = [grpcclient.InferRequestedOutput("embedding")]
        k = i
        barrier.wait()
        deadline = clock["start"] + seconds
        try:
            while time.perf_counter() < deadline:
                text = grpcclient.InferInput("text", [1], "BYTES")
                text.set_data_from_numpy(np.array([sentences[k % len(sentences)].encode()], dtype=object))
                k += clients
                sent = time.perf_counter()
                try:
                    client.infer(model, [text], outputs=wanted)
                except InferenceServerException as exc:
                    errors[i].append(f"{exc.status()}: {exc.message()}"[:200])
                    continue
                latencies[i].append(time.perf_counter() - sent)
        finally:
            ended[i] = time.perf_counter()
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = max(ended) - clock["start"]
    flat = [x for row in latencies for x in row]
    failed = [x for row in errors for x in row]
    return {"clients": clients, "requests": len(flat), "errors": len(failed), "first_errors": failed[:3],
            "seconds": round(elapsed, 2), "requests_per_s": round(len(flat) / elapsed, 1),
            "latency_p50_ms": percentile_ms(flat, 50), "latency_p95_ms": percentile_ms(flat, 95),
            "latency_p99_ms": percentile_ms(flat, 99)}


def encoder_embeddings(address: str, model: str, sentences: list[str]) -> np.ndarray:
    grpcclient = grpc_client_module()
    client = grpcclient.InferenceServerClient(address)
    try:
        text = grpcclient.InferInput("text", [len(sentences)], "BYTES")
        text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
        result = client.infer(model, [text], outputs=[grpcclient.InferRequestedOutput("embedding")])
        return result.as_numpy("embedding")
    finally:
        client.close()


def run_encoder(args, sentences: list[str]) -> dict:
    artifacts = encoder_artifacts(args.work, args.encoder_onnx_fp32)
    original, compressed = artifacts["original"], artifacts["compressed"]
    batched = {"threads": args.threads, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms}
    if args.max_padding is not None:
        batched["max_padding"] = args.max_padding
    modes = [("original fp32, dynamic batching", "original", original, batched),
             ("onnx-int8, dynamic batching", "compressed", compressed, batched),
             ("onnx-int8, batch-1", "compressed", compressed, {**batched, "max_batch_size": 1})]
    if "onnx_fp32" in artifacts:  # a reference: what the runtime gives without INT8 (no bar reads it)
        modes.append(("onnx fp32, dynamic batching", "onnx_fp32", artifacts["onnx_fp32"], batched))
    quality_sentences = sentences[:QUALITY_SENTENCES]
    rows, embeddings = [], {}
    for mode, which, artifact, config in modes:
        print(f"[encoder] {mode}: starting the replica", flush=True)
        with Replica(ENCODER, Path(artifact["folder"]), config, args.work) as replica:
            embeddings[mode] = encoder_embeddings(replica.grpc, ENCODER, quality_sentences)
            encoder_load(replica.grpc, ENCODER, sentences[::-1], ENCODER_CLIENTS, args.warmup)
            figures = measured(replica, lambda: encoder_load(replica.grpc, ENCODER, sentences, ENCODER_CLIENTS,
                                                             args.seconds))
        row = {"mode": mode, "artifact": which, "format": artifact["format"], "config": config, **figures}
        rows.append(row)
        print(f"[encoder] {mode}: {json.dumps({k: v for k, v in row.items() if k != 'batching'})}", flush=True)

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    original_emb = embeddings[modes[0][0]]
    compressed_cos = cosine(embeddings[modes[1][0]], original_emb)
    batch1_cos = cosine(embeddings[modes[2][0]], embeddings[modes[1][0]])
    quality = {"sentences": len(quality_sentences),
               "cosine_compressed_vs_original_mean": round(float(compressed_cos.mean()), 4),
               "cosine_compressed_vs_original_min": round(float(compressed_cos.min()), 4),
               # Same artifact, same sentences, served alone vs in engine calls with others: dynamic INT8
               # activations take one scale per tensor, so a row's answer depends on what shares its call.
               "cosine_batch1_vs_batched_mean": round(float(batch1_cos.mean()), 6),
               "cosine_batch1_vs_batched_min": round(float(batch1_cos.min()), 6)}
    orig, comp, one = rows[:3]
    speedup = comp["requests_per_s"] / orig["requests_per_s"]
    p95_no_worse = comp["latency_p95_ms"] <= orig["latency_p95_ms"]
    dynamic = comp["requests_per_s"] / one["requests_per_s"]
    bars = {"compressed_vs_original_requests_per_s": round(speedup, 2),
            "compressed_p95_no_worse": p95_no_worse,
            "compressed_3x_at_p95_no_worse": speedup >= 3 and p95_no_worse,
            "dynamic_vs_batch1_requests_per_s": round(dynamic, 2),
            "dynamic_1_5x_batch1": dynamic >= 1.5}
    return {"model": ENCODER, "protocol": "OIP gRPC (tritonclient.grpc), BYTES text [1] per request",
            "clients": ENCODER_CLIENTS, "seconds_per_mode": args.seconds, "warmup_seconds": args.warmup,
            "artifacts": artifacts, "modes": rows, "quality": quality, "bars": bars, **stamp()}


# --- SmolLM2 through the OpenAI API -------------------------------------------------------------

async def lm_load(http: str, model: str, prompts: list[str], streams: int, tokens: int, seconds: float) -> dict:
    """Closed loop: `streams` concurrent streams, each issuing prompts one after another until
    `seconds` have passed since the start (a completion in flight then finishes)."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://{http}/v1", api_key="unused", max_retries=0, timeout=3600)
    records: list[dict] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def stream(i: int) -> None:
        k = i
        while k == i or time.perf_counter() < deadline:  # at least one completion per stream
            prompt = prompts[k % len(prompts)]
            k += streams
            sent = time.perf_counter()
            first, chunks, usage, reason = None, 0, None, None
            try:
                response = await client.completions.create(model=model, prompt=prompt, max_tokens=tokens,
                                                           temperature=0, stream=True,
                                                           stream_options={"include_usage": True})
                async for chunk in response:
                    if chunk.choices:
                        if chunk.choices[0].text:
                            first = first or time.perf_counter()
                            chunks += 1
                        reason = chunk.choices[0].finish_reason or reason
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
            except openai.APIError as exc:
                errors.append(str(exc)[:200])
                continue
            done = time.perf_counter()
            records.append({"ttft": (first or done) - sent, "latency": done - sent, "ended": done,
                            "tokens": usage if usage is not None else chunks, "chunks": chunks, "reason": reason})

    await asyncio.gather(*(stream(i) for i in range(streams)))
    await client.close()
    elapsed = max((r["ended"] for r in records), default=time.perf_counter()) - start
    total = sum(r["tokens"] for r in records)
    reasons: dict[str, int] = {}
    for r in records:
        reasons[str(r["reason"])] = reasons.get(str(r["reason"]), 0) + 1
    return {"streams": streams, "max_tokens": tokens, "requests": len(records), "errors": len(errors),
            "first_errors": errors[:3], "seconds": round(elapsed, 2), "completion_tokens": total,
            "tokens_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
            "requests_per_s": round(len(records) / elapsed, 3) if elapsed > 0 else None,
            "ttft_p50_ms": percentile_ms([r["ttft"] for r in records], 50),
            "ttft_p95_ms": percentile_ms([r["ttft"] for r in records], 95),
            "latency_p50_ms": percentile_ms([r["latency"] for r in records], 50),
            "latency_p95_ms": percentile_ms([r["latency"] for r in records], 95),
            "finish_reasons": reasons}


def lm_completions(http: str, model: str, prompts: list[str], tokens: int) -> list[str]:
    import openai

    client = openai.OpenAI(base_url=f"http://{http}/v1", api_key="unused", max_retries=0, timeout=3600)
    try:
        return [client.completions.create(model=model, prompt=p, max_tokens=tokens, temperature=0).choices[0].text
                for p in prompts]
    finally:
        client.close()


def token_agreement(tokenizer_folder: Path, reference: list[str], other: list[str]) -> dict:
    """Greedy completions compared token by token (both re-tokenized with the model's tokenizer)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_folder) / "tokenizer.json"))
    same = total = first = prefix = 0
    identical = 0
    for a, b in zip(reference, other):
        ta = tokenizer.encode(a, add_special_tokens=False).ids
        tb = tokenizer.encode(b, add_special_tokens=False).ids
        n = max(len(ta), len(tb))
        same += sum(x == y for x, y in zip(ta, tb))
        total += n
        first += bool(ta and tb and ta[0] == tb[0])
        common = next((j for j, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        prefix += common / n if n else 1
        identical += a == b
    count = len(reference)
    return {"prompts": count, "first_token_agreement": round(first / count, 3),
            "positionwise_token_agreement": round(same / total, 3) if total else None,
            "mean_common_prefix_share": round(prefix / count, 3), "identical_completions": identical}


def run_lm(args, sentences: list[str]) -> dict:
    original, compressed = lm_artifacts(args.work, args.lm_compressed)
    prompts = [s for s in sentences if len(s) >= 60]
    continuous = {"threads": args.threads, "max_batch_size": LM_STREAMS}
    modes = [("original fp32, continuous batching", "original", original, continuous),
             ("compressed, continuous batching", "compressed", compressed, continuous),
             ("compressed, one at a time", "compressed", compressed, {**continuous, "max_batch_size": 1})]
    quality_prompts = prompts[:QUALITY_PROMPTS]
    quality_tokens = min(QUALITY_TOKENS, args.lm_tokens)
    rows, completions = [], {}
    for mode, which, artifact, config in modes:
        print(f"[lm] {mode}: starting the replica", flush=True)
        with Replica(LM, Path(artifact["folder"]), config, args.work) as replica:
            completions[mode] = lm_completions(replica.http, LM, quality_prompts, quality_tokens)
            asyncio.run(lm_load(replica.http, LM, prompts[::-1], LM_STREAMS, min(8, args.lm_tokens), 0))
            figures = measured(replica, lambda: asyncio.run(lm_load(replica.http, LM, prompts, LM_STREAMS,
                                                                    args.lm_tokens, args.seconds)))
        row = {"mode": mode, "artifact": which, "format": artifact["format"], "config": config, **figures}
        rows.append(row)
        print(f"[lm] {mode}: {json.dumps({k: v for k, v in row.items() if k != 'batching'})}", flush=True)
    tokenizer_folder = Path(original["folder"])
    quality = {"max_tokens": quality_tokens,
               "compressed_vs_original": token_agreement(tokenizer_folder, completions[modes[0][0]],
                                                         completions[modes[1][0]]),
               "one_at_a_time_vs_continuous": token_agreement(tokenizer_folder, completions[modes[1][0]],
                                                              completions[modes[2][0]])}
    orig, comp, one = rows
    speedup = comp["tokens_per_s"] / orig["tokens_per_s"]
    continuous_gain = comp["tokens_per_s"] / one["tokens_per_s"]
    bars = {"compressed_vs_original_tokens_per_s": round(speedup, 2), "compressed_2x_original": speedup >= 2,
            "continuous_vs_one_at_a_time_tokens_per_s": round(continuous_gain, 2),
            "continuous_2x_one_at_a_time": continuous_gain >= 2}
    document = {"model": LM, "protocol": "OpenAI /v1/completions, streamed (openai.AsyncOpenAI), temperature 0",
                "streams": LM_STREAMS, "max_tokens": args.lm_tokens, "seconds_per_mode": args.seconds,
                "artifacts": {"original": original, "compressed": compressed}, "modes": rows, "quality": quality,
                "bars": bars, **stamp()}
    if not any(r["batching"]["engine_calls"] for r in rows):
        document["batching_note"] = ("the replica's /metrics observed no modelpress_serving_batch_size for the causal "
                                     "LM (the continuous batcher keeps its decode-step histogram in its own stats), "
                                     "so mean_batch_size is unknown here")
    return document


# --- results ------------------------------------------------------------------------------------

def stamp() -> dict:
    return {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_1_5_15m": [round(v, 2) for v in os.getloadavg()]}


def print_table(document: dict) -> None:
    print("part | mode | format | req/s | tok/s | p50 ms | p95 ms | ttft p50 | ttft p95 | mean batch | "
          "peak RSS MB | server cpu s | client cpu s | load 1m")
    for part in ("encoder", "lm"):
        for r in (document.get(part) or {}).get("modes", []):
            cells = [part, r["mode"], r["format"], r.get("requests_per_s"), r.get("tokens_per_s"),
                     r.get("latency_p50_ms"), r.get("latency_p95_ms"), r.get("ttft_p50_ms"), r.get("ttft_p95_ms"),
                     r["batching"]["mean_batch_size"], r["peak_rss_mb"], r["server_cpu_s"], r["client_cpu_s"],
                     r["load_average_1m"]]
            print(" | ".join("" if c is None else str(c) for c in cells))
    for part in ("encoder", "lm"):
        if document.get(part):
            print(f"{part} bars: {json.dumps(document[part]['bars'])}")
            print(f"{part} quality: {json.dumps(document[part]['quality'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per measured mode")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up load per encoder mode "
                                                                    "(default: a fifth of --seconds, 1 to 5 s)")
    parser.add_argument("--lm-tokens", type=int, default=128, help="max_tokens of each LM completion")
    parser.add_argument("--lm-compressed", type=Path, help="the compressed SmolLM2 folder (default: the "
                                                           "quantizer's bf16 cast, made once under --work)")
    parser.add_argument("--threads", type=int, default=2, help="the replicas' engine threads (DeploymentConfig)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the batched encoder replicas' max_batch_size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the encoder replicas' batching window")
    parser.add_argument("--max-padding", type=float, help="the encoder replicas' max_padding (default: "
                                                          "DeploymentConfig's)")
    parser.add_argument("--encoder-onnx-fp32", action="store_true", help="also serve MiniLM's plain FP32 ONNX "
                                                                        "export (a reference mode, no bar)")
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "modelpress-serve")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.lm_compressed is not None and not (args.lm_compressed / "config.json").exists():
        parser.error(f"--lm-compressed {args.lm_compressed}: no config.json there")
    args.warmup = args.warmup if args.warmup is not None else min(5.0, max(1.0, args.seconds / 5))
    args.work.mkdir(parents=True, exist_ok=True)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    from services.common.measure.machine import describe_machine

    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    sentences = heldout_sentences()
    document = {
        "what": "Serving replicas (python -m services.serving) under a closed-loop local load generator, one "
                "replica per mode, started one at a time on the same machine (bench/serve.py). Encoder: "
                f"{ENCODER_CLIENTS} tritonclient.grpc clients, one held-out sentence per request. LM: {LM_STREAMS} "
                "concurrent streamed OpenAI completions, greedy. peak_rss_mb: VmHWM of the replica process after "
                "its run; mean_batch_size: from the replica's /metrics over the measured window; server_cpu_s / "
                "client_cpu_s: CPU seconds of the replica and of this load generator in the window (they share "
                "the cores); load_average_1m: when the mode ended",
        "machine": describe_machine().as_dict(),
        "encoder": previous.get("encoder"),
        "lm": previous.get("lm"),
    }
    if not args.skip_encoder:
        document["encoder"] = run_encoder(args, sentences)
    if not args.skip_lm:
        document["lm"] = run_lm(args, sentences)
    document.update(stamp())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print_table(document)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
