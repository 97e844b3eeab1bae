"""Integer weight quantization grids: per-channel or per-group, symmetric or asymmetric.

One place holds the arithmetic every algorithm shares (RTN, GPTQ, AWQ, QAT): how a
weight row becomes integers, scales and zero-points, and back. Scales are rounded to
the dtype they are stored in (float16) before use, so the in-memory model computes
exactly what a reloaded artifact computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCALE_DTYPE = torch.float16


@dataclass(frozen=True)
class WeightScheme:
    """The grid of one weight. Built from a config pydantic has validated (bits, group_size: the
    method's declaration, services/common/contract/fields.py) or from the engine's own constants and
    checkpoints; it checks nothing again. A group that does not divide a row is refused where the
    weight is grouped (`_grouped`), since that depends on the layer, not on the config."""

    bits: int
    # 0 means one scale per output channel (the whole input row).
    group_size: int = 0
    symmetric: bool = True

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def code_dtype(self) -> torch.dtype:
        """int8 whenever the grid fits (all but unsigned 8-bit), else int16."""
        return torch.int8 if self.qmax <= 127 else torch.int16

    def for_layer(self, in_features: int) -> "WeightScheme":
        """This scheme with a group size that divides `in_features`.

        A group that does not divide the row (SmolLM2's 576 with group 128) falls back to
        the largest power-of-two divisor below it, at least 16, else to per-channel.
        """
        if not self.group_size or in_features % self.group_size == 0:
            return self
        size = self.group_size // 2
        while size >= 16:
            if in_features % size == 0:
                return WeightScheme(self.bits, size, self.symmetric)
            size //= 2
        return WeightScheme(self.bits, 0, self.symmetric)

    def group_width(self, in_features: int) -> int:
        return self.group_size or in_features


@dataclass
class QuantParams:
    """Scales and zero-points of one weight, shaped [out, groups]."""

    scale: torch.Tensor
    zero_point: torch.Tensor | None  # None when symmetric

    def clone(self) -> "QuantParams":
        return QuantParams(self.scale.clone(), None if self.zero_point is None else self.zero_point.clone())

    def rows(self, start: int, end: int) -> "QuantParams":
        return QuantParams(self.scale[start:end], None if self.zero_point is None else self.zero_point[start:end])


def _grouped(weight: torch.Tensor, width: int) -> torch.Tensor:
    out, inp = weight.shape
    if inp % width:
        raise ValueError(f"group size {width} does not divide {inp} input features")
    return weight.reshape(out, inp // width, width)


def compute_qparams(weight: torch.Tensor, scheme: WeightScheme, clip_ratio: float | torch.Tensor = 1.0
                    ) -> QuantParams:
    """Min/max qparams per group; `clip_ratio` (< 1) shrinks the range (AWQ/MSE clipping)."""
    groups = _grouped(weight.detach().float(), scheme.group_width(weight.shape[1]))
    if scheme.symmetric:
        absmax = groups.abs().amax(dim=-1) * clip_ratio
        # Symmetric grids use [-2^(b-1), 2^(b-1)-1]; scaling by qmax keeps max|w| representable.
        scale = (absmax / scheme.qmax).clamp(min=1e-8).to(SCALE_DTYPE).float()
        return QuantParams(scale=scale, zero_point=None)
    lo = (groups.amin(dim=-1) * clip_ratio).clamp(max=0)
    hi = (groups.amax(dim=-1) * clip_ratio).clamp(min=0)
    scale = ((hi - lo) / (scheme.qmax - scheme.qmin)).clamp(min=1e-8).to(SCALE_DTYPE).float()
    zero_point = torch.round(-lo / scale).clamp(scheme.qmin, scheme.qmax)
    return QuantParams(scale=scale, zero_point=zero_point)


def quantize(weight: torch.Tensor, params: QuantParams, scheme: WeightScheme) -> torch.Tensor:
    """Integer codes for `weight`: int8 whenever the grid fits (all but unsigned 8-bit), else int16."""
    width = weight.shape[1] // params.scale.shape[1]
    groups = _grouped(weight.float(), width)
    codes = groups / params.scale[..., None]
    if params.zero_point is not None:
        codes = codes + params.zero_point[..., None]
    return torch.round(codes).clamp_(scheme.qmin, scheme.qmax).reshape(weight.shape).to(scheme.code_dtype)


def dequantize(codes: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """Float32 weights as compressed-tensors rebuilds them when the model loads in float32
    (scales are widened to the model dtype before the multiply)."""
    width = codes.shape[1] // params.scale.shape[1]
    groups = _grouped(codes.float(), width)
    if params.zero_point is not None:
        groups = groups - params.zero_point[..., None]
    return (groups * params.scale.to(SCALE_DTYPE).float()[..., None]).reshape(codes.shape)


def fake_quantize(weight: torch.Tensor, scheme: WeightScheme, params: QuantParams | None = None
                  ) -> tuple[torch.Tensor, QuantParams]:
    """The weight as the quantized model sees it (float values on the integer grid)."""
    params = params or compute_qparams(weight, scheme)
    return dequantize(quantize(weight, params, scheme), params).to(weight.dtype), params
