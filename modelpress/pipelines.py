"""Pipelines as files: a YAML or JSON list of stages, turned into the contract's Pipeline.

    name: awq-then-onnx
    stages:
      - {name: transform, technique: quantizer, method: awq-transform, config: {group_size: 32}}
      - {name: export, technique: optimizer, method: onnx-int4}
      - {name: check, technique: evaluator, gate: "perplexity_increase<=0.16"}

Only the shape is read here; the gateway validates every stage, config and gate (and
`modelpress.compress` does the same in-process). Needs protobuf only; PyYAML for .yaml files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2

from modelpress.v1 import common_pb2


def load_pipeline_file(path: str | Path) -> Any:
    """The contents of a .json, .yaml or .yml pipeline file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    if path.suffix.lower() == ".json":
        return json.loads(text)
    raise ValueError(f"{path.name}: a pipeline file ends in .json, .yaml or .yml")


def technique_value(name: str) -> int:
    try:
        return common_pb2.Technique.Value(f"TECHNIQUE_{str(name).upper()}")
    except ValueError:
        known = [n.removeprefix("TECHNIQUE_").lower() for n in common_pb2.Technique.keys()
                 if n != "TECHNIQUE_UNSPECIFIED"]
        raise ValueError(f"technique: {name!r} is not one of {', '.join(known)}") from None


def technique_name(value: int) -> str:
    return common_pb2.Technique.Name(value).removeprefix("TECHNIQUE_").lower()


def pipeline_message(data: Any) -> common_pb2.Pipeline:
    """{name?, summary?, stages: [...]} (or the bare list of stages) as a Pipeline message."""
    if isinstance(data, list):
        data = {"stages": data}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ValueError("pipeline: expected a mapping with a 'stages' list (or a list of stages)")
    message = common_pb2.Pipeline(name=str(data.get("name") or ""), summary=str(data.get("summary") or ""))
    for i, stage in enumerate(data["stages"]):
        if not isinstance(stage, dict):
            raise ValueError(f"stages[{i}]: expected a mapping with technique and method")
        try:
            technique = technique_value(stage.get("technique", ""))
        except ValueError as exc:
            raise ValueError(f"stages[{i}].{exc}") from None
        config = struct_pb2.Struct()
        config.update(stage.get("config") or {})
        message.stages.add(technique=technique, method=str(stage.get("method") or ""), config=config,
                           name=str(stage.get("name") or ""), gate=str(stage.get("gate") or ""))
    return message


def pipeline_data(message) -> dict[str, Any]:
    """A Pipeline or Recipe message as a pipeline file holds it."""
    stages = []
    for s in message.stages:
        stage: dict[str, Any] = {"name": s.name or s.method, "technique": technique_name(s.technique),
                                 "method": s.method}
        config = json_format.MessageToDict(s.config)
        if config:
            stage["config"] = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in config.items()}
        if s.gate:
            stage["gate"] = s.gate
        stages.append(stage)
    return {"name": message.name, "summary": message.summary, "stages": stages}
