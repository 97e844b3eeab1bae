"""Evaluation of model folders: one fresh probe process per model (figures, peak RSS), one shared
process for interleaved latency when comparing, and the reference-based encoder figures here. A probe that
times nothing is run once per model content and plan (figure_cache.py)."""

from __future__ import annotations

import contextvars
import copy
import json
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from services.common.datasets import corpus
from services.common.datasets.heldout_sets import HELDOUT_SETS
from services.common.models import modelio
from services.common.store import packaging
from services.common.contract.config import MethodConfig
from services.evaluator import quality
from services.evaluator.figure_cache import UntimedFigureCache
from services.evaluator.measure import stored_parameter_bytes
from services.evaluator.probe import ProbePlan


def _int_list(text: str, field: str, lo: int, hi: int) -> list[int]:
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or not lo <= int(part) <= hi:
            raise ValueError(f"{field}: {part!r} is not an integer in [{lo}, {hi}]")
        values.append(int(part))
    return values


class EvaluationConfig(MethodConfig):
    batch_size: int = Field(1, ge=1, le=256, description="Batch size of the main timed shape")
    sequence_length: int = Field(128, ge=1, le=8192, description="Tokens per sequence of the main timed shape")
    latency_iterations: int = Field(10, ge=1, le=1000, description="Timed passes per shape, after warm-up")
    warmup: int = Field(3, ge=0, le=100, description="Untimed passes before timing each shape")
    quality_windows: int = Field(8, ge=0, le=32, description="Causal LMs: held-out 512-token windows (0: skip)")
    quality_sentences: int = Field(200, ge=0, le=222,
                                   description="Encoders: held-out topic sentences for k-NN and cosine (0: skip)")
    decode_tokens: int = Field(16, ge=0, le=512, description="Causal LMs: timed per-token decode steps (0: skip)")
    quality_split: Literal[corpus.SPLITS] = Field(  # type: ignore[valid-type]
        "heldout", description="Text quality is scored on: heldout (reported figures), validation (a search's "
                               "choices), or a held-out set from another source: " + ", ".join(HELDOUT_SETS))
    threads: int = Field(2, ge=1, le=256, description="torch intra-op threads (fixed for every pass)")
    batch_sizes: str = Field("", description="Extra latency grid: comma-separated batch sizes")
    sequence_lengths: str = Field("", description="Extra latency grid: comma-separated sequence lengths")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="cpu, or cuda where a GPU is present")

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: str) -> str:
        _int_list(value, "batch_sizes", 1, 256)
        return value

    @field_validator("sequence_lengths")
    @classmethod
    def _lengths(cls, value: str) -> str:
        _int_list(value, "sequence_lengths", 1, 8192)
        return value

    def grid(self) -> list[tuple[int, int]]:
        """Every extra batch size with every extra sequence length; a missing axis takes the main value."""
        batches = _int_list(self.batch_sizes, "batch_sizes", 1, 256) or [self.batch_size]
        lengths = _int_list(self.sequence_lengths, "sequence_lengths", 1, 8192) or [self.sequence_length]
        shapes = [(b, s) for b in batches for s in lengths]
        return [shape for shape in shapes if shape != (self.batch_size, self.sequence_length)] \
            if self.batch_sizes or self.sequence_lengths else []

    def plan(self, folders: list[Path], **changes) -> ProbePlan:
        plan = ProbePlan(models=[str(f) for f in folders], batch_size=self.batch_size,
                         sequence_length=self.sequence_length, iterations=self.latency_iterations, warmup=self.warmup,
                         threads=self.threads, grid=self.grid(), decode_tokens=self.decode_tokens,
                         quality_windows=self.quality_windows, quality_sentences=self.quality_sentences,
                         quality_split=self.quality_split, device=self.device)
        for name, value in changes.items():
            setattr(plan, name, value)
        return plan


# Formats whose runtime serves them without PyTorch (see serving_probe.py).
SERVED_WITHOUT_TORCH = frozenset({"ONNX", "OpenVINO IR"})


class ProbeFailed(RuntimeError):
    pass


class ProbeCancelled(RuntimeError):
    """The measurement was cancelled (its caller went away); its probes were killed."""


