"""Typed configs of the optimizer's methods (validated at the edge, published through Describe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.contract.config import MAX_CALIBRATION_TOKENS, MethodConfig, over_budget
from services.common.contract.fields import CALIBRATION_SAMPLES, GROUP_SIZE, CalibrationSamples, GroupSize
from services.common.contract.recipes import ENGINE_CHOICES
from services.common.measure.isa import CLASS_NAMES


class OnnxConfig(MethodConfig):
    opset: int = Field(17, ge=14, le=21, description="ONNX opset of the export (causal LMs use at least 18)")
    fuse: bool = Field(True, description="Apply ONNX Runtime's transformer fusions (encoders) and graph optimizations")
    threads: int = Field(2, ge=1, le=256, description="Threads of the session that optimizes the graph")
    kv_cache: bool = Field(True, description="Causal LMs: export past/present key-value inputs and outputs, so one "
                                             "graph serves prefill and per-token decode")


class OnnxInt8Config(OnnxConfig):
    reduce_range: bool = Field(False, description="7-bit weights: another way around u8*s8 saturation on CPUs "
                                                  "without VNNI, at a bit of weight precision")
    weights: Literal["auto", "s8", "u8"] = Field(
        "auto", description="INT8 weight type under dynamic INT8 activations: s8 (what VNNI and AMX multiply with u8 "
                            "activations), u8 (the u8*u8 kernel does not saturate where products go through "
                            "pmaddubsw), or auto: s8 where this worker's CPU has VNNI or AMX, else u8")
    causal_lm_activations: Literal["float", "dynamic-int8"] = Field(
        "float", description="Causal LMs: float activations with INT8 blockwise weights (MatMulNBits, 8 bits), or "
                             "dynamic per-tensor INT8 activations (which need SmoothQuant first: an LLM's outlier "
                             "channels do not fit one scale per tensor)")


class OnnxInt4Config(OnnxConfig):
    group_size: GroupSize = Field(32, description=f"{GROUP_SIZE}. MatMulNBits calls it block_size and needs one: "
                                                  f"0 is refused")
    symmetric: bool = Field(True, description="Symmetric blocks (no zero-point)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(4, description="MatMulNBits compute type: 4 = int8 activations")

    @model_validator(mode="after")
    def _blockwise(self):
        if self.group_size == 0:
            raise ValueError("group_size: ONNX Runtime's MatMulNBits quantizes in blocks; 0 (one scale per output "
                             "channel) is not available here: give 16 to 1024")
        return self


MIXED_WINDOW = 128  # tokens per calibration window of onnx-mixed's sensitivity measurement


class OnnxMixedConfig(OnnxConfig):
    average_bits: float = Field(6.0, ge=4.0, le=8.0, description="Average bits per MatMul weight: the least "
                                                                  "sensitive layers go to 4 bits until it is met, the "
                                                                  "rest keep 8")
    group_size: GroupSize = Field(32, description=f"{GROUP_SIZE} (MatMulNBits' block_size; 0 is refused)")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(4, description="MatMulNBits compute type: 4 = int8 activations")
    calibration_samples: CalibrationSamples = Field(
        8, description=f"{CALIBRATION_SAMPLES} ({MIXED_WINDOW}-token windows the sensitivity is measured on)")

    @model_validator(mode="after")
    def _blockwise(self):
        if self.group_size == 0:
            raise ValueError("group_size: MatMulNBits quantizes in blocks; give 16 to 1024")
        return self

    def work_problems(self) -> list[str]:
        return super().work_problems() + over_budget(
            "calibration", f"calibration_samples x {MIXED_WINDOW} tokens ({self.calibration_samples} x {MIXED_WINDOW})",
            self.calibration_samples * MIXED_WINDOW, MAX_CALIBRATION_TOKENS)


class OpenVinoConfig(MethodConfig):
    inference_precision: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="Compute precision every runtime of this IR is compiled with (INFERENCE_PRECISION_HINT, "
                           "pinned: left alone OpenVINO picks bf16 by itself on CPUs that have it); bf16 and f16 "
                           "are native only where the CPU has their instructions (ListEngines says which)")


class OpenVinoInt8Config(OpenVinoConfig):
    symmetric: bool = Field(False, description="Symmetric INT8 weights (no zero-point); asymmetric keeps more range")


# Tokens per calibration window NNCF's data-aware INT4 reads (services/optimizer/engine.py).
NNCF_WINDOW = 128


class OpenVinoInt4Config(OpenVinoConfig):
    group_size: GroupSize = Field(128, description=GROUP_SIZE)
    symmetric: bool = Field(True, description="Symmetric INT4 weights")
    ratio: float = Field(1.0, ge=0.0, le=1.0, description="Share of weights in 4 bits; the rest stays INT8")
    data_aware: bool = Field(False, description="NNCF's AWQ and scale estimation on calibration text (128-token "
                                                "windows); data-free otherwise")
    calibration_samples: CalibrationSamples = Field(32, description=f"{CALIBRATION_SAMPLES} (when data_aware)")

    def work_problems(self) -> list[str]:
        if not self.data_aware:
            return super().work_problems()
        return super().work_problems() + over_budget(
            "calibration", f"calibration_samples x {NNCF_WINDOW} tokens ({self.calibration_samples} x {NNCF_WINDOW})",
            self.calibration_samples * NNCF_WINDOW, MAX_CALIBRATION_TOKENS)


class GgufConfig(MethodConfig):
    verify_reload: bool = Field(True, description="Load the written file back in transformers (gguf_file=) and "
                                                  "compare its logits with the float model's on held-out text")


class GgufQ4Config(GgufConfig):
    # Q4_1 by default: on SmolLM2 it kept top-1 agreement 0.87 against Q4_0's 0.60 (measured).
    type: Literal["q4_0", "q4_1"] = Field("q4_1", description="ggml 4-bit type: q4_1 (scale and minimum per 32) "
                                                              "or q4_0 (scale per 32)")


class TensorRtConfig(MethodConfig):
    opt_batch: int = Field(8, ge=1, le=1024, description="Batch size the engine is tuned for")
    max_batch: int = Field(32, ge=1, le=1024, description="Largest batch the engine accepts")
    opt_sequence: int = Field(128, ge=1, le=8192, description="Sequence length the engine is tuned for")
    max_sequence: int = Field(512, ge=1, le=8192, description="Longest sequence the engine accepts")
    workspace_mb: int = Field(2048, ge=64, le=65536, description="Builder workspace memory")


class FastestCpuConfig(MethodConfig):
    isa_class: Literal[("auto",) + CLASS_NAMES] = Field(  # type: ignore[valid-type]
        "auto", description="Resolve for CPUs of this ISA class instead of this worker's (auto): a build worker "
                            "preparing a model for other machines")
    choice: Literal[("",) + ENGINE_CHOICES] = Field(  # type: ignore[valid-type]
        "", description="The engine recipe to run: the gateway sets the one a search measured fastest at kept "
                        "quality for the model's kind on the class's CPU; empty: the bench table's prior")
