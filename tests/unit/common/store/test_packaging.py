import io
import tarfile

import pytest

from services.common.store import packaging


def test_tar_round_trip_keeps_files_and_manifest(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin.safetensors").write_bytes(b"\x00\x01" * 1000)
    packaging.write_manifest(src, packaging.Manifest(format="ARTIFACT_FORMAT_HF_SAFETENSORS", parent_artifact="a-1",
                                                     stage=packaging.StageRecord(technique="quantizer",
                                                                                 method="fp16")))
    packaging.tar_folder(src, tmp_path / "a.tar")
    packaging.untar_folder(tmp_path / "a.tar", tmp_path / "dst")
    for rel in ("config.json", "sub/weights.bin.safetensors", "modelpress.json"):
        assert (tmp_path / "dst" / rel).read_bytes() == (src / rel).read_bytes()
    manifest = packaging.read_manifest(tmp_path / "dst")
    assert manifest.parent_artifact == "a-1" and manifest.stage.method == "fp16"
    assert packaging.folder_size_bytes(tmp_path / "dst") == packaging.folder_size_bytes(src)


def test_tar_is_deterministic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "b.txt").write_text("b")
    (src / "a.txt").write_text("a")
    packaging.tar_folder(src, tmp_path / "1.tar")
    (src / "a.txt").touch()  # mtime changes must not change the bytes
    packaging.tar_folder(src, tmp_path / "2.tar")
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


def test_untar_refuses_path_traversal(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(tarfile.TarError):
        packaging.untar_folder(evil, tmp_path / "dst")
    assert not (tmp_path / "outside.txt").exists()
    assert not (tmp_path / "dst").exists()


def test_tar_refuses_symlinks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="symlink"):
        packaging.tar_folder(src, tmp_path / "a.tar")
