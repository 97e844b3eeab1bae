"""The calibration fields every data-aware method shares (quantizer, pruner, distiller)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field

from modelpress.v1 import common_pb2
from services.common.contract.config import MAX_CALIBRATION_TOKENS, MethodConfig, over_budget
from services.common.contract.fields import (
    CALIBRATION_SAMPLES,
    CALIBRATION_SEQUENCE_LENGTH,
    CalibrationSamples,
    CalibrationSequenceLength,
)
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.common.models import modelio


class CalibrationConfig(MethodConfig):
    artifact_fields: ClassVar[dict[str, tuple[int, ...]]] = {
        "calibration_dataset": (common_pb2.ARTIFACT_FORMAT_DATASET_JSONL,)}

    calibration_samples: CalibrationSamples = Field(16, description=CALIBRATION_SAMPLES)
    calibration_sequence_length: CalibrationSequenceLength = Field(512, description=CALIBRATION_SEQUENCE_LENGTH)
    calibration_dataset: str = Field(
        "", description="Artifact id of an uploaded DATASET_JSONL artifact ({\"text\": ...} per line); "
                        "empty = the built-in pydoc calibration split")

    def work_problems(self) -> list[str]:
        tokens = self.calibration_samples * self.calibration_sequence_length
        return super().work_problems() + over_budget(
            "calibration", f"calibration_samples x calibration_sequence_length ({self.calibration_samples} x "
                           f"{self.calibration_sequence_length})", tokens, MAX_CALIBRATION_TOKENS)

    def text(self) -> str:
        return calibration_text(self.local_path("calibration_dataset"))

    def batches(self, model_folder: Path) -> torch.Tensor:
        """[calibration_samples, calibration_sequence_length] token ids of the calibration text."""
        return calibration_batches(modelio.load_tokenizer(model_folder), self.calibration_samples,
                                   self.calibration_sequence_length, self.text())
