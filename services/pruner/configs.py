"""Typed configs of the pruner's methods (one declaration serves validation, defaults, Describe and the CLI)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.calibration.config import CalibrationConfig
from services.common.contract.config import MAX_TRAINED_TOKENS, MethodConfig, over_budget
from services.common.contract.fields import (CALIBRATION_SAMPLES, CALIBRATION_SEQUENCE_LENGTH, DAMPING,
                                             LAZY_BATCH_COLUMNS, CalibrationSamples, CalibrationSequenceLength,
                                             Damping, LazyBatchColumns)
from services.pruner.importance import BLOCK_SCORES, UNIT_SCORES


class ScheduleConfig(MethodConfig):
    schedule_steps: int = Field(
        1, ge=1, le=16, description="1 = one-shot; N > 1 = gradual: the cut grows on a cubic schedule over N steps, "
                                    "with a recovery between steps when recovery_minutes > 0")


class RecoveryConfig(MethodConfig):
    """A bounded in-stage fine-tune with the unpruned input as the teacher (logit KL for causal LMs,
    token and pooled-embedding match for encoders) on calibration text; pruned weights stay zero."""

    recovery_minutes: float = Field(0.0, ge=0.0, le=120.0,
                                    description="Wall-time budget of the recovery fine-tune (0 = none)")
    recovery_steps: int = Field(0, ge=0, le=100000, description="Most optimizer steps (0 = bounded by time only)")
    recovery_learning_rate: float = Field(1e-4, gt=0.0, le=0.01, description="AdamW learning rate")
    recovery_batch: int = Field(8, ge=1, le=64, description="Text pieces per optimizer step")
    recovery_sequence_length: int = Field(128, ge=16, le=2048, description="Tokens per text piece")

    def recovery_rounds(self) -> int:
        """How many recoveries a run makes (a gradual schedule recovers after each of its steps)."""
        return 1

    def work_problems(self) -> list[str]:
        # recovery_steps 0 is bounded by time alone.
        rounds = self.recovery_rounds()
        trained = rounds * self.recovery_steps * self.recovery_batch * self.recovery_sequence_length
        return super().work_problems() + over_budget(
            "recovery", f"schedule_steps x recovery_steps x recovery_batch x recovery_sequence_length ({rounds} x "
                        f"{self.recovery_steps} x {self.recovery_batch} x {self.recovery_sequence_length})",
            trained, MAX_TRAINED_TOKENS)


class PruneBase(CalibrationConfig, ScheduleConfig, RecoveryConfig):
    calibration_samples: CalibrationSamples = Field(64, description=CALIBRATION_SAMPLES)
    calibration_sequence_length: CalibrationSequenceLength = Field(256, description=CALIBRATION_SEQUENCE_LENGTH)

    def recovery_rounds(self) -> int:
        return self.schedule_steps


class SparsityConfig(PruneBase):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="Share of each pruned Linear's weights set to zero")
    structure: Literal["unstructured", "2:4", "4:8"] = Field(
        "unstructured", description="Free masks, or N:M (N kept in every M consecutive inputs of a row; "
                                    "sparsity is then 1 - N/M)")

    @model_validator(mode="after")
    def _nm_sets_sparsity(self):
        if self.structure != "unstructured":
            kept, group = (int(x) for x in self.structure.split(":"))
            if "sparsity" in self.model_fields_set and abs(self.sparsity - (1 - kept / group)) > 1e-9:
                raise ValueError(f"sparsity: {self.sparsity} contradicts structure {self.structure} "
                                 f"(which means sparsity {1 - kept / group}); leave sparsity unset")
            if self.schedule_steps > 1:
                raise ValueError(f"schedule_steps: {self.structure} has one sparsity, so there is no schedule to "
                                 "grow; gradual pruning is for structure 'unstructured'")
        return self

    @property
    def target_sparsity(self) -> float:
        if self.structure == "unstructured":
            return self.sparsity
        kept, group = (int(x) for x in self.structure.split(":"))
        return 1 - kept / group

    @property
    def nm(self) -> tuple[int, int] | None:
        if self.structure == "unstructured":
            return None
        kept, group = (int(x) for x in self.structure.split(":"))
        return kept, group


class MagnitudeConfig(SparsityConfig):
    scope: Literal["layer", "global"] = Field(
        "layer", description="Compare |w| within each Linear, or across all pruned Linears (unstructured only)")

    @model_validator(mode="after")
    def _global_is_unstructured(self):
        if self.scope == "global" and self.structure != "unstructured":
            raise ValueError(f"scope: 'global' needs structure 'unstructured' (N:M masks are per row group), "
                             f"not {self.structure!r}")
        return self


class WandaConfig(SparsityConfig):
    owl: bool = Field(False, description="Outlier-weighted layer sparsity (OWL): blocks with more activation "
                                         "outliers keep more weights, the average stays `sparsity`")
    owl_lambda: float = Field(0.08, ge=0.0, le=0.3, description="OWL: largest deviation of a block's sparsity")
    owl_threshold: float = Field(5.0, ge=1.0, le=100.0,
                                 description="OWL: a score counts as an outlier above this multiple of the mean")

    @model_validator(mode="after")
    def _owl_is_unstructured(self):
        if self.owl and self.structure != "unstructured":
            raise ValueError(f"owl: needs structure 'unstructured' (N:M fixes every layer's sparsity), "
                             f"not {self.structure!r}")
        return self


class SparseGptConfig(WandaConfig):
    damping: Damping = Field(0.01, description=DAMPING)
    lazy_batch_columns: LazyBatchColumns = Field(128, description=LAZY_BATCH_COLUMNS)


class StructuredConfig(PruneBase):
    """Physically removes whole units: layers (depth), MLP neurons and attention heads, uniformly
    across layers, so the output reloads with stock transformers."""

    target_flops: float = Field(
        0.0, ge=0.0, lt=1.0, description="FLOPs of the result as a share of the input's at the evaluation shape; "
                                         "half the cut comes from layers, the rest from MLP width (0 = use the "
                                         "explicit layers_keep / mlp_keep / heads_keep)")
    layers_keep: int = Field(0, ge=0, le=1024, description="Blocks kept (0 = all)")
    mlp_keep: float = Field(1.0, gt=0.0, le=1.0, description="Share of MLP neurons kept in every block")
    heads_keep: float = Field(1.0, gt=0.0, le=1.0, description="Share of attention heads kept in every block")
    head_unit: Literal["kv-group", "query-head"] = Field(
        "kv-group", description="Grouped-query attention: remove whole KV groups, or the same number of query "
                                "heads from every group")
    # The allowed scores are those registered in importance.py (one class each).
    importance: UNIT_SCORES.choices() = Field(  # type: ignore[valid-type]
        "activation", description=UNIT_SCORES.described("Neuron/head importance"))
    layer_importance: BLOCK_SCORES.choices() = Field(  # type: ignore[valid-type]
        "cosine", description=BLOCK_SCORES.described("Block importance"))
    reconstruct: bool = Field(False, description="Refit each cut output projection's kept columns by least squares "
                                                 "on the calibration activations (the removed neurons' and heads' "
                                                 "share carried by the kept ones), before any recovery")
    width_multiple: int = Field(32, ge=1, le=256, description="MLP widths are rounded to a multiple of this")
    flops_sequence_length: int = Field(128, ge=1, le=8192, description="Tokens of the evaluation shape FLOPs are "
                                                                        "counted at (batch 1)")
    calibration_samples: CalibrationSamples = Field(32, description=CALIBRATION_SAMPLES)
    calibration_sequence_length: CalibrationSequenceLength = Field(128, description=CALIBRATION_SEQUENCE_LENGTH)

    def kept_layers(self, total: int) -> int:
        """Blocks the explicit amounts keep out of `total`."""
        return self.layers_keep or total

    def _removes_layers(self) -> bool:
        return bool(self.layers_keep)

    @model_validator(mode="after")
    def _something_to_remove(self):
        explicit = self._removes_layers() or self.mlp_keep < 1.0 or self.heads_keep < 1.0
        if self.target_flops and explicit:
            raise ValueError("target_flops: set either target_flops or layers_keep / mlp_keep / heads_keep, not both")
        if not self.target_flops and not explicit:
            raise ValueError("nothing to prune: set target_flops, layers_keep, mlp_keep < 1 or heads_keep < 1")
        if self.importance == "obs" and not self.reconstruct:
            # OBS ranks units by what the refit cannot carry: a cut without the refit is not what it chose.
            raise ValueError("importance: 'obs' orders units for a refitted cut; set reconstruct=true")
        return self


class MlpNeuronsConfig(StructuredConfig):
    mlp_keep: float = Field(0.75, gt=0.0, le=1.0, description="Share of MLP neurons kept in every block")


class LayersConfig(StructuredConfig):
    layers_keep: int = Field(0, ge=0, le=1024, description="Blocks kept (0 = layers_keep_share of them)")
    layers_keep_share: float = Field(0.75, gt=0.0, le=1.0, description="Share of blocks kept when layers_keep is 0")

    def kept_layers(self, total: int) -> int:
        return self.layers_keep or max(1, round(total * self.layers_keep_share))

    def _removes_layers(self) -> bool:
        return bool(self.layers_keep) or self.layers_keep_share < 1.0


class HeadsConfig(StructuredConfig):
    heads_keep: float = Field(0.67, gt=0.0, le=1.0, description="Share of attention heads kept in every block")


class FlopsConfig(StructuredConfig):
    target_flops: float = Field(0.5, ge=0.0, lt=1.0, description=StructuredConfig.model_fields["target_flops"].description)
