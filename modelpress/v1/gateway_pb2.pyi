from google.protobuf import struct_pb2 as _struct_pb2
from modelpress.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateJobRequest(_message.Message):
    __slots__ = ("name", "model", "recipe", "overrides", "evaluation", "pipeline", "recompute")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: _common_pb2.ModelRef
    recipe: str
    overrides: _struct_pb2.Struct
    evaluation: _common_pb2.EvaluationSpec
    pipeline: _common_pb2.Pipeline
    recompute: bool
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., recipe: _Optional[str] = ..., overrides: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., evaluation: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ..., pipeline: _Optional[_Union[_common_pb2.Pipeline, _Mapping]] = ..., recompute: _Optional[bool] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("name", "model", "spec", "evaluation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: _common_pb2.ModelRef
    spec: _common_pb2.SearchSpec
    evaluation: _common_pb2.EvaluationSpec
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., spec: _Optional[_Union[_common_pb2.SearchSpec, _Mapping]] = ..., evaluation: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "page_size", "tenant", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    page_size: int
    tenant: str
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., page_size: _Optional[int] = ..., tenant: _Optional[str] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_common_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("deleted_artifacts",)
    DELETED_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    deleted_artifacts: int
    def __init__(self, deleted_artifacts: _Optional[int] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _common_pb2.JobEvent
    def __init__(self, event: _Optional[_Union[_common_pb2.JobEvent, _Mapping]] = ...) -> None: ...

class ListMethodsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMethodsResponse(_message.Message):
    __slots__ = ("methods", "unavailable")
    class UnavailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHODS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    methods: _containers.RepeatedCompositeFieldContainer[_common_pb2.MethodDescription]
    unavailable: _containers.ScalarMap[str, str]
    def __init__(self, methods: _Optional[_Iterable[_Union[_common_pb2.MethodDescription, _Mapping]]] = ..., unavailable: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Recipe(_message.Message):
    __slots__ = ("name", "summary", "stages", "version", "builtin", "model_kinds", "runtimes", "data", "cost", "compute")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_KINDS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    summary: str
    stages: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageSpec]
    version: int
    builtin: bool
    model_kinds: _containers.RepeatedScalarFieldContainer[str]
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    data: str
    cost: str
    compute: str
    def __init__(self, name: _Optional[str] = ..., summary: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[_common_pb2.StageSpec, _Mapping]]] = ..., version: _Optional[int] = ..., builtin: _Optional[bool] = ..., model_kinds: _Optional[_Iterable[str]] = ..., runtimes: _Optional[_Iterable[str]] = ..., data: _Optional[str] = ..., cost: _Optional[str] = ..., compute: _Optional[str] = ...) -> None: ...

class ListRecipesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRecipesResponse(_message.Message):
    __slots__ = ("recipes",)
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    recipes: _containers.RepeatedCompositeFieldContainer[Recipe]
    def __init__(self, recipes: _Optional[_Iterable[_Union[Recipe, _Mapping]]] = ...) -> None: ...

class ValidateConfigRequest(_message.Message):
    __slots__ = ("recipe", "overrides")
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    overrides: _struct_pb2.Struct
    def __init__(self, recipe: _Optional[str] = ..., overrides: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ValidateConfigResponse(_message.Message):
    __slots__ = ("valid", "errors", "resolved_stages")
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_STAGES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    errors: _containers.RepeatedScalarFieldContainer[str]
    resolved_stages: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageSpec]
    def __init__(self, valid: _Optional[bool] = ..., errors: _Optional[_Iterable[str]] = ..., resolved_stages: _Optional[_Iterable[_Union[_common_pb2.StageSpec, _Mapping]]] = ...) -> None: ...

