"""The typed gRPC client of the gateway, for other backend services and the CLI.

    from modelpress import Client
    with Client("127.0.0.1:50051") as mp:
        job = mp.create_job("builtin:smollm2-135m", "int8-weight-only")
        for event in mp.watch(job.job_id):
            print(event.message)
        result = mp.get_result(job.job_id).result
        print(result.headline.text, result.compression_ratio)
        print(mp.job_document(job.job_id)["result"]["perplexity_increase"])  # None: not measured

It needs grpcio and protobuf only (never torch, never the `services` package). Every
failed call raises a modelpress.errors type (InvalidArgument, NotFound, Unavailable ...).
A figure that was not measured is unset in the messages (`result.HasField("perplexity_increase")`
is False, and `result.not_measured` says why) and None in `job_document`, never 0.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from modelpress.errors import DataLoss, from_rpc_error
from modelpress.folders import FolderTar, stamp_modification_times, untar_folder
from modelpress.pipelines import pipeline_message
from modelpress.results import job_document
from modelpress.structs import to_struct
from modelpress.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

UPLOAD_CHUNK = 1024 * 1024
# Overrides and options: field -> value, or the Struct itself (what the CLI builds from --set).
Values = dict[str, Any] | struct_pb2.Struct


def _typed_errors(method):
    """grpc.RpcError becomes the modelpress.errors type of its status (still a grpc.RpcError)."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return call


