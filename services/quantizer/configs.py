"""Typed configs of the quantizer's methods (one per method; the gateway validates against them)."""

from __future__ import annotations

from pydantic import Field

from services.common.configspec import MethodConfig


class CastConfig(MethodConfig):
    """FP16 / BF16: every floating tensor is cast; nothing else changes."""


class Int8WeightOnlyConfig(MethodConfig):
    include_embeddings: bool = Field(
        True, description="Quantize token embeddings (and a tied LM head) too; they are a fifth of SmolLM2"
    )
    include_lm_head: bool = Field(True, description="Quantize an untied LM head")
