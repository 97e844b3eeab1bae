"""The real clients of the serving protocols, as tests load them.

tritonclient.grpc compiles Triton's grpc_service.proto, which declares the same `inference.*` symbols
as modelpress's OIP contract (modelpress/inference/v2); protobuf refuses a second file defining them
in its default pool (tritonclient beside KServe or MLServer fails the same way: kserve/kserve#3099,
SeldonIO/MLServer#1730). Every test that uses tritonclient.grpc loads it through here, into a pool of
its own: what a separate client process has; the bytes on the wire are the same."""

from __future__ import annotations

import importlib
import sys
from unittest import mock

# Imported before tritonclient.grpc is loaded apart, so they bind protobuf's real default pool.
import google.protobuf.json_format  # noqa: F401
from google.protobuf import descriptor_pool, symbol_database


def tritonclient_grpc_apart():
    """tritonclient.grpc, its messages in a descriptor pool of their own.

    Triton's grpc_service.proto declares the same `inference.*` symbols as our contract, and protobuf
    refuses a second file defining them in its default pool (tritonclient next to KServe or MLServer
    fails the same way: kserve/kserve#3099, SeldonIO/MLServer#1730). A separate pool is what a separate
    client process would have; the bytes on the wire are the same."""
    loaded = sys.modules.get("tritonclient.grpc.service_pb2")
    if loaded is not None:
        if loaded.DESCRIPTOR.pool is descriptor_pool.Default():
            raise RuntimeError(
                "tritonclient.grpc was imported into the default descriptor pool before this module"
            )
        return importlib.import_module("tritonclient.grpc")
    symbol_database.Default()  # bound to the real default pool before the patch
    private = descriptor_pool.DescriptorPool()
    with mock.patch.object(descriptor_pool, "Default", return_value=private):
        tritonclient_grpc = importlib.import_module("tritonclient.grpc")
        importlib.import_module("tritonclient.grpc.service_pb2")
    return tritonclient_grpc
