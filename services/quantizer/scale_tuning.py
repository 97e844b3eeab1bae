"""End-to-end tuning of a quantized model's group scales, its integer codes fixed.

A block walk (QAT, GPTQ, AWQ) makes each block match the float model on its own; what it cannot
see is the error the blocks add up to through the whole model, and the tied embedding/head's
rounding, which is done after the last block. Here every stored code stays as it is and only the
group scales move, trained against the float model's next-token distribution (KL over the whole
vocabulary) on calibration windows: EfficientQAT's end-to-end phase, PEQA's scale-only tuning. With
the codes fixed the model is a smooth function of its scales (no straight-through estimate, and
nothing can round otherwise later), and the checkpoint keeps its layout: the same codes, other
float16 scales. Scales train in the log domain (a learning rate is a relative step whatever a
layer's magnitude); a tied embedding/head has one table of scales for both uses. The scales that
validate best are kept (a share of the calibration windows held back, never the evaluator's text).
Plain PyTorch: the stage that calls it owns data, progress and checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from services.common.datasets.training_data import TrainingData
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams


class GroupScales(nn.Module):
    """weight = (codes − zero point) · stored scale · exp(gain) per group, as a parametrization: the
    codes are buffers, the per-group log gains (0 at the start: the checkpoint as rounded) train."""

    def __init__(self, qw: QuantizedWeight, transposed: bool = False) -> None:
        super().__init__()
        out, inp = qw.codes.shape
        groups = qw.params.scale.shape[1] if qw.params.scale.dim() == 2 else 1
        # The codes stay in their integer type (a quarter of float32's memory), widened each forward.
        self.register_buffer("codes", qw.codes.reshape(out, groups, inp // groups).clone())
        zero_point = qw.params.zero_point
        self.register_buffer("zero_point", None if zero_point is None else zero_point.float().reshape(out, groups, 1))
        self.register_buffer("base", qw.params.scale.to(SCALE_DTYPE).float().reshape(out, groups))
        self.log_gain = nn.Parameter(torch.zeros(out, groups))
        self.transposed = transposed  # transformers' Conv1D keeps its weight [in, out]
        self.stored = qw

    def scale(self) -> torch.Tensor:
        return self.base * self.log_gain.exp()

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        levels = self.codes.float() if self.zero_point is None else self.codes.float() - self.zero_point
        weight = (levels * self.scale()[..., None]).flatten(1)
        return weight.t() if self.transposed else weight

    def tuned(self) -> QuantizedWeight:
        """The stored codes with the tuned scales, rounded to the float16 the checkpoint keeps."""
        scale = self.scale().detach().to(SCALE_DTYPE).float().reshape(self.stored.params.scale.shape)
        return QuantizedWeight(self.stored.scheme, QuantParams(scale, self.stored.params.zero_point),
                               self.stored.codes, self.stored.kind, self.stored.activations, self.stored.input_scale)


def parametrize_quantized(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> dict[str, GroupScales]:
    """Puts every quantized module's codes and trainable scales in place of its float weight; modules
    sharing one weight (an LM head tied to the embedding) share one GroupScales. The model's other
    tensors (norms, biases) stay trainable-off as they are."""
    modules = {name: model.get_submodule(name) for name in quantized}
    for name, module in modules.items():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.numel() != quantized[name].codes.numel():
            raise ValueError(f"{name}: its codes ({tuple(quantized[name].codes.shape)}) do not stand for this model's "
                             f"weight there")
    by_weight: dict[int, GroupScales] = {}
    weights = {name: id(module.weight) for name, module in modules.items()}  # before any is parametrized
    model.requires_grad_(False)
    scales: dict[str, GroupScales] = {}
    for name, module in modules.items():
        shared = by_weight.get(weights[name])
        if shared is None:
            shared = GroupScales(quantized[name], transposed=type(module).__name__ == "Conv1D")
            by_weight[weights[name]] = shared
        parametrize.register_parametrization(module, "weight", shared, unsafe=True)
        # The float weight is never read again: its memory goes (a tied pair frees it once).
        module.parametrizations.weight.original.data = torch.empty(0)
        scales[name] = shared
    return scales


def next_token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher ‖ student) of the next-token distributions."""
    return _kl_sum(teacher_logits.float().log_softmax(-1), student_logits) / teacher_logits.shape[:-1].numel()


