"""Typed configs of the quantizer's methods (one per method; the gateway validates against them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.calibration.config import CalibrationConfig
from services.common.contract.config import MAX_TRAINED_TOKENS, MethodConfig, over_budget
from services.common.contract.fields import (
    DAMPING,
    GROUP_SIZE,
    LAZY_BATCH_COLUMNS,
    WEIGHT_BITS,
    CalibrationSequenceLength,
    Damping,
    GroupSize,
    LazyBatchColumns,
    WeightBits,
)


class CastConfig(MethodConfig):
    """FP16 / BF16: every floating tensor is cast; nothing else changes."""


class Int8WeightOnlyConfig(MethodConfig):
    include_embeddings: bool = Field(
        True, description="Quantize token embeddings (and a tied LM head) too; they are a fifth of SmolLM2"
    )
    include_lm_head: bool = Field(True, description="Quantize an untied LM head")


class WeightOnlyConfig(MethodConfig):
    """Integer weights with float activations (W4A16, W8A16). Embeddings and head stay float by
    default, as vLLM loads them; 8 bits there make the smaller, transformers-only variant."""

    bits: WeightBits = Field(4, description=WEIGHT_BITS)
    group_size: GroupSize = Field(64, description=GROUP_SIZE)
    symmetric: bool = Field(True, description="Symmetric grid (no zero-point)")
    embedding_bits: Literal[0, 4, 8] = Field(
        0, description="Bits of the token embeddings and a tied head (0 = keep float; 8 per row, 4 in the body's "
                       "groups; quantized, the model loads in transformers, not vLLM)")
    head_bits: Literal[0, 4, 8] = Field(
        0, description="Bits of an untied LM head (0 = keep float; 8 per row, 4 in the body's groups; loads in "
                       "transformers, not vLLM)")


CLIP_SEARCH = "Search a clipping of each group's weight range (its ratio kept, per row and group, by the output error)"


class ClipSettings(MethodConfig):
    clip_grid: int = Field(20, ge=1, le=100, description="Clipping ratios tried, from 1 down to 1 - max_shrink")
    max_shrink: float = Field(0.5, gt=0.0, lt=1.0, description="Largest share of a group's range clipping may cut")


class GptqClipping(ClipSettings):
    clip_search: bool = Field(False, description=f"{CLIP_SEARCH}, before GPTQ rounds onto that grid")


class GptqSettings(MethodConfig):
    damping: Damping = Field(0.01, description=DAMPING)
    act_order: bool = Field(True, description="Visit columns by decreasing activation energy (static groups)")
    lazy_batch_columns: LazyBatchColumns = Field(128, description=LAZY_BATCH_COLUMNS)


class EndToEndSettings(MethodConfig):
    end_to_end_tokens: int = Field(
        0, ge=0, le=MAX_TRAINED_TOKENS,
        description="After the block walk, tune every quantized module's group scales (codes fixed) on this many "
                    "calibration tokens against the float model's next-token distribution (0 = no end-to-end phase)")
    end_to_end_learning_rate: float = Field(1e-3, gt=0.0, le=0.1,
                                            description="Adam learning rate of the scales' log gains (cosine decay)")
    end_to_end_batch_windows: int = Field(8, ge=1, le=64, description="Windows per end-to-end step")
    end_to_end_sequence_length: CalibrationSequenceLength = Field(256, description="Tokens per end-to-end window")
    end_to_end_validation_share: float = Field(
        0.1, gt=0.0, lt=0.5, description="Share of the calibration windows held back to keep the best scales by")
    end_to_end_validate_every: int = Field(10, ge=1, le=10000, description="End-to-end steps between validations")
    end_to_end_minutes: float = Field(0.0, ge=0.0, le=10080.0,
                                      description="Wall-time bound of the end-to-end phase (0 = the token budget alone)")

    def end_to_end_problems(self) -> list[str]:
        return over_budget("training", f"end_to_end_tokens ({self.end_to_end_tokens})", self.end_to_end_tokens,
                           MAX_TRAINED_TOKENS)


class GptqConfig(WeightOnlyConfig, CalibrationConfig, GptqSettings, GptqClipping, EndToEndSettings):
    propagate_quantized: bool = Field(
        True, description="Feed each block the quantized previous block's outputs (one more forward per block)")

    def work_problems(self) -> list[str]:
        return super().work_problems() + self.end_to_end_problems()


class AwqSettings(ClipSettings):
    scale_grid: int = Field(20, ge=1, le=100, description="Exponents tried by the per-channel scale search")
    clip_search: bool = Field(True, description=f"{CLIP_SEARCH}, after the scale search")
    loss: Literal["layer", "module"] = Field(
        "layer", description="Score scale candidates by each Linear's own output error, or by the output of "
                             "the MLP they feed (through its nonlinearity; on SmolLM2 W4 g64: +15.8 % ppl "
                             "against +15.2 % for 'layer')")


class AwqConfig(WeightOnlyConfig, CalibrationConfig, AwqSettings):
    pass


class EngineGrid(MethodConfig):
    """The integer grid of the engine that will round the transformed float weights (its own
    quantizer, in a later stage): the searches score candidates on it."""

    bits: WeightBits = Field(4, description="Bits the engine's quantizer will use")
    group_size: GroupSize = Field(32, description=f"The engine quantizer's group (GGUF's is 32). {GROUP_SIZE}")
    symmetric: bool = Field(True, description="Whether the engine's grid is symmetric (ONNX Runtime and NNCF "
                                              "by default) or has a minimum per group (GGUF Q4_1)")


class AwqTransformConfig(EngineGrid, CalibrationConfig, AwqSettings):
    """AWQ's scales (and clipping, as a clamp of each group's range) folded into a float model;
    nothing is rounded: a later stage's engine quantizer does that."""

    # Clipping pays only on the grid it was searched for: clamped in float and re-rounded by another
    # quantizer it cost more than it saved on SmolLM2 (bench/results/pipelines.json), so it is opt-in.
    clip_search: bool = Field(False, description="Also search a per-group clipping and clamp each group to it "
                                                 "(pays only where the engine's grid is this one)")
    propagate_rounded: bool = Field(
        True, description="Feed each block the previous block's outputs as the engine will compute them "
                          "(rounded on the grid), not in float")


