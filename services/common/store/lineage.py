"""What an artifact was made from, by content: input digests, library versions, and the stage key
under which a finished stage is reused.

A stage's key is the sha256 of (technique, method, canonical config, input digest, service and
library versions): the same method on the same bytes with the same code gives the same artifact,
so a second job with that key reuses the stored one. Keys never contain a path or an id alone
(Olive's cache keyed by path served stale models after a file changed: key by content).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from modelpress.v1 import common_pb2
from services.common.models.builtin_models import BUILTINS

# Libraries whose version can change what a stage writes (those installed are recorded).
LIBRARIES = ("modelpress", "torch", "transformers", "safetensors", "compressed-tensors", "onnx", "onnxruntime",
             "onnxscript", "openvino", "nncf", "gguf", "optimum")
READ_BLOCK = 8 * 1024 * 1024


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order (a model folder by content)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def builtin_digest(name: str) -> str:
    """A builtin is its wheel: name and version identify the bytes."""
    model = BUILTINS[name]
    if model.split is not None:  # every part's wheel
        return f"builtin:{name}:" + ",".join(f"{d}=={importlib.metadata.version(d)}" for d in model.split.distributions)
    version = importlib.metadata.version(model.package.replace("_", "-"))
    return f"builtin:{name}:{model.package}=={version}"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(technique: str, method: str, config: dict[str, Any], input_digest: str, service_version: str,
              versions: dict[str, str]) -> str:
    payload = {"technique": technique, "method": method, "config": config, "input": input_digest,
               "service_version": service_version, "versions": versions}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


def ref_digest(ref: common_pb2.ModelRef, stored_sha256: str = "", folder: Path | None = None) -> str:
    """The input's content digest: a stored artifact's sha256, a builtin's wheel, a path's files."""
    source = ref.WhichOneof("source")
    if source == "artifact_id":
        return "sha256:" + stored_sha256
    if source == "builtin":
        return builtin_digest(ref.builtin)
    if folder is None:
        raise ValueError("a path input needs its folder to be digested")
    return folder_digest(folder)
