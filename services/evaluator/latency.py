"""Wall-clock latency of forward passes: warm-up, fixed inputs, every pass kept, spread reported.

Plain PyTorch. The caller fixes the thread count (torch.set_num_threads) before timing;
the figures record it so two runs are only compared at the same setting. A figure whose
95 % interval is too wide (noise.RELATIVE_BOUND) gets more passes, up to EXTRA_ROUNDS
times the asked number, and is marked unreliable if it stays too wide.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from services.evaluator.noise import Ratio, bootstrap_median_interval, interval_reason, paired_speedup, too_wide

# A noisy figure is timed again, up to this many times the passes asked for in all.
EXTRA_ROUNDS = 3
# Untimed passes a model runs each time it takes the CPU over from another in interleaved rounds, before its
# timed one. The previous model's threads go on spinning for a few ms after its pass returns (PyTorch's OpenMP
# pool): measured on MiniLM 1x128, 2 cores, an OpenVINO pass took 8.1 ms right after a PyTorch one and 4.6 ms
# after one of its own, and PyTorch 17.9 / 17.5 ms. A server runs one model back to back: so is each timed here.
HANDOVER_PASSES = 1


@dataclass(frozen=True)
class LatencyFigures:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    iterations: int
    warmup: int
    batch_size: int
    sequence_length: int
    threads: int
    phase: str
    # Tokens and sequences per second at the median pass.
    tokens_per_s: float
    samples_per_s: float
    samples_ms: list[float] = field(default_factory=list)
    p50_ci95_low_ms: float = 0.0
    p50_ci95_high_ms: float = 0.0
    unreliable: bool = False
    unreliable_reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms: list[float], *, batch_size: int, sequence_length: int, phase: str, warmup: int,
              tokens_per_pass: int) -> LatencyFigures:
    """Percentiles and spread of timed passes; throughput from the median pass."""
    ordered = sorted(samples_ms)
    p50 = percentile(ordered, 0.50)
    low, high = bootstrap_median_interval(samples_ms)
    wide = too_wide(p50, low, high)
    return LatencyFigures(
        p50_ci95_low_ms=low, p50_ci95_high_ms=high, unreliable=wide,
        unreliable_reason=interval_reason(f"{phase} p50", p50, low, high, len(samples_ms), " ms") if wide else "",
        p50_ms=p50, p95_ms=percentile(ordered, 0.95), p99_ms=percentile(ordered, 0.99),
        mean_ms=statistics.fmean(samples_ms),
        stdev_ms=statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0,
        min_ms=ordered[0], max_ms=ordered[-1],
        iterations=len(samples_ms), warmup=warmup, batch_size=batch_size, sequence_length=sequence_length,
        threads=torch.get_num_threads(), phase=phase,
        tokens_per_s=tokens_per_pass / (p50 / 1000) if p50 else 0.0,
        samples_per_s=batch_size / (p50 / 1000) if p50 else 0.0,
        samples_ms=list(samples_ms),
    )


def fixed_token_ids(batch_size: int, sequence_length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """The same token ids for every model and run (latency does not depend on their values,
    but identical inputs remove one question)."""
    generator = torch.Generator().manual_seed(seed)
    # The lowest ids are special tokens in most vocabularies: kept out of the way.
    return torch.randint(5, max(6, min(vocab_size, 32000)), (batch_size, sequence_length), generator=generator)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def forward_pass(model: nn.Module, ids: torch.Tensor, *, causal: bool) -> Callable[[], None]:
    ids = ids.to(model_device(model))
    mask = torch.ones_like(ids)
    # A causal LM's timed pass is a prefill that does not keep its KV cache.
    extra = {"use_cache": False} if causal else {}

    def run() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, **extra)

    return run


def _synchronize() -> None:
    """GPU kernels run asynchronously: a pass has ended only when the device says so."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_passes(run: Callable[[], None], *, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(iterations):
        _synchronize()
        start = time.perf_counter()
        run()
        _synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def measure_forward(model: nn.Module, *, batch_size: int, sequence_length: int, iterations: int, warmup: int = 3,
                    vocab_size: int = 1000, causal: bool = False) -> LatencyFigures:
    """One pass over batch_size x sequence_length tokens (for a causal LM: its prefill)."""
    ids = fixed_token_ids(batch_size, sequence_length, vocab_size)
    run = forward_pass(model, ids, causal=causal)
    samples = time_passes(run, iterations=iterations, warmup=warmup)
    while _wide(samples) and len(samples) < EXTRA_ROUNDS * iterations:
        samples += time_passes(run, iterations=iterations, warmup=0)
    phase = "prefill" if causal else "forward"
    return summarize(samples, batch_size=batch_size, sequence_length=sequence_length, phase=phase, warmup=warmup,
                     tokens_per_pass=batch_size * sequence_length)


