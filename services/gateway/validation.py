"""Up-front validation of what clients send; every error names the field and what is allowed."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from modelpress.v1 import common_pb2
from services.common.datasets import corpus
from services.common.models import builtin_models
from services.common.runtime.cite import shown
from services.common.contract.config import WorkBudgetExceeded
from services.common.store.path_models import MAX_PATH_CHARACTERS, PathNotAllowed, locate
from services.common.contract.chain import InvalidArgument, check_engines
from services.common.contract.recipes import MAX_STAGES

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


# Every string a request carries, by field name wherever it sits (a job's `name`, a pipeline's
# `pipeline.stages[2].gate`), in characters: what the gateway stores stays far from NATS's 1 MB
# payload and a listing's page from the 16 MB message limit, and no error quotes a megabyte back.
# A field not named here gets DEFAULT_TEXT_LIMIT.
TEXT_LIMITS = {
    "name": 256,  # a job's, a pipeline's, a stage's, a recipe's NAME@VERSION
    "recipe": 256,
    "summary": 2048,  # a pipeline's (a stored recipe's) description
    "gate": 1024,
    "method": 128,
    "tag": 128,
    "path": MAX_PATH_CHARACTERS,  # a model folder (the operator's roots)
    "job_id": 128, "artifact_id": 128, "comparison_id": 128,  # checked_id says what an id looks like
    "tenant": 64,
}
DEFAULT_TEXT_LIMIT = 1024
# google.protobuf.Struct fields (overrides, options, a stage's config): serialized bytes.
STRUCT_LIMIT_BYTES = 16 * 1024
# Repeated fields by name: how many entries (the grids and compared models have their own bounds).
REPEATED_LIMITS = {"stages": MAX_STAGES, "candidate_recipes": 32, "models": 16}
DEFAULT_REPEATED_LIMIT = 64


def check_request_text(message: Message, prefix: str = "") -> None:
    """InvalidArgument naming the field and its limit for the first string, Struct or list of the
    request past TEXT_LIMITS, STRUCT_LIMIT_BYTES or REPEATED_LIMITS (one table for every RPC)."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if not field.is_repeated:
            _check_value(field, value, path)
            continue
        limit = REPEATED_LIMITS.get(field.name, DEFAULT_REPEATED_LIMIT)
        if len(value) > limit:
            raise InvalidArgument(f"{path}: at most {limit} entries, got {len(value)}")
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for key in value:
                _check_value(key_field, key, f"{path} key")
                _check_value(value_field, value[key], f"{path}[{key!r}]")
        else:
            for index, item in enumerate(value):
                _check_value(field, item, f"{path}[{index}]")


def _check_value(field: FieldDescriptor, value, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        limit = TEXT_LIMITS.get(field.name, DEFAULT_TEXT_LIMIT)
        if len(value) > limit:
            raise InvalidArgument(f"{path}: at most {limit} characters, got {len(value)}")
    elif isinstance(value, struct_pb2.Struct):
        if (size := value.ByteSize()) > STRUCT_LIMIT_BYTES:
            raise InvalidArgument(f"{path}: at most {STRUCT_LIMIT_BYTES} bytes, got {size}")
    elif isinstance(value, Message):
        check_request_text(value, f"{path}.")


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
        try:  # by its name alone: what lies in the folder is checked off the event loop (_check_model)
            locate(model.path, field_name=f"{field}.path")
        except PathNotAllowed as exc:
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
    if spec.quality_split not in ("", *corpus.SPLITS):
        raise InvalidArgument(f"evaluation.quality_split: {spec.quality_split!r} is not one of {', '.join(corpus.SPLITS)}")
    resolved.quality_split = spec.quality_split or "heldout"
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
