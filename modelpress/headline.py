"""A job's outcome in one sentence that never hides a regression, and its colour.

The CLI's summary line and the report's banner both come from here. Green only when nothing
got worse beyond noise; amber when something did (named); red when the job failed or the
quality floor was crossed. A speed ratio whose interval was too wide is said to be unreliable,
unless the whole interval is below 1: then it is slower, and named among what got worse.
Works on CompressionResult messages only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelpress.v1 import common_pb2
from modelpress.quality_kept import quality_retention

# Quality kept below this fails the job's headline (the seed's bar for quantization: 95 %).
QUALITY_FLOOR = 0.95
# Quality within 1 % of the original's, and peak memory within 5 %, count as unchanged.
QUALITY_TOLERANCE = 0.01
MEMORY_TOLERANCE = 0.05
# Sentences a student may tokenize otherwise than its original before the headline warns.
TOKENIZATION_TOLERANCE = 0.01
GREEN, AMBER, RED = "green", "amber", "red"


@dataclass
class Headline:
    text: str
    colour: str
    regressions: list[str] = field(default_factory=list)
    unreliable: list[str] = field(default_factory=list)


def _speed_phrase(ratio: common_pb2.SpeedRatio, regressions: list[str], unreliable: list[str]) -> str:
    name = ratio.phase
    interval = f"{ratio.speedup:.2f}× [{ratio.ci95_low:.2f}–{ratio.ci95_high:.2f}]"
    if ratio.unreliable and 0 < ratio.ci95_high < 1.0:
        # Too wide to say by how much, but the whole interval is a slowdown: that is worse, not noise.
        regressions.append(f"{name} {1 / ratio.speedup:.2f}× slower")
        unreliable.append(f"{name} speed")
        return f"{name} {interval} (slower; the interval is wide, the machine was noisy)"
    if ratio.unreliable:
        unreliable.append(f"{name} speed")
        return f"{name} speed unreliable ({interval}; the machine was too noisy)"
    if ratio.ci95_high < 1.0:
        regressions.append(f"{name} {1 / ratio.speedup:.2f}× slower")
        return f"{name} {interval} (slower)"
    if ratio.ci95_low > 1.0:
        return f"{name} {interval} (faster)"
    return f"{name} {interval} (no difference beyond noise)"


def job_headline(recipe: str, result: common_pb2.CompressionResult, succeeded: bool = True) -> Headline:
    """Size, quality kept, prefill (or forward) and decode speed, peak memory."""
    original, compressed = result.original, result.compressed
    if not succeeded:
        return Headline(f"{recipe}: the job did not succeed", RED)
    if not original.size_on_disk_bytes:
        return Headline(f"{recipe}: {result.compressed_model_size_bytes / 1e6:.1f} MB; no before/after measurement "
                        f"was made", GREEN)
    regressions: list[str] = []
    unreliable: list[str] = []
    size = compressed.size_on_disk_bytes / original.size_on_disk_bytes
    parts = [f"size {size:.1%} of the original"]
    if size > 1.0:
        regressions.append(f"size +{size - 1:.1%}")
    kept, _ = quality_retention(compressed, original)
    if original.kind == "encoder":
        detail = (f"topic k-NN accuracy {original.encoder.knn_topic_accuracy:.3f} → "
                  f"{compressed.encoder.knn_topic_accuracy:.3f}")
        if compressed.encoder.has_reference:
            detail += f", mean cosine to the original {compressed.encoder.mean_reference_cosine:.4f}"
        if compressed.encoder.HasField("same_tokenization") \
                and compressed.encoder.same_tokenization < 1 - TOKENIZATION_TOLERANCE:
            # A vocabulary trimmed to the training text: other text reaches the model in other pieces.
            regressions.append(f"{1 - compressed.encoder.same_tokenization:.0%} of the evaluated sentences tokenize "
                               f"differently from the original (a trimmed vocabulary: text unlike its training "
                               f"text may score lower)")
    else:
        detail = f"perplexity {original.perplexity:.3f} → {compressed.perplexity:.3f}"
    if kept:
        parts.append(f"quality kept {kept:.1%} ({detail})")
        if kept < 1 - QUALITY_TOLERANCE:
            regressions.append(f"quality −{1 - kept:.1%}")
    for ratio in (result.prefill_speedup, result.decode_speedup):
        if ratio.phase:
            parts.append(_speed_phrase(ratio, regressions, unreliable))
    if original.peak_rss_mb and compressed.peak_rss_mb:
        memory = compressed.peak_rss_mb / original.peak_rss_mb
        parts.append(f"peak memory {memory:.2f}×")
        if memory > 1 + MEMORY_TOLERANCE:
            regressions.append(f"peak memory +{memory - 1:.0%}")
    text = f"{recipe}: " + ", ".join(parts)
    if kept and kept < QUALITY_FLOOR:
        return Headline(text + f". Quality below the {QUALITY_FLOOR:.0%} floor.", RED, regressions, unreliable)
    if regressions:
        return Headline(text + ". Worse: " + "; ".join(regressions) + ".", AMBER, regressions, unreliable)
    if unreliable:
        return Headline(text + ".", AMBER, regressions, unreliable)
    return Headline(text + ".", GREEN, regressions, unreliable)
