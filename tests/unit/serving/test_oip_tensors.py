"""The OIP v2 contract and tensor codec, with tritonclient's own encoders and decoders (gRPC and REST)
as the other end of the wire."""

from __future__ import annotations

import importlib
import math
import struct
from collections.abc import Callable

# Imported before tritonclient.grpc is loaded apart (below), so they bind protobuf's real default pool.
import google.protobuf.json_format  # noqa: F401
import grpc
import numpy as np
import pytest
import rapidjson
import tritonclient.http as tc_http
from google.protobuf import descriptor_pool
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import np_to_triton_dtype

from modelpress.inference.v2 import grpc_predict_v2_pb2 as oip
from services.serving.oip_tensors import (
    DATATYPES,
    HEADER_LENGTH_HEADER,
    TensorError,
    fill_grpc_response,
    http_response,
    inputs_from_grpc,
    parse_http_request,
    requested_outputs_grpc,
)
from tests.protocol_clients import tritonclient_grpc_apart

tc_grpc = tritonclient_grpc_apart()
triton_pb2 = importlib.import_module("tritonclient.grpc.service_pb2")
triton_grpc_utils = importlib.import_module("tritonclient.grpc._utils")

MAX_BYTES = 1 << 20


def _objects(values: list, shape: tuple[int, ...]) -> np.ndarray:
    """An object array of exactly these elements (np.array would make a bytes_ array of them)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def _sample_tensors() -> dict[str, np.ndarray]:
    return {
        "fp32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "int64": np.array([-(2**62), -1, 0, 2**62], dtype=np.int64),
        # An empty element and non-UTF-8 bytes: BYTES is bytes, not text.
        "bytes": _objects([b"hello", b"", b"\xff\x00", "é".encode()], (2, 2)),
    }


def assert_tensors_equal(actual: np.ndarray, expected: np.ndarray, *, bitwise: bool = True) -> None:
    """Same shape, datatype and elements: numeric ones bit for bit (NaN payloads and -0.0 count), or
    by value with NaNs in the same places where a JSON text representation was in between."""
    assert actual.shape == expected.shape
    assert np_to_triton_dtype(actual.dtype) == np_to_triton_dtype(expected.dtype)
    if expected.dtype == object:
        assert actual.ravel().tolist() == expected.ravel().tolist()
    elif not bitwise:
        np.testing.assert_array_equal(actual, expected, strict=True)
    else:
        assert actual.tobytes() == np.ascontiguousarray(expected).astype(actual.dtype).tobytes()


# --- the contract -----------------------------------------------------------------------------------

CORE_MESSAGES = [
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelStreamInferResponse",  # Triton's streaming extension, the one extension taken (generation)
    "InferParameter",
    "InferTensorContents",
]


def _label(field) -> str:
    # protobuf 7 drops FieldDescriptor.label; these are what it encoded.
    return "repeated" if field.is_repeated else "required" if field.is_required else "optional"


def _field_signature(field) -> tuple:
    oneof = field.containing_oneof.name if field.containing_oneof else None
    return (field.name, field.number, field.type, _label(field), oneof, field.is_packed, field.has_presence)


def _assert_same_message(ours, theirs, seen: set[str]) -> None:
    """Same full name, map-ness, fields (name, number, type, label, oneof, packing) and, recursively,
    the same messages in message-typed fields."""
    assert ours.full_name == theirs.full_name
    assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, ours.full_name
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    assert {f.name: _field_signature(f) for f in ours.fields} == {
        f.name: _field_signature(f) for f in theirs.fields
    }, ours.full_name
    for field in ours.fields:
        if field.message_type is not None:
            _assert_same_message(field.message_type, theirs.fields_by_name[field.name].message_type, seen)


@pytest.mark.parametrize("name", CORE_MESSAGES)
def test_core_messages_are_wire_identical_to_tritons(name):
    ours = oip.DESCRIPTOR.message_types_by_name[name]
    theirs = triton_pb2.DESCRIPTOR.message_types_by_name[name]
    _assert_same_message(ours, theirs, set())


def test_service_paths_and_types_match_tritons():
    ours = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        triton_method = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == triton_method.input_type.full_name
        assert method.output_type.full_name == triton_method.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (
            triton_method.client_streaming,
            triton_method.server_streaming,
        )
    # The contract is the spec's plus Triton's streaming, none of its other extensions.
    assert len(ours.methods) == 7 and "ModelStreamInfer" in ours.methods_by_name
    assert "ModelConfig" not in ours.methods_by_name
    assert set(oip.DESCRIPTOR.message_types_by_name) == set(CORE_MESSAGES)


def test_descriptor_check_notices_a_renumbered_field():
    """The comparison above is not vacuous: a changed field number fails it."""
    tampered = descriptor_pool.DescriptorPool()
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(oip.DESCRIPTOR.serialized_pb)
    message = next(m for m in proto.message_type if m.name == "ModelInferRequest")
    next(f for f in message.field if f.name == "raw_input_contents").number = 8
    renumbered = tampered.Add(proto)
    with pytest.raises(AssertionError):
        _assert_same_message(
            renumbered.message_types_by_name["ModelInferRequest"],
            triton_pb2.DESCRIPTOR.message_types_by_name["ModelInferRequest"],
            set(),
        )


# --- gRPC ---------------------------------------------------------------------------------------------


def _triton_grpc_request(tensors: dict[str, np.ndarray], outputs: list[str] | None = None) -> bytes:
    """The ModelInferRequest bytes tritonclient.grpc sends for these inputs."""
    inputs = []
    for name, array in tensors.items():
        infer_input = tc_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        inputs.append(infer_input.set_data_from_numpy(array))
    requested = [tc_grpc.InferRequestedOutput(name) for name in outputs] if outputs is not None else None
    request = triton_grpc_utils._get_inference_request(
        model_name="model",
        inputs=inputs,
        model_version="",
        request_id="r1",
        outputs=requested,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    return request.SerializeToString()


def _triton_grpc_result(outputs: dict[str, np.ndarray], requested: list[str] | None = None):
    """Our response, as tritonclient.grpc reads it off the wire."""
    response = oip.ModelInferResponse(model_name="model", id="r1")
    fill_grpc_response(response, outputs, requested)
    return tc_grpc.InferResult(triton_pb2.ModelInferResponse.FromString(response.SerializeToString()))


def test_grpc_inputs_from_tritonclient_decode_equal():
    tensors = _sample_tensors()
    request = oip.ModelInferRequest.FromString(_triton_grpc_request(tensors))
    decoded = inputs_from_grpc(request, max_bytes=MAX_BYTES)
    assert list(decoded) == list(tensors)
    for name, array in tensors.items():
        assert_tensors_equal(decoded[name], array)
    assert decoded["bytes"].dtype == object and isinstance(decoded["bytes"][0, 0], bytes)
    assert requested_outputs_grpc(request) is None


def test_grpc_outputs_read_back_by_tritonclient():
    tensors = _sample_tensors()
    result = _triton_grpc_result(tensors)
    for name, array in tensors.items():
        assert_tensors_equal(result.as_numpy(name), array)
    assert result.get_response().id == "r1"


def test_grpc_requested_outputs_only_those():
    request = oip.ModelInferRequest.FromString(_triton_grpc_request({}, outputs=["int64", "fp32"]))
    requested = requested_outputs_grpc(request)
    assert requested == ["int64", "fp32"]
    result = _triton_grpc_result(_sample_tensors(), requested)
    assert [o.name for o in result.get_response().outputs] == ["int64", "fp32"]
    assert result.as_numpy("bytes") is None
    assert_tensors_equal(result.as_numpy("fp32"), _sample_tensors()["fp32"])


def test_grpc_typed_contents_decode():
    request = oip.ModelInferRequest()
    for name, datatype, field, values in [
        ("i8", "INT8", "int_contents", [-128, 127]),
        ("u16", "UINT16", "uint_contents", [0, 65535]),
        ("f64", "FP64", "fp64_contents", [0.5, -1.25]),
        ("flag", "BOOL", "bool_contents", [True, False]),
        ("text", "BYTES", "bytes_contents", [b"a", b"\x00b"]),
    ]:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[2])
        getattr(tensor.contents, field).extend(values)
    decoded = inputs_from_grpc(request, max_bytes=MAX_BYTES)
    assert decoded["i8"].dtype == np.int8 and decoded["i8"].tolist() == [-128, 127]
    assert decoded["u16"].dtype == np.uint16 and decoded["u16"].tolist() == [0, 65535]
    assert decoded["f64"].tolist() == [0.5, -1.25]
    assert decoded["flag"].dtype == np.bool_ and decoded["flag"].tolist() == [True, False]
    assert decoded["text"].tolist() == [b"a", b"\x00b"]


def test_grpc_raw_bool_bytes_are_normalized():
    """Any non-zero byte is true (numpy would keep 2 as a bool holding 2)."""
    request = oip.ModelInferRequest(raw_input_contents=[b"\x00\x02"])
    request.inputs.add(name="flag", datatype="BOOL", shape=[2])
    flag = inputs_from_grpc(request, max_bytes=MAX_BYTES)["flag"]
    assert flag.tolist() == [False, True] and flag.view(np.uint8).tolist() == [0, 1]


def _echo_servicer():
    """A servicer of our generated service, ModelInfer answering each input back as the output of
    the same name, through the codec."""
    from modelpress.inference.v2 import grpc_predict_v2_pb2_grpc

    class EchoServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            return oip.ServerLiveResponse(live=True)

        def ModelInfer(self, request, context):
            inputs = inputs_from_grpc(request, max_bytes=MAX_BYTES)
            response = oip.ModelInferResponse(model_name=request.model_name, id=request.id)
            fill_grpc_response(response, inputs, requested_outputs_grpc(request))
            return response

    return EchoServicer()


def test_tritonclient_calls_our_generated_service_over_grpc():
    """The generated service answers tritonclient's own RPC paths and serializers."""
    from concurrent.futures import ThreadPoolExecutor

    from modelpress.inference.v2 import grpc_predict_v2_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_echo_servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = tc_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        tensors = _sample_tensors()
        inputs = []
        for name, array in tensors.items():
            infer_input = tc_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            inputs.append(infer_input.set_data_from_numpy(array))
        result = client.infer(
            "echo", inputs, outputs=[tc_grpc.InferRequestedOutput("bytes")], request_id="r7"
        )
        assert_tensors_equal(result.as_numpy("bytes"), tensors["bytes"])
        assert result.as_numpy("fp32") is None and result.get_response().id == "r7"
        client.close()
    finally:
        server.stop(grace=None)