BATCH_WINDOWS = "Calibration windows per optimizer step"


class BlockTrainingSettings(MethodConfig):
    """What the methods that train each block towards float outputs share (QAT, learned rounding)."""

    batch_windows: int = Field(1, ge=1, le=64, description=BATCH_WINDOWS)
    targets: Literal["block", "model"] = Field(
        "model", description="What each block trains towards: the float model's hidden states (also makes up "
                             "for the blocks before it), or the float block's outputs on the quantized inputs "
                             "(repairs its own rounding only)")

    def training_problems(self, extra: str = "", extra_tokens: int = 0) -> list[str]:
        # Each block trains on its own; summed over blocks that is one whole-model pass per window.
        trained = self.steps_per_block * self.batch_windows * self.calibration_sequence_length
        return over_budget(
            "training", f"steps_per_block x batch_windows x calibration_sequence_length ({self.steps_per_block} x "
                        f"{self.batch_windows} x {self.calibration_sequence_length}){extra}",
            trained + extra_tokens, MAX_TRAINED_TOKENS)


class QatConfig(AwqConfig, BlockTrainingSettings, EndToEndSettings):
    steps_per_block: int = Field(50, ge=0, le=10000, description="Optimizer steps per block (0 = AWQ only)")
    learning_rate: float = Field(1e-4, gt=0.0, le=0.1, description="Adam learning rate of the float weights")
    scale_learning_rate: float = Field(
        0.0, ge=0.0, le=0.1, description="Adam learning rate of the grid's log-scales (0 = the AWQ grid stays fixed; "
                                         "symmetric grids only)")

    @model_validator(mode="after")
    def _learned_scales_are_symmetric(self):
        if self.scale_learning_rate and not self.symmetric:
            raise ValueError("scale_learning_rate: learned scales are for symmetric grids; set symmetric=true or "
                             "scale_learning_rate=0")
        return self

    def work_problems(self) -> list[str]:
        return super().work_problems() + self.training_problems(
            f" + end_to_end_tokens ({self.end_to_end_tokens})", self.end_to_end_tokens)


class AutoRoundConfig(AwqConfig, BlockTrainingSettings):
    """Learned rounding (AutoRound): per-weight rounding offsets and per-group scale gains trained by
    signed gradient descent, block by block, on AWQ's grid (scale_grid=1 and clip_search=false start
    from round-to-nearest, as AutoRound does)."""

    steps_per_block: int = Field(100, ge=1, le=10000, description="Signed-gradient steps per block")
    learning_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="First step size of the offsets and gains, decaying linearly to 0 "
                                         "(0 = 1 / steps_per_block: an offset can cross half a code over the walk)")
    batch_windows: int = Field(2, ge=1, le=64, description=BATCH_WINDOWS)

    @property
    def step_size(self) -> float:
        return self.learning_rate or 1.0 / self.steps_per_block

    def work_problems(self) -> list[str]:
        return super().work_problems() + self.training_problems()


class MixedPrecisionConfig(GptqConfig):
    average_bits: float = Field(
        4.5, ge=4.0, le=8.0, description="Budget: stored bits per Linear weight, scales included; the most "
                                         "sensitive layers are kept at 8 bits until it is spent")


class W8A8Config(CalibrationConfig, GptqSettings):
    """INT8 weights per output channel with INT8 activations."""

    activations: Literal["dynamic", "static"] = Field(
        "dynamic", description="Per-token scales at run time, or one per-tensor scale fixed from calibration")
    smoothing: bool = Field(False, description="SmoothQuant: move activation outliers into the weights first")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="SmoothQuant migration strength (when not searched)")
    alpha_search: bool = Field(True, description="Pick alpha per layer group from calibration (0, 0.1 … 1)")
    weight_algorithm: Literal["gptq", "rtn"] = Field("gptq", description="How the INT8 weights are rounded")
    embedding_bits: Literal[0, 8] = Field(
        0, description="Bits of the token embeddings (0 = keep float; 8 loads in transformers, not vLLM)")
    head_bits: Literal[0, 8] = Field(
        0, description="Bits of an untied LM head (0 = keep float; 8 loads in transformers, not vLLM)")


class SmoothQuantConfig(W8A8Config):
    smoothing: bool = Field(True, description="SmoothQuant: move activation outliers into the weights first")


class SmoothQuantTransformConfig(CalibrationConfig):
    """SmoothQuant's scales folded into a float model for an engine that quantizes activations
    itself (ONNX Runtime's dynamic INT8: one scale per tensor, computed at run time)."""

    activations: Literal["dynamic-per-tensor", "dynamic-per-token", "static"] = Field(
        "dynamic-per-tensor", description="How the engine will quantize activations; alpha is searched for it")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="SmoothQuant migration strength (when not searched)")
    alpha_search: bool = Field(True, description="Pick alpha per layer group from calibration (0, 0.1 … 1)")
