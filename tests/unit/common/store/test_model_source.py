"""The model source (services/common/store/model_source.py): a ModelRef becomes a local folder, a
built-in's package folder, a stored artifact fetched once into the cache over the session's real
nats-server, or a path under an operator-allowed root. Every refusal names the reference."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from modelpress.v1 import common_pb2
from services.common.models.builtin_models import UnknownBuiltin, get_builtin
from services.common.runtime.cite import shown
from services.common.store.artifact_store import ArtifactNotFound, ArtifactStore
from services.common.store.disk_bounds import IN_USE_GRACE_S
from services.common.store.model_source import ModelSource, PathNotAllowed, describe
from services.common.store.path_models import check_folder

FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


class CountingStore:
    """The real store, counting the fetches the model source makes of it."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.fetched: list[str] = []

    async def get_dir(self, artifact_id: str, dest: Path):
        self.fetched.append(artifact_id)
        return await self.store.get_dir(artifact_id, dest)


@pytest.fixture(scope="module")
async def store(js):
    return await ArtifactStore(js, bucket="model_source_tests").ensure()


def _model_folder(parent: Path, name: str, payload: bytes = b"\0" * 1024) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (folder / "model.safetensors").write_bytes(payload)
    return folder


@pytest.fixture(scope="module")
async def stored(store, tmp_path_factory):
    """Two stored model folders: (artifact id, the folder it was made from)."""
    parent = tmp_path_factory.mktemp("stored-models")
    made = []
    for name, payload in (("first", b"\1" * 4096), ("second", b"\2" * 4096)):
        folder = _model_folder(parent, name, payload)
        made.append(((await store.put_dir(folder, fmt=FLOAT)).id, folder))
    return made


@pytest.fixture
def counting(store, tmp_path) -> tuple[ModelSource, CountingStore, Path]:
    counted = CountingStore(store)
    return ModelSource(counted, tmp_path / "cache"), counted, tmp_path / "cache"


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all((a / n).read_bytes() == (b / n).read_bytes()
                                                                 for n in names)


