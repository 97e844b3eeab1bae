"""Keeping a worker's disk bounded and private: fetched artifacts evicted least-recently-used past
a byte limit, scratch folders of processes that died (SIGKILL leaves them) removed at start, and
what it caches readable by its own user only (tenants' models pass through it)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

# A folder used this recently may be in a stage's hands still: never evicted.
IN_USE_GRACE_S = 600.0


def private_folder(folder: Path) -> Path:
    """`folder` (and missing parents) made, itself owner-only (0700) whatever the umask; an existing
    one is narrowed to that. Another local user cannot list or open anything below it."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(folder, 0o700)
    except PermissionError:  # someone else's folder (a shared cache set up by hand): left as made
        pass
    return folder


def make_owner_only(folder: Path) -> None:
    """Folders 0700 and files 0600 under `folder` (itself included), links left alone."""
    os.chmod(folder, 0o700)
    for current, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(path := os.path.join(current, name)):
                os.chmod(path, 0o700)
        for name in files:
            if not os.path.islink(path := os.path.join(current, name)):
                os.chmod(path, 0o600)


def folder_bytes(folder: Path) -> int:
    total = 0
    for current, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(current, name)).st_size
            except OSError:
                pass
    return total


def touch(folder: Path) -> None:
    """Marks `folder` used now (its modification time is its place in the LRU order)."""
    try:
        os.utime(folder)
    except OSError:
        pass


def evict_least_recent(root: Path, max_bytes: int, keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Removes folders under `root`, least recently used first, until they total at most
    `max_bytes`; `keep` and folders used within IN_USE_GRACE_S stay. Returns what it removed."""
    now = time.time() if now is None else now
    entries = []
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.is_dir() and not folder.name.endswith(".unpacking"):
            entries.append((folder.stat().st_mtime, folder, folder_bytes(folder)))
    total = sum(size for _, _, size in entries)
    removed = []
    for used, folder, size in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if folder == keep or now - used < IN_USE_GRACE_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(folder)
    return removed


def process_tag(pid: int | None = None) -> str:
    """`PID-START`: a process's pid and start time (clock ticks since boot), so a later process
    that reuses the pid (a restarted container is pid 1 again) is told apart."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_started(pid)}"


def _started(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "0"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_scratch(parent: Path) -> list[Path]:
    """Removes `parent`'s per-process scratch folders (named by process_tag) whose process ended."""
    removed = []
    for folder in parent.iterdir() if parent.is_dir() else ():
        pid, _, started = folder.name.partition("-")
        if not (folder.is_dir() and pid.isdigit() and started):
            continue
        if not _alive(int(pid)) or _started(int(pid)) != started:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
