"""Up-front validation of what clients send; every error names the field and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import grpc

from modelpress.v1 import common_pb2
from services.common.models import builtin_models
from services.common.runtime.cite import shown
from services.common.contract.config import WorkBudgetExceeded
from services.common.store.model_source import check_allowed_path
from services.common.contract.chain import InvalidArgument, check_engines

# Bounds of EvaluationSpec fields; zero means "use the default".
EVALUATION_DEFAULTS = {"batch_size": 1, "sequence_length": 128, "latency_iterations": 10, "quality_windows": 8,
                       "threads": 2, "decode_tokens": 16, "quality_sentences": 200}
EVALUATION_BOUNDS = {"batch_size": (1, 256), "sequence_length": (1, 8192), "latency_iterations": (1, 1000),
                     "quality_windows": (0, 32), "threads": (1, 256), "decode_tokens": (0, 512),
                     "quality_sentences": (0, 222)}
GRID_BOUNDS = {"batch_sizes": (1, 256), "sequence_lengths": (1, 8192)}
MAX_GRID_VALUES = 8
# Work bounds of one measurement, past the per-field bounds: tokens in one forward pass (a causal
# LM holds logits for each: 16384 x SmolLM2's 49152-word vocabulary is 3.2 GB in FP32), and tokens
# timed over the whole grid and every iteration (about hours of one 2-core CPU for SmolLM2).
MAX_TOKENS_PER_PASS = 16_384
MAX_TIMED_TOKENS = 64_000_000


def check_measurement_work(batch_sizes: list[int], sequence_lengths: list[int], iterations: int, field: str) -> None:
    """WorkBudgetExceeded naming the budget when one shape, or the grid times its iterations, is too much."""
    prefix = f"{field}." if field else ""
    for batch in batch_sizes:
        for length in sequence_lengths:
            if batch * length > MAX_TOKENS_PER_PASS:
                raise WorkBudgetExceeded(
                    f"{prefix}batch_size x sequence_length: {batch} x {length} = {batch * length} tokens in one pass "
                    f"is past the work budget of {MAX_TOKENS_PER_PASS} tokens per pass")
    timed = sum(batch * length for batch in batch_sizes for length in sequence_lengths) * iterations
    if timed > MAX_TIMED_TOKENS:
        raise WorkBudgetExceeded(f"{prefix}grid x iterations: {timed} tokens timed is past the work budget of "
                                 f"{MAX_TIMED_TOKENS} tokens per measurement")


# Ids the mesh hands out ("j-…", "a-…", "c-…", "ckpt-…"): letters, digits, '-' and '_'. Anything else
# (a NATS wildcard, a dot, a NUL, a megabyte) is refused before it reaches a KV key or a subject.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def checked_id(value: str, field: str, kind: str) -> str:
    """`value` stripped, or InvalidArgument naming `field` when it is empty or not shaped like an id."""
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field}: required")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(f"{field}: {shown(value)} is not {'an' if kind[:1] in 'aeiou' else 'a'} {kind} id (letters, digits, '-' and '_', "
                              f"at most 128 characters)")
    return value


def checked_job_state(state: int) -> int:
    if state not in common_pb2.JobState.values():
        raise InvalidArgument(f"state: {state} is not a JobState ({', '.join(common_pb2.JobState.keys())})")
    return state


def check_model_ref(model: common_pb2.ModelRef, field: str = "model") -> None:
    """Checks the shape of a model reference (existence of artifacts is checked by the caller)."""
    source = model.WhichOneof("source")
    if source is None:
        raise InvalidArgument(f"{field}: set one of artifact_id, builtin or path")
    if source == "builtin":
        if model.builtin not in builtin_models.BUILTINS:
            raise InvalidArgument(
                f"{field}.builtin: unknown builtin model {model.builtin!r}; allowed: {', '.join(builtin_models.BUILTINS)}")
    elif source == "artifact_id":
        checked_id(model.artifact_id, f"{field}.artifact_id", "artifact")
    elif source == "path":
        try:
            check_allowed_path(model.path)
        except (PermissionError, FileNotFoundError) as exc:
            raise InvalidArgument(str(exc)) from None


def resolve_evaluation(spec: common_pb2.EvaluationSpec) -> common_pb2.EvaluationSpec:
    resolved = common_pb2.EvaluationSpec(skip=spec.skip)
    for name, default in EVALUATION_DEFAULTS.items():
        value = getattr(spec, name)
        lo, hi = EVALUATION_BOUNDS[name]
        if value and not lo <= value <= hi:
            raise InvalidArgument(f"evaluation.{name}: {value} is outside [{lo}, {hi}]")
        setattr(resolved, name, value or default)
    for name, (lo, hi) in GRID_BOUNDS.items():
        values = list(getattr(spec, name))
        if len(values) > MAX_GRID_VALUES:
            raise InvalidArgument(f"evaluation.{name}: at most {MAX_GRID_VALUES} values, got {len(values)}")
        bad = [v for v in values if not lo <= v <= hi]
        if bad:
            raise InvalidArgument(f"evaluation.{name}: {bad[0]} is outside [{lo}, {hi}]")
        getattr(resolved, name).extend(values)
    if spec.HasField("reference"):
        check_model_ref(spec.reference, "evaluation.reference")
        resolved.reference.CopyFrom(spec.reference)
    if not resolved.skip:
        check_measurement_work([resolved.batch_size, *resolved.batch_sizes],
                               [resolved.sequence_length, *resolved.sequence_lengths],
                               resolved.latency_iterations, "evaluation")
    return resolved


async def check_engines_available(stages: list[common_pb2.StageSpec],
                                  list_engines: Callable[[], Awaitable], calls: int) -> None:
    """MethodUnavailable (FAILED_PRECONDITION) when an optimizer stage's engine is unavailable on every
    optimizer worker `calls` ListEngines answers reach (round robin: one replica per call)."""
    if not any(s.technique == common_pb2.TECHNIQUE_OPTIMIZER for s in stages):
        return
    try:
        answers = [await list_engines() for _ in range(calls)]
    except grpc.aio.AioRpcError:
        return  # no report to go by (a replica without ListEngines): the stage itself says what is missing
    check_engines(stages, [engine for answer in answers for engine in answer.engines])
