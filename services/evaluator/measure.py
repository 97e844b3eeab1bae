"""Measurements of one loaded model: parameters, latency, held-out quality. Plain PyTorch."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from services.common import corpus
from services.common.packed import Int8Embedding, Int8Linear

# Perplexity windows are 512 tokens whatever the latency shape, so figures stay comparable.
QUALITY_WINDOW = 512


@dataclass(frozen=True)
class LatencyFigures:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    batch_size: int
    sequence_length: int
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QualityFigures:
    perplexity: float
    top1_accuracy: float
    tokens: int


# Quantization metadata that is not a model parameter (compressed-tensors names).
_QUANT_METADATA = ("weight_scale", "weight_zero_point", "weight_shape", "weight_global_scale", "input_scale",
                   "input_zero_point", "output_scale", "output_zero_point")


def count_parameters(model: nn.Module) -> int:
    """Logical parameters: a packed weight counts as the float weight it stands for; tied tensors
    once; scales and zero-points not at all."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        tensors = [(n, t) for n, t in module.named_parameters(recurse=False) if n not in _QUANT_METADATA]
        if isinstance(module, (Int8Linear, Int8Embedding)):
            tensors = [("weight", module.weight)] + [(n, t) for n, t in tensors if n != "weight"]
        for name, tensor in tensors:
            if name == "weight_packed":  # compressed-tensors int4: count the unpacked shape
                total += int(torch.Size(module.weight_shape.tolist()).numel())
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel()
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(model: nn.Module, *, batch_size: int, sequence_length: int, iterations: int,
                    warmup: int = 3, vocab_size: int = 1000) -> LatencyFigures:
    """Forward-pass wall time on fixed random token ids after warm-up."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, sequence_length), generator=generator)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iterations):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    ordered = sorted(times)
    return LatencyFigures(
        p50_ms=percentile(ordered, 0.50),
        p95_ms=percentile(ordered, 0.95),
        p99_ms=percentile(ordered, 0.99),
        mean_ms=statistics.fmean(times),
        iterations=iterations,
        batch_size=batch_size,
        sequence_length=sequence_length,
        threads=torch.get_num_threads(),
    )


def heldout_windows(tokenizer, windows: int, length: int = QUALITY_WINDOW) -> torch.Tensor:
    """The first `windows` non-overlapping windows of the held-out pydoc text, [windows, length]."""
    ids = tokenizer(corpus.heldout_text(), return_tensors="pt", add_special_tokens=False).input_ids[0]
    available = ids.numel() // length
    if windows > available:
        raise ValueError(f"quality_windows: {windows} asked, the held-out text has {available} of {length} tokens")
    return ids[: windows * length].view(windows, length)


def causal_lm_quality(model: nn.Module, windows: torch.Tensor) -> QualityFigures:
    """Perplexity and next-token top-1 accuracy, one window at a time."""
    nll_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for window in windows:
            logits = model(input_ids=window.unsqueeze(0)).logits[0, :-1].float()
            targets = window[1:]
            nll_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
    return QualityFigures(perplexity=math.exp(nll_sum / count), top1_accuracy=correct / count, tokens=count)


def heldout_sentences(count: int, min_chars: int = 30, max_chars: int = 400) -> list[str]:
    """The first `count` prose sentences of the held-out pydoc text (code lines skipped)."""
    sentences = []
    for paragraph in corpus.heldout_text().split("\n\n"):
        if paragraph.startswith("   "):  # indented: code or grammar
            continue
        for sentence in paragraph.replace("\n", " ").split(". "):
            sentence = sentence.strip()
            if min_chars <= len(sentence) <= max_chars:
                sentences.append(sentence)
                if len(sentences) == count:
                    return sentences
    return sentences


def sentence_embeddings(model: nn.Module, tokenizer, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden states (the sentence-transformers recipe for MiniLM)."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(nn.functional.normalize(pooled, dim=-1))
    return torch.cat(chunks)
