"""What the gateway reads of a job's model before the job exists, without loading it: a path
model checked against the caller's roots and its config.json (path_models: through descriptors,
regular files only), or the head of a stored artifact's tar (folders are tarred in name order, so
config.json comes before the weights), and from it the token positions the model takes. A
built-in's figures are declared.

Model files are read on a small pool of threads of their own with a deadline, never on the event
loop: a folder on a stalled filesystem costs its caller FAILED_PRECONDITION after
MODEL_FILE_DEADLINE_S, not every tenant's RPCs (and at most MODEL_FILE_THREADS threads).
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from modelpress.v1 import common_pb2
from services.common.contract.chain import InvalidArgument
from services.common.contract.model_kinds import kind_of
from services.common.models import builtin_models
from services.common.models.bounded_json import loads_bounded
from services.common.runtime import auth
from services.common.runtime.cite import shown
from services.common.store import path_models
from services.common.store.artifact_store import ArtifactCorrupt, ArtifactStore
from services.common.store.path_models import FolderChanged, PathNotAllowed, RootOfOtherTenants, UnsafeEntry
from services.gateway.access import PermissionDenied

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
HEAD_BYTES = 4 * 1024 * 1024
MODEL_FILE_THREADS = 4
MODEL_FILE_DEADLINE_S = 5.0

_model_files = ThreadPoolExecutor(MODEL_FILE_THREADS, thread_name_prefix="model-files")


class ModelFilesTimeout(TimeoutError):
    """The filesystem did not answer a read of a path model within MODEL_FILE_DEADLINE_S."""


async def _off_the_loop(what: str, fn, *args):
    """`fn(*args)` on the model-file threads; ModelFilesTimeout naming `what` past the deadline
    (the thread may stay stuck, the event loop does not)."""
    future = asyncio.get_running_loop().run_in_executor(_model_files, fn, *args)
    try:
        return await asyncio.wait_for(future, MODEL_FILE_DEADLINE_S)
    except TimeoutError:
        raise ModelFilesTimeout(f"{what}: the filesystem did not answer within {MODEL_FILE_DEADLINE_S:g} s; "
                                "try again, or upload the model") from None


async def check_path_model(path: str, principal: auth.Principal, field: str = "model") -> None:
    """A path model's admission: under a root open to the caller's tenant, and every entry one a
    worker will copy (regular files of one link, links staying in the root). PERMISSION_DENIED for
    another tenant's root or an unsafe entry, INVALID_ARGUMENT for a path that is no model folder,
    ModelFilesTimeout where the filesystem does not answer, FolderChanged while it is being written."""
    try:
        await _off_the_loop(f"{field}.path", path_models.check_folder, path, principal)
    except FolderChanged:  # being written now: FAILED_PRECONDITION, as the worker's copy says
        raise
    except (RootOfOtherTenants, UnsafeEntry) as exc:
        raise PermissionDenied(_field_named(str(exc), field)) from None
    except (PathNotAllowed, FileNotFoundError, ValueError) as exc:
        raise InvalidArgument(_field_named(str(exc), field)) from None
    except ModelFilesTimeout:
        raise
    except OSError as exc:  # the gateway's own user cannot read it, an I/O error
        raise InvalidArgument(f"{field}.path: {shown(path)} cannot be read: {exc.strerror or exc}") from None


def _field_named(message: str, field: str) -> str:
    return f"{field}.path{message.removeprefix('model.path')}" if message.startswith("model.path") else message


def positions_in(config: dict) -> int | None:
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    text = config.get("text_config")
    return positions_in(text) if isinstance(text, dict) else None


def config_in_head(head: bytes) -> dict | None:
    """config.json of a tar whose first bytes are `head`, if it lies whole within them."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            for member in tar:
                if member.name.removeprefix("./") == "config.json" and member.isreg():
                    data = tar.extractfile(member).read()
                    return loads_bounded(data, "config.json") if len(data) == member.size else None
    except (tarfile.TarError, ValueError, UnicodeDecodeError, EOFError):
        return None
    return None


def _read_config(path: str, principal: auth.Principal) -> dict | None:
    try:
        data = path_models.read_config(path, principal)
        config = loads_bounded(data, "config.json") if data is not None else None
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, nested past the stack
        return None
    return config if isinstance(config, dict) else None


async def submitted_config(ref: common_pb2.ModelRef, store: ArtifactStore) -> dict | None:
    """config.json of a path (as the caller may read it) or stored artifact; None for a built-in or
    where it cannot be read cheaply (the stage that loads the model says what is wrong)."""
    source = ref.WhichOneof("source")
    if source == "path":
        try:
            return await _off_the_loop("model.path: config.json", _read_config, ref.path, auth.current())
        except ModelFilesTimeout:
            return None
    if source == "artifact_id":
        head = bytearray()
        try:
            async for chunk in store.iter_chunks(ref.artifact_id):
                head += chunk
                if len(head) >= HEAD_BYTES:
                    break
        except (ArtifactCorrupt, OSError):
            return None
        return config_in_head(bytes(head))
    return None


@dataclass(frozen=True)
class ModelHead:
    """What a request's checks need of its model, read once: its kind (model_kinds.MODEL_KINDS) and its
    position limit; None where it cannot be told cheaply (the stage itself says what it cannot take)."""

    kind: str | None = None
    positions: int | None = None


async def read_model_head(ref: common_pb2.ModelRef, store: ArtifactStore) -> ModelHead:
    """A built-in's declared figures, else its config.json's (one read of the path or the tar head)."""
    if ref.WhichOneof("source") == "builtin":
        builtin = builtin_models.BUILTINS[ref.builtin]
        return ModelHead(builtin.kind, builtin.max_positions)
    try:
        config = await submitted_config(ref, store)
    except (ArtifactCorrupt, OSError):
        config = None  # the stage's fetch says what is wrong
    return ModelHead(kind_of(config), positions_in(config)) if config else ModelHead()


def check_positions(spec: common_pb2.EvaluationSpec, limit: int | None, field: str) -> None:
    """INVALID_ARGUMENT when a measured shape asks for more positions than the model has."""
    if not limit:
        return
    lengths = [("sequence_length", spec.sequence_length)] + [("sequence_lengths", v) for v in spec.sequence_lengths]
    prefix = f"{field}." if field else ""
    for name, length in lengths:
        if length > limit:
            raise InvalidArgument(f"{prefix}{name}: {length} tokens is past the model's {limit} positions")