def _typed_stream_errors(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            yield from method(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return call


def parse_model_ref(text: str) -> common_pb2.ModelRef:
    """`builtin:NAME`, `artifact:ID` (or a bare `a-…` id), `path:DIR` or an absolute folder path.
    A relative `path:DIR` is made absolute here: the mesh takes absolute paths only (it would
    otherwise resolve against the gateway's own working folder)."""
    scheme, sep, rest = text.partition(":")
    if sep and scheme == "builtin":
        return common_pb2.ModelRef(builtin=rest)
    if sep and scheme == "artifact":
        return common_pb2.ModelRef(artifact_id=rest)
    if sep and scheme == "path":
        return common_pb2.ModelRef(path=os.path.abspath(rest) if rest else rest)
    if text.startswith("a-"):
        return common_pb2.ModelRef(artifact_id=text)
    if text.startswith("/"):
        return common_pb2.ModelRef(path=text)
    raise ValueError(f"model: {text!r} is not builtin:NAME, artifact:ID, path:DIR or an absolute path")


MODEL_SCHEMES = ("builtin", "artifact", "path")


def local_model_folder(text: str) -> Path | None:
    """The folder on this machine a model argument names, for the CLI to upload before its job: an
    existing folder here, written without a scheme (`./my-model`, `my-model`, `/data/my-model`).
    None for `builtin:`, `artifact:` and `path:` (a folder the mesh reads itself, under the operator's
    allowed roots), for a bare `a-…` artifact id, and for a path that is no folder here (an absolute one
    then stays `path:` for the mesh, as parse_model_ref reads it)."""
    scheme, sep, _ = text.partition(":")
    if (sep and scheme in MODEL_SCHEMES) or text.startswith("a-"):
        return None
    folder = Path(text).expanduser()
    return folder if folder.is_dir() else None


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (on plaintext channels too, which gRPC's
    own call credentials refuse: the local mesh may check tokens without TLS)."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = [*(details.metadata or ()), self._metadata]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
            details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def _read_pem(value: str | bytes | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class Client:
    """`token`: the API token the gateway checks (default $MODELPRESS_TOKEN; none on an open
    mesh). `tls_ca`: the CA (PEM path or bytes) that signed the gateway's certificate, which turns
    TLS on (default $MODELPRESS_TLS_CA); `tls_cert`/`tls_key` add a client certificate (mutual TLS)."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout_s: float = 60.0, token: str | None = None,
                 tls_ca: str | bytes | Path | None = None, tls_cert: str | bytes | Path | None = None,
                 tls_key: str | bytes | Path | None = None) -> None:
        options = [("grpc.max_receive_message_length", 16 << 20)]
        token = token if token is not None else os.environ.get("MODELPRESS_TOKEN") or None
        tls_ca = tls_ca if tls_ca is not None else os.environ.get("MODELPRESS_TLS_CA") or None
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=_read_pem(tls_ca),
                                                       private_key=_read_pem(tls_key),
                                                       certificate_chain=_read_pem(tls_cert))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        channel = grpc.intercept_channel(self._channel, _BearerToken(token)) if token else self._channel
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._timeout = timeout_s

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ---- jobs ----------------------------------------------------------------

    def create_job(self, model: str | common_pb2.ModelRef, recipe: str | dict | list | common_pb2.Pipeline, *,
                   overrides: Values | None = None, evaluation: common_pb2.EvaluationSpec | None = None,
                   name: str = "", recompute: bool = False) -> common_pb2.Job:
        """`recipe`: a recipe name, or a pipeline (its stages as data, or a Pipeline message).
        A stage whose key matches a stored artifact reuses it unless `recompute`."""
        ref = parse_model_ref(model) if isinstance(model, str) else model
        request = gateway_pb2.CreateJobRequest(name=name, model=ref, overrides=to_struct(overrides),
                                               evaluation=evaluation, recompute=recompute)
        if isinstance(recipe, str):
            request.recipe = recipe
        else:
            request.pipeline.CopyFrom(recipe if isinstance(recipe, common_pb2.Pipeline) else pipeline_message(recipe))
        return self._stub.CreateJob(request, timeout=self._timeout).job

    def get_job(self, job_id: str) -> common_pb2.Job:
        return self._stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), timeout=self._timeout).job

    def list_jobs(self, state: int = 0, page_size: int = 0, tenant: str = "") -> list[common_pb2.Job]:
        """This tenant's jobs, newest first; an operator's token sees every tenant's, or `tenant`'s.
        `page_size` 0: every job (the gateway's pages, followed); otherwise the newest `page_size`."""
        if page_size:
            return list(self._jobs_page(state, page_size, tenant, "").jobs)
        return _every_page(lambda token: self._jobs_page(state, 0, tenant, token), "jobs")

    def jobs_page(self, *, state: int = 0, page_size: int = 0, tenant: str = "",
                  page_token: str = "") -> gateway_pb2.ListJobsResponse:
        """One page of list_jobs: `.jobs`, and `.next_page_token` to pass as `page_token` for the
        next ("" after the last)."""
        return self._jobs_page(state, page_size, tenant, page_token)

    def _jobs_page(self, state: int, page_size: int, tenant: str, page_token: str) -> gateway_pb2.ListJobsResponse:
        request = gateway_pb2.ListJobsRequest(state=state, page_size=page_size, tenant=tenant, page_token=page_token)
        return self._stub.ListJobs(request, timeout=self._timeout)

    def cancel_job(self, job_id: str) -> common_pb2.Job:
        return self._stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job_id), timeout=120).job

    def delete_job(self, job_id: str) -> int:
        return self._stub.DeleteJob(gateway_pb2.DeleteJobRequest(job_id=job_id), timeout=120).deleted_artifacts

    def watch(self, job_id: str) -> Iterator[common_pb2.JobEvent]:
        stream = self._stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=job_id))
        try:
            for response in stream:
                yield response.event
        finally:
            # A reader that stops early (Ctrl-C in the CLI, a break) ends the stream here, not when the
            # channel closes with the call still open.
            stream.cancel()

    def get_result(self, job_id: str) -> gateway_pb2.GetResultResponse:
        """A succeeded job's CompressionResult (`.result`, its one-line outcome in `.result.headline`)
        and output artifact (`.artifact`); FailedPrecondition while the job has not succeeded."""
        return self._stub.GetResult(gateway_pb2.GetResultRequest(job_id=job_id), timeout=self._timeout)

    def job_document(self, job_id: str) -> dict:
        """The job as the one result schema every surface shares (modelpress.results.job_document):
        what `modelpress jobs get --json` prints, the headline in `["result"]["headline"]`."""
        return job_document(self.get_job(job_id))

    # ---- catalogue -------------------------------------------------------------

    def list_methods(self) -> gateway_pb2.ListMethodsResponse:
        return self._stub.ListMethods(gateway_pb2.ListMethodsRequest(), timeout=self._timeout)

    def list_recipes(self) -> list[gateway_pb2.Recipe]:
        return list(self._stub.ListRecipes(gateway_pb2.ListRecipesRequest(), timeout=self._timeout).recipes)

    def create_recipe(self, pipeline: dict | list | common_pb2.Pipeline) -> gateway_pb2.Recipe:
        """Stores a user recipe (validated like a job's pipeline); an existing name gets its next version."""
        message = pipeline if isinstance(pipeline, common_pb2.Pipeline) else pipeline_message(pipeline)
        return self._stub.CreateRecipe(gateway_pb2.CreateRecipeRequest(pipeline=message), timeout=self._timeout).recipe

    def get_recipe(self, name: str) -> gateway_pb2.Recipe:
        """A built-in, or a user recipe by NAME (latest) or NAME@VERSION."""
        return self._stub.GetRecipe(gateway_pb2.GetRecipeRequest(name=name), timeout=self._timeout).recipe

    def delete_recipe(self, name: str) -> int:
        """NAME@VERSION deletes one version, NAME all; returns how many."""
        return self._stub.DeleteRecipe(gateway_pb2.DeleteRecipeRequest(name=name),
                                       timeout=self._timeout).deleted_versions

    def validate(self, recipe: str, overrides: Values | None = None) -> gateway_pb2.ValidateConfigResponse:
        request = gateway_pb2.ValidateConfigRequest(recipe=recipe, overrides=to_struct(overrides))
        return self._stub.ValidateConfig(request, timeout=self._timeout)

    def evaluate(self, model: str, spec: common_pb2.EvaluationSpec | None = None) -> common_pb2.ModelMetrics:
        request = gateway_pb2.EvaluateRequest(model=parse_model_ref(model), spec=spec)
        return self._stub.Evaluate(request, timeout=1800).metrics

    def compare(self, models: list[str], *, baseline_index: int = 0, spec: common_pb2.EvaluationSpec | None = None,
                threshold_set: str = "") -> common_pb2.Comparison:
        request = gateway_pb2.CompareRequest(models=[parse_model_ref(m) for m in models],
                                             baseline_index=baseline_index, spec=spec, threshold_set=threshold_set)
        return self._stub.Compare(request, timeout=3600).comparison

    def list_threshold_sets(self) -> list[common_pb2.ThresholdSet]:
        response = self._stub.ListThresholdSets(gateway_pb2.ListThresholdSetsRequest(), timeout=self._timeout)
        return list(response.threshold_sets)

    def run_benchmark(self, model: str, *, batch_sizes: list[int] = (), sequence_lengths: list[int] = (),
                      iterations: int = 0, threads: int = 0) -> list[common_pb2.HardwareBenchmark]:
        request = gateway_pb2.RunBenchmarkRequest(model=parse_model_ref(model), batch_sizes=batch_sizes,
                                                  sequence_lengths=sequence_lengths, iterations=iterations,
                                                  threads=threads)
        return list(self._stub.RunBenchmark(request, timeout=3600).benchmarks)

    def list_benchmarks(self, model: str = "", device: str = "") -> list[common_pb2.HardwareBenchmark]:
        """Every stored benchmark row whose model and device contain the given text, newest first."""

        def page(token: str) -> gateway_pb2.ListBenchmarksResponse:
            request = gateway_pb2.ListBenchmarksRequest(model=model, device=device, page_token=token)
            return self._stub.ListBenchmarks(request, timeout=self._timeout)

        return _every_page(page, "benchmarks")

    def report(self, *, job_id: str = "", comparison_id: str = "", fmt: str = "html") -> bytes:
        request = gateway_pb2.GetReportRequest(job_id=job_id, comparison_id=comparison_id, format=fmt)
        return self._stub.GetReport(request, timeout=self._timeout).content

    def optimize(self, model: str, engine: str, *, precision: str = "", options: Values | None = None,
                 evaluation: common_pb2.EvaluationSpec | None = None, name: str = "") -> common_pb2.Job:
        request = gateway_pb2.OptimizeModelRequest(model=parse_model_ref(model), engine=engine, precision=precision,
                                                   options=to_struct(options), evaluation=evaluation,
                                                   name=name)
        return self._stub.OptimizeModel(request, timeout=self._timeout).job

    def list_engines(self) -> list[common_pb2.EngineInfo]:
        return list(self.engines().engines)

    def engines(self) -> gateway_pb2.ListEnginesResponse:
        """The engines and, per optimizer replica, its CPU and which compute precisions its ISA accelerates."""
        return self._stub.ListEngines(gateway_pb2.ListEnginesRequest(), timeout=self._timeout)

    def list_strategies(self, isa_class: str = "") -> list[gateway_pb2.CompressionStrategy]:
        """isa_class: expected figures from outcomes measured on CPUs of this class (default: the evaluator's)."""
        request = gateway_pb2.ListStrategiesRequest(isa_class=isa_class)
        return list(self._stub.ListStrategies(request, timeout=self._timeout).strategies)

    def recommend(self, model: str, **constraints) -> gateway_pb2.RecommendStrategyResponse:
        request = gateway_pb2.RecommendStrategyRequest(model=parse_model_ref(model), **constraints)
        return self._stub.RecommendStrategy(request, timeout=7200)

    def search(self, model: str | common_pb2.ModelRef, *, name: str = "",
               evaluation: common_pb2.EvaluationSpec | None = None, **spec) -> common_pb2.Job:
        """Starts a search job for the best pipeline under constraints (`spec`: SearchSpec's fields —
        min_quality_kept, min_speedup, max_size_ratio, max_memory_ratio, objective, phase,
        budget_minutes, techniques, no_training, no_calibration, finishes, deploy_as); wait for it with
        wait_job."""
        ref = parse_model_ref(model) if isinstance(model, str) else model
        request = gateway_pb2.SearchRequest(name=name, model=ref, spec=common_pb2.SearchSpec(**spec),
                                            evaluation=evaluation)
        return self._stub.Search(request, timeout=self._timeout).job

    # ---- artifacts ---------------------------------------------------------------

    def lineage(self, artifact_id: str) -> gateway_pb2.GetLineageResponse:
        """Every stage from the base model to the artifact (method, config, input digest, versions, metrics)."""
        return self._stub.GetLineage(gateway_pb2.GetLineageRequest(artifact_id=artifact_id), timeout=self._timeout)

    def tag(self, artifact_id: str, tag: str) -> gateway_pb2.TagArtifactResponse:
        """Tags the artifact NAME:VERSION (NAME alone: the next version)."""
        return self._stub.TagArtifact(gateway_pb2.TagArtifactRequest(artifact_id=artifact_id, tag=tag),
                                      timeout=self._timeout)

    def list_artifacts(self, *, tag: str = "", model: str = "", recipe: str = "") -> list[common_pb2.ArtifactSummary]:
        """Every artifact this tenant holds that passes the filters (the gateway's pages, followed)."""

        def page(token: str) -> gateway_pb2.ListArtifactsResponse:
            request = gateway_pb2.ListArtifactsRequest(tag=tag, model=model, recipe=recipe, page_token=token)
            return self._stub.ListArtifacts(request, timeout=self._timeout)

        return _every_page(page, "artifacts")

    def delete_artifact(self, artifact_id: str) -> bool:
        """Drops this tenant's hold; True when the bytes went (nobody else holds it, no job lists it)."""
        request = gateway_pb2.DeleteArtifactRequest(artifact_id=artifact_id)
        return self._stub.DeleteArtifact(request, timeout=self._timeout).deleted

    # ---- deployments -----------------------------------------------------------

    def deploy(self, *, job_id: str = "", artifact_id: str = "", name: str = "", replicas: int = 1,
               config: Values | None = None, shadow_share: float = 0.0) -> common_pb2.Deployment:
        """Serves a job's result (or an artifact) on the mesh's serving replicas under `name`, through
        the Open Inference Protocol (gRPC and REST) and, for causal LMs, OpenAI's API. `config` takes
        DeploymentConfig fields (batching, KV budget, limits). Returns the record (PENDING until a
        replica loads it: `wait_deployment`). `shadow_share` (job deployments): the share of live
        requests also run on the job's original model, to report how often they agree."""
        request = gateway_pb2.DeployResultRequest(job_id=job_id, artifact_id=artifact_id, name=name,
                                                  replicas=replicas, config=to_struct(config),
                                                  shadow_share=shadow_share)
        return self._stub.DeployResult(request, timeout=self._timeout).deployment

    def list_deployments(self) -> list[common_pb2.Deployment]:
        return list(self._stub.ListDeployments(gateway_pb2.ListDeploymentsRequest(), timeout=self._timeout).deployments)

    def get_deployment(self, deployment_id: str) -> common_pb2.Deployment:
        """The deployment with its live state, endpoints and figures."""
        request = gateway_pb2.GetDeploymentRequest(deployment_id=deployment_id)
        return self._stub.GetDeployment(request, timeout=self._timeout).deployment

    def update_deployment(self, deployment_id: str, *, replicas: int = 0,
                          config: Values | None = None) -> common_pb2.Deployment:
        request = gateway_pb2.UpdateDeploymentRequest(deployment_id=deployment_id, replicas=replicas,
                                                      config=to_struct(config))
        return self._stub.UpdateDeployment(request, timeout=self._timeout).deployment

    def delete_deployment(self, deployment_id: str) -> None:
        self._stub.DeleteDeployment(gateway_pb2.DeleteDeploymentRequest(deployment_id=deployment_id),
                                    timeout=self._timeout)

    def wait_deployment(self, deployment_id: str, *, replicas: int = 1, timeout_s: float = 300.0,
                        poll_s: float = 1.0) -> common_pb2.Deployment:
        """Polls until `replicas` replicas serve it; raises RuntimeError when it failed or the time ran out."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            deployment = self.get_deployment(deployment_id)
            if deployment.ready_replicas >= replicas:
                return deployment
            if deployment.state == common_pb2.DEPLOYMENT_STATE_FAILED:
                raise RuntimeError(f"deployment {deployment_id} failed: {deployment.message}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"deployment {deployment_id} is not served by {replicas} replica(s) after "
                                   f"{timeout_s:g} s: {deployment.message or 'pending'}")
            time.sleep(poll_s)

    def download(self, out_dir: Path, *, job_id: str = "", artifact_id: str = "") -> common_pb2.ArtifactRef:
        """Streams the artifact into `out_dir` (created; must not exist), checking its sha256."""
        request = (gateway_pb2.DownloadArtifactRequest(job_id=job_id) if job_id
                   else gateway_pb2.DownloadArtifactRequest(artifact_id=artifact_id))
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FileExistsError(f"--out {out_dir} exists and is not empty")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        ref = None
        digest = hashlib.sha256()
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
            tar_path = Path(tmp) / "artifact.tar"
            with open(tar_path, "wb") as out:
                for response in self._stub.DownloadArtifact(request):
                    if response.WhichOneof("part") == "artifact":
                        ref = response.artifact
                    else:
                        digest.update(response.chunk)
                        out.write(response.chunk)
            if ref is None or digest.hexdigest() != ref.sha256:
                raise IOError("download incomplete or corrupt (sha256 mismatch)")
            if out_dir.exists():
                out_dir.rmdir()
            untar_folder(tar_path, out_dir)
        stamp_modification_times(out_dir, _made_at(out_dir))
        return ref

    def upload(self, folder: Path, *, fmt: int = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, name: str = "",
               progress: Callable[[int, int], None] | None = None) -> common_pb2.ArtifactRef:
        """Streams `folder` to the gateway as a tar, chunk by chunk, hashing as it goes: the client holds
        a chunk or two, never the whole tar (a multi-GB model uploads in constant memory, with no copy
        on disk). The sha256 the gateway stored is checked against what was sent; on a mismatch the
        artifact is deleted and DataLoss raised. `progress(sent_bytes, total_bytes)` follows each chunk
        (called on gRPC's sending thread)."""
        tar = FolderTar(Path(folder))
        digest = hashlib.sha256()
        # gRPC reports an exception raised while iterating the requests as CANCELLED, losing it: the
        # iterator keeps it here, and the caller gets the real one (a file that changed while read).
        failure: list[BaseException] = []

        def messages() -> Iterator[gateway_pb2.UploadModelRequest]:
            yield gateway_pb2.UploadModelRequest(
                header=gateway_pb2.UploadHeader(name=name or Path(folder).name, format=fmt))
            sent = 0
            try:
                for chunk in tar.chunks(UPLOAD_CHUNK):
                    digest.update(chunk)
                    yield gateway_pb2.UploadModelRequest(chunk=chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, tar.size)
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            ref = self._stub.UploadModel(messages(), timeout=3600).artifact
        except grpc.RpcError:
            if failure:
                raise failure[0] from None
            raise
        if ref.sha256 != digest.hexdigest():
            with contextlib.suppress(grpc.RpcError):  # DataLoss is the news; a failed clean-up is not
                self._stub.DeleteArtifact(gateway_pb2.DeleteArtifactRequest(artifact_id=ref.id), timeout=self._timeout)
            raise DataLoss(grpc.StatusCode.DATA_LOSS, f"upload of {folder}: the gateway stored sha256 "
                           f"{ref.sha256}, the client sent {digest.hexdigest()}; the artifact was deleted")
        return ref


def _every_page(fetch, field: str) -> list:
    """Every item of a paginated listing: `fetch(page_token)` answers one page."""
    items, token = [], ""
    while True:
        response = fetch(token)
        items += getattr(response, field)
        token = response.next_page_token
        if not token:
            return items


def _made_at(folder: Path) -> float:
    """When the artifact was made (its manifest says), else now."""
    try:
        return datetime.fromisoformat(json.loads((folder / "modelpress.json").read_text())["created_at"]).timestamp()
    except (OSError, KeyError, ValueError, TypeError):
        return datetime.now().timestamp()


# Every call of the client raises typed errors.
for _name, _member in list(vars(Client).items()):
    if _name.startswith("_") or not callable(_member) or _name == "close":
        continue
    setattr(Client, _name, (_typed_stream_errors if _name == "watch" else _typed_errors)(_member))
