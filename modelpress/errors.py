"""Errors the client raises: one class per status the gateway answers with, each still a
grpc.RpcError (code() and details() work as with any gRPC error)."""

from __future__ import annotations

import grpc


class ModelpressError(grpc.RpcError):
    """A call to the gateway failed; `code` is the gRPC status, `details` the gateway's message
    (it names the field or the service at fault)."""

    code_: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


class InvalidArgument(ModelpressError):
    """The request names a field with a bad value; nothing was created."""


class NotFound(ModelpressError):
    """No such job, artifact or comparison."""


class FailedPrecondition(ModelpressError):
    """The request is valid but cannot run here (a model this method cannot take, an engine this
    worker lacks)."""


class Unavailable(ModelpressError):
    """The gateway, or a service a job needs, has no live replica; retry later."""


class DataLoss(ModelpressError):
    """Bytes arrived corrupt (an upload or download whose sha256 differs)."""


class Unauthenticated(ModelpressError):
    """The gateway wants a token (none was sent, or it does not know the one sent)."""


class PermissionDenied(ModelpressError):
    """The token is known but its tenant may not touch what the call names."""


class ResourceExhausted(ModelpressError):
    """A bound was reached (a work budget, a quota, the store's size); the message names it."""


class DeadlineExceeded(ModelpressError):
    """The call took longer than its timeout."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_rpc_error(exc: grpc.RpcError) -> ModelpressError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return _BY_CODE.get(code, ModelpressError)(code, details or "")


def for_status(code: grpc.StatusCode, details: str) -> ModelpressError:
    """The error class of a status, for failures raised in this process (modelpress.compress)."""
    return _BY_CODE.get(code, ModelpressError)(code, details)
