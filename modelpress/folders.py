"""Model folders as tars: the wire and storage form of an artifact, on both ends of the mesh.

Standard library only, so the client installs without the server's dependencies.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

# tarfile's block and record: members are padded to blocks, the archive to records (as `tar -b20`).
TAR_BLOCK = tarfile.BLOCKSIZE
TAR_RECORD = tarfile.RECORDSIZE
STREAM_CHUNK = 1024 * 1024


class FolderTar:
    """A folder's files as an uncompressed tar, produced chunk by chunk: what `tar_folder` writes and
    `Client.upload` streams, without the whole tar ever in memory or on disk.

    Weights do not compress, and a plain tar streams at disk speed. Owners and modification times
    are not kept, so the same files give the same bytes (and the same digest). Every file is a
    regular member (a hard-linked file is stored whole, as the gateway takes plain files only).
    The members and the tar's size are fixed here; a file that changes size before it is read
    fails the read.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"not a folder: {self.folder}")
        self.members: list[tuple[Path, tarfile.TarInfo, bytes]] = []
        for path in sorted(self.folder.rglob("*")):
            if path.is_symlink():
                raise ValueError(f"artifact folders may not hold symlinks: {path}")
            if path.is_file():
                info = _member(path, path.relative_to(self.folder).as_posix())
                self.members.append((path, info, info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")))
        members_end = sum(len(header) + _padded(info.size) for _, info, header in self.members)
        # Two zero blocks close the archive, then zeros fill its last record.
        closed = members_end + 2 * TAR_BLOCK
        self.size = closed + (-closed % TAR_RECORD)
        self._trailer = self.size - members_end

    @property
    def file_bytes(self) -> int:
        return sum(info.size for _, info, _ in self.members)

    def chunks(self, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        """The tar's bytes in chunks of `chunk_size` (the last shorter); under two chunks are held."""
        buffer = bytearray()
        for path, info, header in self.members:
            buffer += header
            with open(path, "rb") as src:
                if os.fstat(src.fileno()).st_size != info.size:
                    raise OSError(f"{path}: changed size while the folder was being read; retry once it is written")
                left = info.size
                while left:
                    piece = src.read(min(left, chunk_size))
                    if not piece:
                        raise OSError(f"{path}: shorter than when the folder was listed; retry once it is written")
                    left -= len(piece)
                    buffer += piece
                    yield from _full_chunks(buffer, chunk_size)
            buffer += tarfile.NUL * (-info.size % TAR_BLOCK)
        buffer += tarfile.NUL * self._trailer
        yield from _full_chunks(buffer, chunk_size)
        if buffer:
            yield bytes(buffer)


def _full_chunks(buffer: bytearray, chunk_size: int) -> Iterator[bytes]:
    """Takes every whole chunk off the front of `buffer`."""
    while len(buffer) >= chunk_size:
        yield bytes(buffer[:chunk_size])
        del buffer[:chunk_size]


def _member(path: Path, name: str) -> tarfile.TarInfo:
    """A regular member as tarfile's gettarinfo makes it, with owners and times dropped."""
    stat = path.stat()
    info = tarfile.TarInfo(name)
    info.size, info.mode = stat.st_size, stat.st_mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _padded(size: int) -> int:
    return size + (-size % TAR_BLOCK)


def tar_folder(folder: Path, tar_path: Path) -> None:
    """Writes `folder`'s files into an uncompressed tar with stable order and metadata (FolderTar)."""
    with open(tar_path, "wb") as out:
        out.writelines(FolderTar(folder).chunks())


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


# The tar entries a model folder may hold besides folders: regular files, never sparse (the gateway's
# upload check and the worker's unpack apply the same rule).
PLAIN_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


def _plain_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    if member.issparse() or not (member.isdir() or member.type in PLAIN_FILE_TYPES):
        raise tarfile.FilterError(f"{member.name}: a sparse or special tar entry; artifacts hold plain files")
    return tarfile.data_filter(member, dest)


def stamp_modification_times(folder: Path, when: float) -> None:
    """Gives unpacked files a real modification time (the tar keeps none): `when`, a Unix time."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))