# --- HTTP ----------------------------------------------------------------------------------------------


def _triton_http_body(
    tensors: dict[str, np.ndarray], binary: bool | dict[str, bool] = True, outputs=None
) -> tuple[bytes, int | None]:
    """The request body (and Inference-Header-Content-Length) tritonclient.http sends."""
    inputs = []
    for name, array in tensors.items():
        as_binary = binary if isinstance(binary, bool) else binary[name]
        infer_input = tc_http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        inputs.append(infer_input.set_data_from_numpy(array, binary_data=as_binary))
    return tc_http.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="r1")


def test_http_binary_inputs_from_tritonclient_decode_equal():
    tensors = _sample_tensors()
    body, header_length = _triton_http_body(tensors)
    assert header_length is not None
    request = parse_http_request(body, header_length, max_bytes=MAX_BYTES)
    assert request.id == "r1"
    for name, array in tensors.items():
        assert_tensors_equal(request.inputs[name], array)
    # Naming no outputs, tritonclient asks for all of them as binary data.
    assert request.outputs == [] and request.binary_data_output is True
    assert request.output_binary_flags(["y", "z"]) == {"y": True, "z": True}


def test_http_json_inputs_from_tritonclient_decode_equal():
    tensors = {
        "fp32": np.array([[0.1, -2.5], [3.0, 1e-8]], dtype=np.float32),
        "int64": np.array([2**40, -3], dtype=np.int64),
        "flag": np.array([True, False, True]),
        "half": np.array([0.5, 65504.0], dtype=np.float16),
        # JSON carries BYTES as UTF-8 strings.
        "text": _objects([b"hello", "é".encode(), b""], (3,)),
    }
    body, header_length = _triton_http_body(tensors, binary=False)
    assert header_length is None
    request = parse_http_request(body, header_length, max_bytes=MAX_BYTES)
    for name, array in tensors.items():
        assert_tensors_equal(request.inputs[name], array)


