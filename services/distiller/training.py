"""The bounded training loop: AdamW with linear warm-up (then cosine decay when a step or token budget
is known), validation and early stopping, progress per step (the cancel point), and checkpoints a
retried stage resumes from.

A checkpoint holds the student's and the objective's weights, the optimizer, the batch
generator's state, the loop's figures and the cached teacher outputs, so a resumed run continues
exactly where the stored one stopped: same batches, same updates (dropout is off while training,
as the teacher's outputs are deterministic).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from services.common.contract.engine_api import ProgressReporter
from services.common.datasets.training_data import TrainingData
from services.common.measure.isa import support
from services.common.measure.machine import this_cpu
from services.distiller.configs import TrainingConfig
from services.distiller.objectives import Objective

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class LoopState:
    step: int = 0
    seconds: float = 0.0
    best_validation: float = math.inf
    best_step: int = 0
    validations_without_gain: int = 0
    resumed_from_step: int = 0
    stopped: str = ""
    tokens: int = 0  # real tokens of the batches trained on
    curves: dict[str, list[float]] = field(default_factory=dict)
    # [step, loss, tokens seen]: what more training buys, read against the budget.
    validation: list[list[float]] = field(default_factory=list)
    # [step, perplexity, tokens seen] on the same items, for a causal LM.
    validation_perplexity: list[list[float]] = field(default_factory=list)
    precision: str = "fp32"  # what the training steps ran in (auto resolved on this worker)


def batch_tokens(batch: dict) -> int:
    """The real tokens of a batch: padding is not training."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def _bounded_share(config: TrainingConfig, state: LoopState, after_step: int = 0) -> float | None:
    """Share of the run done by the bound that ends it first among steps (counted from `after_step`)
    and tokens (both known in advance and reproducible on resume); None when only time bounds the run."""
    shares = ([(state.step - after_step) / max(1, config.max_steps - after_step)] if config.max_steps else []) + (
        [state.tokens / config.max_tokens] if config.max_tokens else [])
    return max(shares) if shares else None


def _learning_rate(config: TrainingConfig, state: LoopState) -> float:
    """Linear warm-up, then a cosine decay to a tenth of the peak over the step or token budget,
    whichever ends the run first (a budget of time alone keeps the peak: where it ends is not known)."""
    if config.warmup_steps and state.step <= config.warmup_steps:
        return config.learning_rate * state.step / config.warmup_steps
    done = _bounded_share(config, state, after_step=config.warmup_steps)
    if done is None:
        return config.learning_rate
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


def _progress(config: TrainingConfig, state: LoopState) -> float:
    """Share of the run done: by steps or tokens when they bound it (reproducible), else by time."""
    done = _bounded_share(config, state)
    return done if done is not None else state.seconds / (config.max_minutes * 60)


def training_precision(requested: str) -> str:
    """fp32 or bf16: `auto` is bf16 where this CPU has bf16 dot products (elsewhere bf16 is emulated
    and slower than fp32, so auto does not pick it)."""
    if requested != "auto":
        return requested
    return "bf16" if support("bf16", this_cpu().isa_features).accelerated else "fp32"


def _trainable(student: nn.Module, objective: Objective) -> list[nn.Parameter]:
    params = [p for p in student.parameters() if p.is_floating_point()]
    return params + [p for p in objective.parameters() if p.is_floating_point()]


def _save(folder: Path, student, objective, optimizer, generator, state: LoopState, best: dict | None,
          data: TrainingData) -> None:
    # A causal run's windows travel with the teacher outputs cached on them: copies drawn from the
    # teacher's proposals depend on its float arithmetic, which another worker's CPU may round otherwise.
    torch.save({"student": student.state_dict(), "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "state": asdict(state),
                "cache": objective.cache, "best": best, "windows": data.windows}, folder / CHECKPOINT_FILE)


def _validate(objective: Objective, student: nn.Module, validation: list[dict], state: LoopState) -> dict[str, float]:
    figures = objective.validate(student, validation)
    state.validation.append([state.step, figures["validation_loss"], state.tokens])
    if "validation_perplexity" in figures:
        state.validation_perplexity.append([state.step, figures["validation_perplexity"], state.tokens])
    return figures


