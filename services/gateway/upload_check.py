"""What an upload must be before it is stored: a plain tar of regular files confined to the folder,
holding what its declared format needs, with safetensors headers that describe their own bytes.

Checked at upload so a hostile or broken file is INVALID_ARGUMENT then, never INTERNAL when a job
reads it later. Only headers and names are read; tensor bytes are not.
"""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path, PurePosixPath

from modelpress.v1 import common_pb2
from services.common.runtime.cite import shown

MAX_ENTRIES = 10_000
MAX_NAME_CHARACTERS = 1024
# A safetensors header is JSON of names, dtypes, shapes and offsets: megabytes at most.
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MODEL_FORMATS = (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS,
                 common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS)
MAX_JSONL_LINES_CHECKED = 1000


class BadUpload(ValueError):
    """The upload is not what its header declares; the message names the entry and the fault."""


def check_upload(tar_path: Path, fmt: int) -> None:
    """BadUpload unless `tar_path` is a well-formed upload of format `fmt`."""
    try:
        tar = tarfile.open(tar_path, "r:")
    except tarfile.TarError as exc:
        raise BadUpload(f"the bytes are not a tar of a folder ({exc})") from None
    with tar:
        try:
            members = _checked_members(tar)
        except tarfile.TarError as exc:  # truncated or corrupt past the first header
            raise BadUpload(f"the tar is damaged: {exc}") from None
        if fmt in MODEL_FORMATS:
            _check_model(tar, members)
        elif fmt == common_pb2.ARTIFACT_FORMAT_DATASET_JSONL:
            _check_dataset(tar, members)


def _checked_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    files: dict[str, tarfile.TarInfo] = {}
    for count, member in enumerate(tar, start=1):
        if count > MAX_ENTRIES:
            raise BadUpload(f"the tar holds over {MAX_ENTRIES} entries")
        name = member.name
        if len(name) > MAX_NAME_CHARACTERS or "\x00" in name:
            raise BadUpload(f"entry {shown(name)}: not a usable file name")
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise BadUpload(f"entry {shown(name)}: leaves the folder (absolute, or through '..')")
        if member.isdir():
            continue
        if not member.isreg():
            kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "not a regular file"
            raise BadUpload(f"entry {shown(name)}: is {kind}; uploads hold regular files only")
        files[path.as_posix().removeprefix("./")] = member
    if not files:
        raise BadUpload("the tar holds no files")
    return files


def _check_model(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> None:
    if "config.json" not in files:
        raise BadUpload("config.json: missing (an HF-style model folder has it at its top)")
    try:
        json.loads(tar.extractfile(files["config.json"]).read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUpload(f"config.json: not JSON ({exc})") from None
    weights = [name for name in files if name.endswith(".safetensors")]
    if not weights:
        raise BadUpload("no *.safetensors file: weights are uploaded as safetensors (never pickles)")
    for name in weights:
        _check_safetensors(tar.extractfile(files[name]), files[name].size, name)


def _check_safetensors(stream, size: int, name: str) -> None:
    """The header's length, JSON and every tensor's offsets against the file's real size."""
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise BadUpload(f"{name}: {size} bytes, shorter than a safetensors header")
    (header_bytes,) = struct.unpack("<Q", prefix)
    if header_bytes > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
        raise BadUpload(f"{name}: its header claims {header_bytes} bytes, past the file's {size} bytes "
                        f"(or the {MAX_SAFETENSORS_HEADER_BYTES} a header may take)")
    try:
        header = json.loads(stream.read(header_bytes))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUpload(f"{name}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadUpload(f"{name}: the header is not a JSON object")
    data_bytes = size - 8 - header_bytes
    for tensor, entry in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            elements = 1
            for dim in shape:
                if not isinstance(dim, int) or dim < 0:
                    raise TypeError
                elements *= dim
        except (KeyError, TypeError, ValueError):
            raise BadUpload(f"{name}: tensor {shown(str(tensor))} has no dtype, shape and data_offsets") from None
        if dtype not in DTYPE_BYTES:
            raise BadUpload(f"{name}: tensor {shown(str(tensor))} has dtype {shown(str(dtype))}, not a safetensors dtype")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_bytes):
            raise BadUpload(f"{name}: tensor {shown(str(tensor))} claims bytes [{begin}, {end}) of the "
                            f"{data_bytes} the file holds (truncated, or a lying header)")
        if elements * DTYPE_BYTES[dtype] != end - begin:
            raise BadUpload(f"{name}: tensor {shown(str(tensor))} is {dtype} {shape} ({elements * DTYPE_BYTES[dtype]} "
                            f"bytes) but its offsets span {end - begin}")


def _check_dataset(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> None:
    shards = [name for name in files if name.endswith(".jsonl")]
    if not shards:
        raise BadUpload("no *.jsonl file: a dataset holds JSON lines of {\"text\": ...}")
    stream = tar.extractfile(files[shards[0]])
    for number, line in enumerate(stream, start=1):
        if number > MAX_JSONL_LINES_CHECKED:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadUpload(f"{shards[0]} line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BadUpload(f"{shards[0]} line {number}: not an object with a \"text\" string")
