"""`modelpress.compress`: a recipe or pipeline run by the engines in this process, stage by stage.

    import modelpress
    run = modelpress.compress("path/to/hf-model", "awq-onnx-int4", "out/",
                              progress=lambda stage, name, p: print(stage, name, p.message))
    print(run.output, run.stages[-1].result.format, run.stages[-1].result.metrics)
    print(run.document()["result"]["headline"]["text"])

What llm-compressor's `oneshot` gives a notebook or a CI job: no NATS, no services. Validation
and chaining are the mesh's own (services/common/contract: the same stage resolution, overrides
and format checks, against the engines' registries; each stage's values validated by its pydantic
config, as its service does, with no protobuf in between); only dispatch differs: each stage calls
its engine's method here instead of over gRPC. Needs the server install (torch and the engines),
unlike `modelpress.Client`.

The run is described as the mesh describes a job: `run.job` is a Job message (stages, formats,
configs, metrics, a result whose before/after figures are unset: nothing is measured here) and
`run.document()` is modelpress.results.job_document of it, the schema `compress --json` prints.
Every failure it can name is a modelpress.errors type, as the client raises: InvalidArgument for a
bad recipe, config or model reference, FailedPrecondition for a model or engine this process
cannot take, and so on.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from modelpress import errors
from modelpress.pipelines import SUFFIXES, PipelineError, read_pipeline_file
from modelpress.results import job_document, result_headline, unevaluated_result
from modelpress.structs import jsonable, to_struct
from modelpress.v1 import common_pb2

LINEAGE_FILE = "modelpress_pipeline.json"
# Why an in-process run's result has no before/after figures.
NOT_EVALUATED = "in-process runs do not evaluate: measure with `modelpress compare` or a job on the mesh"


@dataclass(frozen=True)
class StageOutcome:
    """What a stage's engine returned, under the names and enum names of the one result schema."""

    format: str  # an ArtifactFormat name, e.g. "ARTIFACT_FORMAT_ONNX"
    architecture: str
    compression: dict[str, Any]
    metrics: dict[str, Any]
    notes: list[str]


@dataclass
class StageRun:
    index: int
    name: str
    technique: str  # a Technique name, e.g. "TECHNIQUE_OPTIMIZER"
    method: str
    config: dict[str, Any]
    folder: Path
    result: StageOutcome
    seconds: float


@dataclass
class CompressionRun:
    output: Path
    recipe: str
    stages: list[StageRun] = field(default_factory=list)
    # The run as a Job message, as the mesh records a job.
    job: common_pb2.Job = field(default_factory=common_pb2.Job)

    def document(self) -> dict:
        """modelpress.results.job_document of the run: the schema every surface shares."""
        return job_document(self.job)


def _invalid(message: str) -> errors.ModelpressError:
    return errors.for_status(grpc.StatusCode.INVALID_ARGUMENT, message)


