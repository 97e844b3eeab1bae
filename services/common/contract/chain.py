"""A pipeline's stages resolved and checked before anything runs: each stage's method and the
fields its config and the overrides address, its input's format and the job's model kind against
what its method accepts, and the engines its methods need against what the optimizer workers report.

Only structure is checked here. Values are validated once, by pydantic (config.validated): on the
service, whose CheckConfig the gateway asks before a job exists, or directly for an in-process run
(`resolve_configs`); `Resolved.refuse` words each problem where the user wrote the value.

The gateway checks against the services' descriptions (Describe's MethodDescription), the
in-process API against the engines' registries (engine_api.Method): both carry `accepts`,
`produces` and `model_kinds`, and `declared_fields` reads the fields of either."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import struct_pb2

from modelpress.structs import to_struct
from modelpress.v1 import common_pb2
from services.common.contract.config import MethodConfig, validated
from services.common.contract.gates import Gate, InvalidGate, gate_checks, parse_gate
from services.common.contract.model_kinds import with_article
from services.common.contract.recipes import (EVALUATE, RECIPES, InvalidPipeline, RecipeDef, get_recipe,
                                              pipeline_from_message)
from services.common.contract.techniques import TECHNIQUE_SERVICES


class DeclaredMethod(Protocol):
    """What the chain reads of a method, which a MethodDescription (Describe) and an engine_api.Method
    (a registry entry) both carry; `declared_fields` reads the fields of either."""

    accepts: Sequence[int]
    produces: Sequence[int]
    model_kinds: Sequence[str]


# (technique, method name) -> its description or registry entry.
Methods = Mapping[tuple[int, str], DeclaredMethod]


class InvalidArgument(ValueError):
    """Bad client input; the message starts with the offending field."""


class MethodUnavailable(RuntimeError):
    """A well-formed stage that no worker can run now (its engine is missing everywhere asked):
    FAILED_PRECONDITION, naming the stage, the method and what is missing."""


def declared_fields(method: DeclaredMethod) -> tuple[str, ...]:
    """The config fields a method declares: a registry entry's config class, or a description's fields."""
    config_cls = getattr(method, "config_cls", None)
    if config_cls is not None:
        return tuple(config_cls.model_fields)
    return tuple(f.name for f in method.fields)


@dataclass(frozen=True)
class Resolved:
    """A recipe's stages as a job runs them, and where each value came from."""

    recipe: RecipeDef
    stages: list[common_pb2.StageSpec]
    # Per stage: field -> the override key that set it, as given ("quantize.group_size" or "group_size").
    overridden: list[dict[str, str]]
    # Per stage: the fields its method declares (none for an evaluate stage).
    fields: list[tuple[str, ...]]

    def placed(self, index: int, problem: str) -> str:
        """A problem of stage `index`'s config (`group_size: ...`, as config.validated words it) where
        the user wrote the value: `overrides.KEY: ...` for a field an override set, else
        `stages[i] (label).config.FIELD: ...`; a rule across fields that names no field of the
        method: `stages[i] (label).config: ...`."""
        where = f"stages[{index}] ({label_of(self.stages[index])}).config"
        field, sep, rest = problem.partition(": ")
        name = field.split(".")[0].split("[")[0]
        if not sep or name not in self.fields[index]:
            return f"{where}: {problem}"
        if name in self.overridden[index]:
            return f"overrides.{self.overridden[index][name]}{field[len(name):]}: {rest}"
        return f"{where}.{problem}"

    def refuse(self, problems: Mapping[int, Sequence[str]]) -> None:
        """InvalidArgument listing every problem (stage index -> its config's problems), each placed."""
        errors = [self.placed(index, problem) for index in sorted(problems) for problem in problems[index]]
        if errors:
            raise InvalidArgument("; ".join(errors))


def _check_stages(recipe: RecipeDef, methods: Methods) -> tuple[list[tuple[str, ...]], list[Gate | None]]:
    """Each stage's declared fields and parsed gate; InvalidArgument naming every stage whose method
    is not offered, whose config names a field its method does not declare, or whose gate is wrong."""
    declares: list[tuple[str, ...]] = []
    gates: list[Gate | None] = []
    errors = []
    for index, stage in enumerate(recipe.stages):
        where = f"stages[{index}] ({stage.label})"
        declares.append(())
        gates.append(None)
        if stage.evaluates:
            if index == 0:
                errors.append(f"{where}: an evaluate stage measures what a stage before it made; it cannot be first")
            if stage.method != EVALUATE:
                errors.append(f"{where}: the evaluator's stage method is {EVALUATE!r}, not {stage.method!r}")
            if stage.config:
                errors.append(f"{where}: an evaluate stage takes no config (the job's evaluation spec applies)")
            try:
                gates[index] = parse_gate(stage.gate)
            except InvalidGate as exc:
                errors.append(f"{where}.gate: {exc}")
            continue
        if stage.gate:
            errors.append(f"{where}.gate: only an evaluate stage carries a gate (it checks that stage's figures)")
        method = methods.get((stage.technique, stage.method))
        if method is None:
            offered = sorted(name for technique, name in methods if technique == stage.technique)
            errors.append(f"{where}: no running {TECHNIQUE_SERVICES.get(stage.technique, 'service')} offers method "
                          f"{stage.method!r}; offered: {', '.join(offered) or '(none reached)'}")
            continue
        declares[index] = fields = declared_fields(method)
        allowed = ", ".join(fields) or "(none)"
        errors += [f"{where}.config.{name}: not a field of {stage.method}; allowed: {allowed}"
                   for name in stage.config if name not in fields]
    if errors:
        raise InvalidArgument("; ".join(errors))
    return declares, gates


