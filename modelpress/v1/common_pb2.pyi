import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_FORMAT_UNSPECIFIED: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_HF_SAFETENSORS: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_PACKED_SAFETENSORS: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_COMPRESSED_TENSORS: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_ONNX: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_OPENVINO_IR: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_GGUF: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_TENSORRT: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_DATASET_JSONL: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_REPORT: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_TRAINING_CHECKPOINT: _ClassVar[ArtifactFormat]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Technique(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TECHNIQUE_UNSPECIFIED: _ClassVar[Technique]
    TECHNIQUE_QUANTIZER: _ClassVar[Technique]
    TECHNIQUE_PRUNER: _ClassVar[Technique]
    TECHNIQUE_DISTILLER: _ClassVar[Technique]
    TECHNIQUE_EVALUATOR: _ClassVar[Technique]
    TECHNIQUE_OPTIMIZER: _ClassVar[Technique]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_JOB_STATE: _ClassVar[EventKind]
    EVENT_KIND_STAGE_STARTED: _ClassVar[EventKind]
    EVENT_KIND_STAGE_PROGRESS: _ClassVar[EventKind]
    EVENT_KIND_STAGE_FINISHED: _ClassVar[EventKind]
    EVENT_KIND_LOG: _ClassVar[EventKind]

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_BOOL: _ClassVar[FieldType]
    FIELD_TYPE_INT: _ClassVar[FieldType]
    FIELD_TYPE_FLOAT: _ClassVar[FieldType]
    FIELD_TYPE_STRING: _ClassVar[FieldType]

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_PENDING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_SERVING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]
ARTIFACT_FORMAT_UNSPECIFIED: ArtifactFormat
ARTIFACT_FORMAT_HF_SAFETENSORS: ArtifactFormat
ARTIFACT_FORMAT_PACKED_SAFETENSORS: ArtifactFormat
ARTIFACT_FORMAT_COMPRESSED_TENSORS: ArtifactFormat
ARTIFACT_FORMAT_ONNX: ArtifactFormat
ARTIFACT_FORMAT_OPENVINO_IR: ArtifactFormat
ARTIFACT_FORMAT_GGUF: ArtifactFormat
ARTIFACT_FORMAT_TENSORRT: ArtifactFormat
ARTIFACT_FORMAT_DATASET_JSONL: ArtifactFormat
ARTIFACT_FORMAT_REPORT: ArtifactFormat
ARTIFACT_FORMAT_TRAINING_CHECKPOINT: ArtifactFormat
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
TECHNIQUE_UNSPECIFIED: Technique
TECHNIQUE_QUANTIZER: Technique
TECHNIQUE_PRUNER: Technique
TECHNIQUE_DISTILLER: Technique
TECHNIQUE_EVALUATOR: Technique
TECHNIQUE_OPTIMIZER: Technique
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_JOB_STATE: EventKind
EVENT_KIND_STAGE_STARTED: EventKind
EVENT_KIND_STAGE_PROGRESS: EventKind
EVENT_KIND_STAGE_FINISHED: EventKind
EVENT_KIND_LOG: EventKind
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_BOOL: FieldType
FIELD_TYPE_INT: FieldType
FIELD_TYPE_FLOAT: FieldType
FIELD_TYPE_STRING: FieldType
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_PENDING: DeploymentState
DEPLOYMENT_STATE_SERVING: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState

class ArtifactRef(_message.Message):
    __slots__ = ("id", "sha256", "size_bytes", "format")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    size_bytes: int
    format: ArtifactFormat
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[_Union[ArtifactFormat, str]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("artifact_id", "builtin", "path")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    builtin: str
    path: str
    def __init__(self, artifact_id: _Optional[str] = ..., builtin: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StageSpec(_message.Message):
    __slots__ = ("technique", "method", "config", "name", "gate", "gate_checks")
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    GATE_CHECKS_FIELD_NUMBER: _ClassVar[int]
    technique: Technique
    method: str
    config: _struct_pb2.Struct
    name: str
    gate: str
    gate_checks: _containers.RepeatedCompositeFieldContainer[ThresholdCheck]
    def __init__(self, technique: _Optional[_Union[Technique, str]] = ..., method: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., name: _Optional[str] = ..., gate: _Optional[str] = ..., gate_checks: _Optional[_Iterable[_Union[ThresholdCheck, _Mapping]]] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("name", "summary", "stages")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    summary: str
    stages: _containers.RepeatedCompositeFieldContainer[StageSpec]
    def __init__(self, name: _Optional[str] = ..., summary: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageSpec, _Mapping]]] = ...) -> None: ...

