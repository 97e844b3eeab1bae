"""One declaration per method config (a pydantic model) serves validation, defaults and Describe.

Engines declare `class Int8WeightOnlyConfig(MethodConfig)`; servicers publish it through
`describe_method`; the gateway validates a client's overrides against the published
`MethodDescription` alone, so it needs neither the engine code nor torch.
"""

from __future__ import annotations

import math

import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import annotated_types
from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from modelpress.v1 import common_pb2


# Work one stage may ask for past each field's own bound (RESOURCE_EXHAUSTED, naming the budget):
# calibration tokens held at once (their hidden states sit in memory block by block: 2 M tokens of
# a 576-wide model are 4.7 GB in FP32), and tokens trained forward and backward over the whole run.
MAX_CALIBRATION_TOKENS = 2_097_152
MAX_TRAINED_TOKENS = 64_000_000


class WorkBudgetExceeded(RuntimeError):
    """A request within every field's bound asks for more work than one request may (RESOURCE_EXHAUSTED)."""


def over_budget(what: str, formula: str, amount: int, budget: int) -> list[str]:
    """One problem naming `what`, how it was counted and the budget when `amount` is past it."""
    if amount <= budget:
        return []
    return [f"{what}: {formula} = {amount:,} tokens is past the work budget of {budget:,}"]


class MethodConfig(BaseModel):
    """Base of every method config: unknown fields are errors, not silently ignored."""

    # NaN and ±Infinity pass no bound check (every comparison with NaN is false): refused outright.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Fields naming an artifact (a calibration dataset, a teacher model) -> the ArtifactFormat values
    # it may have. The gateway checks them before a job exists; the service fetches each before the
    # engine runs, which reads the local copy through `local_path`.
    artifact_fields: ClassVar[dict[str, tuple[int, ...]]] = {}
    # Artifact fields that, left empty, mean the job's input model (a distiller's teacher): the
    # service binds them to the request's `original`.
    original_default_fields: ClassVar[tuple[str, ...]] = ()
    _local_paths: dict[str, Path] = PrivateAttr(default_factory=dict)

    def work_problems(self) -> list[str]:
        """Each budget (MAX_CALIBRATION_TOKENS, MAX_TRAINED_TOKENS) this config's work goes past;
        configs that calibrate or train extend it (calling super())."""
        return []

    def bind_local(self, field: str, path: Path) -> None:
        self._local_paths[field] = Path(path)

    def local_path(self, field: str) -> Path | None:
        """The fetched copy of the artifact `field` names (or of the model it defaults to); None when
        the field is empty and nothing was bound in its place."""
        if not getattr(self, field) and field not in self._local_paths:
            return None
        if field not in self._local_paths:
            raise ValueError(f"{field}: artifact {getattr(self, field)!r} was not fetched for this run")
        return self._local_paths[field]


class ConfigError(ValueError):
    """A config that does not fit its declaration; the message names the field."""


_TYPE_OF = {bool: common_pb2.FIELD_TYPE_BOOL, int: common_pb2.FIELD_TYPE_INT, float: common_pb2.FIELD_TYPE_FLOAT,
            str: common_pb2.FIELD_TYPE_STRING}


def _describe_field(name: str, info) -> common_pb2.ConfigField:
    annotation = info.annotation
    field = common_pb2.ConfigField(name=name, help=info.description or "")
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        field.choices.extend(str(c) for c in choices)
        annotation = type(choices[0])
    if annotation not in _TYPE_OF:
        raise TypeError(f"config field {name}: unsupported type {annotation!r}")
    field.type = _TYPE_OF[annotation]
    for meta in info.metadata:
        if isinstance(meta, (annotated_types.Ge, annotated_types.Gt)):
            field.minimum = float(getattr(meta, "ge", getattr(meta, "gt", 0)))
        if isinstance(meta, (annotated_types.Le, annotated_types.Lt)):
            field.maximum = float(getattr(meta, "le", getattr(meta, "lt", 0)))
    field.default_value.CopyFrom(json_format.ParseDict(info.default, struct_pb2.Value()))
    return field