def _addressed(keys: Iterable[str], labels: list[str], declares: list[tuple[str, ...]]
               ) -> list[dict[str, str]]:
    """Each stage's overridden fields (field -> the key as given); InvalidArgument naming every key
    that addresses nothing: `stage.field` addresses one stage by label; a bare `field` must be
    declared by exactly one stage."""
    per_stage: list[dict[str, str]] = [{} for _ in labels]
    errors = []
    for key in keys:
        label, dot, name = key.partition(".")
        if dot:
            if label not in labels:
                errors.append(f"overrides.{key}: no stage named {label!r}; stages: {', '.join(labels)}")
                continue
            index = labels.index(label)
            if name not in declares[index]:
                errors.append(f"overrides.{key}: stage {label!r} takes no field {name!r}; allowed: "
                              f"{', '.join(sorted(declares[index])) or '(none)'}")
                continue
            per_stage[index][name] = key
            continue
        owners = [i for i, fields in enumerate(declares) if key in fields]
        if len(owners) > 1:
            errors.append(f"overrides.{key}: stages {', '.join(labels[i] for i in owners)} all take this field; "
                          f"address one: {', '.join(f'{labels[i]}.{key}' for i in owners)}")
        elif owners:
            per_stage[owners[0]][key] = key
        else:
            allowed = sorted({f for fields in declares for f in fields})
            errors.append(f"overrides.{key}: no stage takes this field; allowed: {', '.join(allowed) or '(none)'}")
    if errors:
        raise InvalidArgument("; ".join(errors))
    return per_stage


def resolve_stages(recipe: RecipeDef, overrides: struct_pb2.Struct, methods: Methods) -> Resolved:
    """The recipe's stages with the overrides merged into each stage's config (the override's Value
    as sent: no other form in between) and each gate parsed once (StageSpec.gate_checks); raises
    InvalidArgument naming the stage (`stages[1] (export): ...`) or the override at fault. Values
    are not checked here: see config.validated and Resolved.refuse."""
    declares, gates = _check_stages(recipe, methods)
    overridden = _addressed(overrides.fields.keys(), [s.label for s in recipe.stages], declares)
    stages = []
    for stage, given, gate in zip(recipe.stages, overridden, gates):
        spec = stage.message()
        for field, key in given.items():
            spec.config.fields[field].CopyFrom(overrides.fields[key])
        spec.gate_checks.extend(gate_checks(gate))
        stages.append(spec)
    return Resolved(recipe, stages, overridden, declares)


def resolve_configs(recipe: RecipeDef, overrides: Mapping[str, Any], methods: Methods
                    ) -> tuple[Resolved, list[MethodConfig | None]]:
    """In-process: the same structure checks as resolve_stages against the engines' registries,
    then each stage's values (the recipe's, the overrides') validated by pydantic directly into its
    typed config (None for an evaluate stage); InvalidArgument placing each bad value as the gateway
    does. The StageSpecs are the run's record of what was asked."""
    declares, gates = _check_stages(recipe, methods)
    overridden = _addressed(overrides, [s.label for s in recipe.stages], declares)
    configs: list[MethodConfig | None] = []
    problems: dict[int, list[str]] = {}
    stages = []
    for index, (stage, given, gate) in enumerate(zip(recipe.stages, overridden, gates)):
        values = {**stage.config, **{field: overrides[key] for field, key in given.items()}}
        config = None
        if not stage.evaluates:
            config, problems[index] = validated(methods[(stage.technique, stage.method)].config_cls, values)
        configs.append(config)
        spec = stage.message()
        if config is not None:
            spec.config.CopyFrom(to_struct(values))
        spec.gate_checks.extend(gate_checks(gate))
        stages.append(spec)
    resolved = Resolved(recipe, stages, overridden, declares)
    resolved.refuse(problems)
    return resolved, configs


def label_of(stage: common_pb2.StageSpec) -> str:
    return stage.name or stage.method


