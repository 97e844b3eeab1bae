"""A safetensors file's header, checked against the file's own bytes: read at upload (from the tar) and
again before a worker loads weights (a path, or an artifact stored before uploads were checked).

Only the header is read, never tensor bytes. A lying header (offsets past the end, a shape that does
not fit its span, JSON nested to blow the parser's stack) is a BadSafetensors naming the file and
tensor, not a crash inside the Rust reader or a random-initialised model.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from services.common.models.bounded_json import JsonTooDeep, loads_bounded
from services.common.runtime.cite import shown

# A safetensors header is JSON of names, dtypes, shapes and offsets: megabytes at most.
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# {"name": {"dtype", "shape": [..], "data_offsets": [..]}}: three levels; __metadata__ is str -> str.
HEADER_DEPTH = 3


class BadSafetensors(ValueError):
    """The file is not the safetensors its name says; the message names the file and the fault."""


def read_header(stream: BinaryIO, size: int, name: str) -> dict[str, dict]:
    """The tensors the header of `stream` (a file of `size` bytes) declares, by name, once the header's
    length, JSON and every tensor's offsets are checked against the file's real size."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise BadSafetensors(f"{name}: {size} bytes, shorter than a safetensors header")
    (header_bytes,) = struct.unpack("<Q", prefix)
    if header_bytes > min(MAX_HEADER_BYTES, size - 8):
        raise BadSafetensors(f"{name}: its header claims {header_bytes} bytes, past the file's {size} bytes "
                             f"(or the {MAX_HEADER_BYTES} a header may take)")
    try:
        header = loads_bounded(stream.read(header_bytes), f"{name} header", HEADER_DEPTH)
    except JsonTooDeep:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadSafetensors(f"{name}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadSafetensors(f"{name}: the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadSafetensors(f"{name}: __metadata__ is not an object of strings")
    data_bytes = size - 8 - header_bytes
    for tensor, entry in header.items():
        _check_entry(name, tensor, entry, data_bytes)
    return header


def _check_entry(name: str, tensor: str, entry, data_bytes: int) -> None:
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        elements = 1
        for dim in shape:
            if not isinstance(dim, int) or dim < 0:
                raise TypeError
            elements *= dim
    except (KeyError, TypeError, ValueError):
        raise BadSafetensors(f"{name}: tensor {shown(str(tensor))} has no dtype, shape and data_offsets") from None
    if dtype not in DTYPE_BYTES:
        raise BadSafetensors(f"{name}: tensor {shown(str(tensor))} has dtype {shown(str(dtype))}, not a "
                             "safetensors dtype")
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_bytes):
        raise BadSafetensors(f"{name}: tensor {shown(str(tensor))} claims bytes [{begin}, {end}) of the "
                             f"{data_bytes} the file holds (truncated, or a lying header)")
    if elements * DTYPE_BYTES[dtype] != end - begin:
        raise BadSafetensors(f"{name}: tensor {shown(str(tensor))} is {dtype} {shape} "
                             f"({elements * DTYPE_BYTES[dtype]} bytes) but its offsets span {end - begin}")


def read_file_header(path: Path) -> dict[str, dict]:
    """read_header of a file on disk, named by its file name."""
    with open(path, "rb") as stream:
        return read_header(stream, path.stat().st_size, path.name)
