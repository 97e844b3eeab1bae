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
ARTIFACT_FORMAT_UNSPECIFIED: ArtifactFormat
ARTIFACT_FORMAT_HF_SAFETENSORS: ArtifactFormat
ARTIFACT_FORMAT_PACKED_SAFETENSORS: ArtifactFormat
ARTIFACT_FORMAT_COMPRESSED_TENSORS: ArtifactFormat
ARTIFACT_FORMAT_ONNX: ArtifactFormat
ARTIFACT_FORMAT_OPENVINO_IR: ArtifactFormat
ARTIFACT_FORMAT_GGUF: ArtifactFormat
ARTIFACT_FORMAT_TENSORRT: ArtifactFormat
ARTIFACT_FORMAT_DATASET_JSONL: ArtifactFormat
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
    __slots__ = ("technique", "method", "config")
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    technique: Technique
    method: str
    config: _struct_pb2.Struct
    def __init__(self, technique: _Optional[_Union[Technique, str]] = ..., method: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StageStatus(_message.Message):
    __slots__ = ("index", "spec", "state", "output", "error", "started_at", "finished_at", "metrics", "worker")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    index: int
    spec: StageSpec
    state: JobState
    output: ArtifactRef
    error: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    metrics: _struct_pb2.Struct
    worker: str
    def __init__(self, index: _Optional[int] = ..., spec: _Optional[_Union[StageSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., output: _Optional[_Union[ArtifactRef, _Mapping]] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., worker: _Optional[str] = ...) -> None: ...

class EvaluationSpec(_message.Message):
    __slots__ = ("skip", "batch_size", "sequence_length", "latency_iterations", "quality_windows", "threads")
    SKIP_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    skip: bool
    batch_size: int
    sequence_length: int
    latency_iterations: int
    quality_windows: int
    threads: int
    def __init__(self, skip: _Optional[bool] = ..., batch_size: _Optional[int] = ..., sequence_length: _Optional[int] = ..., latency_iterations: _Optional[int] = ..., quality_windows: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "iterations", "batch_size", "sequence_length", "threads")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    batch_size: int
    sequence_length: int
    threads: int
    def __init__(self, p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_ms: _Optional[float] = ..., iterations: _Optional[int] = ..., batch_size: _Optional[int] = ..., sequence_length: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class ModelMetrics(_message.Message):
    __slots__ = ("size_on_disk_bytes", "parameters", "latency", "peak_rss_mb", "perplexity", "top1_accuracy", "quality_tokens", "architecture", "device")
    SIZE_ON_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_MB_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    TOP1_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    size_on_disk_bytes: int
    parameters: int
    latency: LatencyStats
    peak_rss_mb: float
    perplexity: float
    top1_accuracy: float
    quality_tokens: int
    architecture: str
    device: str
    def __init__(self, size_on_disk_bytes: _Optional[int] = ..., parameters: _Optional[int] = ..., latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., peak_rss_mb: _Optional[float] = ..., perplexity: _Optional[float] = ..., top1_accuracy: _Optional[float] = ..., quality_tokens: _Optional[int] = ..., architecture: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class CompressionResult(_message.Message):
    __slots__ = ("job_id", "original_model_size_bytes", "compressed_model_size_bytes", "compression_ratio", "original_params", "compressed_params", "param_reduction_ratio", "original_latency_ms", "compressed_latency_ms", "latency_improvement", "original_memory_mb", "compressed_memory_mb", "memory_reduction", "original_accuracy", "compressed_accuracy", "accuracy_loss", "original_perplexity", "compressed_perplexity", "perplexity_increase", "compressed_artifact_id", "evaluation_report_path", "original", "compressed")
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
    def __init__(self, job_id: _Optional[str] = ..., original_model_size_bytes: _Optional[int] = ..., compressed_model_size_bytes: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., original_params: _Optional[int] = ..., compressed_params: _Optional[int] = ..., param_reduction_ratio: _Optional[float] = ..., original_latency_ms: _Optional[float] = ..., compressed_latency_ms: _Optional[float] = ..., latency_improvement: _Optional[float] = ..., original_memory_mb: _Optional[float] = ..., compressed_memory_mb: _Optional[float] = ..., memory_reduction: _Optional[float] = ..., original_accuracy: _Optional[float] = ..., compressed_accuracy: _Optional[float] = ..., accuracy_loss: _Optional[float] = ..., original_perplexity: _Optional[float] = ..., compressed_perplexity: _Optional[float] = ..., perplexity_increase: _Optional[float] = ..., compressed_artifact_id: _Optional[str] = ..., evaluation_report_path: _Optional[str] = ..., original: _Optional[_Union[ModelMetrics, _Mapping]] = ..., compressed: _Optional[_Union[ModelMetrics, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "name", "model", "recipe", "stages", "state", "progress", "output", "result", "error", "evaluation", "created_at", "started_at", "finished_at", "artifact_ids")
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
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., recipe: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageStatus, _Mapping]]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[float] = ..., output: _Optional[_Union[ArtifactRef, _Mapping]] = ..., result: _Optional[_Union[CompressionResult, _Mapping]] = ..., error: _Optional[str] = ..., evaluation: _Optional[_Union[EvaluationSpec, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., artifact_ids: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("job_id", "stage_index", "input", "method", "config")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stage_index: int
    input: ModelRef
    method: str
    config: _struct_pb2.Struct
    def __init__(self, job_id: _Optional[str] = ..., stage_index: _Optional[int] = ..., input: _Optional[_Union[ModelRef, _Mapping]] = ..., method: _Optional[str] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("artifact", "metrics", "worker")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    artifact: ArtifactRef
    metrics: _struct_pb2.Struct
    worker: str
    def __init__(self, artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., worker: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("technique", "name", "summary", "fields")
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    technique: Technique
    name: str
    summary: str
    fields: _containers.RepeatedCompositeFieldContainer[ConfigField]
    def __init__(self, technique: _Optional[_Union[Technique, str]] = ..., name: _Optional[str] = ..., summary: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[ConfigField, _Mapping]]] = ...) -> None: ...

class ServiceDescription(_message.Message):
    __slots__ = ("technique", "methods", "version")
    TECHNIQUE_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    technique: Technique
    methods: _containers.RepeatedCompositeFieldContainer[MethodDescription]
    version: str
    def __init__(self, technique: _Optional[_Union[Technique, str]] = ..., methods: _Optional[_Iterable[_Union[MethodDescription, _Mapping]]] = ..., version: _Optional[str] = ...) -> None: ...
