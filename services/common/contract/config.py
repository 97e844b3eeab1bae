"""One declaration per method config (a pydantic model) serves validation, defaults and Describe.

Engines declare `class Int8WeightOnlyConfig(MethodConfig)`; servicers publish it through
`describe_method`. Values are validated in one place, `validated`: the service's CheckConfig calls
it for the gateway before a job exists, its Run on what it receives, an in-process run on the
recipe's values directly. The gateway itself checks only structure (chain.py): which method, which
fields.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import annotated_types
from google.protobuf import struct_pb2
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from modelpress.structs import StructError, from_struct, to_value
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
    # Strict: a value of another type is refused, never coerced (`1` is no bool, `True` no int, "4"
    # no int); an int is still a float, as JSON and the Struct codec give whole numbers.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
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
    field.default_value.CopyFrom(to_value(info.default))
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


def validated(config_cls: type[MethodConfig], values: struct_pb2.Struct | Mapping[str, Any]
              ) -> tuple[MethodConfig | None, list[str]]:
    """The one place a stage's config values are checked, by pydantic against the method's
    declaration: (the config, no problems), or (None, one problem per bad field, each starting with
    the field: `group_size: Input should be ..., got 100`). A Struct (how a stage travels) is read
    through the codec; what it cannot hold as a config (NaN, nesting) is a problem too. Rules across
    fields (model validators) name their field in their own message."""
    if isinstance(values, struct_pb2.Struct):
        try:
            values = from_struct(values)
        except StructError as exc:
            return None, [str(exc)]
    try:
        return config_cls.model_validate(values), []
    except ValidationError as exc:
        return None, [_problem(config_cls, err) for err in exc.errors()]


def _problem(config_cls: type[MethodConfig], err) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(config_cls.model_fields) or "(none)"
        return f"{where}: not a field of this method; allowed: {allowed}"
    message = err["msg"].removeprefix("Value error, ")
    if not where:  # a rule across fields: its message names the field
        return message
    if err["type"] == "value_error" or isinstance(err["input"], Mapping):  # its message says what it got
        return f"{where}: {message}"
    return f"{where}: {message}, got {_cited(err['input'])}"


def _cited(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}… ({len(text)} characters)"


def parse_config(config_cls: type[MethodConfig], values: struct_pb2.Struct | Mapping[str, Any]
                 ) -> MethodConfig:
    """`validated`, for a caller with nowhere to put problems: ConfigError naming each bad field."""
    config, problems = validated(config_cls, values)
    if problems:
        raise ConfigError("; ".join(problems))
    return config
