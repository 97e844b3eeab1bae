"""Path models (services/common/store/path_models.py): a folder under an allowed root is checked and
copied through directory descriptors, so nothing outside the root reaches the copy (hard links,
symlinks, a swap after the check), nothing blocks the reader (FIFOs, sockets, devices), the copy
is owner-only, and a root named for a tenant is that tenant's alone."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from services.common.runtime.auth import Principal
from services.common.store import path_models
from services.common.store.path_models import (
    FolderChanged,
    PathNotAllowed,
    RootOfOtherTenants,
    UnsafeEntry,
    check_folder,
    copy_folder,
    read_config,
)

SECRET = b"tenant B's private bytes"
ACME, GLOBEX = Principal("acme", False), Principal("globex", False)
OPERATOR = Principal("ops", True)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """The one allowed root, holding model `m`; tmp_path/outside/secret (0600) lies outside it."""
    (tmp_path / "root" / "m" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "m" / "config.json").write_text('{"max_position_embeddings": 64}')
    (tmp_path / "root" / "m" / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", str(tmp_path / "root"))
    return tmp_path / "root"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread: a call that blocks (a FIFO read) fails the test, never hangs it."""
    outcome: list = []

    def run():
        try:
            outcome.append(("value", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{fn.__name__} blocked for {seconds} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def test_the_copy_holds_the_sources_bytes_owner_only_whatever_the_umask(root, tmp_path):
    old = os.umask(0o022)
    try:
        checked = copy_folder(str(root / "m"), tmp_path / "copy")
    finally:
        os.umask(old)
    assert _files(tmp_path / "copy") == _files(root / "m")
    assert (checked.entries, checked.bytes) == (3, 3000 + len('{"max_position_embeddings": 64}'))
    assert checked.key == check_folder(str(root / "m")).key  # unchanged source, same key
    for path in [tmp_path / "copy", *(tmp_path / "copy").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_the_key_changes_when_a_file_is_rewritten_even_with_the_same_bytes_and_time(root):
    before = check_folder(str(root / "m")).key
    config = root / "m" / "config.json"
    times = config.stat()
    config.write_text(config.read_text())
    os.utime(config, ns=(times.st_atime_ns, times.st_mtime_ns))  # its owner can set mtime back, not ctime
    assert check_folder(str(root / "m")).key != before


def test_a_hard_link_to_a_file_outside_the_root_is_refused_naming_it(root, tmp_path):
    os.link(tmp_path / "outside" / "secret", root / "m" / "sub" / "vocab.txt")
    for check in (lambda: check_folder(str(root / "m")), lambda: copy_folder(str(root / "m"), tmp_path / "copy")):
        with pytest.raises(UnsafeEntry, match=r"'sub/vocab.txt' has 2 hard links.*copy the file into the folder"):
            check()
    assert not (tmp_path / "copy").exists()  # nothing of a refused folder stays


@pytest.mark.parametrize("target", ["../../outside/secret", "ABSOLUTE", "../m/../../outside/secret"])
def test_a_symlink_leaving_the_root_is_refused_not_followed(root, tmp_path, target):
    target = str(tmp_path / "outside" / "secret") if target == "ABSOLUTE" else target
    (root / "m" / "tokenizer.json").symlink_to(target)
    with pytest.raises(UnsafeEntry, match=r"holds a symlink leaving the allowed root .*'tokenizer.json'"):
        check_folder(str(root / "m"))
    with pytest.raises(UnsafeEntry):
        copy_folder(str(root / "m"), tmp_path / "copy")


def test_a_link_to_a_file_of_the_same_root_is_copied_as_that_file_and_nothing_else_is(root, tmp_path):
    """A Hugging Face cache: snapshots/REV/NAME -> ../../blobs/SHA, all in one root."""
    (root / "blobs").mkdir()
    (root / "blobs" / "abc").write_bytes(b"tokens")
    (root / "m" / "tokenizer.json").symlink_to("../blobs/abc")
    copy_folder(str(root / "m"), tmp_path / "copy")
    assert (tmp_path / "copy" / "tokenizer.json").read_bytes() == b"tokens"
    assert not (tmp_path / "copy" / "tokenizer.json").is_symlink()
    for name, target, why in [("a", "../blobs", "a symlink to a folder"), ("b", "tokenizer.json", "another link"),
                              ("c", "../blobs/none", "to nothing")]:
        (root / "m" / name).symlink_to(target)
        with pytest.raises((UnsafeEntry, FileNotFoundError), match=why):
            check_folder(str(root / "m"))
        (root / "m" / name).unlink()
    # A link whose target passes through a link is refused: only names without links are opened.
    (root / "door").symlink_to(tmp_path / "outside")
    (root / "m" / "vocab.txt").symlink_to("../door/secret")
    with pytest.raises(UnsafeEntry, match="'vocab.txt' is a symlink whose target passes through another link"):
        copy_folder(str(root / "m"), tmp_path / "copy2")


def test_a_fifo_is_refused_at_once_by_the_check_the_copy_and_the_config_read(root, tmp_path):
    os.mkfifo(root / "m" / "vocab.txt")
    with pytest.raises(UnsafeEntry, match=r"'vocab.txt' is a FIFO, not a regular file"):
        _within(5, check_folder, str(root / "m"))
    with pytest.raises(UnsafeEntry, match=r"'vocab.txt' is a FIFO"):
        _within(5, copy_folder, str(root / "m"), tmp_path / "copy")
    (root / "m" / "config.json").unlink()
    os.mkfifo(root / "m" / "config.json")
    with pytest.raises(UnsafeEntry, match=r"'config.json' is a FIFO"):
        _within(5, read_config, str(root / "m"))


def test_a_socket_or_a_device_is_refused_naming_it(root, monkeypatch):
    monkeypatch.chdir(root / "m")  # a socket's path is bound by its short relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("model.sock")
        with pytest.raises(UnsafeEntry, match=r"'model.sock' is a socket, not a regular file"):
            check_folder(str(root / "m"))
    os.unlink(root / "m" / "model.sock")
    try:
        os.mknod(root / "m" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    with pytest.raises(UnsafeEntry, match=r"'null' is a character device"):
        check_folder(str(root / "m"))


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(root, tmp_path, monkeypatch):
    """The copy opens each file through its folder's descriptor without following links: a swap
    between the walk's look at a file and its opening is refused, and a swap after the copy is
    not in the copy."""
    assert check_folder(str(root / "m"))
    real_open = path_models._OpenFolder.open_file
    weights = root / "m" / "sub" / "weights.bin"

    def swapped_then_opened(folder, entry):
        if entry.rel == "sub/weights.bin":
            weights.unlink()
            weights.symlink_to(tmp_path / "outside" / "secret")
        return real_open(folder, entry)

    monkeypatch.setattr(path_models._OpenFolder, "open_file", swapped_then_opened)
    with pytest.raises(UnsafeEntry, match="'sub/weights.bin' changed while it was read"):
        copy_folder(str(root / "m"), tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    monkeypatch.undo()
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", str(root))
    weights.unlink()
    weights.write_bytes(b"weights")
    copy_folder(str(root / "m"), tmp_path / "copy")
    weights.unlink()
    weights.symlink_to(tmp_path / "outside" / "secret")  # after the copy: the copy is the engine's
    assert (tmp_path / "copy" / "sub" / "weights.bin").read_bytes() == b"weights"


def test_a_subfolder_swapped_for_a_symlink_while_the_walk_looks_at_it_is_not_entered(root, tmp_path,
                                                                                     monkeypatch):
    (tmp_path / "outside" / "weights.bin").write_bytes(SECRET)
    real_stat = os.stat

    def stat_then_swap(name, *args, **kwargs):
        seen = real_stat(name, *args, **kwargs)
        if name == "sub" and kwargs.get("dir_fd") is not None:
            os.rename(root / "m" / "sub", root / "old-sub")
            (root / "m" / "sub").symlink_to(tmp_path / "outside")
        return seen

    monkeypatch.setattr(os, "stat", stat_then_swap)
    with pytest.raises(FolderChanged, match="'sub' changed while the folder was read"):
        copy_folder(str(root / "m"), tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_a_folder_on_the_way_swapped_for_a_symlink_is_not_followed(root, tmp_path):
    (tmp_path / "outside" / "m").mkdir()
    (tmp_path / "outside" / "m" / "config.json").write_bytes(SECRET)
    (root / "team").symlink_to(tmp_path / "outside")  # root/team/m names outside/m
    with pytest.raises(UnsafeEntry, match=r"'team' under the root is a symlink"):
        copy_folder(str(root / "team" / "m"), tmp_path / "copy")
    with pytest.raises(UnsafeEntry, match=r"'team' under the root is a symlink"):
        read_config(str(root / "team" / "m"))


def test_a_file_that_changes_while_it_is_copied_fails_the_copy(root, tmp_path, monkeypatch):
    real_copy = path_models._copy_bytes

    def copy_while_written(source_fd, target, size):
        copied = real_copy(source_fd, target, size)
        with open(root / "m" / "config.json", "a") as out:
            out.write(" ")
        return copied

    monkeypatch.setattr(path_models, "_copy_bytes", copy_while_written)
    with pytest.raises(FolderChanged, match="'config.json' changed while it was being copied"):
        copy_folder(str(root / "m"), tmp_path / "copy")


def test_bounds_on_entries_and_bytes(root, tmp_path, monkeypatch):
    monkeypatch.setattr(path_models, "MAX_FOLDER_ENTRIES", 2)
    with pytest.raises(UnsafeEntry, match="holds over 2 entries"):
        check_folder(str(root / "m"))
    monkeypatch.setattr(path_models, "MAX_FOLDER_ENTRIES", 100)
    monkeypatch.setattr(path_models, "MAX_FOLDER_BYTES", 1000)
    with pytest.raises(UnsafeEntry, match="holds over 1,000 bytes"):
        copy_folder(str(root / "m"), tmp_path / "copy")


def test_the_config_is_read_through_the_same_checks(root, tmp_path, monkeypatch):
    assert read_config(str(root / "m")) == b'{"max_position_embeddings": 64}'
    (root / "m" / "config.json").unlink()
    assert read_config(str(root / "m")) is None
    os.link(tmp_path / "outside" / "secret", root / "m" / "config.json")
    with pytest.raises(UnsafeEntry, match="hard links"):
        read_config(str(root / "m"))
    (root / "m" / "config.json").unlink()
    (root / "m" / "config.json").write_bytes(b" " * 100)
    monkeypatch.setattr(path_models, "MAX_CONFIG_BYTES", 10)
    with pytest.raises(UnsafeEntry, match="holds 100 bytes, over the 10 a config may hold"):
        read_config(str(root / "m"))


def test_roots_are_open_to_every_tenant_or_to_the_tenants_named(tmp_path, monkeypatch):
    for folder in ("shared/m", "shared/acme/m", "acme/m"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", os.pathsep.join(
        [str(tmp_path / "shared"), f"acme={tmp_path / 'shared' / 'acme'}", f"acme={tmp_path / 'acme'}"]))
    for path in ("shared/m", "shared/acme/m", "acme/m"):
        for caller in (ACME, OPERATOR, None):  # None: a worker, which checks against every root
            check_folder(str(tmp_path / path), caller)
    check_folder(str(tmp_path / "shared" / "m"), GLOBEX)
    for path in ("shared/acme/m", "acme/m"):  # the innermost root decides, even inside a shared one
        with pytest.raises(RootOfOtherTenants, match=rf"opened to other tenants; the roots open to tenant "
                                                     rf"'globex': {tmp_path / 'shared'}$"):
            check_folder(str(tmp_path / path), GLOBEX)
    # A link in the shared root into acme's nested root would hand acme's file to anyone.
    (tmp_path / "shared" / "acme" / "m" / "secret").write_bytes(SECRET)
    (tmp_path / "shared" / "m" / "vocab.txt").symlink_to("../acme/m/secret")
    with pytest.raises(UnsafeEntry, match="leaving the allowed root"):
        check_folder(str(tmp_path / "shared" / "m"), GLOBEX)


def test_a_walk_from_a_shared_root_does_not_go_into_a_tenant_root_nested_in_it(tmp_path, monkeypatch):
    (tmp_path / "shared" / "acme" / "m").mkdir(parents=True)
    (tmp_path / "shared" / "acme" / "m" / "secret").write_bytes(SECRET)
    (tmp_path / "shared" / "config.json").write_text("{}")
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", os.pathsep.join(
        [str(tmp_path / "shared"), f"acme={tmp_path / 'shared' / 'acme'}"]))
    for caller in (GLOBEX, None):  # the gateway's check and the worker's copy alike
        with pytest.raises(RootOfOtherTenants, match="'acme' is another allowed root"):
            check_folder(str(tmp_path / "shared"), caller)
        with pytest.raises(RootOfOtherTenants):
            copy_folder(str(tmp_path / "shared"), tmp_path / "copy", caller)
    assert not (tmp_path / "copy").exists()


def test_the_roots_setting(tmp_path):
    roots = path_models.allowed_roots(os.pathsep.join(["/data/shared", "acme=/data/acme", "globex=/data/acme",
                                                      "/data/a=b", f"beta={tmp_path}", str(tmp_path)]))
    by_path = {str(root.path): root.tenants for root in roots}
    assert by_path == {"/data/shared": None, "/data/acme": frozenset({"acme", "globex"}), "/data/a=b": None,
                       str(tmp_path.resolve()): None}  # named shared once: shared


def test_a_path_that_is_no_model_folder_or_lies_outside_is_refused(root, tmp_path):
    with pytest.raises(PathNotAllowed, match=r"is outside the allowed roots"):
        check_folder(str(tmp_path / "outside"))
    with pytest.raises(PathNotAllowed, match=r"is outside the allowed roots"):
        check_folder(str(root / ".." / "outside"))  # `..` taken by name
    with pytest.raises(PathNotAllowed, match="is not an absolute path"):
        check_folder("root/m")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        check_folder(str(root / "m" / "config.json"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        check_folder(str(root / "absent"))
