"""Measures model folders in a fresh process and prints the figures as JSON on stdout.

The evaluator runs this as a subprocess so that peak RSS is the measured model's alone,
not whatever the long-lived service loaded before, and so that a crash in a model's
code cannot take the service down:

    python -m services.evaluator.probe measure PLAN_JSON      one model, every figure
    python -m services.evaluator.probe interleave PLAN_JSON   N models, latency interleaved
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ProbePlan:
    models: list[str]
    batch_size: int = 1
    sequence_length: int = 128
    iterations: int = 10
    warmup: int = 3
    threads: int = 2
    # Extra (batch, sequence) shapes timed after the main one.
    grid: list[tuple[int, int]] = field(default_factory=list)
    # Causal LMs: decode steps timed after a prefill of sequence_length (0: none).
    decode_tokens: int = 0
    quality_windows: int = 0
    # Encoders: topic sentences; their embeddings go to embeddings_out when set.
    quality_sentences: int = 0
    quality_split: str = "heldout"  # or "validation" (corpus.SPLITS)
    embeddings_out: str = ""
    # False: one untimed pass at the main shape (FLOPs and RSS still measured), no timing.
    time_latency: bool = True
    device: str = "cpu"
    # interleave: the model every other model's speedup is measured against.
    baseline_index: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ProbePlan":
        data = json.loads(text)
        data["grid"] = [tuple(shape) for shape in data.get("grid", [])]
        return cls(**data)


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss is not that: exec carries over the high-water
    mark of the address space it replaces, which for a child of a large parent (the evaluator
    service, a benchmark driver) is the parent's. VmHWM belongs to the new address space alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _engine_parameters(folder: Path, fmt: str) -> int:
    if fmt == "ONNX":
        from services.evaluator.onnx_model import onnx_parameters

        return onnx_parameters(folder)
    from services.evaluator.openvino_model import openvino_parameters

    return openvino_parameters(folder)


def not_measured(plan: ProbePlan, kind: str, fmt: str, supports_decode: bool) -> dict[str, str]:
    """What a measurement of this model under this plan leaves out, each with why."""
    causal = kind == "causal-lm"
    reasons: dict[str, str] = {}
    if fmt in ("ONNX", "OpenVINO IR"):
        reasons["flops"] = (f"torch's flop counter sees PyTorch ops only: the FLOPs of an {fmt} graph "
                            f"are not counted")
    if not causal:
        reasons.update(perplexity="an encoder has no perplexity",
                       top1_accuracy="an encoder has no next-token accuracy",
                       quality_tokens="an encoder scores no token windows",
                       decode="an encoder has no per-token decode")
    elif not plan.quality_windows:
        for name in ("perplexity", "top1_accuracy", "quality_tokens"):
            reasons[name] = "quality_windows is 0: no held-out windows were scored"
    if causal:
        reasons["encoder"] = "a causal LM has no sentence embeddings to score"
    elif not plan.quality_sentences:
        reasons["encoder"] = "quality_sentences is 0: no held-out sentences were embedded"
    if causal and not supports_decode:
        reasons["decode"] = f"the {fmt} graph was exported without its KV cache: it has no per-token decode"
    elif causal and not plan.decode_tokens:
        reasons["decode"] = "decode_tokens is 0: no per-token decode was timed"
    if not plan.time_latency:
        reasons["latency"] = "latency was not timed in this probe"
        reasons.setdefault("decode", "latency was not timed in this probe")
    if not plan.device.startswith("cuda"):
        reasons["cuda_max_memory_mb"] = "measured on the CPU"
    return reasons


def measure(plan: ProbePlan) -> dict:
    import torch

    from services.common.models import modelio
    from services.evaluator import latency, quality
    from services.common.measure.machine import PowerMeter, describe_machine
    from services.evaluator.machine_load import LoadWatch
    from services.evaluator.measure import count_flops, count_parameters
    from services.evaluator.formats import load_for_measurement

    folder = Path(plan.models[0])
    loaded = load_for_measurement(folder, plan.device, plan.threads)
    config, kind, model, vocab = loaded.config, loaded.kind, loaded.model, loaded.vocab_size
    causal = kind == "causal-lm"
    engine_format = loaded.format in ("ONNX", "OpenVINO IR")
    ids = latency.fixed_token_ids(plan.batch_size, plan.sequence_length, vocab).to(latency.model_device(model))
    figures: dict = {
        "architecture": (config.get("architectures") or [config.get("model_type", "")])[0],
        "kind": kind,
        "format": loaded.format,
        "parameters": _engine_parameters(folder, loaded.format) if engine_format else count_parameters(model),
        "machine": describe_machine(use_gpu=plan.device != "cpu").as_dict(),
        # Why each figure this probe leaves out was not measured (ModelMetrics.not_measured).
        "not_measured": not_measured(plan, kind, loaded.format, getattr(model, "supports_decode", True)),
    }
    if not engine_format:  # torch's flop counter sees PyTorch ops only
        figures["flops"] = count_flops(model, ids)
    if plan.time_latency:
        watch = LoadWatch().start()
        power = PowerMeter()
        power.start()
        main = latency.measure_forward(model, batch_size=plan.batch_size, sequence_length=plan.sequence_length,
                                       iterations=plan.iterations, warmup=plan.warmup, vocab_size=vocab,
                                       causal=causal)
        watts = power.stop()
        figures["latency"] = main.as_dict()
        if watts is not None:
            figures["power_w"] = watts
        grid = [latency.measure_forward(model, batch_size=b, sequence_length=s, iterations=plan.iterations,
                                        warmup=plan.warmup, vocab_size=vocab, causal=causal).as_dict()
                for b, s in plan.grid]
        figures["latency_grid"] = grid
        # An ONNX graph exported without its KV cache has no per-token decode to time.
        if causal and plan.decode_tokens and getattr(model, "supports_decode", True):
            figures["decode"] = latency.measure_decode(model, batch_size=plan.batch_size,
                                                       prompt_length=plan.sequence_length, tokens=plan.decode_tokens,
                                                       vocab_size=vocab).as_dict()
        figures["timing_load"] = watch.stop().as_dict()
    else:
        latency.forward_pass(model, ids, causal=causal)()
    # Peak while loaded and run at the stated shapes, before the quality passes' own shapes.
    figures["peak_rss_mb"] = peak_rss_mb()
    if plan.device.startswith("cuda"):
        figures["cuda_max_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if causal and plan.quality_windows:
        tokenizer = modelio.load_tokenizer(folder)
        windows = quality.text_windows(tokenizer, plan.quality_windows, split=plan.quality_split)
        found = quality.causal_lm_quality(model, windows)
        figures.update(perplexity=found.perplexity, top1_accuracy=found.top1_accuracy, quality_tokens=found.tokens)
    if kind == "encoder" and plan.quality_sentences:
        sentences, labels = quality.topic_sentences(plan.quality_sentences, split=plan.quality_split)
        embeddings = quality.sentence_embeddings(model, modelio.load_tokenizer(folder), sentences)
        figures["encoder"] = asdict(quality.encoder_quality(embeddings, labels))
        if plan.embeddings_out:
            from safetensors.torch import save_file

            save_file({"embeddings": embeddings.contiguous()}, plan.embeddings_out)
    return figures


def interleave(plan: ProbePlan) -> dict:
    """Latency of N models in one process, interleaved, with each one's speedup over the
    baseline; rounds are added while a speedup is too noisy to read (latency.EXTRA_ROUNDS)."""
    from services.evaluator import latency
    from services.evaluator.formats import load_for_measurement
    from services.evaluator.machine_load import LoadWatch

    loaded = [load_for_measurement(Path(folder), plan.device, plan.threads) for folder in plan.models]
    kinds = {m.kind for m in loaded}
    if len(kinds) != 1:
        raise SystemExit(f"cannot compare latency across model kinds {sorted(kinds)}")
    watch = LoadWatch().start()
    figures, ratios = latency.steady_interleaved_forward(
        [m.model for m in loaded], baseline_index=plan.baseline_index, batch_size=plan.batch_size,
        sequence_length=plan.sequence_length, rounds=plan.iterations,
        max_rounds=latency.EXTRA_ROUNDS * plan.iterations, warmup=plan.warmup,
        vocab_size=min(m.vocab_size for m in loaded), causal=kinds == {"causal-lm"})
    result = {"latency": [f.as_dict() for f in figures], "rounds": figures[0].iterations,
              "speed": [[r.as_dict()] for r in ratios]}
    decodable = [getattr(m.model, "supports_decode", True) for m in loaded]
    if kinds == {"causal-lm"} and plan.decode_tokens and decodable[plan.baseline_index]:
        chosen = [i for i, ok in enumerate(decodable) if ok]
        decoded, decode_ratios = latency.steady_interleaved_decode(
            [loaded[i].model for i in chosen], baseline_index=chosen.index(plan.baseline_index),
            batch_size=plan.batch_size, prompt_length=plan.sequence_length, tokens=plan.decode_tokens,
            max_tokens=min(512, latency.EXTRA_ROUNDS * plan.decode_tokens),
            vocab_size=min(m.vocab_size for m in loaded))
        result["decode"] = [None] * len(loaded)
        for i, figure, ratio in zip(chosen, decoded, decode_ratios):
            result["decode"][i] = figure.as_dict()
            result["speed"][i].append(ratio.as_dict())
    result["load"] = watch.stop().as_dict()
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("measure", "interleave"):
        raise SystemExit(__doc__)
    plan = ProbePlan.from_json(argv[1])
    import torch

    torch.set_num_threads(plan.threads)
    result = measure(plan) if argv[0] == "measure" else interleave(plan)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