class StageStatus(_message.Message):
    __slots__ = ("index", "spec", "state", "output", "error", "started_at", "finished_at", "metrics", "worker", "notes", "reused", "key")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    index: int
    spec: StageSpec
    state: JobState
    output: ArtifactRef
    error: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    metrics: _struct_pb2.Struct
    worker: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    reused: bool
    key: str
    def __init__(self, index: _Optional[int] = ..., spec: _Optional[_Union[StageSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., output: _Optional[_Union[ArtifactRef, _Mapping]] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., worker: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., reused: _Optional[bool] = ..., key: _Optional[str] = ...) -> None: ...

class EvaluationSpec(_message.Message):
    __slots__ = ("skip", "batch_size", "sequence_length", "latency_iterations", "quality_windows", "threads", "batch_sizes", "sequence_lengths", "decode_tokens", "quality_sentences", "reference", "quality_split")
    SKIP_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SENTENCES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SPLIT_FIELD_NUMBER: _ClassVar[int]
    skip: bool
    batch_size: int
    sequence_length: int
    latency_iterations: int
    quality_windows: int
    threads: int
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    sequence_lengths: _containers.RepeatedScalarFieldContainer[int]
    decode_tokens: int
    quality_sentences: int
    reference: ModelRef
    quality_split: str
    def __init__(self, skip: _Optional[bool] = ..., batch_size: _Optional[int] = ..., sequence_length: _Optional[int] = ..., latency_iterations: _Optional[int] = ..., quality_windows: _Optional[int] = ..., threads: _Optional[int] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., sequence_lengths: _Optional[_Iterable[int]] = ..., decode_tokens: _Optional[int] = ..., quality_sentences: _Optional[int] = ..., reference: _Optional[_Union[ModelRef, _Mapping]] = ..., quality_split: _Optional[str] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "iterations", "batch_size", "sequence_length", "threads", "stdev_ms", "min_ms", "max_ms", "tokens_per_s", "samples_per_s", "phase", "warmup", "samples_ms", "p50_ci95_low_ms", "p50_ci95_high_ms", "unreliable", "unreliable_reason")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    STDEV_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_MS_FIELD_NUMBER: _ClassVar[int]
    P50_CI95_LOW_MS_FIELD_NUMBER: _ClassVar[int]
    P50_CI95_HIGH_MS_FIELD_NUMBER: _ClassVar[int]
    UNRELIABLE_FIELD_NUMBER: _ClassVar[int]
    UNRELIABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    batch_size: int
    sequence_length: int
    threads: int
    stdev_ms: float
    min_ms: float
    max_ms: float
    tokens_per_s: float
    samples_per_s: float
    phase: str
    warmup: int
    samples_ms: _containers.RepeatedScalarFieldContainer[float]
    p50_ci95_low_ms: float
    p50_ci95_high_ms: float
    unreliable: bool
    unreliable_reason: str
    def __init__(self, p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., iterations: _Optional[int] = ..., batch_size: _Optional[int] = ..., sequence_length: _Optional[int] = ..., threads: _Optional[int] = ..., stdev_ms: _Optional[float] = ..., min_ms: _Optional[float] = ..., max_ms: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., phase: _Optional[str] = ..., warmup: _Optional[int] = ..., samples_ms: _Optional[_Iterable[float]] = ..., p50_ci95_low_ms: _Optional[float] = ..., p50_ci95_high_ms: _Optional[float] = ..., unreliable: _Optional[bool] = ..., unreliable_reason: _Optional[str] = ...) -> None: ...

class MachineLoad(_message.Message):
    __slots__ = ("load_average_1m", "others_cpu_share", "steal_share", "seconds", "logical_cores")
    LOAD_AVERAGE_1M_FIELD_NUMBER: _ClassVar[int]
    OTHERS_CPU_SHARE_FIELD_NUMBER: _ClassVar[int]
    STEAL_SHARE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    load_average_1m: float
    others_cpu_share: float
    steal_share: float
    seconds: float
    logical_cores: int
    def __init__(self, load_average_1m: _Optional[float] = ..., others_cpu_share: _Optional[float] = ..., steal_share: _Optional[float] = ..., seconds: _Optional[float] = ..., logical_cores: _Optional[int] = ...) -> None: ...

class SpeedRatio(_message.Message):
    __slots__ = ("phase", "speedup", "ci95_low", "ci95_high", "rounds", "unreliable", "unreliable_reason")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    CI95_LOW_FIELD_NUMBER: _ClassVar[int]
    CI95_HIGH_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    UNRELIABLE_FIELD_NUMBER: _ClassVar[int]
    UNRELIABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    phase: str
    speedup: float
    ci95_low: float
    ci95_high: float
    rounds: int
    unreliable: bool
    unreliable_reason: str
    def __init__(self, phase: _Optional[str] = ..., speedup: _Optional[float] = ..., ci95_low: _Optional[float] = ..., ci95_high: _Optional[float] = ..., rounds: _Optional[int] = ..., unreliable: _Optional[bool] = ..., unreliable_reason: _Optional[str] = ...) -> None: ...

class EncoderQuality(_message.Message):
    __slots__ = ("sentences", "topics", "knn_topic_accuracy", "knn_k", "mean_reference_cosine", "min_reference_cosine", "neighbour_agreement", "has_reference", "same_tokenization")
    SENTENCES_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    KNN_TOPIC_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    KNN_K_FIELD_NUMBER: _ClassVar[int]
    MEAN_REFERENCE_COSINE_FIELD_NUMBER: _ClassVar[int]
    MIN_REFERENCE_COSINE_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    HAS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SAME_TOKENIZATION_FIELD_NUMBER: _ClassVar[int]
    sentences: int
    topics: int
    knn_topic_accuracy: float
    knn_k: int
    mean_reference_cosine: float
    min_reference_cosine: float
    neighbour_agreement: float
    has_reference: bool
    same_tokenization: float
    def __init__(self, sentences: _Optional[int] = ..., topics: _Optional[int] = ..., knn_topic_accuracy: _Optional[float] = ..., knn_k: _Optional[int] = ..., mean_reference_cosine: _Optional[float] = ..., min_reference_cosine: _Optional[float] = ..., neighbour_agreement: _Optional[float] = ..., has_reference: _Optional[bool] = ..., same_tokenization: _Optional[float] = ...) -> None: ...

class MachineInfo(_message.Message):
    __slots__ = ("cpu_model", "logical_cores", "physical_cores", "isa_features", "memory_mb", "gpu_name", "gpu_memory_mb", "torch_version", "hostname", "device_type", "isa_class")
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    ISA_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    cpu_model: str
    logical_cores: int
    physical_cores: int
    isa_features: _containers.RepeatedScalarFieldContainer[str]
    memory_mb: float
    gpu_name: str
    gpu_memory_mb: float
    torch_version: str
    hostname: str
    device_type: str
    isa_class: str
    def __init__(self, cpu_model: _Optional[str] = ..., logical_cores: _Optional[int] = ..., physical_cores: _Optional[int] = ..., isa_features: _Optional[_Iterable[str]] = ..., memory_mb: _Optional[float] = ..., gpu_name: _Optional[str] = ..., gpu_memory_mb: _Optional[float] = ..., torch_version: _Optional[str] = ..., hostname: _Optional[str] = ..., device_type: _Optional[str] = ..., isa_class: _Optional[str] = ...) -> None: ...

class ModelMetrics(_message.Message):
    __slots__ = ("size_on_disk_bytes", "parameters", "latency", "peak_rss_mb", "perplexity", "top1_accuracy", "quality_tokens", "architecture", "device", "parameter_bytes", "flops", "kind", "latency_grid", "decode", "encoder", "cuda_max_memory_mb", "machine", "timing_load", "not_measured")
    class NotMeasuredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SIZE_ON_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    TOP1_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_GRID_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    CUDA_MAX_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    TIMING_LOAD_FIELD_NUMBER: _ClassVar[int]
    NOT_MEASURED_FIELD_NUMBER: _ClassVar[int]
    size_on_disk_bytes: int
    parameters: int
    latency: LatencyStats
    peak_rss_mb: float
    perplexity: float
    top1_accuracy: float
    quality_tokens: int
    architecture: str
    device: str
    parameter_bytes: int
    flops: int
    kind: str
    latency_grid: _containers.RepeatedCompositeFieldContainer[LatencyStats]
    decode: LatencyStats
    encoder: EncoderQuality
    cuda_max_memory_mb: float
    machine: MachineInfo
    timing_load: MachineLoad
    not_measured: _containers.ScalarMap[str, str]
    def __init__(self, size_on_disk_bytes: _Optional[int] = ..., parameters: _Optional[int] = ..., latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., peak_rss_mb: _Optional[float] = ..., perplexity: _Optional[float] = ..., top1_accuracy: _Optional[float] = ..., quality_tokens: _Optional[int] = ..., architecture: _Optional[str] = ..., device: _Optional[str] = ..., parameter_bytes: _Optional[int] = ..., flops: _Optional[int] = ..., kind: _Optional[str] = ..., latency_grid: _Optional[_Iterable[_Union[LatencyStats, _Mapping]]] = ..., decode: _Optional[_Union[LatencyStats, _Mapping]] = ..., encoder: _Optional[_Union[EncoderQuality, _Mapping]] = ..., cuda_max_memory_mb: _Optional[float] = ..., machine: _Optional[_Union[MachineInfo, _Mapping]] = ..., timing_load: _Optional[_Union[MachineLoad, _Mapping]] = ..., not_measured: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HardwareBenchmark(_message.Message):
    __slots__ = ("device_name", "device_type", "batch_size", "sequence_length", "throughput", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "memory_usage_mb", "power_consumption_w", "model", "benchmark_id", "recorded_at", "machine", "threads", "phase", "samples_per_s", "latency_stdev_ms", "iterations")
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_MB_FIELD_NUMBER: _ClassVar[int]
    POWER_CONSUMPTION_W_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_STDEV_MS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    device_name: str
    device_type: str
    batch_size: int
    sequence_length: int
    throughput: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    memory_usage_mb: float
    power_consumption_w: float
    model: str
    benchmark_id: str
    recorded_at: _timestamp_pb2.Timestamp
    machine: MachineInfo
    threads: int
    phase: str
    samples_per_s: float
    latency_stdev_ms: float
    iterations: int
    def __init__(self, device_name: _Optional[str] = ..., device_type: _Optional[str] = ..., batch_size: _Optional[int] = ..., sequence_length: _Optional[int] = ..., throughput: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., memory_usage_mb: _Optional[float] = ..., power_consumption_w: _Optional[float] = ..., model: _Optional[str] = ..., benchmark_id: _Optional[str] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., machine: _Optional[_Union[MachineInfo, _Mapping]] = ..., threads: _Optional[int] = ..., phase: _Optional[str] = ..., samples_per_s: _Optional[float] = ..., latency_stdev_ms: _Optional[float] = ..., iterations: _Optional[int] = ...) -> None: ...

class ThresholdCheck(_message.Message):
    __slots__ = ("metric", "description", "value", "threshold", "comparison", "passed", "not_measured")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    NOT_MEASURED_FIELD_NUMBER: _ClassVar[int]
    metric: str
    description: str
    value: float
    threshold: float
    comparison: str
    passed: bool
    not_measured: str
    def __init__(self, metric: _Optional[str] = ..., description: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., comparison: _Optional[str] = ..., passed: _Optional[bool] = ..., not_measured: _Optional[str] = ...) -> None: ...

class ThresholdSet(_message.Message):
    __slots__ = ("name", "description", "checks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    checks: _containers.RepeatedCompositeFieldContainer[ThresholdCheck]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[ThresholdCheck, _Mapping]]] = ...) -> None: ...

class ComparisonRow(_message.Message):
    __slots__ = ("index", "model", "baseline", "metrics", "size_ratio", "parameter_ratio", "flops_ratio", "latency_ratio", "speedup", "memory_ratio", "quality_retention", "quality_metric", "checks", "passed", "speed", "not_measured")
    class NotMeasuredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SIZE_RATIO_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_RATIO_FIELD_NUMBER: _ClassVar[int]
    FLOPS_RATIO_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RATIO_FIELD_NUMBER: _ClassVar[int]
    QUALITY_RETENTION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_METRIC_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    NOT_MEASURED_FIELD_NUMBER: _ClassVar[int]
    index: int
    model: str
    baseline: bool
    metrics: ModelMetrics
    size_ratio: float
    parameter_ratio: float
    flops_ratio: float
    latency_ratio: float
    speedup: float
    memory_ratio: float
    quality_retention: float
    quality_metric: str
    checks: _containers.RepeatedCompositeFieldContainer[ThresholdCheck]
    passed: bool
    speed: _containers.RepeatedCompositeFieldContainer[SpeedRatio]
    not_measured: _containers.ScalarMap[str, str]
    def __init__(self, index: _Optional[int] = ..., model: _Optional[str] = ..., baseline: _Optional[bool] = ..., metrics: _Optional[_Union[ModelMetrics, _Mapping]] = ..., size_ratio: _Optional[float] = ..., parameter_ratio: _Optional[float] = ..., flops_ratio: _Optional[float] = ..., latency_ratio: _Optional[float] = ..., speedup: _Optional[float] = ..., memory_ratio: _Optional[float] = ..., quality_retention: _Optional[float] = ..., quality_metric: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[ThresholdCheck, _Mapping]]] = ..., passed: _Optional[bool] = ..., speed: _Optional[_Iterable[_Union[SpeedRatio, _Mapping]]] = ..., not_measured: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("comparison_id", "baseline_index", "threshold_set", "rows", "interleaved_rounds", "machine", "report", "created_at", "load")
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    BASELINE_INDEX_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SET_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INTERLEAVED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    comparison_id: str
    baseline_index: int
    threshold_set: str
    rows: _containers.RepeatedCompositeFieldContainer[ComparisonRow]
    interleaved_rounds: int
    machine: MachineInfo
    report: ArtifactRef
    created_at: _timestamp_pb2.Timestamp
    load: MachineLoad
    def __init__(self, comparison_id: _Optional[str] = ..., baseline_index: _Optional[int] = ..., threshold_set: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[ComparisonRow, _Mapping]]] = ..., interleaved_rounds: _Optional[int] = ..., machine: _Optional[_Union[MachineInfo, _Mapping]] = ..., report: _Optional[_Union[ArtifactRef, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., load: _Optional[_Union[MachineLoad, _Mapping]] = ...) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("name", "precisions", "available", "reason", "methods", "compute", "emulated")
    class MethodsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ComputeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    EMULATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    precisions: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    reason: str
    methods: _containers.ScalarMap[str, str]
    compute: _containers.ScalarMap[str, str]
    emulated: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., precisions: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., methods: _Optional[_Mapping[str, str]] = ..., compute: _Optional[_Mapping[str, str]] = ..., emulated: _Optional[_Iterable[str]] = ...) -> None: ...

class PrecisionSupport(_message.Message):
    __slots__ = ("precision", "accelerated", "emulated", "by", "note")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACCELERATED_FIELD_NUMBER: _ClassVar[int]
    EMULATED_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    precision: str
    accelerated: bool
    emulated: bool
    by: _containers.RepeatedScalarFieldContainer[str]
    note: str
    def __init__(self, precision: _Optional[str] = ..., accelerated: _Optional[bool] = ..., emulated: _Optional[bool] = ..., by: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ...) -> None: ...

class WorkerHardware(_message.Message):
    __slots__ = ("worker", "machine", "isa_class", "compute")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    worker: str
    machine: MachineInfo
    isa_class: str
    compute: _containers.RepeatedCompositeFieldContainer[PrecisionSupport]
    def __init__(self, worker: _Optional[str] = ..., machine: _Optional[_Union[MachineInfo, _Mapping]] = ..., isa_class: _Optional[str] = ..., compute: _Optional[_Iterable[_Union[PrecisionSupport, _Mapping]]] = ...) -> None: ...

class CompressionResult(_message.Message):
    __slots__ = ("job_id", "original_model_size_bytes", "compressed_model_size_bytes", "compression_ratio", "original_params", "compressed_params", "param_reduction_ratio", "original_latency_ms", "compressed_latency_ms", "latency_improvement", "original_memory_mb", "compressed_memory_mb", "memory_reduction", "original_accuracy", "compressed_accuracy", "accuracy_loss", "original_perplexity", "compressed_perplexity", "perplexity_increase", "compressed_artifact_id", "evaluation_report_path", "original", "compressed", "prefill_speedup", "decode_speedup", "original_decode_ms", "compressed_decode_ms", "timing_load", "headline", "not_measured")
    class NotMeasuredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_MODEL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_MODEL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_PARAMS_FIELD_NUMBER: _ClassVar[int]
    PARAM_REDUCTION_RATIO_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_INCREASE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_REPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    PREFILL_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    DECODE_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TIMING_LOAD_FIELD_NUMBER: _ClassVar[int]
    HEADLINE_FIELD_NUMBER: _ClassVar[int]
    NOT_MEASURED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    original_model_size_bytes: int
    compressed_model_size_bytes: int
    compression_ratio: float
    original_params: int
    compressed_params: int
    param_reduction_ratio: float
    original_latency_ms: float
    compressed_latency_ms: float
    latency_improvement: float
    original_memory_mb: float
    compressed_memory_mb: float
    memory_reduction: float
    original_accuracy: float
    compressed_accuracy: float
    accuracy_loss: float
    original_perplexity: float
    compressed_perplexity: float
    perplexity_increase: float
    compressed_artifact_id: str
    evaluation_report_path: str
    original: ModelMetrics
    compressed: ModelMetrics
    prefill_speedup: SpeedRatio
    decode_speedup: SpeedRatio
    original_decode_ms: float
    compressed_decode_ms: float
    timing_load: MachineLoad
    headline: Headline
    not_measured: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., original_model_size_bytes: _Optional[int] = ..., compressed_model_size_bytes: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., original_params: _Optional[int] = ..., compressed_params: _Optional[int] = ..., param_reduction_ratio: _Optional[float] = ..., original_latency_ms: _Optional[float] = ..., compressed_latency_ms: _Optional[float] = ..., latency_improvement: _Optional[float] = ..., original_memory_mb: _Optional[float] = ..., compressed_memory_mb: _Optional[float] = ..., memory_reduction: _Optional[float] = ..., original_accuracy: _Optional[float] = ..., compressed_accuracy: _Optional[float] = ..., accuracy_loss: _Optional[float] = ..., original_perplexity: _Optional[float] = ..., compressed_perplexity: _Optional[float] = ..., perplexity_increase: _Optional[float] = ..., compressed_artifact_id: _Optional[str] = ..., evaluation_report_path: _Optional[str] = ..., original: _Optional[_Union[ModelMetrics, _Mapping]] = ..., compressed: _Optional[_Union[ModelMetrics, _Mapping]] = ..., prefill_speedup: _Optional[_Union[SpeedRatio, _Mapping]] = ..., decode_speedup: _Optional[_Union[SpeedRatio, _Mapping]] = ..., original_decode_ms: _Optional[float] = ..., compressed_decode_ms: _Optional[float] = ..., timing_load: _Optional[_Union[MachineLoad, _Mapping]] = ..., headline: _Optional[_Union[Headline, _Mapping]] = ..., not_measured: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Headline(_message.Message):
    __slots__ = ("text", "colour", "regressions", "unreliable")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    COLOUR_FIELD_NUMBER: _ClassVar[int]
    REGRESSIONS_FIELD_NUMBER: _ClassVar[int]
    UNRELIABLE_FIELD_NUMBER: _ClassVar[int]
    text: str
    colour: str
    regressions: _containers.RepeatedScalarFieldContainer[str]
    unreliable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., colour: _Optional[str] = ..., regressions: _Optional[_Iterable[str]] = ..., unreliable: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "name", "model", "recipe", "stages", "state", "progress", "output", "result", "error", "evaluation", "created_at", "started_at", "finished_at", "artifact_ids", "recompute", "tenant", "search", "search_result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    SEARCH_RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    model: ModelRef
    recipe: str
    stages: _containers.RepeatedCompositeFieldContainer[StageStatus]
    state: JobState
    progress: float
    output: ArtifactRef
    result: CompressionResult
    error: str
    evaluation: EvaluationSpec
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    recompute: bool
    tenant: str
    search: SearchSpec
    search_result: SearchResult
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., recipe: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageStatus, _Mapping]]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., output: _Optional[_Union[ArtifactRef, _Mapping]] = ..., result: _Optional[_Union[CompressionResult, _Mapping]] = ..., error: _Optional[str] = ..., evaluation: _Optional[_Union[EvaluationSpec, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., recompute: _Optional[bool] = ..., tenant: _Optional[str] = ..., search: _Optional[_Union[SearchSpec, _Mapping]] = ..., search_result: _Optional[_Union[SearchResult, _Mapping]] = ...) -> None: ...

class SearchSpec(_message.Message):
    __slots__ = ("min_quality_kept", "min_speedup", "max_size_ratio", "max_memory_ratio", "objective", "phase", "budget_minutes", "techniques", "no_training", "no_calibration", "finishes", "deploy_as")
    MIN_QUALITY_KEPT_FIELD_NUMBER: _ClassVar[int]
    MIN_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_RATIO_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MINUTES_FIELD_NUMBER: _ClassVar[int]
    TECHNIQUES_FIELD_NUMBER: _ClassVar[int]
    NO_TRAINING_FIELD_NUMBER: _ClassVar[int]
    NO_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    FINISHES_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_AS_FIELD_NUMBER: _ClassVar[int]
    min_quality_kept: float
    min_speedup: float
    max_size_ratio: float
    max_memory_ratio: float
    objective: str
    phase: str
    budget_minutes: float
    techniques: _containers.RepeatedScalarFieldContainer[Technique]
    no_training: bool
    no_calibration: bool
    finishes: _containers.RepeatedScalarFieldContainer[str]
    deploy_as: str
    def __init__(self, min_quality_kept: _Optional[float] = ..., min_speedup: _Optional[float] = ..., max_size_ratio: _Optional[float] = ..., max_memory_ratio: _Optional[float] = ..., objective: _Optional[str] = ..., phase: _Optional[str] = ..., budget_minutes: _Optional[float] = ..., techniques: _Optional[_Iterable[_Union[Technique, str]]] = ..., no_training: _Optional[bool] = ..., no_calibration: _Optional[bool] = ..., finishes: _Optional[_Iterable[str]] = ..., deploy_as: _Optional[str] = ...) -> None: ...

class SearchTrial(_message.Message):
    __slots__ = ("candidate", "fidelity", "job_id", "quality_kept", "speedup", "size_ratio", "memory_ratio", "error", "reused", "pending", "seconds")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    QUALITY_KEPT_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    SIZE_RATIO_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RATIO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    candidate: str
    fidelity: str
    job_id: str
    quality_kept: float
    speedup: SpeedRatio
    size_ratio: float
    memory_ratio: float
    error: str
    reused: bool
    pending: bool
    seconds: float
    def __init__(self, candidate: _Optional[str] = ..., fidelity: _Optional[str] = ..., job_id: _Optional[str] = ..., quality_kept: _Optional[float] = ..., speedup: _Optional[_Union[SpeedRatio, _Mapping]] = ..., size_ratio: _Optional[float] = ..., memory_ratio: _Optional[float] = ..., error: _Optional[str] = ..., reused: _Optional[bool] = ..., pending: _Optional[bool] = ..., seconds: _Optional[float] = ...) -> None: ...

class SearchCandidate(_message.Message):
    __slots__ = ("name", "stages", "dropped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    stages: _containers.RepeatedCompositeFieldContainer[StageSpec]
    dropped: str
    def __init__(self, name: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageSpec, _Mapping]]] = ..., dropped: _Optional[str] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("candidates", "trials", "left_out", "winner", "recipe", "best_builtin", "stopped_early", "isa_class", "deployment_id", "deploy_error", "tag")
    class LeftOutEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    BEST_BUILTIN_FIELD_NUMBER: _ClassVar[int]
    STOPPED_EARLY_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_ERROR_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[SearchCandidate]
    trials: _containers.RepeatedCompositeFieldContainer[SearchTrial]
    left_out: _containers.ScalarMap[str, str]
    winner: str
    recipe: str
    best_builtin: str
    stopped_early: str
    isa_class: str
    deployment_id: str
    deploy_error: str
    tag: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[SearchCandidate, _Mapping]]] = ..., trials: _Optional[_Iterable[_Union[SearchTrial, _Mapping]]] = ..., left_out: _Optional[_Mapping[str, str]] = ..., winner: _Optional[str] = ..., recipe: _Optional[str] = ..., best_builtin: _Optional[str] = ..., stopped_early: _Optional[str] = ..., isa_class: _Optional[str] = ..., deployment_id: _Optional[str] = ..., deploy_error: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class FastestCpuChoice(_message.Message):
    __slots__ = ("model_kind", "isa_class", "recipe", "search_job_id", "measured", "phase", "measured_at")
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    ISA_CLASS_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_FIELD_NUMBER: _ClassVar[int]
    model_kind: str
    isa_class: str
    recipe: str
    search_job_id: str
    measured: SearchTrial
    phase: str
    measured_at: _timestamp_pb2.Timestamp
    def __init__(self, model_kind: _Optional[str] = ..., isa_class: _Optional[str] = ..., recipe: _Optional[str] = ..., search_job_id: _Optional[str] = ..., measured: _Optional[_Union[SearchTrial, _Mapping]] = ..., phase: _Optional[str] = ..., measured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "kind", "job_state", "stage_index", "stage_name", "message", "stage_progress", "step", "total_steps", "metrics")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    STAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    kind: EventKind
    job_state: JobState
    stage_index: int
    stage_name: str
    message: str
    stage_progress: float
    step: int
    total_steps: int
    metrics: _struct_pb2.Struct
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[EventKind, str]] = ..., job_state: _Optional[_Union[JobState, str]] = ..., stage_index: _Optional[int] = ..., stage_name: _Optional[str] = ..., message: _Optional[str] = ..., stage_progress: _Optional[float] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("job_id", "stage_index", "input", "method", "config", "recompute", "original")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stage_index: int
    input: ModelRef
    method: str
    config: _struct_pb2.Struct
    recompute: bool
    original: ModelRef
    def __init__(self, job_id: _Optional[str] = ..., stage_index: _Optional[int] = ..., input: _Optional[_Union[ModelRef, _Mapping]] = ..., method: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recompute: _Optional[bool] = ..., original: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class StageProgress(_message.Message):
    __slots__ = ("message", "progress", "step", "total_steps", "metrics")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    message: str
    progress: float
    step: int
    total_steps: int
    metrics: _struct_pb2.Struct
    def __init__(self, message: _Optional[str] = ..., progress: _Optional[float] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StageOutput(_message.Message):
    __slots__ = ("artifact", "metrics", "worker", "notes", "reused", "key")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    artifact: ArtifactRef
    metrics: _struct_pb2.Struct
    worker: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    reused: bool
    key: str
    def __init__(self, artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., worker: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., reused: _Optional[bool] = ..., key: _Optional[str] = ...) -> None: ...

class StageUpdate(_message.Message):
    __slots__ = ("progress", "output")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    progress: StageProgress
    output: StageOutput
    def __init__(self, progress: _Optional[_Union[StageProgress, _Mapping]] = ..., output: _Optional[_Union[StageOutput, _Mapping]] = ...) -> None: ...

class ConfigField(_message.Message):
    __slots__ = ("name", "type", "default_value", "choices", "minimum", "maximum", "help")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    default_value: _struct_pb2.Value
    choices: _containers.RepeatedScalarFieldContainer[str]
    minimum: float
    maximum: float
    help: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ..., default_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., choices: _Optional[_Iterable[str]] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., help: _Optional[str] = ...) -> None: ...

class MethodDescription(_message.Message):
    __slots__ = ("technique", "name", "summary", "fields", "accepts", "produces", "inputs", "progress_metrics", "model_kinds")
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_FIELD_NUMBER: _ClassVar[int]
    PRODUCES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_METRICS_FIELD_NUMBER: _ClassVar[int]
    MODEL_KINDS_FIELD_NUMBER: _ClassVar[int]
    technique: Technique
    name: str
    summary: str
    fields: _containers.RepeatedCompositeFieldContainer[ConfigField]
    accepts: _containers.RepeatedScalarFieldContainer[ArtifactFormat]
    produces: _containers.RepeatedScalarFieldContainer[ArtifactFormat]
    inputs: _containers.RepeatedCompositeFieldContainer[ArtifactInput]
    progress_metrics: _containers.RepeatedCompositeFieldContainer[ProgressMetric]
    model_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, technique: _Optional[_Union[Technique, str]] = ..., name: _Optional[str] = ..., summary: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[ConfigField, _Mapping]]] = ..., accepts: _Optional[_Iterable[_Union[ArtifactFormat, str]]] = ..., produces: _Optional[_Iterable[_Union[ArtifactFormat, str]]] = ..., inputs: _Optional[_Iterable[_Union[ArtifactInput, _Mapping]]] = ..., progress_metrics: _Optional[_Iterable[_Union[ProgressMetric, _Mapping]]] = ..., model_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class ArtifactInput(_message.Message):
    __slots__ = ("field", "formats", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    formats: _containers.RepeatedScalarFieldContainer[ArtifactFormat]
    description: str
    def __init__(self, field: _Optional[str] = ..., formats: _Optional[_Iterable[_Union[ArtifactFormat, str]]] = ..., description: _Optional[str] = ...) -> None: ...

class ProgressMetric(_message.Message):
    __slots__ = ("name", "kind", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    description: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ServiceDescription(_message.Message):
    __slots__ = ("technique", "methods", "version", "hardware")
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    technique: Technique
    methods: _containers.RepeatedCompositeFieldContainer[MethodDescription]
    version: str
    hardware: WorkerHardware
    def __init__(self, technique: _Optional[_Union[Technique, str]] = ..., methods: _Optional[_Iterable[_Union[MethodDescription, _Mapping]]] = ..., version: _Optional[str] = ..., hardware: _Optional[_Union[WorkerHardware, _Mapping]] = ...) -> None: ...

class LineageStage(_message.Message):
    __slots__ = ("technique", "method", "config", "input", "input_digest", "service_version", "versions", "key", "worker", "format", "metrics", "job_id", "stage_index")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    technique: str
    method: str
    config: _struct_pb2.Struct
    input: str
    input_digest: str
    service_version: str
    versions: _containers.ScalarMap[str, str]
    key: str
    worker: str
    format: str
    metrics: _struct_pb2.Struct
    job_id: str
    stage_index: int
    def __init__(self, technique: _Optional[str] = ..., method: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., input: _Optional[str] = ..., input_digest: _Optional[str] = ..., service_version: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., key: _Optional[str] = ..., worker: _Optional[str] = ..., format: _Optional[str] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., job_id: _Optional[str] = ..., stage_index: _Optional[int] = ...) -> None: ...

class ArtifactSummary(_message.Message):
    __slots__ = ("artifact", "base_model", "methods", "tags", "recipes")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    artifact: ArtifactRef
    base_model: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    recipes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., base_model: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[str]] = ..., recipes: _Optional[_Iterable[str]] = ...) -> None: ...

