"""8-bit activation quantization (the A8 of W8A8), simulated exactly as compressed-tensors runs it.

Dynamic: one scale per token (or per tensor), computed at run time from the max |x|.
Static: one scale per tensor, fixed from calibration (stored as `input_scale`).
Both are symmetric int8 with compressed-tensors' convention (scale = max|x| / 127.5,
codes clamped to [-128, 127]), so the in-memory model and a reloaded artifact agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

HALF_RANGE = 127.5


@dataclass(frozen=True)
class ActivationScheme:
    dynamic: bool  # per-token at run time; else one static per-tensor scale from calibration
    bits: int = 8
    # Dynamic with one scale for the whole tensor (ONNX Runtime's dynamic INT8), not one per token.
    per_tensor: bool = False


def static_scale(abs_max: torch.Tensor) -> torch.Tensor:
    """The per-tensor scale of inputs whose largest magnitude over calibration was `abs_max`."""
    return (abs_max.max().float() / HALF_RANGE).clamp(min=1e-8).reshape(1)


def fake_quantize_activations(x: torch.Tensor, scheme: ActivationScheme, scale: torch.Tensor | None = None
                              ) -> torch.Tensor:
    if scheme.dynamic:
        extent = x.abs().amax() if scheme.per_tensor else x.abs().amax(dim=-1, keepdim=True)
        scale = (extent / HALF_RANGE).clamp(min=1e-8)
    elif scale is None:
        raise ValueError("static activation quantization needs a calibrated scale")
    return torch.round(x / scale).clamp_(-128, 127) * scale


def install(layers: dict[str, nn.Linear], scheme: ActivationScheme,
            scales: dict[str, torch.Tensor] | None = None) -> list:
    """Pre-hooks that fake-quantize the inputs of `layers`; the caller removes the handles."""
    def hook(name: str):
        def quantize_input(_module, args):
            return (fake_quantize_activations(args[0], scheme, (scales or {}).get(name)), *args[1:])
        return quantize_input

    return [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]


@contextmanager
def simulated(layers: dict[str, nn.Linear], scheme: ActivationScheme,
              scales: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
    """Inputs of `layers` are fake-quantized while the context is open."""
    handles = install(layers, scheme, scales)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