def test_http_mixed_json_and_binary_inputs():
    tensors = _sample_tensors()
    binary = {"fp32": True, "int64": False, "bytes": True}
    body, header_length = _triton_http_body(tensors, binary=binary)
    request = parse_http_request(body, header_length, max_bytes=MAX_BYTES)
    for name, array in tensors.items():
        assert_tensors_equal(request.inputs[name], array)


def test_http_nested_json_data():
    body = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[2,2],"data":[[1,2],[3,4]]}]}'
    request = parse_http_request(body, None, max_bytes=MAX_BYTES)
    assert request.inputs["x"].tolist() == [[1, 2], [3, 4]] and request.inputs["x"].dtype == np.int32


def test_http_requested_outputs_binary_flags():
    outputs = [
        tc_http.InferRequestedOutput("a"),  # tritonclient's default: binary
        tc_http.InferRequestedOutput("b", binary_data=False),
    ]
    body, header_length = _triton_http_body({"x": np.zeros(1, np.float32)}, outputs=outputs)
    request = parse_http_request(body, header_length, max_bytes=MAX_BYTES)
    assert request.outputs == [("a", True), ("b", False)]
    # Naming outputs, tritonclient does not set binary_data_output: each output says it.
    assert request.binary_data_output is False
    assert request.output_binary_flags(["b", "a", "c"]) == {"a": True, "b": False}
    with pytest.raises(TensorError, match="output 'a'"):
        request.output_binary_flags(["b"])


