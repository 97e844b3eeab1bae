"""`modelpress.compress`: a recipe or pipeline run by the engines in this process, stage by stage.

    import modelpress
    run = modelpress.compress("path/to/hf-model", "awq-onnx-int4", "out/",
                              progress=lambda stage, name, p: print(stage, name, p.message))
    print(run.output, run.stages[-1].result.metrics)

What llm-compressor's `oneshot` gives a notebook or a CI job: no NATS, no services. Validation
and chaining are the mesh's own (services/common/pipeline: the same stage resolution, overrides
and format checks); only dispatch differs: each stage calls its engine's method here instead of
over gRPC. Needs the server install (torch and the engines), unlike `modelpress.Client`.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpress.pipelines import load_pipeline_file
from modelpress.v1 import common_pb2

# Engine registries by technique, imported when a pipeline uses them (each pulls its runtimes).
ENGINE_MODULES = {common_pb2.TECHNIQUE_QUANTIZER: "services.quantizer.engine",
                  common_pb2.TECHNIQUE_PRUNER: "services.pruner.engine",
                  common_pb2.TECHNIQUE_DISTILLER: "services.distiller.engine",
                  common_pb2.TECHNIQUE_OPTIMIZER: "services.optimizer.engine"}
LINEAGE_FILE = "modelpress_pipeline.json"


@dataclass
class StageRun:
    index: int
    name: str
    method: str
    config: dict[str, Any]
    folder: Path
    result: Any  # services.common.contract.engine_api.StageResult
    seconds: float


@dataclass
class CompressionRun:
    output: Path
    recipe: str
    stages: list[StageRun] = field(default_factory=list)


def _registries(techniques: set[int]) -> dict[int, Mapping]:
    from services.common.contract.chain import InvalidArgument
    from services.common.runtime.settings import TECHNIQUE_SERVICES

    found = {}
    for technique in techniques:
        if technique == common_pb2.TECHNIQUE_EVALUATOR:
            raise InvalidArgument("evaluate stages and their gates run on the mesh (the evaluator's probes); "
                                  "in-process, leave them out and measure with `modelpress compare`")
        if technique not in ENGINE_MODULES:
            raise InvalidArgument(f"no in-process engine for the {TECHNIQUE_SERVICES.get(technique, technique)}")
        found[technique] = importlib.import_module(ENGINE_MODULES[technique]).METHODS
    return found


def _recipe(recipe_or_pipeline):
    from services.common.contract.chain import InvalidArgument
    from services.common.contract.recipes import RecipeDef, get_recipe, pipeline_from_data, InvalidPipeline

    if isinstance(recipe_or_pipeline, RecipeDef):
        return recipe_or_pipeline
    try:
        if isinstance(recipe_or_pipeline, (str, Path)):
            text = str(recipe_or_pipeline)
            if text.endswith((".json", ".yaml", ".yml")):
                return pipeline_from_data(load_pipeline_file(text), Path(text).stem)
            return get_recipe(text)
        return pipeline_from_data(recipe_or_pipeline)
    except (KeyError, InvalidPipeline) as exc:
        raise InvalidArgument(exc.args[0]) from None


def _model_folder(model: str | Path) -> Path:
    from services.common.contract.chain import InvalidArgument
    from services.common.models.builtin_models import BUILTINS, builtin_folder
    from services.common.runtime.settings import default_cache

    name = str(model).removeprefix("builtin:")
    if name in BUILTINS and not Path(str(model)).exists():
        return builtin_folder(name, default_cache())
    folder = Path(str(model).removeprefix("path:"))
    if not (folder / "config.json").is_file():
        raise InvalidArgument(f"model: {folder} is not a model folder (no config.json) nor a builtin "
                              f"({', '.join(BUILTINS)})")
    return folder


def _format_of(folder: Path) -> int:
    from services.common.models import modelio
    from services.common.models import packed

    if packed.is_packed(folder):
        return common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS
    quant = modelio.read_config(folder).get("quantization_config") or {}
    if quant.get("quant_method") == "compressed-tensors":
        return common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS
    return common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


def _bind_local_artifacts(config, where: str) -> None:
    """In-process, an artifact field (a calibration dataset) names a local folder instead of an id."""
    from services.common.contract.chain import InvalidArgument

    for name in config.artifact_fields:
        value = getattr(config, name)
        if value:
            if not Path(value).is_dir():
                raise InvalidArgument(f"{where}.config.{name}: {value!r} is not a local folder (in-process runs "
                                      f"take a folder where the mesh takes an artifact id)")
            config.bind_local(name, Path(value))


def compress(model: str | Path, recipe_or_pipeline, out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
             progress: Callable[[int, str, Any], None] | None = None, keep_stages: bool = False) -> CompressionRun:
    """Runs a built-in recipe (by name), a pipeline file (.yaml/.json) or pipeline data
    ({stages: [...]}) on `model` (a folder or a builtin name) and writes the result to `out_dir`.
    Every stage is validated before the first runs; errors are InvalidArgument naming the place.
    `progress(stage_index, stage_name, Progress)` is called at each engine progress point.
    Intermediate stage outputs go under out_dir/.stages and are removed unless `keep_stages`."""
    from services.common.contract.config import describe_registry, parse_config, struct_to_dict
    from services.common.contract.engine_api import ProgressReporter
    from services.common.contract.chain import check_chain, label_of, resolve_stages

    recipe = _recipe(recipe_or_pipeline)
    src = _model_folder(model)
    registries = _registries({s.technique for s in recipe.stages})
    described = {(t, d.name): d for t, methods in registries.items() for d in describe_registry(t, methods)}
    stages = resolve_stages(recipe, overrides or {}, described)
    check_chain(stages, described, _format_of(src))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        from services.common.contract.chain import InvalidArgument

        raise InvalidArgument(f"out_dir: {out} is not empty")
    scratch = out / ".stages"
    run = CompressionRun(output=out, recipe=recipe.name)
    configs = []
    for index, spec in enumerate(stages):
        method = registries[spec.technique][spec.method]
        config = parse_config(method.config_cls, struct_to_dict(spec.config))
        _bind_local_artifacts(config, f"stages[{index}] ({label_of(spec)})")
        # As in the mesh: an empty teacher is the model before the first stage, not this stage's input.
        for name in config.original_default_fields:
            if not getattr(config, name):
                config.bind_local(name, src)
        configs.append(config)
    for index, (spec, config) in enumerate(zip(stages, configs)):
        label = label_of(spec)
        dst = out if index == len(stages) - 1 else scratch / f"{index}-{label}"
        dst.mkdir(parents=True, exist_ok=True)
        sink = (lambda p, i=index, n=label: progress(i, n, p)) if progress else (lambda _p: None)
        start = time.perf_counter()
        result = registries[spec.technique][spec.method].run(config, src, dst, ProgressReporter(sink=sink))
        run.stages.append(StageRun(index, label, spec.method, config.model_dump(), dst, result,
                                   round(time.perf_counter() - start, 2)))
        src = dst
    (out / LINEAGE_FILE).write_text(json.dumps({
        "recipe": recipe.name,
        "stages": [{"index": s.index, "name": s.name, "method": s.method, "config": s.config,
                    "format": common_pb2.ArtifactFormat.Name(s.result.format), "seconds": s.seconds,
                    "compression": s.result.compression, "metrics": s.result.metrics, "notes": s.result.notes}
                   for s in run.stages]}, indent=2, default=str))
    if not keep_stages:
        shutil.rmtree(scratch, ignore_errors=True)
    return run
