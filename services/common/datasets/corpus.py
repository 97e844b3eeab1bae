"""Real English text from CPython's `pydoc_data.topics`, split once into three parts by topic:

- held out (topics sorted by name, every fifth): what the evaluator reports quality on; nothing
  ever calibrates, trains or chooses on it;
- validation (every eighth of the remaining topics): what a search chooses on — neither
  calibrated on nor the text its final figures are reported on;
- calibration (the rest): what quantizers calibrate on and distillers train on.

Every run sees the same text. SPLIT_VERSION is part of every stage's cache key, so an output
calibrated on another split is never reused.
"""

from __future__ import annotations

from functools import lru_cache

from services.common.datasets import heldout_sets
from services.common.datasets.heldout_sets import HELDOUT_SETS

HOLDOUT_EVERY = 5
VALIDATION_EVERY = 8  # of the topics not held out, offset so the validation topics spread over the alphabet
VALIDATION_OFFSET = 4
SPLIT_VERSION = "3-way:5/8"
# What quality may be measured on: the held-out split (reported figures), the validation split (a search's
# choices), and held-out sets from other sources than the calibration text (heldout_sets.py).
SPLITS = ("heldout", "validation", *HELDOUT_SETS)


@lru_cache(maxsize=1)
def _topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


def _kept() -> list[tuple[str, str]]:
    return [t for i, t in enumerate(_topics()) if i % HOLDOUT_EVERY != 0]


def heldout_topics() -> list[tuple[str, str]]:
    return [t for i, t in enumerate(_topics()) if i % HOLDOUT_EVERY == 0]


def validation_topics() -> list[tuple[str, str]]:
    return [t for j, t in enumerate(_kept()) if j % VALIDATION_EVERY == VALIDATION_OFFSET]


def calibration_topics() -> list[tuple[str, str]]:
    return [t for j, t in enumerate(_kept()) if j % VALIDATION_EVERY != VALIDATION_OFFSET]


def topics_of(split: str) -> list[tuple[str, str]]:
    """The topics quality is measured on: "heldout" (reported figures), "validation" (a search's choices), or
    one of the held-out sets from other sources (heldout_sets.HELDOUT_SETS)."""
    if split == "heldout":
        return heldout_topics()
    if split == "validation":
        return validation_topics()
    if split in HELDOUT_SETS:
        return list(heldout_sets.topics_of(split))
    raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")


def text_of(split: str) -> str:
    return "\n\n".join(text for _, text in topics_of(split))


def heldout_text() -> str:
    return text_of("heldout")


def validation_text() -> str:
    return text_of("validation")


def calibration_text() -> str:
    return "\n\n".join(text for _, text in calibration_topics())