def train(student: nn.Module, objective: Objective, data: TrainingData, config: TrainingConfig,
          reporter: ProgressReporter, prepare_teacher: Callable[[], None]) -> LoopState:
    """Trains `student` in place and leaves the best validated weights in it. `prepare_teacher`
    fills the objective's teacher cache when no checkpoint brings one."""
    params = _trainable(student, objective)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    state, best = LoopState(precision=training_precision(config.precision)), None
    with tempfile.TemporaryDirectory(prefix="distill-ckpt-") as scratch:
        stored = reporter.checkpoints.latest(Path(scratch) / "resume")
        if stored is not None:
            saved = torch.load(stored / CHECKPOINT_FILE, weights_only=True)
            student.load_state_dict(saved["student"])
            objective.load_state_dict(saved["objective"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            objective.cache = saved["cache"]
            if saved.get("windows") is not None:
                data.windows = saved["windows"]
            state, best = LoopState(**saved["state"]), saved["best"]
            state.resumed_from_step = state.step
            reporter.report(state.step, config.max_steps, f"resumed from the checkpoint of step {state.step}")
        else:
            prepare_teacher()
        validation = data.validation_batches(config.batch_size)
        budget = config.max_minutes * 60
        student.eval()  # no dropout: the same batch gives the same update (resume == uninterrupted)
        if validation and stored is None:
            # The curve starts where training does, and the input itself is a candidate: a stage whose
            # training only loses on the validation items hands back what it was given.
            state.best_validation = _validate(objective, student, validation, state)["validation_loss"]
            best = {k: v.detach().clone() for k, v in student.state_dict().items()}
        for p in params:
            p.requires_grad_(True)
        started = time.monotonic() - state.seconds
        try:
            while True:
                state.seconds = time.monotonic() - started
                if config.max_steps and state.step >= config.max_steps:
                    state.stopped = "max_steps"
                    break
                if state.seconds >= budget:
                    state.stopped = "max_minutes"
                    break
                if config.max_tokens and state.tokens >= config.max_tokens:
                    state.stopped = "max_tokens"
                    break
                state.step += 1
                lr = _learning_rate(config, state)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = data.draw(config.batch_size, generator)
                state.tokens += batch_tokens(batch)
                with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                         enabled=state.precision == "bf16"):
                    terms = objective(student, batch, _progress(config, state))
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                optimizer.step()
                figures = {name: float(value.detach()) for name, value in terms.items()}
                for name, value in figures.items():
                    state.curves.setdefault(name, []).append(value)
                if validation and (state.step % config.validate_every == 0):
                    validated = _validate(objective, student, validation, state)
                    figures.update(validated)
                    value = validated["validation_loss"]
                    if value < state.best_validation:
                        state.best_validation, state.best_step, state.validations_without_gain = value, state.step, 0
                        best = {k: v.detach().clone() for k, v in student.state_dict().items()}
                    else:
                        state.validations_without_gain += 1
                state.seconds = time.monotonic() - started
                reporter.report(state.step, config.max_steps, f"step {state.step}: loss {figures['loss']:.4f}",
                                learning_rate=lr, **figures)
                if config.early_stopping_patience and state.validations_without_gain >= config.early_stopping_patience:
                    state.stopped = "early_stopping"
                    break
                if state.step % config.checkpoint_every == 0:
                    folder = Path(scratch) / f"step{state.step}"
                    folder.mkdir()
                    _save(folder, student, objective, optimizer, generator, state, best, data)
                    reporter.checkpoints.save(folder, state.step)
        finally:
            optimizer.zero_grad(set_to_none=True)
            for p in params:
                p.requires_grad_(False)
    if validation:
        # The last weights count as a candidate too: validated once more unless just validated.
        if not state.validation or state.validation[-1][0] != state.step:
            value = _validate(objective, student, validation, state)["validation_loss"]
            if value < state.best_validation:
                state.best_validation, state.best_step, best = value, state.step, None
        if best is not None and state.best_step != state.step:
            student.load_state_dict(best)
    return state