def _status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status the mesh would answer for a failure, so in-process errors are the client's types;
    None for what is not a refusal (a bug stays what it is). The stage runner's table decides, after
    the refusals only the gateway meets (a bad recipe, pipeline or gate)."""
    from services.common.contract.chain import InvalidArgument
    from services.common.contract.gates import InvalidGate
    from services.common.contract.recipes import InvalidPipeline
    from services.common.runtime.stage_runner import status_for

    if isinstance(exc, (InvalidArgument, InvalidPipeline, PipelineError, InvalidGate)):
        return grpc.StatusCode.INVALID_ARGUMENT
    code = status_for(exc)
    return None if code == grpc.StatusCode.INTERNAL else code


def _message_of(exc: BaseException) -> str:
    from services.common.runtime.stage_runner import message_for

    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else message_for(exc)


def _registries(techniques: set[int]) -> dict[int, Mapping]:
    from services.common.contract.techniques import ENGINE_TECHNIQUES, TECHNIQUE_SERVICES, engine_module

    found = {}
    for technique in techniques:
        if technique == common_pb2.TECHNIQUE_EVALUATOR:
            raise _invalid("evaluate stages and their gates run on the mesh (the evaluator's probes); "
                           "in-process, leave them out and measure with `modelpress compare`")
        if technique not in ENGINE_TECHNIQUES:
            raise _invalid(f"no in-process engine for the {TECHNIQUE_SERVICES.get(technique, technique)}")
        found[technique] = importlib.import_module(engine_module(technique)).METHODS
    return found


def _recipe(recipe_or_pipeline):
    from services.common.contract.recipes import (InvalidPipeline, RecipeDef, get_recipe, pipeline_from_data,
                                                  pipeline_from_message)

    if isinstance(recipe_or_pipeline, RecipeDef):
        return recipe_or_pipeline
    try:
        if isinstance(recipe_or_pipeline, common_pb2.Pipeline):
            return pipeline_from_message(recipe_or_pipeline)
        if isinstance(recipe_or_pipeline, (str, Path)):
            text = str(recipe_or_pipeline)
            if text.lower().endswith(SUFFIXES):
                return pipeline_from_message(read_pipeline_file(text, Path(text).stem))
            return get_recipe(text)
        return pipeline_from_data(recipe_or_pipeline)
    except (KeyError, InvalidPipeline, PipelineError) as exc:
        raise _invalid(_message_of(exc)) from None


def _model_folder(model: str | Path) -> Path:
    from services.common.models.builtin_models import BUILTINS, builtin_folder
    from services.common.runtime.settings import default_cache

    name = str(model).removeprefix("builtin:")
    if name in BUILTINS and not Path(str(model)).exists():
        return builtin_folder(name, default_cache())
    folder = Path(str(model).removeprefix("path:"))
    if not (folder / "config.json").is_file():
        raise _invalid(f"model: {folder} is not a model folder (no config.json) nor a builtin "
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


def _kind_of(folder: Path) -> str | None:
    """The model's kind (model_kinds.MODEL_KINDS), or None where its config names no kind we know."""
    from services.common.contract.model_kinds import kind_of
    from services.common.models import modelio

    return kind_of(modelio.read_config(folder))


def _bind_local_artifacts(config, where: str) -> None:
    """In-process, an artifact field (a calibration dataset) names a local folder instead of an id."""
    for name in config.artifact_fields:
        value = getattr(config, name)
        if value:
            if not Path(value).is_dir():
                raise _invalid(f"{where}.config.{name}: {value!r} is not a local folder (in-process runs "
                               f"take a folder where the mesh takes an artifact id)")
            config.bind_local(name, Path(value))


def compress(model: str | Path, recipe_or_pipeline, out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
             progress: Callable[[int, str, Any], None] | None = None, keep_stages: bool = False) -> CompressionRun:
    """Runs a built-in recipe (by name), a pipeline file (.yaml/.json) or pipeline data
    ({stages: [...]}) on `model` (a folder or a builtin name) and writes the result to `out_dir`.
    Every stage is validated before the first runs; errors are modelpress.errors types
    (InvalidArgument naming the place, FailedPrecondition, ...), as the client raises.
    `progress(stage_index, stage_name, Progress)` is called at each engine progress point.
    Intermediate stage outputs go under out_dir/.stages and are removed unless `keep_stages`."""
    try:
        return _compress(model, recipe_or_pipeline, Path(out_dir), overrides or {}, progress, keep_stages)
    except errors.ModelpressError:
        raise
    except Exception as exc:
        code = _status_of(exc)
        if code is None:
            raise
        raise errors.for_status(code, _message_of(exc)) from exc


