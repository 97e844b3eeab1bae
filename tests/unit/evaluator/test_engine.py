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


def test_an_encoder_scored_against_a_reference_keeps_its_split_topic_labels(tiny_bert_dir):
    # The search decides on the validation split: its sentences must be voted on with their own topics,
    # not the held-out split's (which left MiniLM's k-NN accuracy at 0.05 where it is 0.95).
    config = EvaluationConfig(batch_size=1, sequence_length=16, quality_split="validation", **FAST)
    alone = evaluate_folder(tiny_bert_dir, config, time_latency=False)["encoder"]
    scored = evaluate_folder(tiny_bert_dir, config, tiny_bert_dir, time_latency=False)["encoder"]
    assert scored["has_reference"] and scored["mean_reference_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert (scored["topics"], scored["knn_topic_accuracy"]) == (alone["topics"], alone["knn_topic_accuracy"])


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
    from services.common.models.artifact_format import detect_format
    from services.evaluator.formats import FormatNotMeasurable, check_measurable

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


def _gguf_artifact(model_type: str, tiny_bpe_llama_dir, tmp_path):
    """A tiny random model of the family (the compat matrix's) and its F16 GGUF artifact as the
    optimizer writes it: the .gguf file beside the source config.json and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from services.common.contract.engine_api import ProgressReporter
    from services.optimizer.engine import METHODS
    from tests.compat.tiny_models import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, 512), dtype=torch.float32).eval()
    src = tmp_path / "src"
    model.save_pretrained(src, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bpe_llama_dir / name, src / name)
    entry = METHODS["gguf-f16"]
    entry.run(entry.config_cls(verify_reload=False), src, tmp_path / "gguf", ProgressReporter())
    return model, tmp_path / "gguf"


@pytest.mark.parametrize("model_type", ["gpt2", "qwen3", "gemma3_text"])
def test_a_gguf_is_measured_with_the_float_models_logits(model_type, tiny_bpe_llama_dir, tmp_path):
    """transformers' GGUF loader reads only some config keys from the file: from the file alone a tiny
    GPT-2 or Qwen3 does not load, and a Gemma 3 computes other logits (query_pre_attn_scalar assumed).
    The evaluator loads it with the artifact's config.json."""
    import torch

    from services.evaluator.formats import load_for_measurement

    model, folder = _gguf_artifact(model_type, tiny_bpe_llama_dir, tmp_path)
    loaded = load_for_measurement(folder)
    assert loaded.format == "GGUF" and loaded.kind == "causal-lm"
    ids = torch.tensor([[5, 17, 42, 99, 7, 64, 201, 33]])
    with torch.no_grad():
        diff = float((loaded.model(input_ids=ids).logits - model(input_ids=ids).logits).abs().max())
    assert diff < 0.02, diff


@pytest.mark.parametrize(("model_type", "arch"), [("gpt_neox", "gptneox"), ("olmo2", "olmo2"), ("mixtral", "llama")])
def test_a_gguf_transformers_does_not_read_is_not_measurable_naming_its_architecture(model_type, arch,
                                                                                      tiny_bpe_llama_dir, tmp_path):
    """GPT-NeoX and OLMo2: transformers' loader has no tensor map for them; Mixtral's llama file it would
    read as a dense Llama. Refused by name (FAILED_PRECONDITION), never measured as something else."""
    from services.evaluator.formats import FormatNotMeasurable, check_measurable, load_for_measurement

    _, folder = _gguf_artifact(model_type, tiny_bpe_llama_dir, tmp_path)
    named = f"llama.cpp architecture '{arch}' \\(model family '{model_type}'\\)"
    for measure in (check_measurable, load_for_measurement):  # refused up front, before any probe starts
        with pytest.raises(FormatNotMeasurable, match=named):
            measure(folder)


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
