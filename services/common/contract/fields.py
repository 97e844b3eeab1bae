"""Config fields several methods share: one name, one meaning and one range, declared once.

A method config uses the type (and, where its default differs, its own default):

    group_size: GroupSize = Field(64, description=GROUP_SIZE)

Describe publishes the bounds from the type; the checks pydantic runs come from it too, so a
concept cannot take {0, 32, 64, 128} in one service and 16–1024 in another.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field


def _zero_or_power_of_two(value: int) -> int:
    if value and (value < 16 or value & (value - 1)):
        raise ValueError(f"{value} is neither 0 (one scale per output channel) nor a power of two from 16 to 1024")
    return value


GroupSize = Annotated[int, Field(ge=0, le=1024), AfterValidator(_zero_or_power_of_two)]
GROUP_SIZE = ("Input features sharing one scale: 0 = one per output channel, else a power of two from 16 to "
              "1024; a layer it does not divide falls back to the largest power-of-two divisor (at least 16) "
              "and the stage reports it")
# The grid of integer weights compressed-tensors, ONNX Runtime and OpenVINO all store.
WeightBits = Literal[4, 8]
WEIGHT_BITS = "Bits of Linear weights"
# GPTQ and SparseGPT update the remaining columns once per batch of this many (their "lazy batch");
# SparseGPT also chooses its unstructured mask one batch at a time.
LazyBatchColumns = Annotated[int, Field(ge=16, le=4096)]
LAZY_BATCH_COLUMNS = ("Columns per lazy batch update (GPTQ, SparseGPT; SparseGPT chooses its unstructured mask "
                      "per batch)")
Damping = Annotated[float, Field(gt=0.0, le=1.0)]
DAMPING = "Added to the Hessian diagonal, as a share of its mean"
# Calibration text: windows of the calibration split (or of an uploaded dataset), never held-out text.
# How much a stage may read at once is bounded by the work budget (samples x sequence length).
CalibrationSamples = Annotated[int, Field(ge=1, le=100_000)]
CALIBRATION_SAMPLES = ("Windows of calibration text (the calibration split or the uploaded dataset) the method "
                       "reads; samples x sequence length is bounded by the work budget")
CalibrationSequenceLength = Annotated[int, Field(ge=16, le=4096)]
CALIBRATION_SEQUENCE_LENGTH = "Tokens per calibration window"