@pytest.mark.parametrize("binary_data_output", [False, True])
def test_http_output_without_binary_data_follows_the_request_default(binary_data_output):
    """Another client may leave an output's `binary_data` out: the request's `binary_data_output`
    (false unless given) decides."""
    document = {"inputs": [], "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": True}}]}
    if binary_data_output:
        document["parameters"] = {"binary_data_output": True}
    request = parse_http_request(rapidjson.dumps(document).encode(), None, max_bytes=MAX_BYTES)
    assert request.outputs == [("a", binary_data_output), ("b", True)]
    bare = parse_http_request(b'{"inputs": []}', None, max_bytes=MAX_BYTES)
    assert bare.output_binary_flags(["y"]) == {"y": False}


def _triton_http_result(outputs: dict[str, np.ndarray], binary: dict[str, bool]):
    body, header_length = http_response("model", "1", "r1", outputs, binary)
    result = tc_http.InferResult.from_response_body(body, False, header_length)
    return result, header_length


def test_http_binary_outputs_read_back_by_tritonclient():
    tensors = _sample_tensors()
    result, header_length = _triton_http_result(tensors, dict.fromkeys(tensors, True))
    assert header_length is not None
    for name, array in tensors.items():
        assert_tensors_equal(result.as_numpy(name), array)
    assert result.get_response()["id"] == "r1" and result.get_response()["model_name"] == "model"


def test_http_json_outputs_read_back_by_tritonclient():
    tensors = {
        "fp32": np.array([[0.1, float("nan")], [float("-inf"), -0.0]], dtype=np.float32),
        "uint64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "flag": np.array([[True], [False]]),
        "half": np.array([1.5, -65504.0], dtype=np.float16),
    }
    result, header_length = _triton_http_result(tensors, {})
    assert header_length is None
    for name, array in tensors.items():
        assert_tensors_equal(result.as_numpy(name), array, bitwise=False)
    # JSON BYTES outputs come back to tritonclient as str, not bytes (it does not encode them).
    text, _ = _triton_http_result({"text": _objects([b"hi", "é".encode()], (2,))}, {"text": False})
    assert text.as_numpy("text").tolist() == ["hi", "é"]


