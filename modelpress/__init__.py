"""modelpress: the public Python surface of the compression mesh.

    from modelpress import Client, errors

`Client` speaks gRPC to the gateway and needs only grpcio and protobuf; the generated
contract lives in `modelpress.v1`. The server side (`services`) is never imported from here.
"""

from modelpress import errors
from modelpress.client import Client, parse_model_ref
from modelpress.errors import (DataLoss, DeadlineExceeded, FailedPrecondition, InvalidArgument, ModelpressError,
                               NotFound, Unavailable)

__version__ = "0.1.0"
__all__ = ["Client", "parse_model_ref", "errors", "ModelpressError", "InvalidArgument", "NotFound",
           "FailedPrecondition", "Unavailable", "DataLoss", "DeadlineExceeded", "__version__"]