def _wide(samples: list[float]) -> bool:
    low, high = bootstrap_median_interval(samples)
    return too_wide(statistics.median(samples), low, high) if samples else False


def measure_decode(model: nn.Module, *, batch_size: int, prompt_length: int, tokens: int, warmup: int = 2,
                   vocab_size: int = 1000) -> LatencyFigures:
    """Per-token decode: after an untimed prefill of prompt_length tokens, each timed pass feeds
    one new token per sequence through the KV cache (greedy, as a server decodes)."""
    ids = fixed_token_ids(batch_size, prompt_length, vocab_size).to(model_device(model))
    samples = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache, next_ids = out.cache, out.logits[:, -1:].argmax(-1)
        for step in range(warmup + tokens):
            _synchronize()
            start = time.perf_counter()
            out = model(input_ids=next_ids, cache=cache, use_cache=True)
            _synchronize()
            elapsed = (time.perf_counter() - start) * 1000
            cache, next_ids = out.cache, out.logits[:, -1:].argmax(-1)
            if step >= warmup:
                samples.append(elapsed)
    return summarize(samples, batch_size=batch_size, sequence_length=prompt_length, phase="decode", warmup=warmup,
                     tokens_per_pass=batch_size)


def interleaved_decode(models: Sequence[nn.Module], *, batch_size: int, prompt_length: int, tokens: int,
                       warmup: int = 2, vocab_size: int = 1000) -> list[LatencyFigures]:
    samples = _interleaved_decode_samples(models, batch_size=batch_size, prompt_length=prompt_length, tokens=tokens,
                                          warmup=warmup, vocab_size=vocab_size)
    return [summarize(s, batch_size=batch_size, sequence_length=prompt_length, phase="decode", warmup=warmup,
                      tokens_per_pass=batch_size) for s in samples]


def _interleaved_decode_samples(models: Sequence[nn.Module], *, batch_size: int, prompt_length: int, tokens: int,
                                warmup: int = 2, vocab_size: int = 1000) -> list[list[float]]:
    """Per-token decode of N models in rounds: each holds its own KV cache after one untimed
    prefill of the same prompt, then every round each decodes greedy tokens, in an order drawn per round
    (round_order) so machine drift falls on every model alike: HANDOVER_PASSES untimed, then one timed, so no
    model is timed in the wake of another's threads."""
    ids = fixed_token_ids(batch_size, prompt_length, vocab_size)
    states = []
    with torch.inference_mode():
        for model in models:
            out = model(input_ids=ids.to(model_device(model)), use_cache=True)
            states.append((out.cache, out.logits[:, -1:].argmax(-1)))
        samples: list[list[float]] = [[] for _ in models]
        for step in range(warmup + tokens):
            for i in round_order(step, len(models)):
                for _ in range(HANDOVER_PASSES):
                    states[i] = _decode_step(models[i], *states[i])
                _synchronize()
                start = time.perf_counter()
                states[i] = _decode_step(models[i], *states[i])
                _synchronize()
                if step >= warmup:
                    samples[i].append((time.perf_counter() - start) * 1000)
    return samples


def _decode_step(model: nn.Module, cache, next_ids: torch.Tensor) -> tuple:
    """One greedy token through the cache: the new cache and the token fed next."""
    out = model(input_ids=next_ids, cache=cache, use_cache=True)
    return out.cache, out.logits[:, -1:].argmax(-1)


