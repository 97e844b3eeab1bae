"""Artifact packaging: an HF-style folder plus a `modelpress.json` manifest, stored as a tar.

The manifest records lineage (parent artifact, the stage that made it), what compression
was applied and the figures measured, so an artifact explains itself without the job.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MANIFEST_NAME = "modelpress.json"
MANIFEST_SCHEMA = 1


class StageRecord(BaseModel):
    technique: str
    method: str
    config: dict[str, Any] = Field(default_factory=dict)
    job_id: str = ""
    stage_index: int = 0


class Manifest(BaseModel):
    schema_version: int = MANIFEST_SCHEMA
    format: str = Field(description="ArtifactFormat name, e.g. ARTIFACT_FORMAT_PACKED_SAFETENSORS")
    architecture: str = ""
    base_model: str = Field(default="", description="The model the lineage started from")
    parent_artifact: str = ""
    stage: StageRecord | None = None
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


def tar_folder(folder: Path, tar_path: Path) -> None:
    """Writes `folder`'s files into an uncompressed tar with stable order and metadata.

    Weights do not compress, and a plain tar streams at disk speed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                raise ValueError(f"artifact folders may not hold symlinks: {path}")
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False, filter=normalise)


def untar_folder(tar_path: Path, dest: Path) -> None:
    """Unpacks into `dest`, refusing absolute paths, `..`, links and devices (tar's "data" filter)."""
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tar_path, "r:") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
