from modelpress.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OptimizerServiceListEnginesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OptimizerServiceListEnginesResponse(_message.Message):
    __slots__ = ("engines", "hardware")
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[_common_pb2.EngineInfo]
    hardware: _common_pb2.WorkerHardware
    def __init__(self, engines: _Optional[_Iterable[_Union[_common_pb2.EngineInfo, _Mapping]]] = ..., hardware: _Optional[_Union[_common_pb2.WorkerHardware, _Mapping]] = ...) -> None: ...
