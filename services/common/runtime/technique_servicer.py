"""The TechniqueService (proto/modelpress/v1/technique.proto) for any technique: Describe and CheckConfig
from the technique's method registry, Run through the stage runner. Each technique's servicer module
builds one with its registry and adds it with `add_technique_service`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc

from modelpress.v1 import common_pb2, technique_pb2, technique_pb2_grpc
from services.common.models import modelio
from services.common.contract.config import (MethodConfig, WorkBudgetExceeded, describe_registry,
                                             parse_config, validated)
from services.common.store.model_source import describe
from services.common.contract.engine_api import ProgressReporter, StageResult
from services.common.runtime.server import ServiceRuntime
from services.common.runtime.stage_runner import abort_with, run_stage
from services.common.runtime.worker_hardware import worker_hardware

# The name reflection lists and the health service answers for, the same in every technique's process.
SERVICE_NAME = technique_pb2.DESCRIPTOR.services_by_name["TechniqueService"].full_name


class ListedMethod(Protocol):
    """What Describe publishes and CheckConfig checks of a registry entry."""

    name: str
    summary: str
    config_cls: type[MethodConfig]
    accepts: tuple[int, ...]
    produces: tuple[int, ...]
    metrics: tuple
    model_kinds: tuple[str, ...]  # empty: any kind


class EngineMethod(ListedMethod, Protocol):
    """A registry entry the generic Run executes: an engine function on (config, input, output, reporter)."""

    def run(self, config: Any, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult: ...


class TechniqueServicer(technique_pb2_grpc.TechniqueServiceServicer):
    """`methods`: the technique's registry, method name -> entry. A technique whose stage is not an
    engine writing a new artifact (the evaluator's measurement) overrides `run_stage`."""

    def __init__(self, technique: int, methods: Mapping[str, ListedMethod], runtime: ServiceRuntime,
                 version: str = "1") -> None:
        modelio.preload_transformers()
        self.technique = technique
        self.methods = methods
        self.runtime = runtime
        self.version = version

    async def Describe(self, request: technique_pb2.TechniqueServiceDescribeRequest, context
                       ) -> technique_pb2.TechniqueServiceDescribeResponse:
        return technique_pb2.TechniqueServiceDescribeResponse(description=self.description())

    async def CheckConfig(self, request: technique_pb2.TechniqueServiceCheckConfigRequest, context
                          ) -> technique_pb2.TechniqueServiceCheckConfigResponse:
        errors, over_budget = self.check_config(request.stage)
        return technique_pb2.TechniqueServiceCheckConfigResponse(errors=errors, over_budget=over_budget)

    async def Run(self, request: technique_pb2.TechniqueServiceRunRequest, context
                  ) -> AsyncIterator[technique_pb2.TechniqueServiceRunResponse]:
        async for update in self.run_stage(request.stage, context):
            yield technique_pb2.TechniqueServiceRunResponse(update=update)

    def description(self) -> common_pb2.ServiceDescription:
        return common_pb2.ServiceDescription(
            technique=self.technique,
            version=self.version,
            methods=describe_registry(self.technique, self.methods),
            hardware=worker_hardware(self.runtime.worker_id),
        )

    def unknown_method(self, name: str) -> str:
        return f"method: unknown method {name!r}; allowed: {', '.join(sorted(self.methods))}"

    def check_config(self, stage: common_pb2.StageSpec) -> tuple[list[str], list[str]]:
        """(every problem of the stage's config under its method's whole declaration — an unknown
        method is one —, every work budget a valid config goes past). The gateway asks this for every
        stage before a job exists: the one validation of its values (config.validated), run once."""
        method = self.methods.get(stage.method)
        if method is None:
            return [self.unknown_method(stage.method)], []
        config, problems = validated(method.config_cls, stage.config)
        return (problems, []) if problems else ([], config.work_problems())

    async def run_stage(self, stage: common_pb2.StageRequest, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[common_pb2.StageUpdate]:
        method = self.methods.get(stage.method)
        if method is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.unknown_method(stage.method))
            return
        try:
            config = parse_config(method.config_cls, stage.config)  # what Run receives: config.validated
            if over := config.work_problems():  # a caller of Run that skipped CheckConfig
                raise WorkBudgetExceeded("; ".join(over))
        except Exception as exc:  # noqa: BLE001
            await abort_with(context, exc, f"{stage.method} config")
            return
        for field in config.artifact_fields:
            if artifact_id := getattr(config, field):
                try:
                    ref = common_pb2.ModelRef(artifact_id=artifact_id)
                    local = await self.runtime.models.local_folder(ref)
                except Exception as exc:  # noqa: BLE001
                    await abort_with(context, exc, f"{stage.method} config: {field}")
                    return
                config.bind_local(field, local)
        extra_key: dict[str, str] = {}
        for field in config.original_default_fields:
            if not getattr(config, field) and stage.HasField("original"):
                try:
                    local = await self.runtime.models.local_folder(stage.original)
                except Exception as exc:  # noqa: BLE001
                    await abort_with(context, exc, f"{stage.method} config: {field} (the job's input model)")
                    return
                config.bind_local(field, local)
                # The output depends on which model stood in: part of the stage key and its record.
                extra_key[field] = describe(stage.original)

        def work(src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
            return method.run(config, src, dst, reporter)

        async for update in run_stage(self.runtime, stage, context, work, config.model_dump(),
                                      self.version, extra_key):
            yield update


def add_technique_service(server: grpc.aio.Server, servicer: TechniqueServicer) -> str:
    """Adds the servicer to the server; returns the service's full name for health and reflection."""
    technique_pb2_grpc.add_TechniqueServiceServicer_to_server(servicer, server)
    return SERVICE_NAME
