"""What the gateway reads of a job's model before the job exists, without loading it: the model's
config.json from a path (off the event loop) or from the head of a stored artifact's tar (folders
are tarred in name order, so it comes before the weights), and from it the token positions the
model takes. A built-in's figures are declared."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
import tarfile
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common.models import builtin_models
from services.common.store.artifact_store import ArtifactCorrupt, ArtifactStore
from services.common.store.model_source import check_allowed_path
from services.common.contract.chain import InvalidArgument
from services.common.contract.model_kinds import kind_of

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
HEAD_BYTES = 4 * 1024 * 1024


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
                    return json.loads(data) if len(data) == member.size else None
    except (tarfile.TarError, ValueError, UnicodeDecodeError, EOFError):
        return None
    return None


def _read_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


async def submitted_config(ref: common_pb2.ModelRef, store: ArtifactStore) -> dict | None:
    """config.json of a path or stored artifact; None for a built-in or where it cannot be read
    cheaply (the stage that loads the model says what is wrong)."""
    source = ref.WhichOneof("source")
    if source == "path":
        return await asyncio.to_thread(_read_config, Path(check_allowed_path(ref.path)))
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