def test_http_mixed_outputs_read_back_by_tritonclient():
    tensors = _sample_tensors()
    result, header_length = _triton_http_result(tensors, {"fp32": True, "int64": False, "bytes": True})
    assert header_length is not None
    for name, array in tensors.items():
        assert_tensors_equal(result.as_numpy(name), array)
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" in outputs["int64"] and "parameters" not in outputs["int64"]
    assert outputs["fp32"]["parameters"]["binary_data_size"] == 24


# --- refused input ----------------------------------------------------------------------------------


def _grpc_request(*tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None):
    request = oip.ModelInferRequest(raw_input_contents=raw or [])
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


def _with_contents(request, field: str, values: list):
    getattr(request.inputs[-1].contents, field).extend(values)
    return request


def _bytes_blob(*lengths_and_data: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack("<I", length) + data for length, data in lengths_and_data)


GRPC_REFUSED: dict[str, tuple[Callable[[], object], str]] = {
    "unknown datatype": (
        lambda: _grpc_request(("t_dt", "FP8", [1]), raw=[b"\x00"]),
        "unknown datatype 'FP8'",
    ),
    "BF16": (lambda: _grpc_request(("t_bf16", "BF16", [1]), raw=[b"\x00\x00"]), "BF16 is not supported"),
    "negative dim": (lambda: _grpc_request(("t_neg", "FP32", [-1, 2]), raw=[b""]), "negative dimension"),
    "raw size": (
        lambda: _grpc_request(("t_raw", "FP32", [2, 2]), raw=[b"\x00" * 12]),
        "raw content is 12 bytes, shape [2, 2] of FP32 needs 16",
    ),
    "element count": (
        lambda: _with_contents(_grpc_request(("t_count", "FP32", [2, 2])), "fp32_contents", [1.0, 2.0, 3.0]),
        "contents hold 3 elements, shape [2, 2] needs 4",
    ),
    "mixed raw and typed": (
        lambda: _with_contents(
            _grpc_request(("t_mixed", "INT32", [1]), raw=[b"\x00" * 4]), "int_contents", [1]
        ),
        "also has raw_input_contents",
    ),
    "fewer raw than inputs": (
        lambda: _grpc_request(("t_one", "INT8", [1]), ("t_two", "INT8", [1]), raw=[b"\x01"]),
        "'t_two': has no raw_input_contents entry",
    ),
    "more raw than inputs": (
        lambda: _grpc_request(("t_only", "INT8", [1]), raw=[b"\x01", b"\x02"]),
        "2 raw_input_contents for 1 inputs ('t_only')",
    ),
    "bytes prefix overrun": (
        lambda: _grpc_request(("t_over", "BYTES", [2]), raw=[_bytes_blob((1, b"a"), (9, b"bc"))]),
        "BYTES element 1 has length prefix 9, overrunning the buffer",
    ),
    "bytes trailing data": (
        lambda: _grpc_request(("t_tail", "BYTES", [1]), raw=[_bytes_blob((1, b"a"), (1, b"b"))]),
        "left after the 1 elements",
    ),
    "bytes short of its shape": (
        lambda: _grpc_request(("t_short", "BYTES", [10**12]), raw=[_bytes_blob((1, b"a"))]),
        "cannot hold the 1000000000000 length-prefixed elements",
    ),
    "over the byte limit": (
        lambda: _grpc_request(
            ("t_small", "UINT8", [16]), ("t_big", "UINT8", [100]), raw=[b"\x00" * 16, b"\x00" * 100]
        ),
        "over the 64-byte limit",
    ),
    "duplicate name": (
        lambda: _grpc_request(("t_dup", "INT8", [1]), ("t_dup", "INT8", [1]), raw=[b"\x01", b"\x02"]),
        "appears twice",
    ),
    "typed in the wrong field": (
        lambda: _with_contents(_grpc_request(("t_field", "FP32", [1])), "int_contents", [1]),
        "FP32 data belongs in fp32_contents",
    ),
    "typed out of range": (
        lambda: _with_contents(_grpc_request(("t_range", "INT8", [1])), "int_contents", [300]),
        "INT8 data out of range",
    ),
    "typed FP16": (
        lambda: _with_contents(_grpc_request(("t_half", "FP16", [1])), "fp32_contents", [1.0]),
        "FP16 has no typed contents field",
    ),
    "no data": (lambda: _grpc_request(("t_none", "FP32", [3])), "has no data"),
}


