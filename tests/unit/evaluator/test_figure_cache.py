"""Untimed figures are measured once per model content and plan; timed ones every time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.evaluator import engine
from services.evaluator.figure_cache import UntimedFigureCache
from services.evaluator.probe import ProbePlan


@pytest.fixture
def probes(monkeypatch):
    """The probes that would have run: each writes its embeddings file and returns fresh figures."""
    ran: list[tuple[str, ProbePlan]] = []

    def run_probe(mode: str, plan: ProbePlan, timeout_s: float = 3600) -> dict:
        ran.append((mode, plan))
        if plan.embeddings_out:
            Path(plan.embeddings_out).write_bytes(f"embeddings {len(ran)}".encode())
        return {"kind": "encoder", "peak_rss_mb": 100.0 + len(ran), "encoder": {"sentences": 8}}

    monkeypatch.setattr(engine, "run_probe", run_probe)
    monkeypatch.setattr(engine, "untimed_figures", UntimedFigureCache())
    return ran


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_second_untimed_probe_of_the_same_content_and_plan_is_not_run(probes, tmp_path):
    folder = _folder(tmp_path)
    plan = ProbePlan(models=[str(folder)], time_latency=False, quality_sentences=8,
                     embeddings_out=str(tmp_path / "first.safetensors"))
    first = engine.measure_untimed(folder, plan)
    first["latency"] = "added by the caller"  # the stored figures are a copy: a caller's changes stay its own
    again = engine.measure_untimed(folder, ProbePlan(**{**plan.__dict__,
                                                        "embeddings_out": str(tmp_path / "again.safetensors")}))
    assert len(probes) == 1 and "latency" not in again and again["peak_rss_mb"] == 101.0
    # The embeddings file is written where the second caller asked, with the first probe's bytes.
    assert (tmp_path / "again.safetensors").read_bytes() == b"embeddings 1"


def test_a_changed_file_another_plan_or_a_timed_plan_is_measured_again(probes, tmp_path):
    folder = _folder(tmp_path)
    plan = ProbePlan(models=[str(folder)], time_latency=False, quality_sentences=8)
    engine.measure_untimed(folder, plan)
    engine.measure_untimed(folder, ProbePlan(**{**plan.__dict__, "quality_split": "validation"}))
    assert len(probes) == 2
    weights = folder / "model.safetensors"
    weights.write_bytes(b"WEIGHTS")
    os.utime(weights, ns=(1, 1))  # even with its old size and an earlier mtime: ctime moved
    engine.measure_untimed(folder, plan)
    assert len(probes) == 3
    engine.measure_untimed(folder, plan)
    assert len(probes) == 3
    timed = ProbePlan(**{**plan.__dict__, "time_latency": True})
    engine.measure_untimed(folder, timed)
    engine.measure_untimed(folder, timed)
    assert len(probes) == 5
    # A plan that wants the embeddings file is not served by one that wrote none.
    engine.measure_untimed(folder, ProbePlan(**{**plan.__dict__, "embeddings_out": str(tmp_path / "e")}))
    assert len(probes) == 6 and (tmp_path / "e").exists()


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path):
    cache = UntimedFigureCache(max_entries=2)
    keys = []
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(name)
        keys.append(cache.key(folder, ProbePlan(models=[str(folder)], time_latency=False)))
    cache.put(keys[0], {"name": "a"}, None)
    cache.put(keys[1], {"name": "b"}, None)
    assert cache.get(keys[0]) == ({"name": "a"}, None)  # now the most recent
    cache.put(keys[2], {"name": "c"}, None)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) and cache.get(keys[2])
