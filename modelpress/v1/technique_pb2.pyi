from modelpress.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TechniqueServiceRunRequest(_message.Message):
    __slots__ = ("stage",)
    STAGE_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.StageRequest
    def __init__(self, stage: _Optional[_Union[_common_pb2.StageRequest, _Mapping]] = ...) -> None: ...

class TechniqueServiceRunResponse(_message.Message):
    __slots__ = ("update",)
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    update: _common_pb2.StageUpdate
    def __init__(self, update: _Optional[_Union[_common_pb2.StageUpdate, _Mapping]] = ...) -> None: ...

class TechniqueServiceDescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TechniqueServiceDescribeResponse(_message.Message):
    __slots__ = ("description",)
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    description: _common_pb2.ServiceDescription
    def __init__(self, description: _Optional[_Union[_common_pb2.ServiceDescription, _Mapping]] = ...) -> None: ...

class TechniqueServiceCheckConfigRequest(_message.Message):
    __slots__ = ("stage",)
    STAGE_FIELD_NUMBER: _ClassVar[int]
    stage: _common_pb2.StageSpec
    def __init__(self, stage: _Optional[_Union[_common_pb2.StageSpec, _Mapping]] = ...) -> None: ...

class TechniqueServiceCheckConfigResponse(_message.Message):
    __slots__ = ("errors", "over_budget")
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    OVER_BUDGET_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedScalarFieldContainer[str]
    over_budget: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, errors: _Optional[_Iterable[str]] = ..., over_budget: _Optional[_Iterable[str]] = ...) -> None: ...
