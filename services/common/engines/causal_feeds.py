"""Inputs of one causal-LM step for the engines' KV-cache graphs (numpy only, so the torch-free
serving probe shares them): `start` tokens are already in the cache, `ids` are the new ones."""

from __future__ import annotations

import numpy as np


def step_inputs(ids: np.ndarray, start: int) -> dict[str, np.ndarray]:
    batch, length = ids.shape
    return {"input_ids": ids, "attention_mask": np.ones((batch, start + length), np.int64),
            "position_ids": np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (batch, length))}


def empty_past(past_inputs, batch: int) -> list[np.ndarray]:
    """An empty cache for an ONNX graph's past_key_values.* inputs ([batch, heads, 0, head_dim])."""
    return [np.zeros((batch, p.shape[1], 0, p.shape[3]), np.float32) for p in past_inputs]
