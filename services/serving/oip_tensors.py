"""Tensors on the Open Inference Protocol (KServe v2) wire, both ways, for gRPC and REST.

gRPC: a ModelInferRequest's inputs come as `raw_input_contents` (what tritonclient sends) or as typed
`contents`; outputs go back as `raw_output_contents` (what Triton servers send, and the only form
tritonclient.grpc reads besides `bytes_contents`). REST: the KServe v2 JSON body plus Triton's
binary tensor data extension, which tritonclient.http uses by default: the JSON header comes first,
its length in the `Inference-Header-Content-Length` header, then each binary tensor's bytes in
order, each sized by its `parameters.binary_data_size`.

Raw tensors are little-endian, row-major, unpadded. A BYTES tensor is, per element, a 4-byte
little-endian length then the bytes; it decodes to a numpy object array of `bytes`.

Only numpy and protobuf messages here (duck-typed: any ModelInferRequest / ModelInferResponse class
with the OIP fields works), so the codec is tested against tritonclient's own encoders and decoders.
Every malformed request raises TensorError, naming the tensor and what is wrong.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The OIP datatypes and their numpy dtypes, little-endian as the wire is.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# Datatypes of the spec this codec refuses, and why (said in the error).
REFUSED_DATATYPES: dict[str, str] = {
    "BF16": "BF16 is not supported (numpy has no bfloat16); send FP32 or FP16",
}

# gRPC InferTensorContents: the repeated field holding each datatype's elements. FP16 has none: the
# spec sends it raw only.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Tensor parameters of Triton extensions this server does not implement: honouring them silently
# would answer something other than what was asked (a top-k instead of the tensor, or data in a
# shared-memory region nobody reads).
UNSUPPORTED_PARAMETERS: dict[str, str] = {
    "shared_memory_region": "shared memory is not supported",
    "shared_memory_byte_size": "shared memory is not supported",
    "shared_memory_offset": "shared memory is not supported",
    "classification": "the classification extension is not supported",
}

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

_LENGTH_PREFIX = struct.Struct("<I")


class TensorError(ValueError):
    """A malformed tensor or inference request; the message names the tensor and the fault."""


# --- datatypes -------------------------------------------------------------------------------------


def numpy_dtype(datatype: str, tensor: str) -> np.dtype:
    """The numpy dtype of an OIP datatype; `tensor` (e.g. "input 'x'") names it in the error."""
    if datatype in REFUSED_DATATYPES:
        raise TensorError(f"{tensor}: {REFUSED_DATATYPES[datatype]}")
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise TensorError(
            f"{tensor}: unknown datatype {datatype!r} (known: {', '.join(DATATYPES)})"
        ) from None


def datatype_of(array: np.ndarray, tensor: str) -> str:
    """The OIP datatype of a numpy array: object, bytes (S) and str (U) arrays are BYTES."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for datatype, dtype in DATATYPES.items():
        # Byte order aside: a big-endian float32 is still FP32 (it is swapped when written).
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            return datatype
    raise TensorError(f"{tensor}: numpy dtype {array.dtype} has no OIP datatype")


