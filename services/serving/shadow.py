"""The original beside a compressed deployment: a sampled share of live requests also runs on it, off
the request's path (the caller's answer never waits for it), and the replica reports how often the
two agree on the traffic it really serves — what no serving stack can say, since none knows what a
model was compressed from.

Encoders: the cosine between the served and the original embedding of each sampled input. Causal LMs:
over each sampled prompt, the share of positions where both models predict the same next token and
the mean KL divergence KL(original ‖ served) of their next-token distributions (one forward each;
the generated text is not compared, as sampling makes it differ by design).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

import numpy as np


class Shadow:
    def __init__(self, original, share: float, seed: int = 0) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"shadow share: {share} is not in (0, 1]")
        self.original, self.share = original, share
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.compared = 0
        self.failed = 0
        self._sums = {"cosine": 0.0, "agreement": 0.0, "kl": 0.0, "positions": 0}
        self._min_cosine = 1.0

    def sampled(self) -> bool:
        with self._lock:
            return self._random.random() < self.share

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    def after_embeddings(self, rows: Sequence[Sequence[int]], served: np.ndarray) -> None:
        if self.sampled():
            self._spawn(self._compare_embeddings(rows, served))

    def after_prompt(self, served_model, prompt: Sequence[int]) -> None:
        if self.sampled():
            self._spawn(self._compare_prompt(served_model, list(prompt)))

    async def _compare_embeddings(self, rows, served: np.ndarray) -> None:
        try:
            original = await self.original.embed(rows)
        except Exception:  # noqa: BLE001 - a shadow's failure never reaches the caller
            self.failed += 1
            return
        norms = np.linalg.norm(served, axis=1) * np.linalg.norm(original, axis=1)
        cosines = (served * original).sum(axis=1) / np.clip(norms, 1e-12, None)
        with self._lock:
            self.compared += len(cosines)
            self._sums["cosine"] += float(cosines.sum())
            self._min_cosine = min(self._min_cosine, float(cosines.min()))

    async def _compare_prompt(self, served_model, prompt: list[int]) -> None:
        try:
            agreement, kl, positions = await asyncio.to_thread(prompt_agreement, served_model, self.original.model,
                                                               prompt)
        except Exception:  # noqa: BLE001 - a shadow's failure never reaches the caller
            self.failed += 1
            return
        with self._lock:
            self.compared += 1
            self._sums["agreement"] += agreement * positions
            self._sums["kl"] += kl * positions
            self._sums["positions"] += positions

    def snapshot(self) -> dict:
        with self._lock:
            figures: dict = {"share": self.share, "compared": self.compared, "failed": self.failed}
            if self._sums["positions"]:
                figures["next_token_agreement"] = round(self._sums["agreement"] / self._sums["positions"], 5)
                figures["mean_kl"] = round(self._sums["kl"] / self._sums["positions"], 6)
                figures["positions"] = self._sums["positions"]
            elif self.compared:
                figures["mean_cosine"] = round(self._sums["cosine"] / self.compared, 6)
                figures["min_cosine"] = round(self._min_cosine, 6)
            return figures

    def close(self) -> None:
        self.original.close()


def prompt_agreement(served_model, original_model, prompt: list[int]) -> tuple[float, float, int]:
    """(next-token agreement, mean KL(original ‖ served), positions) over the prompt: one forward each,
    run beside the serving engine (inference only: a module's forward reads its weights, writes nothing)."""
    import torch

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        served = served_model(input_ids=ids).logits[0].float().log_softmax(-1)
        original = original_model(input_ids=ids).logits[0].float().log_softmax(-1)
    agreement = float((served.argmax(-1) == original.argmax(-1)).float().mean())
    kl = float((original.exp() * (original - served)).sum(-1).mean())
    return agreement, kl, len(prompt)
