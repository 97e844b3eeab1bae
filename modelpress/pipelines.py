"""Pipelines as files: the one reader and the one writer of pipeline files (YAML or JSON), and the
conversions between their contents and the contract's Pipeline message.

    name: awq-then-onnx
    stages:
      - {name: transform, technique: quantizer, method: awq-transform, config: {group_size: 32}}
      - {name: export, technique: optimizer, method: onnx-int4}
      - {name: check, technique: evaluator, gate: "perplexity_increase<=0.16"}

Here the file's shape is checked (keys, types, technique names): a typo is refused before anything
is sent. What the stages mean (methods, configs, gates, the chain) is the gateway's to check, or
`modelpress.compress`'s in-process. Needs protobuf only; PyYAML for .yaml files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelpress.structs import from_struct, to_struct
from modelpress.v1 import common_pb2

SUFFIXES = (".json", ".yaml", ".yml")
_PIPELINE_KEYS = ("name", "summary", "stages")
_STAGE_KEYS = ("config", "gate", "method", "name", "technique")


class PipelineError(ValueError):
    """A pipeline file or data of the wrong shape; the message names the place (`stages[1].config: ...`)."""


def read_pipeline_file(path: str | Path, default_name: str = "") -> common_pb2.Pipeline:
    """The pipeline a .json, .yaml or .yml file holds; `default_name` names one that names itself not."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PipelineError(f"{path.name}: a pipeline file ends in .json, .yaml or .yml")
    try:
        text = path.read_text()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path.name}: not JSON (line {exc.lineno}: {exc.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PipelineError(f"{path.name}: not YAML ({str(exc).splitlines()[0]})") from None
    message = pipeline_message(data)
    message.name = message.name or default_name
    return message


def pipeline_text(message, fmt: str = "yaml", version: int | None = None) -> str:
    """A Pipeline or Recipe message as a pipeline file holds it (what read_pipeline_file reads back);
    `version`: a stored recipe's, printed for people (reading the file back ignores it)."""
    data = pipeline_data(message)
    if version is not None:
        data["version"] = version
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(data, sort_keys=False, width=100)


def technique_value(name: str) -> int:
    try:
        return common_pb2.Technique.Value(f"TECHNIQUE_{str(name).upper()}")
    except ValueError:
        raise PipelineError(f"technique: {name!r} is not one of {', '.join(technique_names())}") from None


def technique_name(value: int) -> str:
    return common_pb2.Technique.Name(value).removeprefix("TECHNIQUE_").lower()


def technique_names() -> list[str]:
    return [technique_name(v) for v in common_pb2.Technique.values() if v != common_pb2.TECHNIQUE_UNSPECIFIED]


def pipeline_message(data: Any) -> common_pb2.Pipeline:
    """A pipeline file's contents, {name?, summary?, stages: [...]} (or the bare list of stages), as
    a Pipeline message; PipelineError names the first place of the wrong shape."""
    if isinstance(data, list):
        data = {"stages": data}
    if not isinstance(data, dict):
        raise PipelineError("pipeline: expected a mapping with 'stages' (or a list of stages)")
    # `version` is what a stored recipe's file shows (pipeline_text); reading it back ignores it.
    unknown = set(data) - {*_PIPELINE_KEYS, "version"}
    if unknown:
        raise PipelineError(f"pipeline: unknown keys {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(_PIPELINE_KEYS)}")
    name, summary = data.get("name") or "", data.get("summary") or ""
    if not isinstance(name, str) or not isinstance(summary, str):
        raise PipelineError("pipeline: name and summary must be strings")
    stages = data.get("stages")
    if not isinstance(stages, list):
        raise PipelineError("pipeline.stages: a non-empty list of stages is required")
    message = common_pb2.Pipeline(name=name, summary=summary)
    for index, stage in enumerate(stages):
        message.stages.append(_stage_message(stage, f"stages[{index}]"))
    return message


def _stage_message(stage: Any, where: str) -> common_pb2.StageSpec:
    if not isinstance(stage, dict):
        raise PipelineError(f"{where}: expected a mapping with technique and method")
    unknown = set(stage) - set(_STAGE_KEYS)
    if unknown:
        raise PipelineError(f"{where}: unknown keys {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(_STAGE_KEYS)}")
    try:
        technique = technique_value(stage.get("technique", ""))
    except PipelineError as exc:
        raise PipelineError(f"{where}.{exc}") from None
    method, name, gate = stage.get("method") or "", stage.get("name") or "", stage.get("gate") or ""
    if not isinstance(method, str):
        raise PipelineError(f"{where}.method: {method!r} is not a method name (a string from ListMethods)")
    if not isinstance(name, str):
        raise PipelineError(f"{where}.name: {name!r} must be a string without '.' (overrides use NAME.field)")
    if not isinstance(gate, str):
        raise PipelineError(f"{where}.gate: expected a threshold set name or bounds as a string")
    config = stage.get("config") or {}
    if not isinstance(config, dict):
        raise PipelineError(f"{where}.config: expected a mapping of field: value")
    try:
        values = to_struct(config)
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"{where}.config: {exc}") from None
    return common_pb2.StageSpec(technique=technique, method=method, config=values, name=name, gate=gate)


def pipeline_data(message) -> dict[str, Any]:
    """A Pipeline or Recipe message as a pipeline file holds it (whole numbers as ints)."""
    stages = [stage_data(s) for s in message.stages]
    return {"name": message.name, "summary": message.summary, "stages": stages}


def stage_data(stage: common_pb2.StageSpec) -> dict[str, Any]:
    data: dict[str, Any] = {"name": stage.name or stage.method, "technique": technique_name(stage.technique),
                            "method": stage.method}
    if stage.config.fields:
        data["config"] = from_struct(stage.config)
    if stage.gate:
        data["gate"] = stage.gate
    return data