def element_count(shape: Sequence[int], tensor: str) -> int:
    """The number of elements of a shape; negative dimensions are refused."""
    if any(dim < 0 for dim in shape):
        raise TensorError(f"{tensor}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)


# --- raw bytes -------------------------------------------------------------------------------------


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """A BYTES tensor as Triton lays it out: per element (row-major), its 4-byte little-endian
    length then its bytes. str elements are written as UTF-8."""
    parts: list[bytes] = []
    for element in array.ravel(order="C").tolist():
        data = element.encode("utf-8") if isinstance(element, str) else bytes(element)
        parts.append(_LENGTH_PREFIX.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes, count: int, tensor: str) -> np.ndarray:
    """The `count` length-prefixed elements of a BYTES buffer, as a flat object array of bytes.
    A length prefix running past the buffer, a short or a long buffer are refused."""
    if count * _LENGTH_PREFIX.size > len(buffer):
        # Checked before allocating: a huge shape must not cost memory on a small buffer.
        raise TensorError(
            f"{tensor}: {len(buffer)} bytes of BYTES data cannot hold the {count} length-prefixed"
            " elements of its shape"
        )
    view = memoryview(buffer)
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if len(buffer) - offset < _LENGTH_PREFIX.size:
            raise TensorError(
                f"{tensor}: BYTES data ends at element {index} of {count}"
                f" ({len(buffer) - offset} bytes left, a 4-byte length prefix needed)"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(buffer, offset)
        offset += _LENGTH_PREFIX.size
        if length > len(buffer) - offset:
            raise TensorError(
                f"{tensor}: BYTES element {index} has length prefix {length}, overrunning the buffer"
                f" ({len(buffer) - offset} bytes left)"
            )
        elements[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(buffer):
        raise TensorError(
            f"{tensor}: {len(buffer) - offset} bytes of BYTES data left after the {count} elements of its shape"
        )
    return elements


def tensor_from_raw(tensor: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A tensor from its raw wire bytes. Numeric tensors are read-only views of `raw` (no copy):
    copy one before writing to it."""
    dtype = numpy_dtype(datatype, tensor)
    count = element_count(shape, tensor)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count, tensor).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"{tensor}: raw content is {len(raw)} bytes, shape {list(shape)} of {datatype} needs {expected}"
        )
    if datatype == "BOOL":
        # Any non-zero byte is true; viewing arbitrary bytes as numpy bool would not normalize them.
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def tensor_to_raw(tensor: str, array: np.ndarray) -> bytes:
    """A tensor's raw wire bytes: row-major, little-endian, BYTES length-prefixed."""
    datatype = datatype_of(array, tensor)
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()


class _ByteBudget:
    """The request's running total of tensor bytes, refused past the caller's limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.spent = 0

    def spend(self, tensor: str, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self.max_bytes:
            raise TensorError(
                f"{tensor}: its {nbytes} bytes bring the request's tensors to {self.spent} bytes,"
                f" over the {self.max_bytes}-byte limit"
            )


def _refuse_unsupported_parameters(tensor: str, names: Iterable[str]) -> None:
    for name in names:
        if name in UNSUPPORTED_PARAMETERS:
            raise TensorError(f"{tensor}: {UNSUPPORTED_PARAMETERS[name]} (parameter {name!r})")


def _check_shape(tensor: str, shape: Sequence[int], datatype: str) -> int:
    """Validates datatype and shape before any data is read; returns the element count."""
    numpy_dtype(datatype, tensor)
    return element_count(shape, tensor)


# --- gRPC ------------------------------------------------------------------------------------------


def inputs_from_grpc(request: Any, *, max_bytes: int) -> dict[str, np.ndarray]:
    """The input tensors of a ModelInferRequest, by name, in request order.

    Data comes either all as `raw_input_contents` (one entry per input, in order) or all as typed
    `contents`; `max_bytes` caps the request's total tensor bytes."""
    inputs = list(request.inputs)
    raws = list(request.raw_input_contents)
    _check_grpc_input_layout(inputs, raws)
    budget = _ByteBudget(max_bytes)
    tensors: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(inputs):
        label = f"input {tensor.name!r}"
        if tensor.name in tensors:
            raise TensorError(f"{label}: appears twice in the request")
        _refuse_unsupported_parameters(label, tensor.parameters.keys())
        shape = list(tensor.shape)
        count = _check_shape(label, shape, tensor.datatype)
        if raws:
            budget.spend(label, len(raws[index]))
            tensors[tensor.name] = tensor_from_raw(label, tensor.datatype, shape, raws[index])
        else:
            tensors[tensor.name] = _tensor_from_contents(label, tensor, shape, count, budget)
    return tensors


def _check_grpc_input_layout(inputs: Sequence[Any], raws: Sequence[bytes]) -> None:
    """Raw and typed contents are not mixed, and raw contents come one per input."""
    if not raws:
        return
    for tensor in inputs:
        if tensor.HasField("contents"):
            raise TensorError(
                f"input {tensor.name!r}: has typed contents while the request also has raw_input_contents"
                " (use one or the other for all inputs)"
            )
    if len(raws) < len(inputs):
        missing = inputs[len(raws)].name
        raise TensorError(
            f"input {missing!r}: has no raw_input_contents entry"
            f" ({len(raws)} raw_input_contents for {len(inputs)} inputs)"
        )
    if len(raws) > len(inputs):
        names = ", ".join(repr(tensor.name) for tensor in inputs)
        raise TensorError(
            f"{len(raws)} raw_input_contents for {len(inputs)} inputs ({names}): one entry per input"
        )


def _tensor_from_contents(
    label: str, tensor: Any, shape: list[int], count: int, budget: _ByteBudget
) -> np.ndarray:
    """A tensor from typed InferTensorContents: only its datatype's field, `count` elements."""
    datatype = tensor.datatype
    if not tensor.HasField("contents"):
        if count:
            raise TensorError(f"{label}: has no data (neither raw_input_contents nor contents)")
        return np.empty(shape, dtype=DATATYPES[datatype])
    field_name = CONTENTS_FIELDS.get(datatype)
    if field_name is None:
        raise TensorError(f"{label}: {datatype} has no typed contents field; send it in raw_input_contents")
    present = {descriptor.name for descriptor, _ in tensor.contents.ListFields()}
    if present - {field_name}:
        raise TensorError(
            f"{label}: {datatype} data belongs in {field_name}, not in {sorted(present - {field_name})}"
        )
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        raise TensorError(f"{label}: contents hold {len(values)} elements, shape {shape} needs {count}")
    if datatype == "BYTES":
        budget.spend(label, sum(len(value) for value in values))
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements.reshape(shape)
    dtype = DATATYPES[datatype]
    budget.spend(label, count * dtype.itemsize)
    # int_contents / uint_contents are 32-bit for every narrower type: out-of-range values are refused
    # rather than wrapped.
    return _checked_numbers(label, datatype, list(values)).reshape(shape)


def requested_outputs_grpc(request: Any) -> list[str] | None:
    """The output names a ModelInferRequest asks for, in its order; None when it names none (all
    outputs wanted)."""
    if not request.outputs:
        return None
    names: list[str] = []
    for output in request.outputs:
        label = f"output {output.name!r}"
        _refuse_unsupported_parameters(label, output.parameters.keys())
        if output.name in names:
            raise TensorError(f"{label}: requested twice")
        names.append(output.name)
    return names


def fill_grpc_response(response: Any, outputs: Mapping[str, np.ndarray], requested: list[str] | None) -> None:
    """Adds the requested outputs (all of `outputs` when `requested` is None), in that order, to a
    ModelInferResponse, each with one `raw_output_contents` entry: tritonclient.grpc pairs them by
    position. Model name, version and id are the caller's to set."""
    for name in select_outputs(outputs, requested):
        array = np.asarray(outputs[name])
        label = f"output {name!r}"
        # Encoded before it is added, so a refused output is never left half-written in the response.
        datatype, raw = datatype_of(array, label), tensor_to_raw(label, array)
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(raw)


def select_outputs(outputs: Mapping[str, np.ndarray], requested: Iterable[str] | None) -> list[str]:
    """The names to answer: the requested ones (each must exist), or all the model's outputs."""
    if requested is None:
        return list(outputs)
    names = list(dict.fromkeys(requested))
    for name in names:
        if name not in outputs:
            raise TensorError(
                f"output {name!r}: requested but the model has no such output (it has {', '.join(outputs)})"
            )
    return names


# --- numbers from JSON or typed contents ----------------------------------------------------------


def _checked_numbers(label: str, datatype: str, values: list[Any]) -> np.ndarray:
    """A flat numeric array of `datatype` from Python values: type and range are checked, nothing is
    silently wrapped or truncated."""
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        if not all(isinstance(value, (bool, np.bool_)) for value in values):
            raise TensorError(f"{label}: BOOL data must be true/false values")
        return np.array(values, dtype=dtype)
    if dtype.kind in "iu":
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
            raise TensorError(f"{label}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if values and (min(values) < info.min or max(values) > info.max):
            raise TensorError(f"{label}: {datatype} data out of range [{info.min}, {info.max}]")
        return np.array(values, dtype=dtype)
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        raise TensorError(f"{label}: {datatype} data must be numbers")
    return np.array(values, dtype=dtype)


# --- HTTP / REST -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpInferRequest:
    """A decoded REST inference request.

    `outputs` are the requested outputs with whether each is wanted as binary data; empty means all
    of the model's outputs, each binary if `binary_data_output` (the request parameter tritonclient
    sets to true when it names no outputs)."""

    id: str
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]] = field(default_factory=list)
    binary_data_output: bool = False

    def output_binary_flags(self, available: Iterable[str]) -> dict[str, bool]:
        """The outputs to answer, in order, and whether each goes as binary data."""
        available = list(available)
        if not self.outputs:
            return {name: self.binary_data_output for name in available}
        flags = dict(self.outputs)
        select_outputs(dict.fromkeys(available), flags)
        return flags


def parse_http_request(body: bytes, header_length: int | None, *, max_bytes: int) -> HttpInferRequest:
    """A REST inference request: JSON, then binary tensor data when `header_length` (the
    `Inference-Header-Content-Length` header) is given.

    Each input carries JSON `data` (flat or nested, BYTES as strings) or `parameters.binary_data_size`,
    whose bytes follow the JSON in input order. `max_bytes` caps the decoded tensor bytes; the body's
    own size is the HTTP server's to cap."""
    header, binary = _split_body(body, header_length)
    document = _load_json_object(header)
    inputs = _http_inputs(document.get("inputs"), binary, _ByteBudget(max_bytes))
    parameters = _json_object(document.get("parameters", {}), "request parameters")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise TensorError(f"request id must be a string, got {type(request_id).__name__}")
    binary_data_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_data_output, bool):
        raise TensorError("request parameter 'binary_data_output' must be true or false")
    return HttpInferRequest(
        id=request_id,
        parameters=parameters,
        inputs=inputs,
        outputs=_http_outputs(document.get("outputs", []), binary_data_output),
        binary_data_output=binary_data_output,
    )


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not 0 <= header_length <= len(body):
        raise TensorError(
            f"{HEADER_LENGTH_HEADER} {header_length} does not fit the {len(body)}-byte request body"
        )
    view = memoryview(body)
    return bytes(view[:header_length]), view[header_length:]


def _load_json_object(header: bytes) -> dict[str, Any]:
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TensorError(f"request JSON is malformed: {error}") from None
    return _json_object(document, "request body")


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TensorError(f"{what} must be a JSON object")
    return value


def _http_inputs(entries: Any, binary: memoryview, budget: _ByteBudget) -> dict[str, np.ndarray]:
    """The inputs of the JSON header, binary ones taking their bytes from `binary` in order; every
    binary byte must be claimed."""
    if not isinstance(entries, list):
        raise TensorError("request 'inputs' must be a JSON list")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for position, entry in enumerate(entries):
        name, datatype, shape, parameters = _http_input_header(entry, position)
        label = f"input {name!r}"
        if name in tensors:
            raise TensorError(f"{label}: appears twice in the request")
        _refuse_unsupported_parameters(label, parameters)
        count = _check_shape(label, shape, datatype)
        size = parameters.get("binary_data_size")
        if size is None:
            tensors[name] = _tensor_from_json(label, datatype, shape, count, entry, budget)
            continue
        if "data" in entry:
            raise TensorError(f"{label}: has both JSON 'data' and parameters.binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TensorError(f"{label}: binary_data_size must be a non-negative integer, got {size!r}")
        if offset + size > len(binary):
            raise TensorError(
                f"{label}: binary_data_size {size} overruns the binary data"
                f" ({len(binary) - offset} bytes left after the JSON header)"
            )
        budget.spend(label, size)
        tensors[name] = tensor_from_raw(label, datatype, shape, bytes(binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise TensorError(
            f"{len(binary) - offset} bytes of binary data after the JSON header belong to no input's binary_data_size"
        )
    return tensors


def _http_input_header(entry: Any, position: int) -> tuple[str, str, list[int], dict[str, Any]]:
    """An input's name, datatype, shape and parameters, type-checked."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise TensorError(f"input #{position}: must be a JSON object with a string 'name'")
    label = f"input {entry['name']!r}"
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise TensorError(f"{label}: 'datatype' must be a string")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TensorError(f"{label}: 'shape' must be a list of integers, got {shape!r}")
    parameters = _json_object(entry.get("parameters", {}), f"{label} parameters")
    return entry["name"], datatype, shape, parameters


def _tensor_from_json(
    label: str, datatype: str, shape: list[int], count: int, entry: dict[str, Any], budget: _ByteBudget
) -> np.ndarray:
    """A tensor from its JSON `data` (flat or nested lists; BYTES elements are strings)."""
    if "data" not in entry:
        raise TensorError(f"{label}: has neither JSON 'data' nor parameters.binary_data_size")
    values = _flatten(entry["data"])
    if len(values) != count:
        raise TensorError(f"{label}: data holds {len(values)} elements, shape {shape} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(value, str) for value in values):
            raise TensorError(f"{label}: BYTES data in JSON must be strings")
        elements = np.empty(count, dtype=object)
        elements[:] = [value.encode("utf-8") for value in values]
        budget.spend(label, sum(len(element) for element in elements))
        return elements.reshape(shape)
    budget.spend(label, count * DATATYPES[datatype].itemsize)
    return _checked_numbers(label, datatype, values).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    """The elements of nested JSON lists, row-major; a bare value is one element."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    # Iterative so a deeply nested body cannot exhaust the interpreter's recursion limit.
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _http_outputs(entries: Any, binary_data_output: bool) -> list[tuple[str, bool]]:
    """The requested outputs and whether each is binary: its own `binary_data` parameter, else the
    request's `binary_data_output`."""
    if not isinstance(entries, list):
        raise TensorError("request 'outputs' must be a JSON list")
    outputs: list[tuple[str, bool]] = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise TensorError(f"output #{position}: must be a JSON object with a string 'name'")
        label = f"output {entry['name']!r}"
        parameters = _json_object(entry.get("parameters", {}), f"{label} parameters")
        _refuse_unsupported_parameters(label, parameters)
        binary = parameters.get("binary_data", binary_data_output)
        if not isinstance(binary, bool):
            raise TensorError(f"{label}: parameter 'binary_data' must be true or false")
        if any(name == entry["name"] for name, _ in outputs):
            raise TensorError(f"{label}: requested twice")
        outputs.append((entry["name"], binary))
    return outputs


def http_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool],
) -> tuple[bytes, int | None]:
    """A REST inference response body, and the JSON header's length when any output is binary (to
    send as `Inference-Header-Content-Length`; None: the body is all JSON).

    JSON outputs carry flat `data` lists (BYTES as UTF-8 strings); binary ones carry
    `parameters.binary_data_size`, their bytes following the JSON in output order."""
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        document["id"] = request_id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        array = np.asarray(array)
        label = f"output {name!r}"
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array, label),
            "shape": list(array.shape),
        }
        if binary.get(name, False):
            blob = tensor_to_raw(label, array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(label, array)
        entries.append(entry)
    document["outputs"] = entries
    header = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _json_data(label: str, array: np.ndarray) -> list[Any]:
    """A tensor's elements as a flat JSON list; BYTES elements must be UTF-8 to fit in JSON."""
    flat = array.ravel(order="C").tolist()
    if datatype_of(array, label) != "BYTES":
        return flat
    try:
        return [element if isinstance(element, str) else bytes(element).decode("utf-8") for element in flat]
    except UnicodeDecodeError:
        raise TensorError(
            f"{label}: BYTES elements are not UTF-8, so cannot go in JSON; request it as binary data"
        ) from None
