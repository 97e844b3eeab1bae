"""A worker's disk stays bounded: LRU eviction of fetched artifacts, scratch of dead processes swept."""

from __future__ import annotations

import os
import subprocess
import sys

from services.common.store.disk_bounds import IN_USE_GRACE_S, evict_least_recent, process_tag, sweep_scratch


def _folder(root, name, size, used):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * size)
    os.utime(folder, (used, used))
    return folder


def test_the_least_recently_used_go_first_until_the_bound_holds(tmp_path):
    now = 1_000_000.0
    old = _folder(tmp_path, "a-old", 400, now - 3 * IN_USE_GRACE_S)
    middle = _folder(tmp_path, "a-middle", 400, now - 2 * IN_USE_GRACE_S)
    recent = _folder(tmp_path, "a-recent", 400, now - 10)  # a stage may be reading it
    fetched = _folder(tmp_path, "a-new", 400, now - 5 * IN_USE_GRACE_S)  # just fetched: kept
    assert evict_least_recent(tmp_path, 900, keep=fetched, now=now) == [old, middle]
    assert recent.exists() and fetched.exists()
    assert evict_least_recent(tmp_path, 10_000, now=now) == []


def test_scratch_of_ended_processes_is_swept_and_a_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = process_tag(dead.pid)
    dead.wait()
    pid, _, started = process_tag().partition("-")
    gone, mine = tmp_path / tag, tmp_path / process_tag()
    reused = tmp_path / f"{pid}-{int(started) - 1}"  # an earlier process that had this pid
    for folder in (gone, mine, reused, tmp_path / "not-a-process"):
        (folder / "gptq-x").mkdir(parents=True)
    assert set(sweep_scratch(tmp_path)) == {gone, reused}
    assert mine.exists() and (tmp_path / "not-a-process").exists()
