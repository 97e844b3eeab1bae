"""The Open Inference Protocol (v2) over gRPC: `inference.GRPCInferenceService`, as KServe specifies
it and Triton, OpenVINO Model Server and `tritonclient.grpc` speak it. Status codes are the
protocol's: NOT_FOUND for an unknown model, INVALID_ARGUMENT for a malformed request (naming the
tensor and what is wrong), UNAVAILABLE when the deployment's queue is full (retryable).

ModelStreamInfer is Triton's streaming extension (tritonclient.grpc's start_stream): requests on one
stream are served concurrently, a causal LM answering each with a response per piece of generated
text; a request that fails gets an error message on the stream, which stays open for the others."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from modelpress.inference.v2 import grpc_predict_v2_pb2 as pb
from modelpress.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from services.common.runtime import auth
from services.serving import oip_models
from services.serving.deployment import QueueFull
from services.serving.encoders import ServingError
from services.serving.oip_tensors import (
    TensorError,
    fill_grpc_response,
    inputs_from_grpc,
    requested_outputs_grpc,
)
from services.serving.replica import (
    SERVER_NAME,
    SERVER_VERSION,
    DeploymentLoading,
    DeploymentNotFound,
    Replica,
)

SERVICE_NAME = "inference.GRPCInferenceService"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.replica.ready)

    async def ModelReady(self, request, context):
        try:
            self.replica.get(request.name, auth.current())
        except (DeploymentNotFound, DeploymentLoading):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["binary_tensor_data"])

    async def ModelMetadata(self, request, context):
        deployment = await self._deployment(request.name, context)
        tensors = lambda specs: [pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]
        return pb.ModelMetadataResponse(name=deployment.name, versions=["1"], platform=oip_models.PLATFORM,
                                        inputs=tensors(oip_models.inputs_of(deployment)),
                                        outputs=tensors(oip_models.outputs_of(deployment)))

    async def ModelInfer(self, request, context):
        deployment = await self._deployment(request.model_name, context)
        start, outcome = time.perf_counter(), "error"
        try:
            inputs = inputs_from_grpc(request, max_bytes=deployment.config.max_request_bytes)
            parameters = {k: _parameter(v) for k, v in request.parameters.items()}
            outputs = await oip_models.infer(deployment, inputs, parameters)
            response = pb.ModelInferResponse(model_name=deployment.name, model_version="1", id=request.id)
            fill_grpc_response(response, outputs, requested_outputs_grpc(request))
            outcome = "ok"
            return response
        except (ServingError, TensorError, ValueError) as exc:
            outcome = "invalid"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except QueueFull as exc:
            outcome = "unavailable"
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            deployment.metrics.request("oip-grpc", outcome, time.perf_counter() - start)

    async def ModelStreamInfer(self, request_iterator, context):
        responses: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(self._stream_one(request, responses.put_nowait))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running, return_exceptions=True)
            finally:
                responses.put_nowait(None)  # the caller closed its side and every request was answered

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
        finally:  # the caller went away: its generations stop (their streams close and cancel them)
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _stream_one(self, request, send) -> None:
        try:
            deployment = self.replica.get(request.model_name, auth.current())
        except DeploymentNotFound as exc:
            send(pb.ModelStreamInferResponse(error_message=f"NOT_FOUND: {exc}"))
            return
        except DeploymentLoading as exc:
            send(pb.ModelStreamInferResponse(error_message=f"UNAVAILABLE: {exc}"))
            return
        start, outcome = time.perf_counter(), "error"
        try:
            inputs = inputs_from_grpc(request, max_bytes=deployment.config.max_request_bytes)
            parameters = {k: _parameter(v) for k, v in request.parameters.items()}
            requested = requested_outputs_grpc(request)
            async with contextlib.aclosing(oip_models.stream(deployment, inputs, parameters)) as parts:
                async for outputs, final in parts:
                    response = pb.ModelInferResponse(model_name=deployment.name, model_version="1", id=request.id)
                    fill_grpc_response(response, outputs, requested)
                    response.parameters["triton_final_response"].bool_param = final is not None
                    for key, value in (final or {}).items():
                        _set_parameter(response.parameters[key], value)
                    send(pb.ModelStreamInferResponse(infer_response=response))
            outcome = "ok"
        except (ServingError, TensorError, ValueError) as exc:
            outcome = "invalid"
            send(pb.ModelStreamInferResponse(error_message=f"INVALID_ARGUMENT: {exc}"))
        except (QueueFull, RuntimeError) as exc:  # RuntimeError: the deployment closed (replaced or deleted)
            outcome = "unavailable"
            send(pb.ModelStreamInferResponse(error_message=f"UNAVAILABLE: {exc}"))
        finally:
            deployment.metrics.request("oip-grpc-stream", outcome, time.perf_counter() - start)

    async def _deployment(self, name: str, context):
        try:
            return self.replica.get(name, auth.current())
        except DeploymentNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except DeploymentLoading as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


def _parameter(value: pb.InferParameter):
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _set_parameter(parameter: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.string_param = str(value)


def register(server: grpc.aio.Server, replica: Replica) -> str:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(replica), server)
    return SERVICE_NAME
