"""Calibration text and token windows: what every data-aware technique (quantizer, optimizer,
and the pruner and distiller to come) calibrates on. Never the evaluator's held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from services.common.datasets import corpus


def calibration_text(dataset_dir: Path | None = None) -> str:
    """The built-in calibration split of pydoc, or the texts of a JSON-lines dataset artifact."""
    if dataset_dir is None:
        return corpus.calibration_text()
    files = sorted(Path(dataset_dir).glob("*.jsonl"))
    if not files:
        raise ValueError("calibration dataset: the artifact holds no *.jsonl file")
    texts = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"calibration dataset: {path.name}:{number} is not a JSON object with a 'text' field") \
                    from None
    return "\n\n".join(texts)


def calibration_batches(tokenizer, samples: int, sequence_length: int, text: str) -> torch.Tensor:
    """`samples` windows of `sequence_length` tokens, spread evenly over the text: [samples, length]."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    available = ids.numel() // sequence_length
    if samples > available:
        raise ValueError(f"calibration_samples: {samples} windows of {sequence_length} tokens asked, "
                         f"the calibration text has {available}")
    windows = ids[: available * sequence_length].view(available, sequence_length)
    picks = torch.linspace(0, available - 1, samples).round().long()
    return windows[picks]


def text_pieces(text: str, min_chars: int = 30) -> list[str]:
    """Paragraph-sized pieces of text for an encoder (sentence embedders are trained on short texts)."""
    pieces = []
    for paragraph in text.split("\n\n"):
        paragraph = " ".join(paragraph.split())
        if len(paragraph) >= min_chars:
            pieces.append(paragraph)
    return pieces
