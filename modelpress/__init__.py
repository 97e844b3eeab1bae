"""modelpress: the public Python surface of the compression mesh.

    from modelpress import Client, errors

`Client` speaks gRPC to the gateway and needs only grpcio and protobuf; the generated
contract lives in `modelpress.v1`. `compress` runs a recipe or pipeline in this process on the
server side's engines (`services`, imported only when it is called; see modelpress/local.py).
"""

from modelpress import errors
from modelpress.client import Client, parse_model_ref
from modelpress.errors import (DataLoss, DeadlineExceeded, FailedPrecondition, InvalidArgument, ModelpressError,
                               NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)

__version__ = "0.1.0"


def compress(model, recipe_or_pipeline, out_dir, **options):
    """In-process compression (modelpress.local.compress); needs the server install."""
    from modelpress.local import compress as run

    return run(model, recipe_or_pipeline, out_dir, **options)


__all__ = ["Client", "compress", "parse_model_ref", "errors", "ModelpressError", "InvalidArgument", "NotFound",
           "FailedPrecondition", "Unavailable", "DataLoss", "DeadlineExceeded", "Unauthenticated", "PermissionDenied",
           "ResourceExhausted", "__version__"]