class CompressionStrategy(_message.Message):
    __slots__ = ("name", "description", "target_scenario", "techniques", "expected_compression_ratio", "expected_speedup", "expected_accuracy_retention", "hardware_compatibility", "recipe", "evidence", "measured_isa_class", "compute_precision", "emulated_on_isa")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCENARIO_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ACCURACY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_COMPATIBILITY_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    EMULATED_ON_ISA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    target_scenario: str
    techniques: _containers.RepeatedScalarFieldContainer[_common_pb2.Technique]
    expected_compression_ratio: float
    expected_speedup: float
    expected_accuracy_retention: float
    hardware_compatibility: _containers.RepeatedScalarFieldContainer[str]
    recipe: str
    evidence: str
    measured_isa_class: str
    compute_precision: str
    emulated_on_isa: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., target_scenario: _Optional[str] = ..., techniques: _Optional[_Iterable[_Union[_common_pb2.Technique, str]]] = ..., expected_compression_ratio: _Optional[float] = ..., expected_speedup: _Optional[float] = ..., expected_accuracy_retention: _Optional[float] = ..., hardware_compatibility: _Optional[_Iterable[str]] = ..., recipe: _Optional[str] = ..., evidence: _Optional[str] = ..., measured_isa_class: _Optional[str] = ..., compute_precision: _Optional[str] = ..., emulated_on_isa: _Optional[str] = ...) -> None: ...

class ListStrategiesRequest(_message.Message):
    __slots__ = ("isa_class",)
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    isa_class: str
    def __init__(self, isa_class: _Optional[str] = ...) -> None: ...

class ListStrategiesResponse(_message.Message):
    __slots__ = ("strategies",)
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[CompressionStrategy]
    def __init__(self, strategies: _Optional[_Iterable[_Union[CompressionStrategy, _Mapping]]] = ...) -> None: ...

class RecommendStrategyRequest(_message.Message):
    __slots__ = ("model", "target", "max_size_mb", "max_latency_ms", "min_quality_retention", "hardware", "candidate_recipes", "stored_only", "evaluation", "isa_class")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_RECIPES_FIELD_NUMBER: _ClassVar[int]
    STORED_ONLY_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    target: str
    max_size_mb: float
    max_latency_ms: float
    min_quality_retention: float
    hardware: str
    candidate_recipes: _containers.RepeatedScalarFieldContainer[str]
    stored_only: bool
    evaluation: _common_pb2.EvaluationSpec
    isa_class: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., target: _Optional[str] = ..., max_size_mb: _Optional[float] = ..., max_latency_ms: _Optional[float] = ..., min_quality_retention: _Optional[float] = ..., hardware: _Optional[str] = ..., candidate_recipes: _Optional[_Iterable[str]] = ..., stored_only: _Optional[bool] = ..., evaluation: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ..., isa_class: _Optional[str] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("rank", "strategy", "feasible", "pareto_optimal", "reason", "violated_constraints", "size_mb", "latency_p50_ms", "quality_retention", "quality_metric", "compression_ratio", "speedup", "job_id", "measured_now", "isa_class", "compute_precision")
    RANK_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    PARETO_OPTIMAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VIOLATED_CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_METRIC_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MEASURED_NOW_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    rank: int
    strategy: CompressionStrategy
    feasible: bool
    pareto_optimal: bool
    reason: str
    violated_constraints: _containers.RepeatedScalarFieldContainer[str]
    size_mb: float
    latency_p50_ms: float
    quality_retention: float
    quality_metric: str
    compression_ratio: float
    speedup: float
    job_id: str
    measured_now: bool
    isa_class: str
    compute_precision: str
    def __init__(self, rank: _Optional[int] = ..., strategy: _Optional[_Union[CompressionStrategy, _Mapping]] = ..., feasible: _Optional[bool] = ..., pareto_optimal: _Optional[bool] = ..., reason: _Optional[str] = ..., violated_constraints: _Optional[_Iterable[str]] = ..., size_mb: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., quality_retention: _Optional[float] = ..., quality_metric: _Optional[str] = ..., compression_ratio: _Optional[float] = ..., speedup: _Optional[float] = ..., job_id: _Optional[str] = ..., measured_now: _Optional[bool] = ..., isa_class: _Optional[str] = ..., compute_precision: _Optional[str] = ...) -> None: ...

