"""An ONNX Runtime session behind the call shape of a transformers model, so the evaluator's
latency and quality code measures an ONNX artifact exactly as it measures a PyTorch one.

A causal LM exported with its KV cache takes past_key_values.N.key/value inputs: a call without
`cache` feeds an empty past (a new sequence), a call with the previous output's `cache` feeds
its presents back (one decode step)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

ONNX_FILE = "model.onnx"


class OnnxModel(nn.Module):
    def __init__(self, folder: Path, kind: str, threads: int) -> None:
        super().__init__()
        from services.common.engines.onnx_session import open_session

        self.kind = kind
        self.session = open_session(Path(folder) / ONNX_FILE, threads=threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.supports_decode = bool(self.past)
        # Callers find the device from the first parameter; the weights live in the session.
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: list | None = None, **_ignored):
        ids = input_ids.numpy().astype(np.int64)
        if not self.past:
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            feeds = {"input_ids": ids, "attention_mask": mask.numpy().astype(np.int64)}
            output = torch.from_numpy(self.session.run(None, {k: v for k, v in feeds.items()
                                                              if k in self.input_names})[0])
            return SimpleNamespace(logits=output) if self.kind == "causal-lm" else \
                SimpleNamespace(last_hidden_state=output)
        from services.common.engines.causal_feeds import empty_past, step_inputs

        cache = empty_past(self.past, ids.shape[0]) if cache is None else cache
        feeds = {**step_inputs(ids, cache[0].shape[2]), **{p.name: past for p, past in zip(self.past, cache)}}
        if attention_mask is not None and cache[0].shape[2] == 0:
            feeds["attention_mask"] = attention_mask.numpy().astype(np.int64)
        logits, *present = self.session.run(None, feeds)
        return SimpleNamespace(logits=torch.from_numpy(logits), cache=present)


def onnx_parameters(folder: Path) -> int:
    """Weights in the graph's initializers; a MatMulNBits weight counts 8 // bits per stored byte,
    scales and zero-points not at all."""
    import onnx

    model = onnx.load(str(Path(folder) / ONNX_FILE), load_external_data=False)
    per_byte = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            per_byte[node.input[1]] = 8 // bits
    total = 0
    for init in model.graph.initializer:
        if "scale" in init.name or "zero_point" in init.name:
            continue
        numel = int(np.prod(init.dims)) if init.dims else 1
        total += numel * per_byte.get(init.name, 1)
    return total


def describe_onnx(folder: Path) -> dict:
    path = Path(folder) / "onnx_model.json"
    return json.loads(path.read_text()) if path.exists() else {}