def describe_method(technique: int, name: str, summary: str, config_cls: type[MethodConfig],
                    accepts: tuple[int, ...] = (), produces: tuple[int, ...] = (),
                    metrics: tuple = (), model_kinds: tuple[str, ...] = ()) -> common_pb2.MethodDescription:
    """`metrics`: engine_api.ProgressMetric declarations of what its progress events carry;
    `model_kinds`: the model kinds it takes (empty: any)."""
    fields = config_cls.model_fields
    return common_pb2.MethodDescription(
        technique=technique,
        name=name,
        summary=summary,
        fields=[_describe_field(n, info) for n, info in fields.items()],
        accepts=accepts,
        produces=produces,
        inputs=[common_pb2.ArtifactInput(field=f, formats=formats, description=fields[f].description or "")
                for f, formats in config_cls.artifact_fields.items()],
        progress_metrics=[common_pb2.ProgressMetric(name=m.name, kind=m.kind, description=m.description)
                          for m in metrics],
        model_kinds=model_kinds,
    )


def describe_registry(technique: int, methods) -> list[common_pb2.MethodDescription]:
    """Every method of an engine registry (name -> engine_api.Method) as Describe publishes it."""
    return [describe_method(technique, m.name, m.summary, m.config_cls, m.accepts, m.produces, m.metrics,
                            m.model_kinds) for m in methods.values()]


def _validated(config_cls: type[MethodConfig], values: dict[str, Any]) -> tuple[MethodConfig | None, list[str]]:
    """The config and no problems, or None and one entry per problem naming its field. Rules across
    fields (model validators) name their field in their own message."""
    try:
        return config_cls.model_validate(values), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        return None, problems


def config_problems(config_cls: type[MethodConfig], values: dict[str, Any]) -> list[str]:
    """Why `values` do not make a `config_cls`; empty when they do (what CheckConfig answers)."""
    return _validated(config_cls, values)[1]


def parse_config(config_cls: type[MethodConfig], values: dict[str, Any]) -> MethodConfig:
    """Builds the typed config on the service side; errors name each bad field."""
    config, problems = _validated(config_cls, values)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def check_value(field: common_pb2.ConfigField, value: Any) -> str | None:
    """Why `value` does not fit `field`, or None. Mirrors what pydantic enforces in parse_config."""
    ftype = field.type
    if ftype == common_pb2.FIELD_TYPE_BOOL and not isinstance(value, bool):
        return f"{field.name}: expected true or false, got {value!r}"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ftype == common_pb2.FIELD_TYPE_INT and not (is_number and float(value).is_integer()):
        return f"{field.name}: expected an integer, got {value!r}"
    if ftype == common_pb2.FIELD_TYPE_FLOAT and not is_number:
        return f"{field.name}: expected a number, got {value!r}"
    if ftype == common_pb2.FIELD_TYPE_STRING and not isinstance(value, str):
        return f"{field.name}: expected a string, got {value!r}"
    if field.choices and str(value) not in field.choices:
        return f"{field.name}: {value!r} is not allowed; allowed: {', '.join(field.choices)}"
    if field.HasField("minimum") and value < field.minimum:
        return f"{field.name}: {value!r} is below the minimum {field.minimum:g}"
    if field.HasField("maximum") and value > field.maximum:
        return f"{field.name}: {value!r} is above the maximum {field.maximum:g}"
    return None


MAX_STRUCT_DEPTH = 8


def _plain(value: struct_pb2.Value, where: str, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {number} is not a finite number")
        return int(number) if number.is_integer() else number
    if kind in ("struct_value", "list_value") and depth >= MAX_STRUCT_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_STRUCT_DEPTH} levels")
    if kind == "struct_value":
        return {k: _plain(v, f"{where}.{k}", depth + 1) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value.list_value.values)]
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct numbers are doubles; whole numbers come back as ints so int fields validate. NaN,
    ±Infinity and nesting past MAX_STRUCT_DEPTH are ConfigErrors naming the key."""
    return {k: _plain(v, k, 1) for k, v in struct.fields.items()}