class DeploymentEndpoint(_message.Message):
    __slots__ = ("protocol", "address", "replica")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    address: str
    replica: str
    def __init__(self, protocol: _Optional[str] = ..., address: _Optional[str] = ..., replica: _Optional[str] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("deployment_id", "name", "tenant", "artifact_id", "job_id", "state", "replicas", "ready_replicas", "config", "endpoints", "status", "message", "model_kind", "format", "created_at", "shadow", "shadow_share")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    name: str
    tenant: str
    artifact_id: str
    job_id: str
    state: DeploymentState
    replicas: int
    ready_replicas: int
    config: _struct_pb2.Struct
    endpoints: _containers.RepeatedCompositeFieldContainer[DeploymentEndpoint]
    status: _struct_pb2.Struct
    message: str
    model_kind: str
    format: ArtifactFormat
    created_at: _timestamp_pb2.Timestamp
    shadow: ModelRef
    shadow_share: float
    def __init__(self, deployment_id: _Optional[str] = ..., name: _Optional[str] = ..., tenant: _Optional[str] = ..., artifact_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[DeploymentEndpoint, _Mapping]]] = ..., status: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., message: _Optional[str] = ..., model_kind: _Optional[str] = ..., format: _Optional[_Union[ArtifactFormat, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., shadow: _Optional[_Union[ModelRef, _Mapping]] = ..., shadow_share: _Optional[float] = ...) -> None: ...