@pytest.mark.parametrize("case", list(GRPC_REFUSED))
def test_grpc_malformed_inputs_are_refused_by_name(case):
    build, message = GRPC_REFUSED[case]
    request = build()
    tensor_name = request.inputs[-1].name
    with pytest.raises(TensorError, match=f"'{tensor_name}'") as refused:
        inputs_from_grpc(request, max_bytes=64)
    assert message in str(refused.value)


def test_grpc_unsupported_extensions_are_refused():
    request = _grpc_request(("t_shm", "FP32", [1]), raw=[b"\x00" * 4])
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(TensorError, match="input 't_shm': shared memory is not supported"):
        inputs_from_grpc(request, max_bytes=MAX_BYTES)
    request = oip.ModelInferRequest()
    request.outputs.add(name="top").parameters["classification"].int64_param = 3
    with pytest.raises(TensorError, match="output 'top': the classification extension"):
        requested_outputs_grpc(request)


def test_grpc_unknown_requested_output_is_refused():
    with pytest.raises(TensorError, match="output 'nope': requested but the model has no such output"):
        fill_grpc_response(oip.ModelInferResponse(), {"y": np.zeros(1, np.float32)}, ["nope"])


def test_outputs_without_an_oip_datatype_are_refused():
    with pytest.raises(TensorError, match="output 'z': numpy dtype complex64"):
        fill_grpc_response(oip.ModelInferResponse(), {"z": np.zeros(1, np.complex64)}, None)


def _http_body(*inputs: dict, blobs: bytes = b"") -> tuple[bytes, int | None]:
    header = rapidjson.dumps({"inputs": list(inputs)}).encode()
    return header + blobs, len(header) if blobs else None


def _binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


HTTP_REFUSED: dict[str, tuple[Callable[[], tuple[bytes, int | None]], str, str]] = {
    "unknown datatype": (
        lambda: _http_body({"name": "h_dt", "datatype": "STRING", "shape": [1], "data": ["a"]}),
        "h_dt",
        "unknown datatype 'STRING'",
    ),
    "BF16": (
        lambda: _http_body(_binary_input("h_bf16", "BF16", [1], 2), blobs=b"\x00\x00"),
        "h_bf16",
        "BF16 is not supported",
    ),
    "negative dim": (
        lambda: _http_body({"name": "h_neg", "datatype": "INT32", "shape": [-2], "data": []}),
        "h_neg",
        "negative dimension",
    ),
    "json element count": (
        lambda: _http_body({"name": "h_count", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3]]}),
        "h_count",
        "data holds 3 elements, shape [2, 2] needs 4",
    ),
    "binary size vs shape": (
        lambda: _http_body(_binary_input("h_raw", "FP32", [2], 4), blobs=b"\x00" * 4),
        "h_raw",
        "raw content is 4 bytes, shape [2] of FP32 needs 8",
    ),
    "binary size overruns the body": (
        lambda: _http_body(_binary_input("h_over", "UINT8", [8], 8), blobs=b"\x00" * 4),
        "h_over",
        "binary_data_size 8 overruns the binary data (4 bytes left",
    ),
    "json and binary mixed": (
        lambda: _http_body({**_binary_input("h_both", "UINT8", [1], 1), "data": [1]}, blobs=b"\x01"),
        "h_both",
        "has both JSON 'data' and parameters.binary_data_size",
    ),
    "bytes prefix overrun": (
        lambda: _http_body(_binary_input("h_bytes", "BYTES", [1], 6), blobs=_bytes_blob((5, b"ab"))),
        "h_bytes",
        "length prefix 5, overrunning the buffer",
    ),
    "bytes json not strings": (
        lambda: _http_body({"name": "h_text", "datatype": "BYTES", "shape": [1], "data": [1]}),
        "h_text",
        "BYTES data in JSON must be strings",
    ),
    "json ints not ints": (
        lambda: _http_body({"name": "h_int", "datatype": "INT64", "shape": [1], "data": [1.5]}),
        "h_int",
        "INT64 data must be integers",
    ),
    "over the byte limit": (
        lambda: _http_body({"name": "h_big", "datatype": "INT64", "shape": [9], "data": list(range(9))}),
        "h_big",
        "over the 64-byte limit",
    ),
    "duplicate name": (
        lambda: _http_body(
            {"name": "h_dup", "datatype": "INT8", "shape": [1], "data": [1]},
            {"name": "h_dup", "datatype": "INT8", "shape": [1], "data": [2]},
        ),
        "h_dup",
        "appears twice",
    ),
    "no data": (
        lambda: _http_body({"name": "h_none", "datatype": "INT8", "shape": [1]}),
        "h_none",
        "has neither JSON 'data' nor parameters.binary_data_size",
    ),
    "shared memory": (
        lambda: _http_body(
            {"name": "h_shm", "datatype": "INT8", "shape": [1], "parameters": {"shared_memory_region": "r"}}
        ),
        "h_shm",
        "shared memory is not supported",
    ),
}


