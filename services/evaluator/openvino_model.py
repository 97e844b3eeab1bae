"""An OpenVINO compiled model behind the call shape of a transformers model, so the evaluator's
latency and quality code measures an OpenVINO IR as it measures a PyTorch one.

A causal LM's IR is stateful (its KV cache lives in the infer request): a call without `cache`
starts a new sequence, a call with the `cache` of the previous output decodes on from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

IR_FILE = "openvino_model.xml"


class _SequenceState:
    """Where the request's cache stands: the tokens it holds."""

    def __init__(self, length: int) -> None:
        self.length = length


class OpenVinoModel(nn.Module):
    def __init__(self, folder: Path, kind: str, threads: int, precision: str = "f32") -> None:
        super().__init__()
        from services.common.engines.openvino_runtime import applied_precision, compile_model

        self.kind = kind
        self.supports_decode = kind == "causal-lm"
        self.compiled = compile_model(Path(folder) / IR_FILE, threads=threads, precision=precision)
        self.precision = applied_precision(self.compiled)
        self.request = self.compiled.create_infer_request()
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: _SequenceState | None = None, **_ignored):
        ids = input_ids.numpy().astype(np.int64)
        if self.kind != "causal-lm":
            mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).numpy().astype(np.int64)
            hidden = self.request.infer({"input_ids": ids, "attention_mask": mask})[0]
            return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden.copy()))
        from services.common.engines.causal_feeds import step_inputs

        if cache is None:
            self.request.reset_state()
        start = 0 if cache is None else cache.length
        feeds = step_inputs(ids, start)
        if attention_mask is not None and cache is None:
            feeds["attention_mask"] = attention_mask.numpy().astype(np.int64)
        logits = self.request.infer(feeds)[0]
        total = start + ids.shape[1]
        return SimpleNamespace(logits=torch.from_numpy(logits.copy()), cache=_SequenceState(total))


def openvino_parameters(folder: Path) -> int:
    from services.common.engines.openvino_runtime import read_model, weight_counts

    return sum(weight_counts(read_model(Path(folder) / IR_FILE)).values())


def describe_openvino(folder: Path) -> dict:
    path = Path(folder) / "openvino_model.json"
    return json.loads(path.read_text()) if path.exists() else {}
