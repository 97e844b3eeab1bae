"""Typed configs of the distiller's methods (one declaration serves validation, defaults, Describe and the CLI).

The seed's DistillationConfig fields (temperature, alpha, feature_layers) keep their names.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from modelpress.v1 import common_pb2
from services.common.calibration.config import CalibrationConfig
from services.common.contract.config import MAX_TRAINED_TOKENS, over_budget
from services.common.contract.fields import (CALIBRATION_SAMPLES, CALIBRATION_SEQUENCE_LENGTH, CalibrationSamples,
                                             CalibrationSequenceLength)
from services.distiller.losses.response import DIVERGENCES, EMBEDDING_LOSSES

FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


class TrainingConfig(CalibrationConfig):
    """Bounded CPU training on the calibration split (or an uploaded dataset), never held-out text."""

    # The distiller trains on its calibration windows (encoders: text pieces, capped at what the text holds).
    calibration_samples: CalibrationSamples = Field(256, description=CALIBRATION_SAMPLES)
    calibration_sequence_length: CalibrationSequenceLength = Field(128, description=CALIBRATION_SEQUENCE_LENGTH)
    max_minutes: float = Field(10.0, gt=0.0, le=600.0, description="Wall-time budget of the training loop (resumed "
                                                                    "runs count the time already spent)")
    max_steps: int = Field(0, ge=0, le=1000000, description="Most optimizer steps (0 = bounded by time only)")
    max_tokens: int = Field(0, ge=0, le=MAX_TRAINED_TOKENS, description="Most training tokens seen, the real "
                                                                        "tokens of every batch drawn (0 = bounded "
                                                                        "by time and steps only)")
    batch_size: int = Field(16, ge=1, le=512, description="Windows or pieces per optimizer step")
    learning_rate: float = Field(1e-4, gt=0.0, le=0.1, description="AdamW peak learning rate")
    warmup_steps: int = Field(10, ge=0, le=10000, description="Linear warm-up steps of the learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="The student's forward and backward while training: fp32, bf16 (autocast: matmuls in "
                            "bf16, weights, optimizer, losses and validation in fp32), or auto: bf16 where this "
                            "worker's CPU has bf16 dot products (avx512_bf16 or amx_bf16), else fp32")
    validation_share: float = Field(0.1, ge=0.0, lt=0.5, description="Share of the training data held back to "
                                                                      "validate on (from the same calibration split)")
    augment_copies: int = Field(0, ge=0, le=64, description="Augmented copies of each training item, "
                                                             "augment_share of its tokens swapped for whole words "
                                                             "drawn from the whole vocabulary (the teacher's outputs "
                                                             "on them are the targets; validation stays as written)")
    augment_share: float = Field(0.15, gt=0.0, le=1.0, description="Share of an augmented copy's tokens swapped")
    augment_source: Literal["vocabulary", "teacher"] = Field(
        "vocabulary", description="Where a swapped-in token comes from: vocabulary (a whole word drawn uniformly) or "
                                  "teacher (causal LMs: drawn from the teacher's next-token distribution at that "
                                  "place, among its top augment_top_k, never the token written there)")
    augment_top_k: int = Field(20, ge=2, le=1000, description="augment_source teacher: candidates per place")
    validate_every: int = Field(25, ge=1, le=100000, description="Steps between validations")
    early_stopping_patience: int = Field(0, ge=0, le=1000, description="Stop after this many validations without "
                                                                        "improvement (0 = never); the best "
                                                                        "validated student is kept")
    checkpoint_every: int = Field(50, ge=1, le=100000, description="Steps between checkpoints a retried stage "
                                                                    "resumes from")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of batch order and new weights")

    @model_validator(mode="after")
    def _something_to_train_on(self):
        if self.calibration_samples < 2:
            raise ValueError(f"calibration_samples: training needs at least 2 windows (one batch to train on "
                             f"and one to hold back), got {self.calibration_samples}")
        return self

    def work_problems(self) -> list[str]:
        # max_steps 0 is bounded by max_minutes alone, which its own field bounds.
        trained = self.max_steps * self.batch_size * self.calibration_sequence_length
        return super().work_problems() + over_budget(
            "training", f"max_steps x batch_size x calibration_sequence_length ({self.max_steps} x {self.batch_size} "
                        f"x {self.calibration_sequence_length})", trained, MAX_TRAINED_TOKENS)


class TeacherConfig(TrainingConfig):
    artifact_fields: ClassVar[dict[str, tuple[int, ...]]] = {
        **CalibrationConfig.artifact_fields, "teacher": (FLOAT,), "student": (FLOAT,)}
    original_default_fields: ClassVar[tuple[str, ...]] = ("teacher",)

    teacher: str = Field("", description="Artifact id of the teacher (float HF folder); empty = the job's input "
                                         "model (in a pipeline: the model before its first stage)")
    student: str = Field("", description="Artifact id of an uploaded student (float HF folder, same tokenizer and "
                                         "kind as the teacher); empty = built from this stage's input")


class StudentConfig(TeacherConfig):
    """How the student is built from this stage's input (ignored for an uploaded student)."""

    student_layers: int = Field(0, ge=0, le=1024, description="Blocks the student keeps (0 = student_layers_share "
                                                              "of its input's)")
    student_layers_share: float = Field(1.0, gt=0.0, le=1.0, description="Share of the input's blocks kept when "
                                                                         "student_layers is 0")
    layer_selection: Literal["uniform", "importance"] = Field(
        "uniform", description="Which blocks: the last of every equal group (uniform), or the most important by "
                               "1 - cos(block input, output) on calibration text")
    student_mlp_width: int = Field(0, ge=0, le=65536, description="MLP width of every block (0 = its input's); "
                                                                   "neurons kept by weight norm")
    student_hidden_size: int = Field(0, ge=0, le=65536, description="Hidden (residual) width of the student (0 = "
                                                                     "its input's); embeddings and projections start "
                                                                     "on the principal directions of the input's "
                                                                     "hidden states on the training text")
    vocabulary: Literal["full", "corpus", "factorized"] = Field(
        "full", description="Encoders: full (the input's table); factorized (every token kept, the table as a rank "
                            "embedding_rank product, ALBERT's layout: the tokenizer is unchanged); corpus (only the "
                            "tokens the training text uses plus every single-character piece: other text tokenizes "
                            "into smaller pieces than the teacher's)")
    embedding_rank: int = Field(128, ge=8, le=4096, description="vocabulary factorized: rank of the token table "
                                                                 "(below the hidden size)")
    reinitialize: bool = Field(False, description="Born-again: start the student from new weights (same shape) "
                                                  "instead of its input's")

    @model_validator(mode="after")
    def _student_is_built_or_uploaded(self):
        built = (self.student_layers or self.student_layers_share < 1.0 or self.student_mlp_width
                 or self.student_hidden_size or self.vocabulary != "full" or self.reinitialize)
        if self.student and built:
            raise ValueError("student: an uploaded student is used as it is; leave student_layers, "
                             "student_mlp_width, student_hidden_size, vocabulary and reinitialize at their defaults")
        return self

    def kept_layers(self, total: int) -> int:
        return self.student_layers or max(1, round(total * self.student_layers_share))