class RecommendStrategyResponse(_message.Message):
    __slots__ = ("strategies", "recommendations", "baseline_size_mb", "baseline_latency_p50_ms", "device_name", "isa_class", "note")
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    BASELINE_LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[CompressionStrategy]
    recommendations: _containers.RepeatedCompositeFieldContainer[Recommendation]
    baseline_size_mb: float
    baseline_latency_p50_ms: float
    device_name: str
    isa_class: str
    note: str
    def __init__(self, strategies: _Optional[_Iterable[_Union[CompressionStrategy, _Mapping]]] = ..., recommendations: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ..., baseline_size_mb: _Optional[float] = ..., baseline_latency_p50_ms: _Optional[float] = ..., device_name: _Optional[str] = ..., isa_class: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "spec")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    spec: _common_pb2.EvaluationSpec
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., spec: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _common_pb2.ModelMetrics
    def __init__(self, metrics: _Optional[_Union[_common_pb2.ModelMetrics, _Mapping]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("models", "baseline_index", "spec", "threshold_set")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SET_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    baseline_index: int
    spec: _common_pb2.EvaluationSpec
    threshold_set: str
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ..., baseline_index: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ..., threshold_set: _Optional[str] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("metrics", "comparison")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelMetrics]
    comparison: _common_pb2.Comparison
    def __init__(self, metrics: _Optional[_Iterable[_Union[_common_pb2.ModelMetrics, _Mapping]]] = ..., comparison: _Optional[_Union[_common_pb2.Comparison, _Mapping]] = ...) -> None: ...

class ListThresholdSetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListThresholdSetsResponse(_message.Message):
    __slots__ = ("threshold_sets",)
    THRESHOLD_SETS_FIELD_NUMBER: _ClassVar[int]
    threshold_sets: _containers.RepeatedCompositeFieldContainer[_common_pb2.ThresholdSet]
    def __init__(self, threshold_sets: _Optional[_Iterable[_Union[_common_pb2.ThresholdSet, _Mapping]]] = ...) -> None: ...

class ListBenchmarksRequest(_message.Message):
    __slots__ = ("model", "device", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    device: str
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., device: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBenchmarksResponse(_message.Message):
    __slots__ = ("benchmarks", "next_page_token")
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    benchmarks: _containers.RepeatedCompositeFieldContainer[_common_pb2.HardwareBenchmark]
    next_page_token: str
    def __init__(self, benchmarks: _Optional[_Iterable[_Union[_common_pb2.HardwareBenchmark, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RunBenchmarkRequest(_message.Message):
    __slots__ = ("model", "batch_sizes", "sequence_lengths", "iterations", "threads")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    sequence_lengths: _containers.RepeatedScalarFieldContainer[int]
    iterations: int
    threads: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., sequence_lengths: _Optional[_Iterable[int]] = ..., iterations: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class RunBenchmarkResponse(_message.Message):
    __slots__ = ("benchmarks",)
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    benchmarks: _containers.RepeatedCompositeFieldContainer[_common_pb2.HardwareBenchmark]
    def __init__(self, benchmarks: _Optional[_Iterable[_Union[_common_pb2.HardwareBenchmark, _Mapping]]] = ...) -> None: ...

class GetResultRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetResultResponse(_message.Message):
    __slots__ = ("result", "artifact")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    result: _common_pb2.CompressionResult
    artifact: _common_pb2.ArtifactRef
    def __init__(self, result: _Optional[_Union[_common_pb2.CompressionResult, _Mapping]] = ..., artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "job_id")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    job_id: str
    def __init__(self, artifact_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class DownloadArtifactResponse(_message.Message):
    __slots__ = ("artifact", "chunk")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ArtifactRef
    chunk: bytes
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DeployResultRequest(_message.Message):
    __slots__ = ("job_id", "target", "artifact_id", "name", "replicas", "config", "shadow_share")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    target: str
    artifact_id: str
    name: str
    replicas: int
    config: _struct_pb2.Struct
    shadow_share: float
    def __init__(self, job_id: _Optional[str] = ..., target: _Optional[str] = ..., artifact_id: _Optional[str] = ..., name: _Optional[str] = ..., replicas: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., shadow_share: _Optional[float] = ...) -> None: ...

class DeployResultResponse(_message.Message):
    __slots__ = ("endpoint", "deployment")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    deployment: _common_pb2.Deployment
    def __init__(self, endpoint: _Optional[str] = ..., deployment: _Optional[_Union[_common_pb2.Deployment, _Mapping]] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[_common_pb2.Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[_common_pb2.Deployment, _Mapping]]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _common_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_common_pb2.Deployment, _Mapping]] = ...) -> None: ...

class UpdateDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id", "replicas", "config")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    replicas: int
    config: _struct_pb2.Struct
    def __init__(self, deployment_id: _Optional[str] = ..., replicas: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _common_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_common_pb2.Deployment, _Mapping]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job_id", "format", "comparison_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    format: str
    comparison_id: str
    def __init__(self, job_id: _Optional[str] = ..., format: _Optional[str] = ..., comparison_id: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("content_type", "content")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    content: bytes
    def __init__(self, content_type: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class OptimizeModelRequest(_message.Message):
    __slots__ = ("model", "engine", "precision", "options", "evaluation", "name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    engine: str
    precision: str
    options: _struct_pb2.Struct
    evaluation: _common_pb2.EvaluationSpec
    name: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., engine: _Optional[str] = ..., precision: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., evaluation: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class OptimizeModelResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class ListEnginesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnginesResponse(_message.Message):
    __slots__ = ("engines", "workers")
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[_common_pb2.EngineInfo]
    workers: _containers.RepeatedCompositeFieldContainer[_common_pb2.WorkerHardware]
    def __init__(self, engines: _Optional[_Iterable[_Union[_common_pb2.EngineInfo, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[_common_pb2.WorkerHardware, _Mapping]]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("name", "format", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: _common_pb2.ArtifactFormat
    sha256: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[_common_pb2.ArtifactFormat, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadModelResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ArtifactRef
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("artifact_id",)
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    def __init__(self, artifact_id: _Optional[str] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("artifact", "stages")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ArtifactSummary
    stages: _containers.RepeatedCompositeFieldContainer[_common_pb2.LineageStage]
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ArtifactSummary, _Mapping]] = ..., stages: _Optional[_Iterable[_Union[_common_pb2.LineageStage, _Mapping]]] = ...) -> None: ...

class TagArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "tag")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    tag: str
    def __init__(self, artifact_id: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class TagArtifactResponse(_message.Message):
    __slots__ = ("artifact", "tag")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    artifact: _common_pb2.ArtifactSummary
    tag: str
    def __init__(self, artifact: _Optional[_Union[_common_pb2.ArtifactSummary, _Mapping]] = ..., tag: _Optional[str] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("tag", "model", "recipe", "page_size", "page_token")
    TAG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tag: str
    model: str
    recipe: str
    page_size: int
    page_token: str
    def __init__(self, tag: _Optional[str] = ..., model: _Optional[str] = ..., recipe: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts", "next_page_token")
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactSummary]
    next_page_token: str
    def __init__(self, artifacts: _Optional[_Iterable[_Union[_common_pb2.ArtifactSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteArtifactRequest(_message.Message):
    __slots__ = ("artifact_id",)
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    def __init__(self, artifact_id: _Optional[str] = ...) -> None: ...

class DeleteArtifactResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class CreateRecipeRequest(_message.Message):
    __slots__ = ("pipeline",)
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    pipeline: _common_pb2.Pipeline
    def __init__(self, pipeline: _Optional[_Union[_common_pb2.Pipeline, _Mapping]] = ...) -> None: ...

class CreateRecipeResponse(_message.Message):
    __slots__ = ("recipe",)
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    recipe: Recipe
    def __init__(self, recipe: _Optional[_Union[Recipe, _Mapping]] = ...) -> None: ...

class GetRecipeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRecipeResponse(_message.Message):
    __slots__ = ("recipe",)
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    recipe: Recipe
    def __init__(self, recipe: _Optional[_Union[Recipe, _Mapping]] = ...) -> None: ...

class DeleteRecipeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRecipeResponse(_message.Message):
    __slots__ = ("deleted_versions",)
    DELETED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_versions: int
    def __init__(self, deleted_versions: _Optional[int] = ...) -> None: ...
