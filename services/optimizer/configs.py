"""Typed configs of the optimizer's methods (validated at the edge, published through Describe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.configspec import MethodConfig


class OnnxConfig(MethodConfig):
    opset: int = Field(17, ge=14, le=21, description="ONNX opset of the export (causal LMs use at least 18)")
    fuse: bool = Field(True, description="Apply ONNX Runtime's transformer fusions (encoders) and graph optimizations")
    threads: int = Field(2, ge=1, le=256, description="Threads of the session that optimizes the graph")


class OnnxInt8Config(OnnxConfig):
    reduce_range: bool = Field(False, description="7-bit weights: avoids u8*s8 saturation on CPUs without VNNI")
    allow_causal_lm: bool = Field(False, description="Quantize a causal LM's activations per tensor anyway "
                                                     "(measured: SmolLM2 perplexity 13.5 -> millions)")


class OnnxInt4Config(OnnxConfig):
    block_size: int = Field(32, ge=16, le=256, description="Weights per 4-bit block (a power of two)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(4, description="MatMulNBits compute type: 4 = int8 activations")
