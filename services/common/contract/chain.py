"""A pipeline's stages resolved and checked before anything runs: each stage's config
(defaults, per-stage overrides), its input's format and the job's model kind against what its
method accepts, and the engines its methods need against what the optimizer workers report.

The gateway and the in-process API (`modelpress.compress`) both validate through here, from
the methods' descriptions (Describe, or the engines' registries)."""

from __future__ import annotations

from typing import Any

from modelpress.v1 import common_pb2
from services.common.contract.config import ConfigError, check_value, struct_to_dict
from services.common.store.events import to_struct
from services.common.contract.gates import InvalidGate, parse_gate
from services.common.contract.model_kinds import with_article
from services.common.contract.recipes import (EVALUATE, RECIPES, InvalidPipeline, RecipeDef, get_recipe,
                                              pipeline_from_message)
from services.common.runtime.settings import TECHNIQUE_SERVICES

# (technique, method name) -> its description.
Methods = dict[tuple[int, str], common_pb2.MethodDescription]


class InvalidArgument(ValueError):
    """Bad client input; the message starts with the offending field."""


class MethodUnavailable(RuntimeError):
    """A well-formed stage that no worker can run now (its engine is missing everywhere asked):
    FAILED_PRECONDITION, naming the stage, the method and what is missing."""


def _addressed(overrides: dict[str, Any], labels: list[str], declares: list[set[str]]
               ) -> tuple[list[dict[str, tuple[Any, str]]], list[str]]:
    """Each stage's overrides (field -> (value, the key as given)), and the errors: `stage.field`
    addresses one stage by label; a bare `field` must be declared by exactly one stage."""
    per_stage: list[dict[str, tuple[Any, str]]] = [{} for _ in labels]
    errors = []
    for key, value in overrides.items():
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
            per_stage[index][name] = (value, key)
            continue
        owners = [i for i, fields in enumerate(declares) if key in fields]
        if len(owners) > 1:
            errors.append(f"overrides.{key}: stages {', '.join(labels[i] for i in owners)} all take this field; "
                          f"address one: {', '.join(f'{labels[i]}.{key}' for i in owners)}")
        elif owners:
            per_stage[owners[0]][key] = (value, key)
        else:
            allowed = sorted({f for fields in declares for f in fields})
            errors.append(f"overrides.{key}: no stage takes this field; allowed: {', '.join(allowed) or '(none)'}")
    return per_stage, errors


def resolve_stages(recipe: RecipeDef, overrides: dict[str, Any], methods: Methods) -> list[common_pb2.StageSpec]:
    """The recipe's stages with defaults and overrides applied; raises InvalidArgument on any bad
    field, naming the stage (`stages[1] (export): ...`)."""
    described, errors = [], []
    for index, stage in enumerate(recipe.stages):
        where = f"stages[{index}] ({stage.label})"
        if stage.evaluates:
            if index == 0:
                errors.append(f"{where}: an evaluate stage measures what a stage before it made; it cannot be first")
            if stage.method != EVALUATE:
                errors.append(f"{where}: the evaluator's stage method is {EVALUATE!r}, not {stage.method!r}")
            if stage.config:
                errors.append(f"{where}: an evaluate stage takes no config (the job's evaluation spec applies)")
            try:
                parse_gate(stage.gate)
            except InvalidGate as exc:
                errors.append(f"{where}.gate: {exc}")
            described.append({})
            continue
        if stage.gate:
            errors.append(f"{where}.gate: only an evaluate stage carries a gate (it checks that stage's figures)")
        method = methods.get((stage.technique, stage.method))
        if method is None:
            offered = sorted(name for technique, name in methods if technique == stage.technique)
            errors.append(f"{where}: no running {TECHNIQUE_SERVICES.get(stage.technique, 'service')} offers method "
                          f"{stage.method!r}; offered: {', '.join(offered) or '(none reached)'}")
            described.append({})
            continue
        fields = {f.name: f for f in method.fields}
        for name, value in stage.config.items():
            problem = check_value(fields[name], value) if name in fields else \
                f"{name}: not a field of {stage.method}; allowed: {', '.join(fields) or '(none)'}"
            if problem:
                errors.append(f"{where}.config.{problem}")
        described.append(fields)
    if errors:
        raise InvalidArgument("; ".join(errors))
    per_stage, errors = _addressed(overrides, [s.label for s in recipe.stages], [set(d) for d in described])
    stages: list[common_pb2.StageSpec] = []
    for stage, fields, given in zip(recipe.stages, described, per_stage):
        config = dict(stage.config)
        for name, (value, key) in given.items():
            problem = check_value(fields[name], value)
            if problem:
                errors.append(f"overrides.{key.removesuffix(name)}{problem}")
            config[name] = value
        stages.append(common_pb2.StageSpec(technique=stage.technique, method=stage.method, config=to_struct(config),
                                           name=stage.name, gate=stage.gate))
    if errors:
        raise InvalidArgument("; ".join(errors))
    return stages


def label_of(stage: common_pb2.StageSpec) -> str:
    return stage.name or stage.method


def validate_recipe(name: str, overrides_struct, methods: Methods, pipeline: common_pb2.Pipeline | None = None
                    ) -> tuple[RecipeDef, list[common_pb2.StageSpec]]:
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
    try:
        overrides = struct_to_dict(overrides_struct)
    except ConfigError as exc:
        raise InvalidArgument(f"overrides.{exc}") from None
    return recipe, resolve_stages(recipe, overrides, methods)


def format_name(fmt: int) -> str:
    return common_pb2.ArtifactFormat.Name(fmt).removeprefix("ARTIFACT_FORMAT_").lower().replace("_", "-")


def accepted_kinds(described: common_pb2.MethodDescription) -> tuple[str, ...]:
    """The model kinds a described method takes (empty: any)."""
    # Empty from a replica older than the field: it takes any, as such a replica did.
    return tuple(described.model_kinds)


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
