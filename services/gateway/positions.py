"""How many token positions a model takes, read without loading it: a built-in's known limit, a
path's config.json, or the config.json at the head of a stored artifact's tar (folders are tarred
in name order, so it comes before the weights)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from modelpress.v1 import common_pb2
from services.common.models import builtin_models as registry
from services.common.store.artifact_store import ArtifactStore
from services.common.models.model_source import check_allowed_path
from services.common.contract.chain import InvalidArgument

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
HEAD_BYTES = 4 * 1024 * 1024


def positions_in(config: dict) -> int | None:
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    text = config.get("text_config")
    return positions_in(text) if isinstance(text, dict) else None


def _config_in_head(head: bytes) -> dict | None:
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


async def model_positions(ref: common_pb2.ModelRef, store: ArtifactStore) -> int | None:
    """The model's position limit, or None where it cannot be told cheaply (the evaluator still checks)."""
    source = ref.WhichOneof("source")
    if source == "builtin":
        return registry.BUILTINS[ref.builtin].max_positions
    if source == "path":
        config = Path(check_allowed_path(ref.path)) / "config.json"
        try:
            return positions_in(json.loads(config.read_text()))
        except (OSError, ValueError):
            return None
    if source == "artifact_id":
        head = bytearray()
        async for chunk in store.iter_chunks(ref.artifact_id):
            head += chunk
            if len(head) >= HEAD_BYTES:
                break
        config = _config_in_head(bytes(head))
        return positions_in(config) if config else None
    return None


def check_positions(spec: common_pb2.EvaluationSpec, limit: int | None, field: str) -> None:
    """INVALID_ARGUMENT when a measured shape asks for more positions than the model has."""
    if not limit:
        return
    lengths = [("sequence_length", spec.sequence_length)] + [("sequence_lengths", v) for v in spec.sequence_lengths]
    prefix = f"{field}." if field else ""
    for name, length in lengths:
        if length > limit:
            raise InvalidArgument(f"{prefix}{name}: {length} tokens is past the model's {limit} positions")