def _kl_sum(target: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    return (target.exp() * (target - student_logits.float().log_softmax(-1))).sum()


# Tokens whose whole-vocabulary logits are held at once (SmolLM2: 256 x 49,152 floats, 50 MB).
CHUNK_TOKENS = 256


class NextTokenKL:
    """KL(teacher ‖ student) on a batch, token chunk by token chunk when each model's logits are its
    output embedding applied to its base model's last hidden states: the whole-vocabulary logits of a
    batch and their gradients (gigabytes on a 49k vocabulary) are then never held at once. Whether they
    are is checked once, on the models themselves (a family may scale or cap its logits after the head);
    where they are not, the logits are computed whole."""

    def __init__(self, teacher: nn.Module, student: nn.Module, probe: dict, chunk_tokens: int = CHUNK_TOKENS) -> None:
        self.teacher, self.student, self.chunk_tokens = teacher, student, chunk_tokens
        self.chunked = _logits_are_the_head_of_hidden(teacher, probe) and _logits_are_the_head_of_hidden(student, probe)

    def backward(self, inputs: dict) -> float:
        """The batch's mean KL; its gradient accumulated into the student's trainable tensors."""
        if not self.chunked:
            with torch.no_grad():
                target = self.teacher(**inputs).logits
            with torch.enable_grad():
                loss = next_token_kl(target, self.student(**inputs).logits)
                loss.backward()
            return float(loss)
        with torch.no_grad():
            teacher_hidden = _last_hidden(self.teacher, inputs).flatten(0, -2)
        with torch.enable_grad():
            student_hidden = _last_hidden(self.student, inputs)
            # The head's part in chunks, each backward as soon as computed; the body's once, at the end.
            hidden = student_hidden.detach().requires_grad_(True)
            total = self._chunks(teacher_hidden, hidden.flatten(0, -2), backward=True)
            student_hidden.backward(hidden.grad)
        return total

    @torch.no_grad()
    def value(self, inputs: dict) -> float:
        if not self.chunked:
            return float(next_token_kl(self.teacher(**inputs).logits, self.student(**inputs).logits))
        return self._chunks(_last_hidden(self.teacher, inputs).flatten(0, -2),
                            _last_hidden(self.student, inputs).flatten(0, -2), backward=False)

    def _chunks(self, teacher_hidden: torch.Tensor, student_hidden: torch.Tensor, backward: bool) -> float:
        teacher_head, student_head = self.teacher.get_output_embeddings(), self.student.get_output_embeddings()
        tokens, total = student_hidden.shape[0], 0.0
        for start in range(0, tokens, self.chunk_tokens):
            rows = slice(start, start + self.chunk_tokens)
            with torch.no_grad():
                target = teacher_head(teacher_hidden[rows]).float().log_softmax(-1)
            part = _kl_sum(target, student_head(student_hidden[rows])) / tokens
            if backward:
                part.backward()
            total += float(part.detach())
        return total


def _last_hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    return model.base_model(**inputs).last_hidden_state


@torch.no_grad()
def _logits_are_the_head_of_hidden(model: nn.Module, probe: dict) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(model, "base_model", model) is model:
        return False
    try:
        hidden = _last_hidden(model, probe)
    except (AttributeError, TypeError):
        return False
    logits = model(**probe).logits
    return logits.shape[:-1] == hidden.shape[:-1] and torch.allclose(head(hidden), logits, atol=1e-4, rtol=1e-4)


@dataclass
class TuningState:
    """Where a tuning run stands; saved in its checkpoints."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    best_kl: float = math.inf
    best_step: int = 0
    train_kl: list[list[float]] = field(default_factory=list)  # [tokens, KL] per step
    validation_kl: list[list[float]] = field(default_factory=list)  # [tokens, KL] per validation


@dataclass(frozen=True)
class TuningPlan:
    steps: int
    batch_windows: int
    learning_rate: float
    validate_every: int
    max_seconds: float = math.inf


def _inputs(batch: dict) -> dict:
    # Causal LMs only (next-token distributions): no KV cache is kept between the steps.
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


@torch.no_grad()
def validation_kl(kl: NextTokenKL, data: TrainingData, batch_windows: int) -> float:
    # No parametrize.cached() here: its switch is global to the process, and a worker may train another
    # stage's scales in another thread at the same time (its forward would read weights cached without grad).
    total, count = 0.0, 0
    for batch in data.validation_batches(batch_windows):
        total += kl.value(_inputs(batch)) * len(batch["input_ids"])
        count += len(batch["input_ids"])
    return total / count


def tune_scales(teacher: nn.Module, student: nn.Module, scales: dict[str, GroupScales], data: TrainingData,
                plan: TuningPlan, *, saved: dict | None = None, save: Callable[[dict], None] = lambda _s: None,
                on_step: Callable[..., None] = lambda _state, _message, **_figures: None) -> TuningState:
    """Trains the scales for `plan.steps` steps (fewer when `max_seconds` runs out) and leaves the
    best-validating ones in place. `saved` (what `save` was last given) resumes a run exactly;
    `save` is called after each validation with everything a resume needs; `on_step(state, message,
    **figures)` after each step and validation."""
    unique = list({id(s): s for s in scales.values()}.values())
    gains = [s.log_gain for s in unique]
    optimizer = torch.optim.Adam(gains, lr=plan.learning_rate)
    # Cosine decay to zero over the planned steps: the last steps settle rather than jump.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, plan.steps) / plan.steps)))
    generator = torch.Generator().manual_seed(0)
    state, best = TuningState(), [g.detach().clone() for g in gains]
    if saved is not None:
        for gain, value in zip(gains, saved["gains"]):
            gain.data.copy_(value)
        best = saved["best"]
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        state = TuningState(**saved["state"])
    teacher.eval()
    student.eval()  # dropout off: the student is trained to compute as it will be served
    window = _inputs(data.batch(data.validation_items[:1]))
    kl = NextTokenKL(teacher, student, {**window, "input_ids": window["input_ids"][:, :16],
                                         "attention_mask": window["attention_mask"][:, :16]})
    if state.step == 0:
        state.best_kl = validation_kl(kl, data, plan.batch_windows)
        state.validation_kl.append([0, state.best_kl])
        on_step(state, f"validation KL to the float model {state.best_kl:.4f} as rounded",
                end_to_end_validation_kl=state.best_kl)
    began = time.monotonic() - state.seconds
    while state.step < plan.steps and time.monotonic() - began < plan.max_seconds:
        batch = data.draw(plan.batch_windows, generator)
        inputs = _inputs(batch)
        optimizer.zero_grad(set_to_none=True)
        loss = kl.backward(inputs)
        optimizer.step()
        schedule.step()
        state.step += 1
        state.tokens += int(inputs["input_ids"].numel())
        state.seconds = time.monotonic() - began
        state.train_kl.append([state.tokens, loss])
        on_step(state, f"step {state.step}/{plan.steps}: KL {loss:.4f}", end_to_end_kl=loss)
        last = state.step == plan.steps or time.monotonic() - began >= plan.max_seconds
        if state.step % plan.validate_every == 0 or last:
            validated = validation_kl(kl, data, plan.batch_windows)
            state.validation_kl.append([state.tokens, validated])
            if validated < state.best_kl:
                state.best_kl, state.best_step = validated, state.step
                best = [g.detach().clone() for g in gains]
            on_step(state, f"validation KL {validated:.4f} after {state.tokens} tokens (best {state.best_kl:.4f})",
                    end_to_end_validation_kl=validated)
            save({"gains": [g.detach().clone() for g in gains], "best": best, "optimizer": optimizer.state_dict(),
                  "schedule": schedule.state_dict(), "generator": generator.get_state(), "state": asdict(state)})
    with torch.no_grad():
        for gain, value in zip(gains, best):
            gain.copy_(value)
    return state


def tuned_weights(quantized: dict[str, QuantizedWeight], scales: dict[str, GroupScales]) -> dict[str, QuantizedWeight]:
    """`quantized` with each tuned module's scales; a module sharing a weight shares the result."""
    done: dict[int, QuantizedWeight] = {}
    out = dict(quantized)
    for name, module in scales.items():
        if id(module) not in done:
            done[id(module)] = module.tuned()
        out[name] = done[id(module)]
    return out
