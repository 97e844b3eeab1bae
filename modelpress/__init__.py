"""modelpress: the public Python surface of the compression mesh.

    from modelpress import Client, errors

`Client` speaks gRPC to the gateway and needs only grpcio and protobuf; the generated
contract lives in `modelpress.v1`. `compress` runs a recipe or pipeline in this process on the
server side's engines (`services`, imported only when it is called; see services/in_process.py).
"""

import grpc

from modelpress import errors
from modelpress.client import Client, parse_model_ref
from modelpress.errors import (DataLoss, DeadlineExceeded, FailedPrecondition, InvalidArgument, ModelpressError,
                               NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)

__version__ = "0.1.0"


def compress(model, recipe_or_pipeline, out_dir, **options):
    """In-process compression on the server side's engines (services/in_process.py).

    The client package never imports the server side at import time (dependencies point one way:
    `services` uses `modelpress`); this name only forwards to it when called, in the server install.
    """
    import importlib

    try:
        in_process = importlib.import_module("services.in_process")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("services"):
            raise
        raise errors.for_status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "modelpress.compress runs the engines in this process and needs the server install "
            "(`pip install modelpress`, or `make install` in the repository); the client-only package "
            "reaches a mesh with modelpress.Client instead") from None
    return in_process.compress(model, recipe_or_pipeline, out_dir, **options)


__all__ = ["Client", "compress", "parse_model_ref", "errors", "ModelpressError", "InvalidArgument", "NotFound",
           "FailedPrecondition", "Unavailable", "DataLoss", "DeadlineExceeded", "Unauthenticated", "PermissionDenied",
           "ResourceExhausted", "__version__"]
