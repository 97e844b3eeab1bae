"""The two forwards the continuous batcher needs from a causal LM, for each engine that can run them
with a per-row KV cache the batcher stacks, pads and drops rows of:

- `prefill(ids [1, T], cache) -> logits [vocab]`: a new sequence's prompt into its own fresh cache,
  the last position's logits;
- `decode(ids [B, 1], mask [B, T+1], positions [B, 1], cache) -> logits [B, vocab]`: one step of
  every running row against the batch's joint cache (rows left-padded; `mask` is False on padding).

A cache is anything with `.layers`, each holding `keys` and `values` tensors [batch, heads, T, dim]:
transformers' DynamicCache for PyTorch, `KVCache` for an ONNX graph exported with its past
(services/optimizer/onnx_export.py: past_key_values.N.key/value in, present.N.key/value out), so the
batcher's row bookkeeping is the same for both.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ONNX_FILE = "model.onnx"


class TorchDecoder:
    """A transformers *ForCausalLM in eval mode."""

    def __init__(self, model) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_input_embeddings().weight.shape[0]
        self.max_positions = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        _check_cache_layout(model, self.device)
        # A prefill needs only the last position's logits; skip the [prompt, vocab] projection where the model can.
        accepts = inspect.signature(model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}

    def new_cache(self) -> DynamicCache:
        return DynamicCache()

    def prefill(self, ids: torch.Tensor, cache) -> torch.Tensor:
        return self.model(input_ids=ids, cache=cache, use_cache=True, **self._last_logits_only).logits[0, -1]

    def decode(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        return out.logits[:, -1]


def _check_cache_layout(model, device: torch.device) -> None:
    """Refuses models whose cache is not plain per-layer keys/values, which the row stacking relies on."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise TypeError("continuous batching needs a decoder-only model")
    cache = DynamicCache()
    try:
        with torch.inference_mode():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), cache=cache, use_cache=True)
    except Exception as exc:
        raise TypeError(f"{type(model).__name__}: its cache does not fit continuous batching ({exc})") from exc
    if not cache.layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in cache.layers):
        raise TypeError(f"{type(model).__name__}: continuous batching needs plain key/value cache layers")


@dataclass
class KVLayer:
    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class KVCache:
    layers: list[KVLayer] = field(default_factory=list)


class OnnxDecoder:
    """An ONNX Runtime session of a causal LM exported with its KV cache; the cache rows live in torch
    tensors (shared memory with numpy, no copies for the contiguous ones) between steps."""

    def __init__(self, folder: Path, threads: int, vocab_size: int, max_positions: int | None) -> None:
        from services.common.engines.onnx_session import open_session

        self.session = open_session(Path(folder) / ONNX_FILE, threads=threads)
        inputs = self.session.get_inputs()
        self.past = [i for i in inputs if i.name.startswith("past_key_values.")]
        if not self.past or len(self.past) % 2:
            raise TypeError(f"{Path(folder).name}: the ONNX graph has no past_key_values inputs (exported without its "
                            "KV cache), so it cannot decode step by step")
        self.names = {i.name for i in inputs}
        self.dtype = np.float16 if self.past[0].type == "tensor(float16)" else np.float32
        self.device = torch.device("cpu")
        logits_vocab = self.session.get_outputs()[0].shape[-1]
        self.vocab_size = vocab_size or (logits_vocab if isinstance(logits_vocab, int) else 0)
        if not self.vocab_size:
            raise TypeError(f"{Path(folder).name}: no vocab_size in config.json and none in the graph's logits")
        self.max_positions = max_positions

    def new_cache(self) -> KVCache:
        return KVCache()

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        length = ids.shape[1]
        empty = [np.zeros((1, p.shape[1], 0, p.shape[3]), self.dtype) for p in self.past]
        logits = self._run(ids.numpy(), np.ones((1, length), np.int64), np.arange(length, dtype=np.int64)[None],
                           empty, cache)
        return logits[0, -1]

    def decode(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        past = [np.ascontiguousarray(t.numpy()) for layer in cache.layers for t in (layer.keys, layer.values)]
        return self._run(ids.numpy(), mask.numpy().astype(np.int64), positions.numpy(), past, cache)[:, -1]

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray],
             cache: KVCache) -> torch.Tensor:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask, "position_ids": positions.astype(np.int64),
                 **{p.name: value for p, value in zip(self.past, past)}}
        logits, *present = self.session.run(None, {k: v for k, v in feeds.items() if k in self.names})
        cache.layers = [KVLayer(torch.from_numpy(k), torch.from_numpy(v)) for k, v in zip(present[::2], present[1::2])]
        return torch.from_numpy(logits).float()


def as_decoder(model):
    """The batcher's view of `model`: a decoder as is, a transformers model wrapped."""
    return model if hasattr(model, "prefill") and hasattr(model, "decode") else TorchDecoder(model)
