"""A pipeline's stages resolved and checked before anything runs: each stage's config
(defaults, per-stage overrides), and its input's format against what its method accepts.

The gateway and the in-process API (`modelpress.compress`) both validate through here, from
the methods' descriptions (Describe, or the engines' registries)."""

from __future__ import annotations

from typing import Any

from modelpress.v1 import common_pb2
from services.common.configspec import check_value, struct_to_dict
from services.common.events import to_struct
from services.common.pipeline.recipes import RecipeDef, get_recipe

# (technique, method name) -> its description.
Methods = dict[tuple[int, str], common_pb2.MethodDescription]


class InvalidArgument(ValueError):
    """Bad client input; the message starts with the offending field."""


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


def resolve_stages(recipe: RecipeDef, overrides: dict[str, Any],
                   methods: dict[tuple[int, str], common_pb2.MethodDescription]) -> list[common_pb2.StageSpec]:
    """The recipe's stages with defaults and overrides applied; raises InvalidArgument on any bad field."""
    described = []
    for stage in recipe.stages:
        method = methods.get((stage.technique, stage.method))
        if method is None:
            raise InvalidArgument(f"recipe: {recipe.name} needs method {stage.method!r}, which no running service offers")
        described.append({f.name: f for f in method.fields})
    per_stage, errors = _addressed(overrides, [s.label for s in recipe.stages], [set(d) for d in described])
    stages: list[common_pb2.StageSpec] = []
    for stage, fields, given in zip(recipe.stages, described, per_stage):
        config = dict(stage.config)
        for name, (value, key) in given.items():
            problem = check_value(fields[name], value)
            if problem:
                errors.append(f"overrides.{key.removesuffix(name)}{problem}")
            config[name] = value
        stages.append(common_pb2.StageSpec(technique=stage.technique, method=stage.method, config=to_struct(config)))
    if errors:
        raise InvalidArgument("; ".join(errors))
    return stages


def validate_recipe(name: str, overrides_struct, methods) -> tuple[RecipeDef, list[common_pb2.StageSpec]]:
    if not name:
        raise InvalidArgument("recipe: required")
    try:
        recipe = get_recipe(name)
    except KeyError as exc:
        raise InvalidArgument(exc.args[0]) from None
    return recipe, resolve_stages(recipe, struct_to_dict(overrides_struct), methods)


def format_name(fmt: int) -> str:
    return common_pb2.ArtifactFormat.Name(fmt).removeprefix("ARTIFACT_FORMAT_").lower().replace("_", "-")


def check_chain(stages: list[common_pb2.StageSpec], methods: dict[tuple[int, str], common_pb2.MethodDescription],
                model_format: int | None) -> None:
    """Each stage's input (the job's model, then what the stage before writes) against what its
    method accepts, before a job exists. model_format None: not known up front (a path)."""
    entering = {model_format} if model_format else None
    for index, stage in enumerate(stages):
        described = methods[(stage.technique, stage.method)]
        accepts = set(described.accepts)
        if entering is not None and accepts and not entering & accepts:
            source = "the job's model" if index == 0 else f"what stages[{index - 1}] writes"
            raise InvalidArgument(
                f"stages[{index}] ({stage.method}): does not accept {' or '.join(sorted(map(format_name, entering)))}"
                f" ({source}); it takes {', '.join(sorted(map(format_name, accepts)))}")
        if described.produces:
            entering = set(described.produces)
