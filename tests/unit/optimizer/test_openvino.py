"""OpenVINO IR conversion, the stateful KV cache and NNCF INT8 / INT4 weights on tiny models:
reload, numerical agreement with PyTorch, and the evaluator measuring the IR."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter
from services.common.engines.openvino_runtime import compile_model, read_model, weight_counts
from services.evaluator.engine import EvaluationConfig, evaluate_folder, run_probe
from services.evaluator.probe import ProbePlan
from services.optimizer.engine import METHODS

pytest.importorskip("openvino")


def _run(method: str, src, dst, **config):
    entry = METHODS[method]
    return entry.run(entry.config_cls(**config), src, dst, ProgressReporter())


def _ids(vocab: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(5, vocab, (batch, length), generator=torch.Generator().manual_seed(2))


def _causal_step(request, ids: torch.Tensor, start: int) -> np.ndarray:
    batch, length = ids.shape
    return request.infer({"input_ids": ids.numpy(), "attention_mask": np.ones((batch, start + length), np.int64),
                          "position_ids": np.broadcast_to(np.arange(start, start + length), (batch, length))})[0]


@pytest.fixture(scope="module")
def llama_ir(tiny_llama_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("llama-ir")
    return _run("openvino", tiny_llama_dir, dst), dst


def test_encoder_ir_has_dynamic_axes_and_agrees_with_pytorch(tiny_bert_dir, tmp_path):
    result = _run("openvino", tiny_bert_dir, tmp_path)
    assert result.metrics["inference_precision"] == "f32"
    manifest = json.loads((tmp_path / "openvino_model.json").read_text())
    assert manifest["kind"] == "encoder" and not manifest["stateful"] and (tmp_path / "tokenizer.json").exists()
    request = compile_model(tmp_path / "openvino_model.xml").create_infer_request()
    model = modelio.load_model(tiny_bert_dir)
    for batch, length in ((1, 7), (3, 33)):
        ids = _ids(1000, batch, length)
        got = request.infer({"input_ids": ids.numpy(), "attention_mask": np.ones(ids.shape, np.int64)})[0]
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_causal_lm_ir_decodes_through_its_own_kv_cache_like_pytorch(tiny_llama_dir, llama_ir):
    result, dst = llama_ir
    assert result.metrics["kv_cache"] == "stateful"
    compiled = compile_model(dst / "openvino_model.xml")
    assert [p.get_any_name() for p in compiled.inputs] == ["input_ids", "attention_mask", "position_ids"]
    model = modelio.load_model(tiny_llama_dir)
    request = compiled.create_infer_request()
    prompt = _ids(30522, 2, 11)  # batch 2: the cache's initial state takes its batch from input_ids
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        cache, want = out.cache, out.logits.numpy()
        request.reset_state()
        got = _causal_step(request, prompt, 0)
        assert np.abs(got - want).max() < 1e-3
        next_ids = torch.from_numpy(got[:, -1:].argmax(-1))
        for step in range(4):
            out = model(input_ids=next_ids, cache=cache, use_cache=True)
            cache = out.cache
            got = _causal_step(request, next_ids, 11 + step)
            assert got.shape == (2, 1, 30522) and np.abs(got - out.logits.numpy()).max() < 1e-3, step
            next_ids = torch.from_numpy(got[:, -1:].argmax(-1))
        request.reset_state()  # a new sequence starts from an empty cache
        assert np.abs(_causal_step(request, prompt, 0) - want).max() < 1e-3


@pytest.mark.parametrize("method, projections, extra", [
    ("openvino-int8", "u8", {}),
    # group 128 does not divide the tiny model's 64 inputs: the group shrinks instead of failing.
    ("openvino-int4", "i4", {"group_size": 128}),
    ("openvino-int4", "i4", {"group_size": 32, "data_aware": True, "calibration_samples": 2}),  # AWQ + scale est.
])
def test_nncf_weights_are_stored_low_bit_and_keep_the_predictions(tiny_llama_dir, tmp_path, method, projections,
                                                                   extra):
    result = _run(method, tiny_llama_dir, tmp_path, **extra)
    if extra.get("calibration_samples"):
        assert result.metrics["compression"]["data_aware"]
    counts = weight_counts(read_model(tmp_path / "openvino_model.xml"))
    model = modelio.load_model(tiny_llama_dir)
    in_layers = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    embedding = model.model.embed_tokens.weight.numel()
    # Every projection in the asked type; the tied embedding/head stays INT8 (NNCF's backup mode).
    assert counts.get(projections, 0) == in_layers + (embedding if projections == "u8" else 0), counts
    assert counts.get("u8", 0) >= embedding and counts.get("f32", 0) < 1e-3 * sum(counts.values()), counts
    request = compile_model(tmp_path / "openvino_model.xml").create_infer_request()
    prompt = _ids(30522, 1, 24)
    request.reset_state()
    got = _causal_step(request, prompt, 0)
    with torch.no_grad():
        want = modelio.load_model(tiny_llama_dir)(input_ids=prompt).logits.numpy()
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    assert agree > (0.9 if method.endswith("int8") else 0.5), agree


def test_the_evaluator_measures_an_ir_and_its_serving_memory_without_torch(tiny_llama_dir, llama_ir):
    _, dst = llama_ir
    config = EvaluationConfig(latency_iterations=3, warmup=1, decode_tokens=4, quality_windows=2)
    figures = evaluate_folder(dst, config)
    base = evaluate_folder(tiny_llama_dir, config)
    assert figures["format"] == "OpenVINO IR" and figures["decode"]["iterations"] == 4
    assert figures["perplexity"] == pytest.approx(base["perplexity"], rel=1e-3)
    assert figures["serving_runtime"] == "openvino"
    assert 0 < figures["peak_rss_mb"] < figures["host_peak_rss_mb"]  # torch is not in the serving figure
    served = run_probe("serving", ProbePlan(models=[str(dst)]))
    assert served["torch_loaded"] is False and served["decode_steps"] > 0


def test_an_ir_bin_is_allowed_but_a_pickle_beside_an_xml_is_not(llama_ir, tmp_path):
    _, dst = llama_ir
    modelio.check_safe(dst)  # openvino_model.bin is raw constants
    (tmp_path / "weights.xml").write_text("<net/>")
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04" + b"\0" * 16)
    with pytest.raises(modelio.UnsafeModelError, match="weights.bin"):
        modelio.check_safe(tmp_path)



def test_a_precision_this_cpu_emulates_or_the_plugin_replaces_is_said_in_the_stage_result(tiny_bert_dir, tmp_path,
                                                                                          monkeypatch):
    from services.common.measure.machine import Machine
    from services.optimizer import engine

    avx2 = Machine(cpu_model="AMD EPYC (AVX2 only)", logical_cores=2, physical_cores=2,
                   isa_features=["avx", "avx2", "fma", "f16c"], isa_class="avx2")
    monkeypatch.setattr(engine, "this_cpu", lambda: avx2)
    result = _run("openvino", tiny_bert_dir, tmp_path / "bf16", inference_precision="bf16")
    assert result.compression["precision"] == "bf16"
    assert result.metrics["compute_precision"]["emulated"] and result.metrics["compute_precision"]["isa_class"] == "avx2"
    assert any("bf16 compute asked on an avx2 CPU" in note for note in result.notes), result.notes
    monkeypatch.undo()
    f16 = _run("openvino", tiny_bert_dir, tmp_path / "f16", inference_precision="f16")
    applied = f16.metrics["inference_precision"]
    # This CPU's plugin runs f16 natively or replaces it (bf16 or f32): the note says which.
    assert (applied != "f16") == any("not the f16 asked" in note for note in f16.notes), (applied, f16.notes)
    manifest = json.loads((tmp_path / "f16" / "openvino_model.json").read_text())
    assert manifest["inference_precision"] == "f16" and manifest["precision"] == "f16"
