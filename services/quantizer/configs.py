"""Typed configs of the quantizer's methods (one per method; the gateway validates against them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.configspec import MethodConfig


class CastConfig(MethodConfig):
    """FP16 / BF16: every floating tensor is cast; nothing else changes."""


class Int8WeightOnlyConfig(MethodConfig):
    include_embeddings: bool = Field(
        True, description="Quantize token embeddings (and a tied LM head) too; they are a fifth of SmolLM2"
    )
    include_lm_head: bool = Field(True, description="Quantize an untied LM head")


class WeightOnlyConfig(MethodConfig):
    """Integer weights with float activations (W4A16, W8A16); embeddings and head at 8 bits."""

    bits: Literal[4, 8] = Field(4, description="Bits of Linear weights")
    group_size: Literal[0, 32, 64, 128] = Field(
        64, description="Input features sharing one scale (0 = one per output channel); a layer it "
                        "does not divide falls back to a smaller group and is reported")
    symmetric: bool = Field(True, description="Symmetric grid (no zero-point)")
    embedding_bits: Literal[0, 8] = Field(8, description="Bits of the token embeddings (0 = keep float)")
    head_bits: Literal[0, 8] = Field(8, description="Bits of an untied LM head (0 = keep float)")


class CalibrationConfig(MethodConfig):
    calibration_samples: int = Field(16, ge=1, le=1024, description="Calibration windows")
    calibration_sequence_length: int = Field(512, ge=16, le=4096, description="Tokens per calibration window")


class GptqConfig(WeightOnlyConfig, CalibrationConfig):
    damping: float = Field(0.01, gt=0.0, le=1.0, description="Added to the Hessian diagonal, as a share of its mean")
    act_order: bool = Field(True, description="Visit columns by decreasing activation energy (static groups)")
    block_size: int = Field(128, ge=16, le=4096, description="Columns per lazy batch update")
    propagate_quantized: bool = Field(
        True, description="Feed each block the quantized previous block's outputs (one more forward per block)")
