"""untar_folder: what a worker unpacks from the store holds plain files only."""

from __future__ import annotations

import tarfile

import pytest

from modelpress.folders import tar_folder, untar_folder
from tests.upload_corpus import gnu_sparse_member


def test_a_sparse_member_is_refused_before_its_hole_is_written(tmp_path):
    tar_path = tmp_path / "sparse.tar"
    tar_path.write_bytes(gnu_sparse_member("weights.bin", 64 << 20, b"x" * 512) + b"\0" * 1024)
    dest = tmp_path / "out"
    with pytest.raises(tarfile.FilterError, match="weights.bin: a sparse or special tar entry"):
        untar_folder(tar_path, dest)
    assert not dest.exists() and not (tmp_path / "out.unpacking").exists()


def test_a_plain_folder_round_trips(tmp_path):
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "w.bin").write_bytes(b"\1\2\3")
    tar_path = tmp_path / "model.tar"
    tar_folder(source, tar_path)
    untar_folder(tar_path, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "w.bin").read_bytes() == b"\1\2\3"


def _tarfile_reference(folder, tar_path) -> None:
    """How tar_folder wrote a folder before it streamed: tarfile itself, owners and times dropped."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False, filter=normalise)


def test_the_streamed_tar_is_tarfiles_own_bytes_in_any_chunking(tmp_path):
    import os

    from modelpress.folders import FolderTar

    source = tmp_path / "model"
    deep = source / ("d" * 120)
    deep.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "empty").write_bytes(b"")
    (source / "naïve 名.txt").write_text("non-ASCII names take a PAX header")
    (deep / ("w" * 150 + ".safetensors")).write_bytes(os.urandom(70_001))
    (source / "config.json").chmod(0o600)
    _tarfile_reference(source, tmp_path / "reference.tar")
    reference = (tmp_path / "reference.tar").read_bytes()
    tar = FolderTar(source)
    assert tar.size == len(reference)
    for chunk_size in (1, 511, 4096, 1 << 20):
        chunks = list(tar.chunks(chunk_size))
        assert b"".join(chunks) == reference and max(map(len, chunks)) == min(chunk_size, len(reference))


def test_a_hard_linked_file_is_sent_whole_as_a_plain_member(tmp_path):
    import os

    from modelpress.folders import FolderTar

    source = tmp_path / "model"
    source.mkdir()
    (source / "a.bin").write_bytes(b"weights")
    os.link(source / "a.bin", source / "b.bin")
    tar_path = tmp_path / "model.tar"
    tar_path.write_bytes(b"".join(FolderTar(source).chunks()))
    with tarfile.open(tar_path) as tar:
        assert [(m.name, m.type, m.size) for m in tar] == [("a.bin", tarfile.REGTYPE, 7), ("b.bin", tarfile.REGTYPE, 7)]