class ProbeScope:
    """The probe processes one measurement starts, so a cancel can kill them: the measurement runs
    in a worker thread, which cannot be interrupted, but its probes can."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.cancelled = False

    def start(self, cmd: list[str]) -> subprocess.Popen:
        with self._lock:
            if self.cancelled:
                raise ProbeCancelled("measurement cancelled before its next probe")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self._running.add(proc)
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for proc in self._running:
                proc.kill()


# Set by whoever runs a measurement that may be cancelled (the servicer); None: nothing to cancel.
probe_scope: contextvars.ContextVar[ProbeScope | None] = contextvars.ContextVar("probe_scope", default=None)


def run_probe(mode: str, plan: ProbePlan, timeout_s: float = 3600) -> dict:
    """mode: `measure` / `interleave` (probe.py), or `serving` (serving_probe.py, engine formats)."""
    if mode == "serving":
        cmd = [sys.executable, "-m", "services.evaluator.serving_probe", plan.to_json()]
    else:
        cmd = [sys.executable, "-m", "services.evaluator.probe", mode, plan.to_json()]
    scope = probe_scope.get() or ProbeScope()
    proc = scope.start(cmd)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        scope.finished(proc)
    if scope.cancelled:
        raise ProbeCancelled("measurement cancelled: its probe was killed")
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        names = ", ".join(Path(m).name for m in plan.models)
        raise ProbeFailed(f"measuring {names} failed: {last}")
    return json.loads(stdout)


untimed_figures = UntimedFigureCache()


def measure_untimed(folder: Path, plan: ProbePlan) -> dict:
    """A `measure` probe of `folder` that times nothing, or the figures (and embeddings file) of the
    same probe on the same content before."""
    key = untimed_figures.key(folder, plan)
    found = untimed_figures.get(key)
    if found is not None:
        figures, embeddings = found
        if embeddings is not None:
            Path(plan.embeddings_out).write_bytes(embeddings)
        return copy.deepcopy(figures)
    figures = run_probe("measure", plan)
    out = Path(plan.embeddings_out) if plan.embeddings_out else None
    untimed_figures.put(key, copy.deepcopy(figures), out.read_bytes() if out is not None and out.exists() else None)
    return figures


def _load_embeddings(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))["embeddings"]


def evaluate_folder(folder: Path, config: EvaluationConfig, reference: Path | None = None, *,
                    time_latency: bool = True, keep_embeddings: Path | None = None) -> dict:
    """All figures for one model folder, as a dict shaped like ModelMetrics.

    With `reference` (encoders), the reference model embeds the same sentences in its own probe
    and the figures gain cosine and nearest-neighbour agreement against it."""
    with tempfile.TemporaryDirectory(prefix="mp-eval-") as tmp:
        embeddings = keep_embeddings or Path(tmp) / "embeddings.safetensors"
        figures = run_probe("measure", config.plan([folder], embeddings_out=str(embeddings),
                                                   time_latency=time_latency))
        if reference is not None and figures["kind"] == "encoder" and config.quality_sentences:
            reference_embeddings = Path(tmp) / "reference.safetensors"
            measure_untimed(reference, config.plan([reference], embeddings_out=str(reference_embeddings),
                                                   time_latency=False, quality_windows=0))
            figures["encoder"] = add_reference(figures, _load_embeddings(embeddings),
                                               _load_embeddings(reference_embeddings), config.quality_split,
                                               folder, reference)
    return _with_file_figures(_with_serving_memory(figures, folder, config), folder)


def _with_serving_memory(figures: dict, folder: Path, config: EvaluationConfig) -> dict:
    """An engine artifact's peak RSS is its runtime's alone (serving_probe.py), not that of the
    probe that hosts it beside torch; the hosting probe's figure is kept as host_peak_rss_mb."""
    if figures.get("format") in SERVED_WITHOUT_TORCH:
        served = run_probe("serving", config.plan([folder]))
        figures["host_peak_rss_mb"] = figures["peak_rss_mb"]
        figures["peak_rss_mb"] = served["peak_rss_mb"]
        figures["serving_runtime"] = served["runtime"]
    return figures


def _with_file_figures(figures: dict, folder: Path) -> dict:
    """The figures read from the folder's files rather than from a running model."""
    figures["size_on_disk_bytes"] = packaging.folder_size_bytes(folder)
    figures["parameter_bytes"] = stored_parameter_bytes(folder)
    return figures


def add_reference(figures: dict, embeddings, reference, split: str, folder: Path, reference_folder: Path) -> dict:
    """The encoder figures again, with cosine and neighbour agreement against the reference's embeddings
    of the same sentences: those of `split`, whose topics label them (another split's labels would score
    the k-NN vote against the wrong topics); and how many of them the two tokenizers split alike."""
    sentences, labels = quality.topic_sentences(figures["encoder"]["sentences"], split=split)
    found = asdict(quality.encoder_quality(embeddings, labels, reference))
    if folder != reference_folder:
        found["same_tokenization"] = quality.same_tokenization(
            modelio.load_tokenizer(folder), modelio.load_tokenizer(reference_folder), sentences)
    return found


def compare_folders(folders: list[Path], baseline_index: int, config: EvaluationConfig) -> tuple[list[dict], dict]:
    """Figures of N models on the same inputs: each model's own probe (parameters, FLOPs, peak RSS,
    quality), then one process timing all of them in interleaved rounds, prefill (or forward) and
    decode. Encoders are scored against the baseline's embeddings. Returns the figures (each with
    its `speed` against the baseline) and the interleaved run's `rounds` and machine `load`."""
    results = []
    with tempfile.TemporaryDirectory(prefix="mp-compare-") as tmp:
        paths = [Path(tmp) / f"embeddings-{i}.safetensors" for i in range(len(folders))]
        for folder, path in zip(folders, paths):
            figures = measure_untimed(folder, config.plan([folder], embeddings_out=str(path), time_latency=False))
            results.append(_with_file_figures(_with_serving_memory(figures, folder, config), folder))
        if results[baseline_index]["kind"] == "encoder" and config.quality_sentences:
            reference = _load_embeddings(paths[baseline_index])
            for figures, path, folder in zip(results, paths, folders):
                figures["encoder"] = add_reference(figures, _load_embeddings(path), reference, config.quality_split,
                                                   folder, folders[baseline_index])
    timed = run_probe("interleave", config.plan(folders, baseline_index=baseline_index))
    for figures, latency, speed in zip(results, timed["latency"], timed["speed"]):
        figures["latency"] = latency
        figures["speed"] = speed
        figures["timing_load"] = timed["load"]
        figures.pop("decode", None)
        reasons = figures.setdefault("not_measured", {})
        reasons.pop("latency", None)
        # The interleaved run times decode; a reason of the model's own (an encoder, no KV cache) stays.
        if reasons.get("decode") == "latency was not timed in this probe":
            reasons["decode"] = "no per-token decode was timed against the baseline (the baseline has none)"
    for figures, decode in zip(results, timed.get("decode") or []):
        if decode is not None:
            figures["decode"] = decode
            figures["not_measured"].pop("decode", None)
    return results, {"rounds": timed["rounds"], "load": timed["load"]}
