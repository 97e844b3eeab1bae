"""The end-to-end phase of a calibrated quantizer stage, after its block walk (scale_tuning.py trains):
its data (windows of the calibration text or uploaded dataset, a validation share held back), its
progress events, and checkpoints that carry the walk's result, so a retried stage goes on with the
tuning where it stopped instead of walking the blocks again."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from services.common.contract.engine_api import ProgressReporter
from services.common.datasets.training_data import training_data
from services.common.measure.curves import thin
from services.common.models import modelio
from services.common.models.families import is_causal_lm
from services.quantizer.configs import GptqConfig, QatConfig
from services.quantizer.scale_tuning import (
    TuningPlan,
    TuningState,
    parametrize_quantized,
    tune_scales,
    tuned_weights,
)
from services.quantizer.sequential import QUANTIZED_WEIGHT_CODEC, SequentialResult

TUNING_FILE = "tuning.pt"
# Every calibration window the text holds: the token budget, not the window count, bounds the phase.
ALL_WINDOWS = 1_000_000
CURVE_POINTS = 200  # of the training KL kept in the figures (each step went out as progress)


class EndToEndPhase:
    """One stage's end-to-end phase: `restore` before the walk, `run` after it."""

    def __init__(self, config: QatConfig | GptqConfig, src: Path, reporter: ProgressReporter, model: torch.nn.Module) -> None:
        """`model`: the stage's model (a skeleton will do), refused before any walk when not a causal LM."""
        if not is_causal_lm(model):
            raise ValueError("end_to_end_tokens: the end-to-end phase matches next-token distributions, which only a "
                             "causal LM has; set it to 0 for this model")
        self.config, self.src, self.reporter = config, src, reporter
        self.saved: dict | None = None

    def restore(self) -> SequentialResult | None:
        """The walk's result from a checkpoint this phase saved (the tuning state kept for `run`); None
        when the stage has none, or only the walk's own."""
        with tempfile.TemporaryDirectory(prefix="tuning-") as scratch:
            folder = self.reporter.checkpoints.latest(Path(scratch) / "resume")
            if folder is None or not (folder / TUNING_FILE).is_file():
                return None
            saved = torch.load(folder / TUNING_FILE, weights_only=True)
        self.saved = saved["tuning"]
        step = self.saved["state"]["step"]
        self.reporter.report(0, 1, f"end-to-end phase: resumed from its checkpoint at step {step}; the block walk "
                                   f"is not run again", resumed_from_step=step)
        return SequentialResult({name: QUANTIZED_WEIGHT_CODEC.decode(v) for name, v in saved["quantized"].items()},
                                saved["rewritten"], list(saved["uncalibrated"]))

    def run(self, result: SequentialResult) -> tuple[SequentialResult, dict]:
        """The walk's result with tuned scales, and the phase's figures."""
        config = self.config
        teacher = modelio.load_model(self.src, dtype=torch.float32)
        student = modelio.load_model(self.src, dtype=torch.float32)
        unexpected = student.load_state_dict(result.rewritten, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"end_to_end_tokens: the walk rewrote tensors the model does not have: {unexpected[:3]}")
        scales = parametrize_quantized(student, result.quantized)
        data = training_data(modelio.load_tokenizer(self.src), config.text(), True, ALL_WINDOWS,
                             config.end_to_end_sequence_length, config.end_to_end_validation_share)
        per_step = config.end_to_end_batch_windows * config.end_to_end_sequence_length
        plan = TuningPlan(steps=max(1, math.ceil(config.end_to_end_tokens / per_step)),
                          batch_windows=config.end_to_end_batch_windows,
                          learning_rate=config.end_to_end_learning_rate,
                          validate_every=config.end_to_end_validate_every,
                          max_seconds=config.end_to_end_minutes * 60 or math.inf)
        carried = {"quantized": {n: QUANTIZED_WEIGHT_CODEC.encode(qw) for n, qw in result.quantized.items()},
                   "rewritten": result.rewritten, "uncalibrated": list(result.uncalibrated)}

        def save(tuning: dict) -> None:
            with tempfile.TemporaryDirectory(prefix="tuning-") as scratch:
                torch.save({**carried, "tuning": tuning}, Path(scratch) / TUNING_FILE)
                self.reporter.checkpoints.save(Path(scratch), tuning["state"]["step"])

        def on_step(state: TuningState, message: str, **figures: float) -> None:
            self.reporter.report(state.step, plan.steps, f"end-to-end: {message}", tokens=state.tokens, **figures)

        state = tune_scales(teacher, student, scales, data, plan, saved=self.saved, save=save, on_step=on_step)
        tuned = SequentialResult(tuned_weights(result.quantized, scales), result.rewritten, result.uncalibrated,
                                 result.spill)
        figures = {"end_to_end": {
            "steps": state.step, "tokens": state.tokens, "seconds": round(state.seconds, 1),
            "validation_windows": len(data.validation_items), "training_windows": len(data.train_items),
            "validation_kl_before": state.validation_kl[0][1], "validation_kl_best": state.best_kl,
            "best_step": state.best_step, "validation_kl": state.validation_kl, "train_kl": thin(state.train_kl, CURVE_POINTS),
            "resumed_from_step": (self.saved or {}).get("state", {}).get("step", 0)}}
        return tuned, figures
