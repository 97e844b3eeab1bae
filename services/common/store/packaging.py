"""Artifact packaging: an HF-style folder plus a `modelpress.json` manifest, stored as a tar.

The manifest records lineage (parent artifact, the stage that made it), what compression
was applied and the figures measured, so an artifact explains itself without the job. It is written by
the stage runner only and never read back as lineage: the store's meta record of an output holds the
lineage the mesh trusts, and a modelpress.json inside an uploaded or local folder is just a file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

# The tar form is shared with the client, which installs without the server's dependencies.
from modelpress.folders import tar_folder, untar_folder  # noqa: F401

MANIFEST_NAME = "modelpress.json"
MANIFEST_SCHEMA = 2


class StageRecord(BaseModel):
    technique: str
    method: str
    config: dict[str, Any] = Field(default_factory=dict)
    job_id: str = ""
    stage_index: int = 0
    input: str = Field(default="", description="The stage's input as given (builtin:NAME, artifact:ID, path:DIR)")
    input_digest: str = Field(default="", description="Content digest of the input (see services/common/store/lineage.py)")
    service_version: str = ""
    versions: dict[str, str] = Field(default_factory=dict, description="Library versions on the worker")
    key: str = Field(default="", description="The stage's reuse key")
    worker: str = ""
    format: str = Field(default="", description="ArtifactFormat name of what the stage wrote")
    metrics: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    schema_version: int = MANIFEST_SCHEMA
    format: str = Field(description="ArtifactFormat name, e.g. ARTIFACT_FORMAT_PACKED_SAFETENSORS")
    architecture: str = ""
    base_model: str = Field(default="", description="The model the lineage started from")
    parent_artifact: str = ""
    stage: StageRecord | None = None
    # Every stage from the base model to this artifact, this one last.
    chain: list[StageRecord] = Field(default_factory=list)
    compression: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2))
    return path


def read_manifest(folder: Path) -> Manifest | None:
    path = folder / MANIFEST_NAME
    if not path.exists():
        return None
    return Manifest.model_validate(json.loads(path.read_text()))


def folder_size_bytes(folder: Path) -> int:
    """Bytes on disk of every regular file under `folder` (what a user would download)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