@pytest.fixture
def roots(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the one allowed root, a sibling folder outside it)."""
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", str(root))
    return root, outside


def test_describe_writes_each_reference_as_the_cli_does():
    assert describe(common_pb2.ModelRef(builtin="minilm-l6")) == "builtin:minilm-l6"
    assert describe(common_pb2.ModelRef(artifact_id="a-1")) == "artifact:a-1"
    assert describe(common_pb2.ModelRef(path="/models/x")) == "path:/models/x"
    assert describe(common_pb2.ModelRef()) == "<empty>"


async def test_a_builtin_is_its_package_folder_and_an_unknown_one_names_the_allowed(counting):
    source, counted, _ = counting
    folder = await source.local_folder(common_pb2.ModelRef(builtin="minilm-l6"))
    model = get_builtin("minilm-l6")
    assert folder == model.package_dir() / model.relative_path and (folder / "config.json").is_file()
    with pytest.raises(UnknownBuiltin) as info:
        await source.local_folder(common_pb2.ModelRef(builtin="gpt-17"))
    assert "unknown builtin model 'gpt-17'; allowed: " in str(info.value) and "minilm-l6" in str(info.value)
    assert counted.fetched == []  # neither touched the store


async def test_an_empty_reference_names_the_sources_it_needs(counting):
    source, _, _ = counting
    with pytest.raises(ValueError, match=r"^model: one of artifact_id, builtin or path is required$"):
        await source.local_folder(common_pb2.ModelRef())


async def test_a_stored_artifact_is_fetched_once_and_its_cached_copy_reused(counting, stored):
    source, counted, cache = counting
    (artifact_id, original), _ = stored
    ref = common_pb2.ModelRef(artifact_id=artifact_id)
    folder = await source.local_folder(ref)
    assert folder == cache / "artifacts" / artifact_id and _same_files(folder, original)
    again = await source.local_folder(ref)
    assert again == folder and counted.fetched == [artifact_id]
    # Three stages asking at once still fetch it once (the others wait for the first).
    source2 = ModelSource(counted, cache / "other")
    folders = await asyncio.gather(*(source2.local_folder(ref) for _ in range(3)))
    assert len(set(folders)) == 1 and counted.fetched == [artifact_id, artifact_id]


async def test_a_fetched_copy_is_its_users_alone_whatever_the_umask(counting, stored):
    source, _, cache = counting
    (artifact_id, _), _ = stored
    (cache / "artifacts").mkdir(parents=True, mode=0o755)  # made wide by an older version: narrowed
    old = os.umask(0)
    try:
        folder = await source.local_folder(common_pb2.ModelRef(artifact_id=artifact_id))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (cache / "artifacts", folder, *folder.rglob("*"))}
    assert modes == {"artifacts": 0o700, artifact_id: 0o700, "config.json": 0o600, "model.safetensors": 0o600}
    assert (cache / "artifacts" / f".{artifact_id}.lock").stat().st_mode & 0o777 == 0o600


async def test_forgetting_a_deleted_artifact_drops_its_copy_and_never_leaves_the_cache(counting, stored):
    source, counted, cache = counting
    (artifact_id, _), _ = stored
    folder = await source.local_folder(common_pb2.ModelRef(artifact_id=artifact_id))
    (cache / "keep-me").mkdir()
    for hostile in ("", ".", "..", "../keep-me", "a/../../keep-me", ".hidden"):
        assert await source.forget(hostile) is False
    assert (cache / "keep-me").is_dir() and folder.is_dir()
    assert await source.forget(artifact_id) is True and not folder.exists()
    assert await source.forget(artifact_id) is False
    await source.local_folder(common_pb2.ModelRef(artifact_id=artifact_id))  # fetched anew
    assert counted.fetched == [artifact_id, artifact_id]


async def test_a_missing_artifact_is_not_found_naming_it_and_leaves_nothing_cached(counting):
    source, _, cache = counting
    with pytest.raises(ArtifactNotFound, match="artifact 'a-00000000000000000000' not found"):
        await source.local_folder(common_pb2.ModelRef(artifact_id="a-00000000000000000000"))
    assert not (cache / "artifacts" / "a-00000000000000000000").exists()


async def test_past_its_byte_bound_the_cache_evicts_the_least_recently_used_copy_not_the_new_one(
        store, stored, tmp_path):
    (first, _), (second, _) = stored
    cache = tmp_path / "cache"
    source = ModelSource(CountingStore(store), cache, max_bytes=6000)  # room for one copy, not two
    old = await source.local_folder(common_pb2.ModelRef(artifact_id=first))
    past_grace = time.time() - IN_USE_GRACE_S - 60
    os.utime(old, (past_grace, past_grace))
    new = await source.local_folder(common_pb2.ModelRef(artifact_id=second))
    assert new.is_dir() and not old.exists()
    # The one just fetched stays even though it alone is past a tinier bound.
    tiny = ModelSource(CountingStore(store), tmp_path / "tiny", max_bytes=1)
    assert (await tiny.local_folder(common_pb2.ModelRef(artifact_id=first))).is_dir()


async def test_an_allowed_path_is_an_owner_only_copy_made_once_while_its_files_are_unchanged(counting, roots):
    source, counted, cache = counting
    root, _ = roots
    folder = _model_folder(root, "models/bert")
    (root / "models" / "shared.json").write_text("{}")
    (folder / "tokenizer.json").symlink_to("../shared.json")  # a link to a file of the same root is copied
    ref = common_pb2.ModelRef(path=str(root / "models" / ".." / "models" / "bert"))
    copy = await source.local_folder(ref)
    assert copy.parent == cache / "artifacts" and copy.name.startswith("p-")
    assert sorted(p.name for p in copy.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (copy / "tokenizer.json").read_text() == "{}" and not (copy / "tokenizer.json").is_symlink()
    assert oct((cache / "artifacts").stat().st_mode & 0o777) == oct(0o700)
    assert all(p.stat().st_mode & 0o077 == 0 for p in copy.rglob("*"))
    assert await source.local_folder(common_pb2.ModelRef(path=str(folder))) == copy  # unchanged: the same copy
    (folder / "model.safetensors").write_bytes(b"\1" * 1024)
    again = await source.local_folder(ref)
    assert again != copy and (again / "model.safetensors").read_bytes() == b"\1" * 1024
    assert (copy / "model.safetensors").read_bytes() == b"\0" * 1024  # a copy never changes under its reader
    assert not [p for p in (cache / "artifacts").iterdir() if p.name.endswith(".unpacking")]
    (root / "alias").symlink_to(folder)
    with pytest.raises(PathNotAllowed, match="'alias' under the root is a symlink"):
        await source.local_folder(common_pb2.ModelRef(path=str(root / "alias")))
    assert counted.fetched == []


def test_a_path_outside_every_root_is_refused_naming_it_and_the_roots(roots):
    root, outside = roots
    for given in (str(outside), str(root / ".." / "outside"), "/etc"):
        with pytest.raises(PathNotAllowed) as info:
            check_folder(given)
        assert str(info.value) == f"model.path: {shown(given)} is outside the allowed roots {root.resolve()}"


def test_a_link_under_the_root_that_points_out_is_refused(roots):
    root, outside = roots
    _model_folder(outside, "secret")
    (root / "door").symlink_to(outside / "secret")
    with pytest.raises(PathNotAllowed, match="'door' under the root is a symlink"):  # the path itself leads out
        check_folder(str(root / "door"))
    folder = _model_folder(root, "model")
    (folder / "weights").mkdir()
    (folder / "weights" / "shard.safetensors").symlink_to(outside / "secret" / "model.safetensors")
    with pytest.raises(PathNotAllowed) as info:  # a file inside leads out: refused, not followed
        check_folder(str(folder))
    assert str(info.value) == (f"model.path: {shown(str(folder))} holds a symlink leaving the allowed root "
                               f"{root.resolve()}: 'weights/shard.safetensors'")


def test_a_missing_folder_or_a_file_is_not_found_naming_it(roots):
    root, _ = roots
    (root / "model.safetensors").write_bytes(b"\0")
    for given in (root / "absent", root / "model.safetensors"):
        with pytest.raises(FileNotFoundError) as info:
            check_folder(str(given))
        assert str(info.value) == f"model.path: {shown(str(given))} is not a folder"


def test_paths_are_refused_when_no_root_is_allowed_or_the_path_is_unusable(roots, monkeypatch):
    root, _ = roots
    with pytest.raises(PathNotAllowed, match="NUL byte"):
        check_folder(str(root) + "\x00/x")
    with pytest.raises(PathNotAllowed, match="over 4096 characters"):
        check_folder(str(root) + "/x" * 3000)
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", "")
    with pytest.raises(PathNotAllowed, match=r"^model.path: local paths are disabled \(the operator sets "
                                             r"MODELPRESS_ALLOWED_ROOTS\)$"):
        check_folder(str(root))
