"""Real English text from CPython's `pydoc_data.topics`, split once into calibration and held-out parts.

The split is by topic (sorted by name, every fifth topic held out), so no held-out
sentence is ever seen during calibration or training, and every run sees the same text.
"""

from __future__ import annotations

from functools import lru_cache

HOLDOUT_EVERY = 5


@lru_cache(maxsize=1)
def _topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


def heldout_topics() -> list[tuple[str, str]]:
    return [t for i, t in enumerate(_topics()) if i % HOLDOUT_EVERY == 0]


def calibration_topics() -> list[tuple[str, str]]:
    return [t for i, t in enumerate(_topics()) if i % HOLDOUT_EVERY != 0]


def heldout_text() -> str:
    return "\n\n".join(text for _, text in heldout_topics())


def calibration_text() -> str:
    return "\n\n".join(text for _, text in calibration_topics())
