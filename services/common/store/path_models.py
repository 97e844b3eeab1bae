"""Path models: folders under an operator-allowed root (MODELPRESS_ALLOWED_ROOTS), read so that
nothing outside the root can be reached through them.

A tenant who can write under a root controls every name there, and may change a name between
any check and any use. So a path is never resolved and then re-opened by name: the root is opened
once and every name below it is opened relative to its folder's descriptor without following
links (O_NOFOLLOW), files without blocking (O_NONBLOCK), and each opened file is fstat-ed:
- regular files only (a FIFO would block its reader, a device is not a model file);
- one link only: a hard link may lead to a file outside the root (hard links cross folders, and
  the root check cannot see where the other name is);
- a symlink is followed only to a regular file in the same root, opened again from the root's
  descriptor without following links (a model in a Hugging Face cache is a snapshot folder of
  links into that cache's blobs/); a link to a link, to a folder, or out of the root is refused.
Workers COPY the checked bytes into their own owner-only space (copy_folder) and the engine reads
the copy: what it reads is exactly what was checked, and a swap in the source after the copy
changes nothing.

Roots are open to every tenant (`/data/shared`) or to named tenants only (`acme=/data/acme`);
the innermost root holding a path decides who may use it, and an operator reaches them all.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol, Self

from services.common.runtime.cite import shown

MAX_PATH_CHARACTERS = 4096  # Linux PATH_MAX
# A file name (one path component) the workers' filesystems take, in bytes (Linux NAME_MAX).
NAME_MAX_BYTES = 255
# What one path model may hold: bounds the walk (and its descriptors) and the copy a worker makes.
MAX_FOLDER_ENTRIES = 10_000
MAX_FOLDER_DEPTH = 32
MAX_FOLDER_BYTES = 256 * 1024**3
# config.json read at admission (the gateway): any real one is far smaller.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
COPY_CHUNK = 4 * 1024 * 1024

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class PathNotAllowed(PermissionError):
    """The path may not be read: outside the roots, disabled, or not a usable path."""


class RootOfOtherTenants(PathNotAllowed):
    """The path lies under a root the operator opened to other tenants only."""


class UnsafeEntry(PathNotAllowed):
    """Something in the folder could lead out of its root or block its reader."""


class FolderChanged(ValueError):
    """A file changed while it was being copied (FAILED_PRECONDITION: try again once written)."""


class Caller(Protocol):
    """Who asks (services.common.runtime.auth.Principal)."""

    tenant: str
    operator: bool


@dataclass(frozen=True)
class AllowedRoot:
    path: Path  # resolved
    # How a path under it may start: as the operator wrote it and resolved (lexical matches only).
    spellings: tuple[str, ...]
    tenants: frozenset[str] | None  # None: every tenant

    def open_to(self, caller: Caller | None) -> bool:
        return caller is None or caller.operator or self.tenants is None or caller.tenant in self.tenants

    def __str__(self) -> str:
        return str(self.path)


def allowed_roots(raw: str | None = None) -> list[AllowedRoot]:
    """MODELPRESS_ALLOWED_ROOTS: entries split by os.pathsep, each `/folder` (every tenant) or
    `tenant=/folder` (that tenant only; one folder may be named for several)."""
    return list(_parsed_roots(os.environ.get("MODELPRESS_ALLOWED_ROOTS", "") if raw is None else raw))


@functools.lru_cache(maxsize=8)
def _parsed_roots(raw: str) -> tuple[AllowedRoot, ...]:
    # Parsed (and each root resolved) once per setting, not on every request: the gateway asks on
    # its event loop, where a root on a stalled mount must not be touched again and again.
    merged: dict[Path, tuple[set[str], set[str] | None]] = {}
    for entry in filter(None, raw.split(os.pathsep)):
        tenant, sep, folder = entry.partition("=")
        if not sep or "/" in tenant or not tenant:  # a bare folder (its name may hold a '=')
            tenant, folder = "", entry
        spelled = os.path.normpath(os.path.abspath(folder))
        resolved = Path(spelled).resolve()
        spellings, tenants = merged.setdefault(resolved, (set(), set()))
        spellings.update({spelled, str(resolved)})
        if not tenant:
            merged[resolved] = (spellings, None)
        elif tenants is not None:
            tenants.add(tenant)
    return tuple(AllowedRoot(path, tuple(sorted(spellings, key=len, reverse=True)),
                             None if tenants is None else frozenset(tenants))
                 for path, (spellings, tenants) in merged.items())


@dataclass(frozen=True)
class Located:
    """A path model found under its root, by name only (nothing opened yet)."""

    given: str
    root: AllowedRoot
    spelling: str  # the root as the path spells it
    parts: tuple[str, ...]  # the folder below the root

    def name(self, rel: str = "") -> str:
        """How messages cite the folder (or an entry of it)."""
        return shown(self.given) + (f": {shown(rel, 120)}" if rel else "")


def _innermost(path: str, roots: list[AllowedRoot]) -> tuple[AllowedRoot, str, tuple[str, ...]] | None:
    """(root, its spelling, parts below) of the innermost root that lexically holds `path`."""
    pure = PurePosixPath(path)
    found = None
    for root in roots:
        for spelling in root.spellings:
            if pure.is_relative_to(spelling):
                parts = pure.relative_to(spelling).parts
                if found is None or len(parts) < len(found[2]):
                    found = (root, spelling, parts)
    return found


def locate(path: str, caller: Caller | None = None, field_name: str = "model.path") -> Located:
    """The root a path model lies under, by its name alone: absolute, no NUL, under a root, and that
    root open to `caller` (None: a worker, every root). Below the root nothing is resolved: a link
    on the way is refused when the folder is opened, not followed."""
    roots = allowed_roots()
    if not roots:
        raise PathNotAllowed(f"{field_name}: local paths are disabled (the operator sets MODELPRESS_ALLOWED_ROOTS)")
    if "\x00" in path or len(path) > MAX_PATH_CHARACTERS:
        raise PathNotAllowed(f"{field_name}: {shown(path)} is not a usable path (NUL byte, or over "
                             f"{MAX_PATH_CHARACTERS} characters)")
    if not path.startswith("/"):
        raise PathNotAllowed(f"{field_name}: {shown(path)} is not an absolute path")
    # `..` is taken by name, as the rest: the folder is then opened without following links, so
    # the name and what is opened agree.
    found = _innermost(os.path.normpath(path), roots)
    open_roots = [root for root in roots if root.open_to(caller)]
    if found is None:
        raise PathNotAllowed(f"{field_name}: {shown(path)} is outside the allowed roots "
                             f"{', '.join(map(str, open_roots))}")
    root, spelling, parts = found
    if not root.open_to(caller):
        raise RootOfOtherTenants(f"{field_name}: {shown(path)} lies under a root the operator opened to other "
                                 f"tenants; the roots open to tenant {caller.tenant!r}: "
                                 f"{', '.join(map(str, open_roots)) or 'none'}")
    return Located(path, root, spelling, parts)


@dataclass
class _Entry:
    """One file or folder of a walked path model."""

    rel: str  # below the model folder, '/'-separated: where the copy puts it
    is_dir: bool
    # A file's: the folder descriptor that holds it (or its link's target) and its name there.
    dir_fd: int = -1
    name: str = ""
    stat: os.stat_result | None = None


@dataclass
class _Tally:
    entries: int = 0
    bytes: int = 0
    identity: list = field(default_factory=list)  # what the key of a copy is made of


class _OpenFolder:
    """A located path model held open: its root's and its folder's descriptors."""

    def __init__(self, located: Located) -> None:
        self.located = located
        self.roots = allowed_roots()  # once per walk: where each link leads is judged against them
        try:
            self.root_fd = os.open(located.spelling, _ROOT_FLAGS)
        except OSError as exc:
            raise FileNotFoundError(f"model.path: {located.name()} is not a folder (its root cannot be "
                                    f"opened: {os.strerror(exc.errno)})") from None
        try:
            self.fd = self._open_dirs(self.root_fd, located.parts, for_link="")
        except BaseException:
            os.close(self.root_fd)
            raise

    def close(self) -> None:
        if self.fd != self.root_fd:
            os.close(self.fd)
        os.close(self.root_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_dirs(self, start: int, parts: tuple[str, ...], for_link: str) -> int:
        """The folder `parts` below `start`, each step opened without following a link. `for_link`:
        the entry whose link target this is ('' for the model folder itself)."""
        fd = start
        try:
            for depth, part in enumerate(parts):
                try:
                    opened = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise self._refusal(fd, part, "/".join(parts[:depth + 1]), exc, for_link) from None
                if fd != start:
                    os.close(fd)
                fd = opened
        except BaseException:
            if fd != start:
                os.close(fd)
            raise
        return fd

    def _refusal(self, fd: int, part: str, below_root: str, exc: OSError, for_link: str) -> Exception:
        located = self.located
        try:
            is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if for_link:
            why = ("passes through another link" if is_link or exc.errno == errno.ELOOP
                   else f"cannot be opened ({os.strerror(exc.errno)})")
            kind = FileNotFoundError if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not is_link else UnsafeEntry
            return kind(f"model.path: {located.name(for_link)} is a symlink whose target {why}")
        if is_link:
            return UnsafeEntry(f"model.path: {located.name()}: {shown(below_root, 120)} under the root is a symlink "
                               "(path models are opened without following links: give the folder's own path)")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return FileNotFoundError(f"model.path: {located.name()} is not a folder")
        return PathNotAllowed(f"model.path: {located.name()} cannot be opened: {os.strerror(exc.errno)}")

    def walk(self, tally: _Tally) -> Iterator[_Entry]:
        """Every folder and file below the model folder (name order), each checked; a file's entry
        holds its descriptor-relative place, valid until the walk moves on."""
        yield from self._walk(self.fd, (), tally)

    def _walk(self, fd: int, rel: tuple[str, ...], tally: _Tally) -> Iterator[_Entry]:
        if len(rel) > MAX_FOLDER_DEPTH:
            raise UnsafeEntry(f"model.path: {self.located.name('/'.join(rel))} is nested over "
                              f"{MAX_FOLDER_DEPTH} folders deep")
        try:
            names = sorted(os.listdir(fd))
        except OSError as exc:
            raise PathNotAllowed(f"model.path: {self.located.name('/'.join(rel))} cannot be listed: "
                                 f"{os.strerror(exc.errno)}") from None
        for name in names:
            tally.entries += 1
            if tally.entries > MAX_FOLDER_ENTRIES:
                raise UnsafeEntry(f"model.path: {self.located.name()} holds over {MAX_FOLDER_ENTRIES} entries")
            path = "/".join((*rel, name))
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise self._changed(path) from None
            if stat.S_ISDIR(st.st_mode):
                self._check_same_root(rel, name, path)
                child = self._open_subfolder(fd, name, st, path)
                try:
                    tally.identity.append([path, "dir"])
                    yield _Entry(path, True)
                    yield from self._walk(child, (*rel, name), tally)
                finally:
                    os.close(child)
                continue
            target_fd, target_name = fd, name
            if stat.S_ISLNK(st.st_mode):
                target_fd, target_name, st = self._link_target(fd, name, rel, path)
            try:
                self._check_file(st, path)
                tally.bytes += st.st_size
                if tally.bytes > MAX_FOLDER_BYTES:
                    raise UnsafeEntry(f"model.path: {self.located.name()} holds over {MAX_FOLDER_BYTES:,} bytes "
                                      "(the most a path model may hold)")
                tally.identity.append([path, *file_identity(st)])
                yield _Entry(path, False, target_fd, target_name, st)
            finally:
                if target_fd != fd:
                    os.close(target_fd)

    def _changed(self, path: str) -> FolderChanged:
        return FolderChanged(f"model.path: {self.located.name(path)} changed while the folder was read; try again "
                             "once it is written")

    def _open_subfolder(self, fd: int, name: str, seen: os.stat_result, path: str) -> int:
        """The folder the walk just lstat-ed, opened without following a link: a folder swapped for
        a link (or another folder) since is refused."""
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            raise self._changed(path) from None
        opened = os.fstat(child)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            os.close(child)
            raise self._changed(path)
        return child

    def _check_file(self, st: os.stat_result, path: str) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeEntry(f"model.path: {self.located.name(path)} is {_kind(st.st_mode)}, not a regular file "
                              "(a path model holds files and folders only)")
        if st.st_nlink > 1:
            raise UnsafeEntry(f"model.path: {self.located.name(path)} has {st.st_nlink} hard links: another name "
                              "may lie outside the allowed root, so it is not read; copy the file into the folder "
                              "(cp, not ln) and try again")

    def _link_parts(self, fd: int, name: str, rel: tuple[str, ...], path: str) -> tuple[str, ...]:
        """Where a symlink leads below the model's root, by name; UnsafeEntry where it leaves it."""
        located = self.located
        try:
            target = os.readlink(name, dir_fd=fd)
        except OSError:  # no longer a link
            raise self._changed(path) from None
        if target.startswith("/"):
            found = _innermost(os.path.normpath(target), self.roots)
            parts = found[2] if found and found[0].path == located.root.path else None
        else:
            parts = _below_root((*located.parts, *rel, *target.split("/")))
            # A root nested in this one belongs to its own tenants.
            inner = _innermost(os.path.join(located.spelling, *parts), self.roots) if parts else None
            parts = parts if inner and inner[0].path == located.root.path else None
        if not parts:
            raise UnsafeEntry(f"model.path: {located.name()} holds a symlink leaving the allowed root "
                              f"{located.root}: {shown(path, 120)}")
        return parts

    def _check_same_root(self, rel: tuple[str, ...], name: str, path: str) -> None:
        """A subfolder that is (or lies in) another root nested in this one belongs to that root's
        tenants: a walk from the outer root does not go in (acme=/d/acme under /d stays acme's)."""
        located = self.located
        inner = _innermost(os.path.join(located.spelling, *located.parts, *rel, name), self.roots)
        if inner is not None and inner[0].path != located.root.path:
            raise RootOfOtherTenants(f"model.path: {located.name(path)} is another allowed root "
                                     f"({inner[0]}), nested in {located.root}: give that folder's own path")

    def _link_target(self, fd: int, name: str, rel: tuple[str, ...], path: str) -> tuple[int, str, os.stat_result]:
        """(folder descriptor, name, lstat) of the regular file a symlink names, if it lies in the
        same root: opened from the root down, following no link on the way."""
        located = self.located
        parts = self._link_parts(fd, name, rel, path)
        target_fd = self._open_dirs(self.root_fd, parts[:-1], for_link=path)
        try:
            st = os.stat(parts[-1], dir_fd=target_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                raise UnsafeEntry(f"model.path: {located.name(path)} is a symlink to "
                                  f"{'another link' if stat.S_ISLNK(st.st_mode) else 'a folder'}: only links to "
                                  "files in the same root are followed")
        except FileNotFoundError:
            if target_fd != self.root_fd:
                os.close(target_fd)
            raise FileNotFoundError(f"model.path: {located.name(path)} is a symlink to nothing") from None
        except BaseException:
            if target_fd != self.root_fd:
                os.close(target_fd)
            raise
        # The caller closes it: a fresh descriptor even where the target sits in the root itself.
        return (os.dup(target_fd) if target_fd == self.root_fd else target_fd), parts[-1], st

    def open_file(self, entry: _Entry) -> int:
        """The entry's file opened, checked to be the very file the walk looked at."""
        try:
            fd = os.open(entry.name, _FILE_FLAGS, dir_fd=entry.dir_fd)
        except OSError as exc:
            raise UnsafeEntry(f"model.path: {self.located.name(entry.rel)} changed while it was read "
                              f"({os.strerror(exc.errno)})") from None
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (entry.stat.st_dev, entry.stat.st_ino):
            os.close(fd)
            raise UnsafeEntry(f"model.path: {self.located.name(entry.rel)} was replaced while it was read")
        try:
            self._check_file(opened, entry.rel)
        except BaseException:
            os.close(fd)
            raise
        entry.stat = opened
        return fd


def _below_root(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """`parts` with `.` and `..` taken by name; None where `..` climbs above the root."""
    kept: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not kept:
                return None
            kept.pop()
        else:
            kept.append(part)
    return tuple(kept)


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes do (ctime cannot be set back by its owner)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return "not a regular file"


def _key(located: Located, tally: _Tally) -> str:
    payload = json.dumps([str(located.root.path), located.parts, tally.identity])
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class FolderCheck:
    """A path model that passed every check: its files' total bytes, and a key that changes
    whenever a file does (its name, identity, size or times), so a copy can be reused."""

    folder: Path
    entries: int
    bytes: int
    key: str


def check_folder(path: str, caller: Caller | None = None) -> FolderCheck:
    """Checks a path model without reading a byte of it (each entry is lstat-ed through its
    folder's descriptor: no file is opened, nothing can block). Raises PathNotAllowed (or
    FileNotFoundError) naming what is wrong."""
    located = locate(path, caller)
    tally = _Tally()
    with _OpenFolder(located) as folder:
        for _entry in folder.walk(tally):
            pass
    return FolderCheck(Path(located.spelling, *located.parts), tally.entries, tally.bytes, _key(located, tally))


def copy_folder(path: str, dest: Path, caller: Caller | None = None) -> FolderCheck:
    """Copies a path model into `dest` (created owner-only; must not exist): each file opened
    through the walk's descriptors, checked, copied, and checked unchanged after. The copy's key
    equals check_folder's while the source is unchanged."""
    located = locate(path, caller)
    tally = _Tally()
    os.mkdir(dest, 0o700)
    os.chmod(dest, 0o700)  # whatever the umask
    try:
        _copy_walk(located, dest, tally)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # nothing of a refused folder stays
        raise
    return FolderCheck(Path(located.spelling, *located.parts), tally.entries, tally.bytes, _key(located, tally))


def _copy_walk(located: Located, dest: Path, tally: _Tally) -> None:
    with _OpenFolder(located) as folder:
        for entry in folder.walk(tally):
            target = dest / entry.rel
            if entry.is_dir:
                os.mkdir(target, 0o700)
                os.chmod(target, 0o700)
                continue
            source_fd = folder.open_file(entry)
            try:
                before = entry.stat
                tally.identity[-1] = [entry.rel, *file_identity(before)]
                copied = _copy_bytes(source_fd, target, before.st_size)
                after = os.fstat(source_fd)
            finally:
                os.close(source_fd)
            if copied != before.st_size or file_identity(after) != file_identity(before):
                raise FolderChanged(f"model.path: {located.name(entry.rel)} changed while it was being copied; "
                                    "try again once it is written")


def _copy_bytes(source_fd: int, target: Path, size: int) -> int:
    """Bytes copied: `size` when the file held what its fstat said (one more byte is read, no more,
    so a file that keeps growing is caught rather than copied without end)."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    copied = 0
    try:
        os.fchmod(out, 0o600)
        while copied <= size and (chunk := os.read(source_fd, min(COPY_CHUNK, size + 1 - copied))):
            copied += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    finally:
        os.close(out)
    return copied


def read_config(path: str, caller: Caller | None = None) -> bytes | None:
    """The model's config.json (None where it has none), read as a copy reads a file: opened
    without following links (a link to a file of the same root is followed as by a copy), refused
    unless a regular file of one link, at most MAX_CONFIG_BYTES. A FIFO is refused at once."""
    located = locate(path, caller)
    with _OpenFolder(located) as folder:
        try:
            st = os.stat("config.json", dir_fd=folder.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        entry = _Entry("config.json", False, folder.fd, "config.json", st)
        if stat.S_ISLNK(st.st_mode):
            entry.dir_fd, entry.name, entry.stat = folder._link_target(folder.fd, "config.json", (), "config.json")
        try:
            folder._check_file(entry.stat, entry.rel)
            if entry.stat.st_size > MAX_CONFIG_BYTES:
                raise UnsafeEntry(f"model.path: {located.name('config.json')} holds {entry.stat.st_size:,} bytes, "
                                  f"over the {MAX_CONFIG_BYTES:,} a config may hold")
            fd = folder.open_file(entry)
        finally:
            if entry.dir_fd != folder.fd:
                os.close(entry.dir_fd)
        try:
            data = bytearray()
            while len(data) < MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES - len(data))):
                data += chunk
            return bytes(data)
        finally:
            os.close(fd)
