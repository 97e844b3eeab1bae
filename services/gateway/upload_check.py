"""What an upload must be before it is stored: a plain tar of regular files confined to the folder,
no bigger unpacked than the upload bound, holding what its declared format needs, with JSON of bounded
nesting, safetensors headers that describe their own bytes, and no pickles.

Checked at upload so a hostile or broken file is INVALID_ARGUMENT then, never INTERNAL when a job
reads it later. Only headers, names and small JSON files are read; tensor bytes are not. A
modelpress.json inside an upload is kept as a file but never read as lineage (the stage runner reads
lineage from the store's records of what the mesh made).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath

from modelpress.folders import PLAIN_FILE_TYPES
from modelpress.v1 import common_pb2
from services.common.models import pickles
from services.common.models.bounded_json import JsonTooDeep, JsonTooLarge, loads_bounded, read_capped
from services.common.models.safetensors_header import BadSafetensors, read_header
from services.common.runtime.cite import shown
from services.common.store.path_models import NAME_MAX_BYTES

MAX_ENTRIES = 10_000
MAX_NAME_CHARACTERS = 1024
# Plain files and folders: no sparse maps (a 10 KB tar unpacking to gigabytes), links, devices or fifos.
MODEL_FORMATS = (common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_PACKED_SAFETENSORS,
                 common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS)
MAX_JSONL_LINES_CHECKED = 1000
MAX_JSONL_LINE_BYTES = 16 * 1024 * 1024


class BadUpload(ValueError):
    """The upload is not what its header declares; the message names the entry and the fault."""


class UnpackedTooLarge(BadUpload):
    """The files would unpack to more than the upload bound (RESOURCE_EXHAUSTED, like a tar past it)."""


def check_upload(tar_path: Path, fmt: int, max_unpacked_bytes: int | None = None) -> None:
    """BadUpload unless `tar_path` is a well-formed upload of format `fmt` whose files add up to at most
    `max_unpacked_bytes` (the operator's max_upload_bytes; None: unbounded)."""
    try:
        tar = tarfile.open(tar_path, "r:")
    except tarfile.TarError as exc:
        raise BadUpload(f"the bytes are not a tar of a folder ({exc})") from None
    with tar:
        try:
            members = _checked_members(tar, max_unpacked_bytes)
        except tarfile.TarError as exc:  # truncated or corrupt past the first header
            raise BadUpload(f"the tar is damaged: {exc}") from None
        if fmt in MODEL_FORMATS:
            _check_model(tar, members)
        elif fmt == common_pb2.ARTIFACT_FORMAT_DATASET_JSONL:
            _check_dataset(tar, members)


def _checked_members(tar: tarfile.TarFile, max_unpacked_bytes: int | None) -> dict[str, tarfile.TarInfo]:
    files: dict[str, tarfile.TarInfo] = {}
    unpacked = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_ENTRIES:
            raise BadUpload(f"the tar holds over {MAX_ENTRIES} entries")
        name = member.name
        if len(name) > MAX_NAME_CHARACTERS or "\x00" in name:
            raise BadUpload(f"entry {shown(name)}: not a usable file name")
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise BadUpload(f"entry {shown(name)}: leaves the folder (absolute, or through '..')")
        if too_long := next((part for part in path.parts if len(part.encode()) > NAME_MAX_BYTES), None):
            raise BadUpload(f"entry {shown(name)}: path component {shown(too_long)} is {len(too_long.encode())} "
                            f"bytes, past the {NAME_MAX_BYTES} a file name may take")
        if member.isdir():
            continue
        if member.issparse():
            raise BadUpload(f"entry {shown(name)}: is a sparse file ({member.size} bytes unpacked from a few "
                            "stored); uploads hold plain regular files only")
        if member.type not in PLAIN_FILE_TYPES:
            kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "not a regular file"
            raise BadUpload(f"entry {shown(name)}: is {kind}; uploads hold regular files only")
        unpacked += member.size
        if max_unpacked_bytes is not None and unpacked > max_unpacked_bytes:
            raise UnpackedTooLarge(f"entry {shown(name)}: the files unpack to over the {max_unpacked_bytes} bytes "
                                   "an upload may take (the operator's max_upload_bytes)")
        files[path.as_posix().removeprefix("./")] = member
    if not files:
        raise BadUpload("the tar holds no files")
    return files


def _check_model(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> None:
    if "config.json" not in files:
        raise BadUpload("config.json: missing (an HF-style model folder has it at its top)")
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        if name in files:
            _check_json(tar, files[name], name)
    weights = [name for name in files if name.endswith(".safetensors")]
    if not weights:
        raise BadUpload("no *.safetensors file: weights are uploaded as safetensors (never pickles)")
    _check_no_pickles(tar, files)
    for name in weights:
        try:
            read_header(tar.extractfile(files[name]), files[name].size, name)
        except (BadSafetensors, JsonTooDeep) as exc:
            raise BadUpload(str(exc)) from None


def _check_json(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
    try:
        value = loads_bounded(read_capped(tar.extractfile(member), name), name)
    except (JsonTooDeep, JsonTooLarge) as exc:
        raise BadUpload(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUpload(f"{name}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadUpload(f"{name}: not a JSON object")


def _check_no_pickles(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> None:
    """Each file judged by its own bytes (pickles.py): a pickle suffix is refused unless the file is the
    raw weights its same-stem OpenVINO IR indexes."""
    for name, member in files.items():
        path = PurePosixPath(name)
        if path.suffix.lower() not in pickles.PICKLE_SUFFIXES:
            continue
        xml = files.get(path.with_suffix(".xml").as_posix())
        readable = xml is not None and xml.size <= pickles.MAX_IR_XML_BYTES
        if not pickles.is_openvino_weights(member.size, tar.extractfile(member).read(2),
                                           tar.extractfile(xml).read() if readable else None):
            raise BadUpload(f"{name}: a pickle (loading it runs whatever code it holds); weights are uploaded as "
                            "safetensors, never pickles")


def _check_dataset(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> None:
    shards = [name for name in files if name.endswith(".jsonl")]
    if not shards:
        raise BadUpload("no *.jsonl file: a dataset holds JSON lines of {\"text\": ...}")
    stream = tar.extractfile(files[shards[0]])
    for number in range(1, MAX_JSONL_LINES_CHECKED + 1):
        line = stream.readline(MAX_JSONL_LINE_BYTES + 1)  # bounded: one line without a newline is not read whole
        if not line:
            break
        if len(line) > MAX_JSONL_LINE_BYTES:
            raise BadUpload(f"{shards[0]} line {number}: over {MAX_JSONL_LINE_BYTES:,} bytes")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadUpload(f"{shards[0]} line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BadUpload(f"{shards[0]} line {number}: not an object with a \"text\" string")