def interleaved_forward(models: Sequence[nn.Module], *, batch_size: int, sequence_length: int, rounds: int,
                        warmup: int = 3, vocab_size: int = 1000, causal: bool = False) -> list[LatencyFigures]:
    """Times N models on the same ids in rounds of one timed pass each (after HANDOVER_PASSES untimed ones), in
    an order drawn per round (round_order), so slow drift of the machine (other load, thermals) falls on every
    model alike."""
    figures, _ = steady_interleaved_forward(models, baseline_index=0, batch_size=batch_size,
                                            sequence_length=sequence_length, rounds=rounds, max_rounds=rounds,
                                            warmup=warmup, vocab_size=vocab_size, causal=causal)
    return figures


def round_order(r: int, n: int) -> list[int]:
    """The order of round `r` among `n` models: a permutation drawn per round (seeded by the round, so runs
    repeat). A cyclic rotation kept who follows whom fixed — model 1 always ran right after the baseline,
    whose PyTorch threads still spin when it returns, and an OpenVINO graph there timed ~2.5x where the one
    after it timed ~3.5x (MiniLM, batch 1): drawn orders give every model every predecessor alike, and
    HANDOVER_PASSES keep any predecessor's after-effects out of the timed pass."""
    order = list(range(n))
    random.Random(r).shuffle(order)
    return order


def _rounds(runs: list[Callable[[], None]], samples: list[list[float]], count: int) -> None:
    first = len(samples[0])
    for r in range(first, first + count):
        for i in round_order(r, len(runs)):
            for _ in range(HANDOVER_PASSES):
                runs[i]()
            _synchronize()
            start = time.perf_counter()
            runs[i]()
            _synchronize()
            samples[i].append((time.perf_counter() - start) * 1000)


def _ratios(samples: list[list[float]], baseline_index: int, phase: str) -> list[Ratio]:
    return [paired_speedup(samples[baseline_index], s, phase) for s in samples]


def steady_interleaved_forward(models: Sequence[nn.Module], *, baseline_index: int, batch_size: int,
                               sequence_length: int, rounds: int, max_rounds: int, warmup: int = 3,
                               vocab_size: int = 1000, causal: bool = False
                               ) -> tuple[list[LatencyFigures], list[Ratio]]:
    """Interleaved rounds until every model's speedup over the baseline has a narrow enough
    interval, or max_rounds; returns each model's figures and its ratio to the baseline."""
    ids = fixed_token_ids(batch_size, sequence_length, vocab_size)
    runs = [forward_pass(m, ids, causal=causal) for m in models]
    phase = "prefill" if causal else "forward"
    for run in runs:
        for _ in range(warmup):
            run()
    samples: list[list[float]] = [[] for _ in models]
    _rounds(runs, samples, rounds)
    while len(samples[0]) < max_rounds and any(r.unreliable for r in _ratios(samples, baseline_index, phase)):
        _rounds(runs, samples, min(rounds, max_rounds - len(samples[0])))
    figures = [summarize(s, batch_size=batch_size, sequence_length=sequence_length, phase=phase, warmup=warmup,
                         tokens_per_pass=batch_size * sequence_length) for s in samples]
    return figures, _ratios(samples, baseline_index, phase)


def steady_interleaved_decode(models: Sequence[nn.Module], *, baseline_index: int, batch_size: int,
                              prompt_length: int, tokens: int, max_tokens: int, warmup: int = 2,
                              vocab_size: int = 1000) -> tuple[list[LatencyFigures], list[Ratio]]:
    """Interleaved decode; while a ratio is too noisy, decoded again with twice the tokens (a
    fresh prefill each time), up to max_tokens."""
    while True:
        samples = _interleaved_decode_samples(models, batch_size=batch_size, prompt_length=prompt_length,
                                              tokens=tokens, warmup=warmup, vocab_size=vocab_size)
        ratios = _ratios(samples, baseline_index, "decode")
        if tokens >= max_tokens or not any(r.unreliable for r in ratios):
            break
        tokens = min(max_tokens, tokens * 2)
    figures = [summarize(s, batch_size=batch_size, sequence_length=prompt_length, phase="decode", warmup=warmup,
                         tokens_per_pass=batch_size) for s in samples]
    return figures, ratios
