"""Model folders as tars: the wire and storage form of an artifact, on both ends of the mesh.

Standard library only, so the client installs without the server's dependencies.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path


def tar_folder(folder: Path, tar_path: Path) -> None:
    """Writes `folder`'s files into an uncompressed tar with stable order and metadata.

    Weights do not compress, and a plain tar streams at disk speed. Owners and modification
    times are not kept, so the same files give the same bytes (and the same digest).
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
    """Unpacks into `dest`, refusing absolute paths, `..`, links, devices (tar's "data" filter) and
    sparse members (which the data filter lets through: a few KB of tar could claim gigabytes)."""
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(tar_path, "r:") as tar:
            tar.extractall(tmp, filter=_plain_only)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _plain_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    if member.issparse() or not (member.isdir() or member.type in (tarfile.REGTYPE, tarfile.AREGTYPE)):
        raise tarfile.FilterError(f"{member.name}: a sparse or special tar entry; artifacts hold plain files")
    return tarfile.data_filter(member, dest)


def stamp_modification_times(folder: Path, when: float) -> None:
    """Gives unpacked files a real modification time (the tar keeps none): `when`, a Unix time."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))
