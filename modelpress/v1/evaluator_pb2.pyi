from modelpress.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluatorServiceEvaluateRequest(_message.Message):
    __slots__ = ("model", "spec")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    spec: _common_pb2.EvaluationSpec
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., spec: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ...) -> None: ...

class EvaluatorServiceEvaluateResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _common_pb2.ModelMetrics
    def __init__(self, metrics: _Optional[_Union[_common_pb2.ModelMetrics, _Mapping]] = ...) -> None: ...

class EvaluatorServiceCompareRequest(_message.Message):
    __slots__ = ("models", "baseline_index", "spec", "threshold_set", "skip_report")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SET_FIELD_NUMBER: _ClassVar[int]
    SKIP_REPORT_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    baseline_index: int
    spec: _common_pb2.EvaluationSpec
    threshold_set: str
    skip_report: bool
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ..., baseline_index: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.EvaluationSpec, _Mapping]] = ..., threshold_set: _Optional[str] = ..., skip_report: _Optional[bool] = ...) -> None: ...

class EvaluatorServiceCompareResponse(_message.Message):
    __slots__ = ("comparison",)
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    comparison: _common_pb2.Comparison
    def __init__(self, comparison: _Optional[_Union[_common_pb2.Comparison, _Mapping]] = ...) -> None: ...

class EvaluatorServiceListThresholdSetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluatorServiceListThresholdSetsResponse(_message.Message):
    __slots__ = ("threshold_sets",)
    THRESHOLD_SETS_FIELD_NUMBER: _ClassVar[int]
    threshold_sets: _containers.RepeatedCompositeFieldContainer[_common_pb2.ThresholdSet]
    def __init__(self, threshold_sets: _Optional[_Iterable[_Union[_common_pb2.ThresholdSet, _Mapping]]] = ...) -> None: ...

class EvaluatorServiceBenchmarkRequest(_message.Message):
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

class EvaluatorServiceBenchmarkResponse(_message.Message):
    __slots__ = ("benchmarks",)
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    benchmarks: _containers.RepeatedCompositeFieldContainer[_common_pb2.HardwareBenchmark]
    def __init__(self, benchmarks: _Optional[_Iterable[_Union[_common_pb2.HardwareBenchmark, _Mapping]]] = ...) -> None: ...

class EvaluatorServiceListBenchmarksRequest(_message.Message):
    __slots__ = ("model", "device")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model: str
    device: str
    def __init__(self, model: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class EvaluatorServiceListBenchmarksResponse(_message.Message):
    __slots__ = ("benchmarks",)
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    benchmarks: _containers.RepeatedCompositeFieldContainer[_common_pb2.HardwareBenchmark]
    def __init__(self, benchmarks: _Optional[_Iterable[_Union[_common_pb2.HardwareBenchmark, _Mapping]]] = ...) -> None: ...

class EvaluatorServiceRenderReportRequest(_message.Message):
    __slots__ = ("job", "events", "methods")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.JobEvent]
    methods: _containers.RepeatedCompositeFieldContainer[_common_pb2.MethodDescription]
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.JobEvent, _Mapping]]] = ..., methods: _Optional[_Iterable[_Union[_common_pb2.MethodDescription, _Mapping]]] = ...) -> None: ...

class EvaluatorServiceRenderReportResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _common_pb2.ArtifactRef
    def __init__(self, report: _Optional[_Union[_common_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...