def validate_recipe(name: str, overrides: struct_pb2.Struct, methods: Methods,
                    pipeline: common_pb2.Pipeline | None = None) -> Resolved:
    """A request's recipe (by name) or explicit pipeline, resolved; exactly one must be given."""
    given = pipeline is not None and len(pipeline.stages) > 0
    if name and given:
        raise InvalidArgument("recipe, pipeline: give a recipe name or a pipeline, not both")
    if given:
        try:
            recipe = pipeline_from_message(pipeline)
        except InvalidPipeline as exc:
            raise InvalidArgument(str(exc)) from None
        if recipe.name in RECIPES:
            raise InvalidArgument(f"pipeline.name: {recipe.name!r} is a built-in recipe's name; name the pipeline "
                                  f"otherwise (its outcomes must not pass for the built-in's)")
    elif not name:
        raise InvalidArgument("recipe: required (or give a pipeline)")
    else:
        try:
            recipe = get_recipe(name)
        except KeyError as exc:
            raise InvalidArgument(exc.args[0]) from None
    return resolve_stages(recipe, overrides, methods)


def format_name(fmt: int) -> str:
    return common_pb2.ArtifactFormat.Name(fmt).removeprefix("ARTIFACT_FORMAT_").lower().replace("_", "-")


def accepted_kinds(described: common_pb2.MethodDescription) -> tuple[str, ...]:
    """The model kinds a described method takes (empty: any)."""
    # Empty from a replica older than the field: it takes any, as such a replica did.
    return tuple(described.model_kinds)


def model_kinds_of(stages: list[common_pb2.StageSpec], methods: Methods) -> tuple[str, ...] | None:
    """The model kinds every engine stage's method takes (() : any kind); None when no kind fits them all
    or a stage's method is not described."""
    kinds: set[str] | None = None
    for stage in stages:
        if stage.technique == common_pb2.TECHNIQUE_EVALUATOR:
            continue
        described = methods.get((stage.technique, stage.method))
        if described is None:
            return None
        taken = set(accepted_kinds(described))
        if taken:
            kinds = taken if kinds is None else kinds & taken
            if not kinds:
                return None
    return tuple(sorted(kinds)) if kinds else ()


def check_chain(stages: list[common_pb2.StageSpec], methods: Methods, model_format: int | None,
                model_kind: str | None = None) -> None:
    """Each stage's input (the job's model, then what the stage before writes) against what its
    method accepts, before a job exists. model_format None: not known up front (a path). An
    evaluate stage passes its input on. model_kind (model_kinds.MODEL_KINDS; None: not known up
    front): every stage works on the job's model kind, which no stage changes."""
    entering = {model_format} if model_format else None
    for index, stage in enumerate(stages):
        if stage.technique == common_pb2.TECHNIQUE_EVALUATOR:
            continue
        described = methods[(stage.technique, stage.method)]
        kinds = accepted_kinds(described)
        if model_kind and kinds and model_kind not in kinds:
            raise InvalidArgument(
                f"stages[{index}] ({label_of(stage)}): {stage.method} takes {' or '.join(kinds)} models; the job's "
                f"model is {with_article(model_kind)}")
        accepts = set(described.accepts)
        if entering is not None and accepts and not entering & accepts:
            source = "the job's model" if index == 0 else f"what stages[{index - 1}] writes"
            raise InvalidArgument(
                f"stages[{index}] ({label_of(stage)}): {stage.method} does not accept "
                f"{' or '.join(sorted(map(format_name, entering)))} ({source}); it takes "
                f"{', '.join(sorted(map(format_name, accepts)))}")
        if described.produces:
            entering = set(described.produces)


def check_engines(stages: list[common_pb2.StageSpec], engines: list[common_pb2.EngineInfo]) -> None:
    """MethodUnavailable for the first optimizer stage whose method belongs to an engine that every
    report in `engines` (ListEngines answers of one or more optimizer workers) says is unavailable.
    An engine's methods are those of the one-stage recipes it lists per precision."""
    available: dict[str, bool] = {}
    why: dict[str, str] = {}
    engine_of: dict[str, str] = {}
    for engine in engines:
        available[engine.name] = available.get(engine.name, False) or engine.available
        why.setdefault(engine.name, engine.reason)
        for recipe in engine.methods.values():
            for step in RECIPES[recipe].stages if recipe in RECIPES else ():
                if step.technique == common_pb2.TECHNIQUE_OPTIMIZER:
                    engine_of[step.method] = engine.name
    for index, stage in enumerate(stages):
        engine = engine_of.get(stage.method) if stage.technique == common_pb2.TECHNIQUE_OPTIMIZER else None
        if engine is not None and not available[engine]:
            raise MethodUnavailable(f"stages[{index}] ({label_of(stage)}): {stage.method} needs the {engine} engine, "
                                    f"which no optimizer worker can run: {why[engine]}")