class TemperatureConfig(StudentConfig):
    temperature: float = Field(2.0, ge=0.5, le=20.0, description="Softmax temperature of the distributions "
                                                                  "matched (the KL is scaled by T²)")
    temperature_schedule: Literal["constant", "annealed", "adaptive"] = Field(
        "constant", description="constant; annealed linearly to final_temperature over the run; adaptive: per "
                                "batch, the T at which the teacher's mean entropy is target_entropy of its maximum")
    final_temperature: float = Field(1.0, ge=0.5, le=20.0, description="Annealed: the temperature at the end")
    target_entropy: float = Field(0.3, gt=0.0, lt=1.0, description="Adaptive: teacher entropy as a share of "
                                                                    "ln(classes)")


class ResponseConfig(TemperatureConfig):
    # The allowed divergences and embedding losses are those registered in losses/response.py.
    divergence: DIVERGENCES.choices() = Field(  # type: ignore[valid-type]
        "forward-kl", description=DIVERGENCES.described("Causal LMs, on the teacher's top_k tokens"))
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="Causal LMs: weight of the distillation term; 1 - alpha "
                                                          "weighs the next-token cross-entropy on the text")
    top_k: int = Field(64, ge=2, le=4096, description="Causal LMs: teacher logits cached per token")
    embedding_loss: EMBEDDING_LOSSES.choices() = Field(  # type: ignore[valid-type]
        "mse+cosine", description=EMBEDDING_LOSSES.described("Encoders, on the mean-pooled sentence embedding"))
    learning_rate: float = Field(2e-4, gt=0.0, le=0.1, description="AdamW peak learning rate")


class FeatureConfig(ResponseConfig):
    feature_layers: str = Field("", description="Explicit layer map 'student:teacher,...' (1-based block outputs; "
                                                "empty = layer_map)")
    layer_map: Literal["uniform", "last-k"] = Field(
        "uniform", description="Student block j matches teacher block j·(teacher / student) (uniform), or the "
                               "last last_k blocks of each (last-k)")
    last_k: int = Field(1, ge=1, le=1024, description="last-k: blocks matched")
    feature_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the hidden-state MSE beside the "
                                                                      "response term")

    @model_validator(mode="after")
    def _explicit_map_parses(self):
        if self.feature_layers:
            pairs(self.feature_layers)
        return self


class AttentionConfig(FeatureConfig):
    attention_loss: Literal["auto", "distribution", "relations"] = Field(
        "auto", description="distribution: KL of the attention probabilities (TinyBERT; equal head counts); "
                            "relations: Q-Q, K-K and V-V self-attention relations (MiniLMv2; any widths); auto: "
                            "distribution where head counts match, else relations")
    relation_heads: int = Field(0, ge=0, le=256, description="Relations: heads the widths are split into "
                                                             "(0 = the teacher's attention heads)")
    attention_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the attention term")
    feature_weight: float = Field(0.0, ge=0.0, le=100.0, description="Weight of the hidden-state MSE beside the "
                                                                      "response and attention terms")
    layer_map: Literal["uniform", "last-k"] = Field(
        "last-k", description="Student block j matches teacher block j·(teacher / student) (uniform), or the "
                              "last last_k blocks of each (last-k, MiniLM's choice)")


class SelfConfig(ResponseConfig):
    """The stage's input (pruned, or any compressed float model) as the student of its own original."""

    learning_rate: float = Field(1e-4, gt=0.0, le=0.1, description="AdamW peak learning rate")


def pairs(text: str) -> list[tuple[int, int]]:
    """'1:2, 2:4' -> [(1, 2), (2, 4)]; a ValueError names the bad entry."""
    found = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        student, sep, teacher = item.partition(":")
        if not sep or not student.strip().isdigit() or not teacher.strip().isdigit():
            raise ValueError(f"feature_layers: {item!r} is not 'student:teacher' (1-based block numbers)")
        if int(student) < 1 or int(teacher) < 1:
            raise ValueError(f"feature_layers: {item!r}: block numbers start at 1")
        found.append((int(student), int(teacher)))
    if not found:
        raise ValueError("feature_layers: no 'student:teacher' pair")
    return found