def _compress(model, recipe_or_pipeline, out: Path, overrides: dict[str, Any],
              progress: Callable[[int, str, Any], None] | None, keep_stages: bool) -> CompressionRun:
    from services.common.contract.engine_api import ProgressReporter
    from services.common.contract.chain import check_chain, label_of, resolve_configs
    from services.common.store.load_guide import write_load_guide

    created = _now()
    recipe = _recipe(recipe_or_pipeline)
    src = _model_folder(model)
    registries = _registries({s.technique for s in recipe.stages})
    # The engines' own registries: the chain is checked against them and each stage's values
    # validated by its pydantic config directly, as the services would (no protobuf in between).
    methods = {(t, name): method for t, registry in registries.items() for name, method in registry.items()}
    resolved, configs = resolve_configs(recipe, overrides, methods)
    stages = resolved.stages
    check_chain(stages, methods, _format_of(src), _kind_of(src))
    if out.exists() and any(out.iterdir()):
        raise _invalid(f"out_dir: {out} is not empty")
    scratch = out / ".stages"
    run = CompressionRun(output=out, recipe=recipe.name)
    run.job.CopyFrom(common_pb2.Job(model=_model_ref(model), recipe=recipe.name,
                                    state=common_pb2.JOB_STATE_RUNNING,
                                    evaluation=common_pb2.EvaluationSpec(skip=True), created_at=created))
    for index, (spec, config) in enumerate(zip(stages, configs)):
        _bind_local_artifacts(config, f"stages[{index}] ({label_of(spec)})")
        # As in the mesh: an empty teacher is the model before the first stage, not this stage's input.
        for name in config.original_default_fields:
            if not getattr(config, name):
                config.bind_local(name, src)
    run.job.started_at.GetCurrentTime()
    for index, (spec, config) in enumerate(zip(stages, configs)):
        label = label_of(spec)
        dst = out if index == len(stages) - 1 else scratch / f"{index}-{label}"
        dst.mkdir(parents=True, exist_ok=True)
        sink = (lambda p, i=index, n=label: progress(i, n, p)) if progress else (lambda _p: None)
        started, start = _now(), time.perf_counter()
        result = registries[spec.technique][spec.method].run(config, src, dst, ProgressReporter(sink=sink))
        write_load_guide(dst, result.format)
        outcome = StageOutcome(format=common_pb2.ArtifactFormat.Name(result.format),
                               architecture=result.architecture, compression=_jsonable(result.compression),
                               metrics=_jsonable(result.metrics), notes=list(result.notes))
        run.stages.append(StageRun(index, label, common_pb2.Technique.Name(spec.technique), spec.method,
                                   config.model_dump(), dst, outcome, round(time.perf_counter() - start, 2)))
        run.job.stages.append(_stage_status(index, spec, dst, result.format, outcome, started))
        src = dst
    _finish(run.job)
    (out / LINEAGE_FILE).write_text(json.dumps({
        "recipe": recipe.name,
        "stages": [{"index": s.index, "name": s.name, "technique": s.technique, "method": s.method,
                    "config": s.config, "format": s.result.format, "seconds": s.seconds,
                    "compression": s.result.compression, "metrics": s.result.metrics, "notes": s.result.notes}
                   for s in run.stages]}, indent=2, default=str))
    if not keep_stages:
        shutil.rmtree(scratch, ignore_errors=True)
    return run


# ---- the run as a Job record -------------------------------------------------------------------

WORKER = f"in-process:{socket.gethostname()}:{os.getpid()}"


def _now():
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Engine figures as a Struct keeps them (what the mesh records): modelpress.structs.jsonable."""
    return jsonable(values)


def _model_ref(model: str | Path) -> common_pb2.ModelRef:
    """The model as the mesh names it (the same rule as _model_folder)."""
    from services.common.models.builtin_models import BUILTINS

    name = str(model).removeprefix("builtin:")
    if name in BUILTINS and not Path(str(model)).exists():
        return common_pb2.ModelRef(builtin=name)
    return common_pb2.ModelRef(path=str(Path(str(model).removeprefix("path:")).resolve()))


def _folder_ref(folder: Path, fmt: int) -> common_pb2.ArtifactRef:
    """A local folder where the mesh has a stored artifact: its format and its bytes on disk."""
    from services.common.store.packaging import folder_size_bytes

    return common_pb2.ArtifactRef(format=fmt, size_bytes=folder_size_bytes(folder))


def _stage_status(index: int, spec: common_pb2.StageSpec, folder: Path, fmt: int, outcome: StageOutcome,
                  started) -> common_pb2.StageStatus:
    status = common_pb2.StageStatus(index=index, spec=spec, state=common_pb2.JOB_STATE_SUCCEEDED,
                                    output=_folder_ref(folder, fmt), metrics=to_struct(outcome.metrics),
                                    worker=WORKER, notes=outcome.notes, started_at=started)
    status.finished_at.GetCurrentTime()
    return status


def _finish(job: common_pb2.Job) -> None:
    job.state = common_pb2.JOB_STATE_SUCCEEDED
    job.progress = 1.0
    job.output.CopyFrom(job.stages[-1].output)
    job.result.CopyFrom(unevaluated_result(job.job_id, "", NOT_EVALUATED,
                                           compressed_size_bytes=job.output.size_bytes))
    job.result.headline.CopyFrom(result_headline(job.recipe, job.result))
    job.finished_at.GetCurrentTime()
