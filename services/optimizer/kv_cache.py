"""KV caches for generation with a transformers causal LM: the default (grows by concatenation),
a preallocated static one, and an INT8 one — and what each costs in decode speed, memory and
perplexity.

The INT8 cache stores keys and values as int8 with one scale per (sequence, head, token): a
token's vector is quantized once, when it enters, and never again (per-token scales need no
re-quantization as the cache grows, unlike per-channel ones). Attention reads the dequantized
history, so the saving is memory held between steps, not arithmetic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

KINDS = ("dynamic", "static", "int8")


def _quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale.to(torch.float16)


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return codes.to(dtype) * scale.to(dtype)


def _int8_layer_class():
    from transformers.cache_utils import DynamicLayer

    class Int8Layer(DynamicLayer):
        """Holds int8 codes and f16 scales only; `keys` / `values` are rebuilt per step for attention."""

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.codes = {"k": None, "v": None}
            self.scales = {"k": None, "v": None}

        def _append(self, which: str, states: torch.Tensor) -> torch.Tensor:
            codes, scale = _quantize(states)
            if self.codes[which] is not None:
                codes = torch.cat([self.codes[which], codes], dim=-2)
                scale = torch.cat([self.scales[which], scale], dim=-2)
            self.codes[which], self.scales[which] = codes, scale
            return _dequantize(codes, scale, states.dtype)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys, values = self._append("k", key_states), self._append("v", value_states)
            # Only the length is kept in float; the full tensors are handed to attention and dropped.
            self.keys, self.values = keys[..., :0], values[..., :0]
            self._length = keys.shape[-2]
            return keys, values

        def get_seq_length(self) -> int:
            return getattr(self, "_length", 0) if self.is_initialized else 0

        def stored_bytes(self) -> int:
            return sum(t.numel() * t.element_size() for t in (*self.codes.values(), *self.scales.values())
                       if t is not None)

    return Int8Layer


def new_cache(kind: str, model: nn.Module, max_length: int):
    """A cache of `kind` for `model`; `max_length` sizes the static one."""
    from transformers.cache_utils import Cache, DynamicCache, StaticCache

    if kind == "dynamic":
        return DynamicCache(config=model.config)
    if kind == "static":
        return StaticCache(config=model.config, max_cache_len=max_length)
    if kind == "int8":
        return Cache(layer_class_to_replicate=_int8_layer_class())
    raise ValueError(f"kv cache: {kind!r} is not one of {', '.join(KINDS)}")


def cache_bytes(cache) -> int:
    """Bytes the cache holds between steps (a static cache: its whole preallocation)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "stored_bytes"):
            total += layer.stored_bytes()
        elif getattr(layer, "keys", None) is not None:
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    return total


@dataclass
class DecodeFigures:
    kind: str
    prompt_tokens: int
    new_tokens: int
    decode_ms_p50: float
    tokens_per_s: float
    cache_bytes: int
    tokens: list[int]


@torch.inference_mode()
def greedy_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int, kind: str) -> DecodeFigures:
    """Greedy generation through a cache of `kind`, each step timed."""
    total = prompt.shape[1] + new_tokens
    cache = new_cache(kind, model, total)
    positions = torch.arange(prompt.shape[1])
    out = model(input_ids=prompt, cache=cache, use_cache=True, cache_position=positions)
    next_ids = out.logits[:, -1:].argmax(-1)
    produced, samples = [int(next_ids[0, 0])], []
    for step in range(new_tokens - 1):
        position = torch.tensor([prompt.shape[1] + step])
        start = time.perf_counter()
        out = model(input_ids=next_ids, cache=cache, use_cache=True, cache_position=position)
        samples.append((time.perf_counter() - start) * 1000)
        next_ids = out.logits[:, -1:].argmax(-1)
        produced.append(int(next_ids[0, 0]))
    p50 = float(torch.tensor(samples).median()) if samples else 0.0
    return DecodeFigures(kind=kind, prompt_tokens=prompt.shape[1], new_tokens=new_tokens, decode_ms_p50=p50,
                         tokens_per_s=1000 / p50 if p50 else 0.0, cache_bytes=cache_bytes(cache), tokens=produced)


@torch.inference_mode()
def chunked_perplexity(model: nn.Module, windows: torch.Tensor, kind: str, prefix: int = 64, chunk: int = 16) -> float:
    """Perplexity of each window's tokens after `prefix`, fed `chunk` tokens at a time through a
    cache of `kind` — so every prediction attends to history read back from that cache."""
    nll, count = 0.0, 0
    for window in windows:
        ids = window[None]
        cache = new_cache(kind, model, ids.shape[1])
        model(input_ids=ids[:, :prefix], cache=cache, use_cache=True, cache_position=torch.arange(prefix))
        for start in range(prefix, ids.shape[1] - 1, chunk):
            end = min(start + chunk, ids.shape[1] - 1)
            logits = model(input_ids=ids[:, start:end], cache=cache, use_cache=True,
                           cache_position=torch.arange(start, end)).logits
            targets = ids[:, start + 1:end + 1]
            nll += float(nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
            count += targets.numel()
            # The last input token of this chunk has been cached; the next chunk starts after it.
    return float(torch.exp(torch.tensor(nll / count)))


def as_dict(figures: DecodeFigures) -> dict:
    data = asdict(figures)
    data.pop("tokens")
    return data
