"""One deployment in a serving replica: an artifact folder loaded into its engine, behind the batcher
its kind calls for — dynamic batching for encoders (requests of a short window grouped into one
engine call), continuous batching for causal LMs (sequences join and leave the running batch at
each decode step). Protocol code (oip_grpc, http_api) calls these; nothing here knows a protocol.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.common.contract.deployment_config import DeploymentConfig
from services.common.contract.model_kinds import kind_of
from services.serving.batching import BatchingConfig, DynamicBatcher
from services.serving.encoders import Pooling, ServingError, TextTokenizer, encoder_runner
from services.serving.serving_metrics import DeploymentMetrics


class QueueFull(RuntimeError):
    """The deployment's queue is at max_queued: retry later (UNAVAILABLE / HTTP 503)."""


@dataclass
class EncoderDeployment:
    name: str
    folder: Path
    config: DeploymentConfig
    format: str
    hidden_size: int
    pooling: Pooling
    tokenizer: TextTokenizer | None
    batcher: DynamicBatcher
    metrics: DeploymentMetrics
    kind: str = "encoder"
    shadow: object | None = None  # shadow.Shadow: the original, run on a sampled share of requests
    _waiting: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def embed(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """One pooled embedding per row of token ids ([rows, hidden], float32); each row joins the
        batcher on its own, so rows of one request may share engine calls with other requests'."""
        for row in rows:
            if len(row) == 0:
                raise ServingError("a row of input_ids is empty")
            if len(row) > self.config.max_input_tokens:
                raise ServingError(f"a row of {len(row)} tokens is longer than this deployment's max_input_tokens "
                                   f"({self.config.max_input_tokens})")
        with self._lock:
            if self._waiting + len(rows) > self.config.max_queued:
                raise QueueFull(f"{self.name}: {self._waiting} requests are waiting (max_queued "
                                f"{self.config.max_queued}); retry later")
            self._waiting += len(rows)
        try:
            hidden = await asyncio.gather(*(asyncio.wrap_future(self.batcher.submit(row)) for row in rows))
        finally:
            with self._lock:
                self._waiting -= len(rows)
        embeddings = np.stack([self.pooling(h[None], np.ones((1, h.shape[0]), np.int64))[0] for h in hidden])
        if self.shadow is not None:
            self.shadow.after_embeddings(rows, embeddings)
        return embeddings

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if self.tokenizer is None:
            raise ServingError(f"{self.name}: this deployment has no tokenizer; send input_ids")
        return [self.tokenizer.encode(text) for text in texts]

    def close(self) -> None:
        self.batcher.close()
        if self.shadow is not None:
            self.shadow.close()


def load_encoder(name: str, folder: Path, config: DeploymentConfig, model_config: dict,
                 metrics: DeploymentMetrics) -> EncoderDeployment:
    fmt, runner = encoder_runner(folder, config.threads)
    tokenizer = TextTokenizer(folder, config.max_input_tokens) if (folder / "tokenizer.json").exists() else None
    batching = BatchingConfig(max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                              pad_id=tokenizer.pad_id if tokenizer else 0, max_padding=config.max_padding)

    def run_batch(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = runner(ids, mask)
        metrics.batch(len(ids), time.perf_counter() - start)
        return out

    return EncoderDeployment(name=name, folder=folder, config=config, format=fmt,
                             hidden_size=int(model_config.get("hidden_size") or model_config.get("dim") or 0),
                             pooling=Pooling.of(folder), tokenizer=tokenizer,
                             batcher=DynamicBatcher(run_batch, batching), metrics=metrics)


def load_deployment(name: str, folder: Path, config: DeploymentConfig, metrics: DeploymentMetrics):
    """The deployment for `folder`: an encoder or a causal LM, by its config.json; ServingError naming
    the reason where this replica cannot serve it."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ServingError(f"{folder.name}: no config.json (an artifact folder of modelpress is expected)")
    model_config = json.loads(config_path.read_text())
    kind = kind_of(model_config)
    if kind == "causal-lm":
        from services.serving.generation import load_causal_lm

        return load_causal_lm(name, folder, config, model_config, metrics)
    if kind != "encoder":
        raise ServingError(f"{folder.name}: {kind} models are not served")
    return load_encoder(name, folder, config, model_config, metrics)

