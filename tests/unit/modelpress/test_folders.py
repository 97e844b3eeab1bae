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
