"""The evaluator engine on tiny models: real probe subprocesses, real figures."""

from __future__ import annotations

import shutil

import pytest

from services.evaluator.engine import EvaluationConfig, compare_folders, evaluate_folder
from services.evaluator.measure import stored_parameter_bytes

FAST = dict(latency_iterations=4, warmup=1, quality_windows=1, quality_sentences=60, decode_tokens=3)


def test_causal_lm_figures_cover_the_grid_decode_and_quality(tiny_llama_dir):
    config = EvaluationConfig(batch_size=1, sequence_length=16, batch_sizes="1,2", sequence_lengths="16,32", **FAST)
    figures = evaluate_folder(tiny_llama_dir, config)
    assert figures["kind"] == "causal-lm" and figures["parameters"] > 0
    assert figures["parameter_bytes"] == stored_parameter_bytes(tiny_llama_dir) > 0
    assert figures["size_on_disk_bytes"] > figures["parameter_bytes"]  # tokenizer and config too
    assert figures["flops"] > 2 * figures["parameters"] * 16 * 0.5  # roughly 2 FLOPs per weight per token
    assert figures["latency"]["phase"] == "prefill" and 4 <= figures["latency"]["iterations"] <= 12
    shapes = {(g["batch_size"], g["sequence_length"]) for g in figures["latency_grid"]}
    assert shapes == {(1, 32), (2, 16), (2, 32)}  # the main shape (1, 16) is not timed twice
    assert figures["decode"]["phase"] == "decode" and figures["decode"]["iterations"] == 3
    assert figures["peak_rss_mb"] > 100 and figures["perplexity"] > 1 and 0 <= figures["top1_accuracy"] <= 1
    assert figures["machine"]["logical_cores"] >= 1 and figures["machine"]["cpu_model"]
    assert figures["timing_load"]["logical_cores"] == figures["machine"]["logical_cores"]
    assert 0 <= figures["timing_load"]["others_cpu_share"] <= 1


# An encoder against itself and a perturbed copy: through the mesh's Compare in
# tests/integration/test_evaluator_mesh.py (the same probes, one run instead of two).


def test_compare_times_every_model_in_the_same_rounds(tiny_llama_dir):
    config = EvaluationConfig(batch_size=1, sequence_length=16, **FAST)
    figures, run = compare_folders([tiny_llama_dir, tiny_llama_dir], 0, config)
    # Four rounds asked; more are added (up to three times as many) while a ratio is too noisy.
    assert 4 <= run["rounds"] <= 12 and len(figures) == 2
    assert all(len(f["latency"]["samples_ms"]) == run["rounds"] for f in figures)
    # Each model's speedup over the baseline comes from the same rounds, main phase then decode.
    assert [r["phase"] for r in figures[1]["speed"]] == ["prefill", "decode"]
    assert figures[0]["speed"][0]["speedup"] == 1.0
    assert figures[1]["speed"][0]["rounds"] == run["rounds"]
    assert figures[1]["timing_load"] == run["load"] and run["load"]["logical_cores"] >= 1
    assert figures[0]["perplexity"] == pytest.approx(figures[1]["perplexity"])
    assert figures[0]["flops"] == figures[1]["flops"]


def test_formats_are_recognised_and_engine_formats_refused_with_the_reason(tiny_llama_dir, tmp_path):
    from services.evaluator.formats import FormatNotMeasurable, check_measurable, detect_format

    assert check_measurable(tiny_llama_dir) == "hf-safetensors"
    onnx = tmp_path / "onnx"
    shutil.copytree(tiny_llama_dir, onnx)
    (onnx / "model.onnx").write_bytes(b"\x08\x01")
    assert detect_format(onnx) == check_measurable(onnx) == "ONNX"  # ONNX Runtime measures it
    trt = tmp_path / "trt"
    shutil.copytree(tiny_llama_dir, trt)
    (trt / "model.engine").write_bytes(b"\0")
    assert detect_format(trt) == "TensorRT"
    with pytest.raises(FormatNotMeasurable, match="TensorRT models run only on an NVIDIA GPU"):
        check_measurable(trt)


def test_peak_rss_is_the_probe_own_not_its_parent(tiny_llama_dir):
    # Linux carries the high-water mark of a big parent across exec into ru_maxrss.
    ballast = bytearray(1200 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    config = EvaluationConfig(batch_size=1, sequence_length=8, latency_iterations=1, warmup=0, quality_windows=0,
                              decode_tokens=0)
    figures = evaluate_folder(tiny_llama_dir, config)
    assert 50 < figures["peak_rss_mb"] < 1000, figures["peak_rss_mb"]
    del ballast


BURNER = """
import random, time
random.seed({seed})
while True:
    end = time.perf_counter() + random.uniform(0.001, 0.02)
    while time.perf_counter() < end:
        pass
    time.sleep(random.uniform(0.0, 0.01))
"""


@pytest.mark.slow
def test_a_cpu_burning_neighbour_marks_the_ratio_unreliable_and_shows_in_the_load(tiny_llama_dir):
    """Two neighbours busy in random bursts on this 2-core machine: the rounds disagree, extra rounds
    do not settle them, and the figures say so instead of reporting a speedup."""
    import subprocess
    import sys

    config = EvaluationConfig(batch_size=1, sequence_length=16, latency_iterations=4, warmup=1, quality_windows=0,
                              decode_tokens=4)
    burners = [subprocess.Popen([sys.executable, "-c", BURNER.format(seed=i)]) for i in range(2)]
    try:
        figures, run = compare_folders([tiny_llama_dir, tiny_llama_dir], 0, config)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert run["load"]["others_cpu_share"] > 0.3
    ratios = figures[1]["speed"]
    assert any(r["unreliable"] for r in ratios), ratios
    flagged = next(r for r in ratios if r["unreliable"])
    assert "too noisy" in flagged["unreliable_reason"] and flagged["rounds"] > 4