@pytest.mark.parametrize("case", list(HTTP_REFUSED))
def test_http_malformed_inputs_are_refused_by_name(case):
    build, tensor_name, message = HTTP_REFUSED[case]
    body, header_length = build()
    with pytest.raises(TensorError, match=f"'{tensor_name}'") as refused:
        parse_http_request(body, header_length, max_bytes=64)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "request JSON is malformed"),
        (b'{"inputs": []}', 99, f"{HEADER_LENGTH_HEADER} 99 does not fit the 14-byte request body"),
        (b'{"inputs": []}\x00\x00', 14, "2 bytes of binary data after the JSON header belong to no input"),
        (b'{"inputs": {}}', None, "'inputs' must be a JSON list"),
        (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}', None, "output 'y'"),
    ],
)
def test_http_malformed_requests_are_refused(body, header_length, message):
    with pytest.raises(TensorError, match=message):
        parse_http_request(body, header_length, max_bytes=MAX_BYTES)


def test_http_json_output_of_non_utf8_bytes_is_refused():
    with pytest.raises(TensorError, match="output 'raw': BYTES elements are not UTF-8"):
        http_response("m", "1", "", {"raw": _objects([b"\xff"], (1,))}, {"raw": False})


# --- round trips over datatypes and shapes ------------------------------------------------------------


def tensors_of(datatype: str) -> st.SearchStrategy[np.ndarray]:
    """Tensors of one OIP datatype and a small shape, 0-d and empty ones included."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    if datatype != "BYTES":
        return hnp.arrays(DATATYPES[datatype], shapes)

    def bytes_tensor(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
        count = math.prod(shape)
        elements = st.lists(st.binary(max_size=6), min_size=count, max_size=count)
        return elements.map(lambda values: _objects(values, shape))

    return shapes.flatmap(bytes_tensor)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_round_trips_with_tritonclient(datatype, data):
    """tritonclient encodes -> we decode, and we encode -> tritonclient decodes, over gRPC and REST
    (binary data both ways; numeric outputs as JSON too)."""
    array = data.draw(tensors_of(datatype))
    request = oip.ModelInferRequest.FromString(_triton_grpc_request({"x": array}))
    assert_tensors_equal(inputs_from_grpc(request, max_bytes=MAX_BYTES)["x"], array)
    assert_tensors_equal(_triton_grpc_result({"y": array}).as_numpy("y"), array)

    body, header_length = _triton_http_body({"x": array})
    assert_tensors_equal(parse_http_request(body, header_length, max_bytes=MAX_BYTES).inputs["x"], array)
    result, _ = _triton_http_result({"y": array}, {"y": True})
    assert_tensors_equal(result.as_numpy("y"), array)
    if array.dtype != object:
        result, _ = _triton_http_result({"y": array}, {"y": False})
        assert_tensors_equal(result.as_numpy("y"), array, bitwise=False)
