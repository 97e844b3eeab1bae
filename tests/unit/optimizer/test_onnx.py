"""ONNX export, fusion, INT8 / 4-bit weights on tiny models: reload and numerical agreement with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter
from services.evaluator.engine import EvaluationConfig, evaluate_folder
from services.optimizer.engine import METHODS
from services.common.engines.onnx_session import open_session


def _run(method: str, src, dst, **config):
    entry = METHODS[method]
    return entry.run(entry.config_cls(**config), src, dst, ProgressReporter())


def _feeds(vocab: int, batch: int, length: int):
    ids = torch.randint(5, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    return ids, torch.ones_like(ids)


@pytest.fixture(scope="module")
def bert_onnx(tiny_bert_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("bert-onnx")
    return _run("onnx", tiny_bert_dir, dst), dst


def test_encoder_export_is_fused_and_agrees_with_pytorch(tiny_bert_dir, bert_onnx):
    result, dst = bert_onnx
    assert result.metrics["kind"] == "encoder"
    assert result.metrics["fused_operators"].get("Attention") == 2  # one per layer
    assert result.metrics["fused_operators"].get("SkipLayerNormalization", 0) >= 2
    assert json.loads((dst / "onnx_model.json").read_text())["output"] == "last_hidden_state"
    assert (dst / "tokenizer.json").exists() and not (dst / "_work").exists()
    session = open_session(dst / "model.onnx")
    model = modelio.load_model(tiny_bert_dir)
    for batch, length in ((1, 7), (3, 33)):  # dynamic batch and sequence axes
        ids, mask = _feeds(1000, batch, length)
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def _causal_feeds(session, ids, past=None, start=0):
    names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    batch, length = ids.shape
    if past is None:
        shape = session.get_inputs()[3].shape
        past = [np.zeros((batch, shape[1], 0, shape[3]), np.float32)] * len(names)
    return {"input_ids": ids.numpy(), "attention_mask": np.ones((batch, start + length), np.int64),
            "position_ids": np.broadcast_to(np.arange(start, start + length), (batch, length)), **dict(zip(names, past))}


def test_causal_lm_export_keeps_the_tied_head_once_and_decodes_through_its_kv_cache(tiny_llama_dir, tmp_path):
    result = _run("onnx", tiny_llama_dir, tmp_path)
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    vocab_sized = [i for i in graph.initializer if 30522 in i.dims]
    assert len(vocab_sized) == 1, [i.name for i in vocab_sized]  # embedding and head share one tensor
    assert result.metrics["kind"] == "causal-lm" and result.metrics["kv_cache"]
    assert len([i for i in graph.input if i.name.startswith("past_key_values.")]) == 2 * 2  # layers x (k, v)
    session = open_session(tmp_path / "model.onnx")
    model = modelio.load_model(tiny_llama_dir)
    ids, _ = _feeds(30522, 2, 19)
    logits, *present = session.run(None, _causal_feeds(session, ids))  # an empty past: prefill
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        assert np.abs(logits - out.logits.numpy()).max() < 1e-3
        cache, next_ids = out.cache, torch.from_numpy(logits[:, -1:].argmax(-1))
        for step in range(3):
            out = model(input_ids=next_ids, cache=cache, use_cache=True)
            logits, *present = session.run(None, _causal_feeds(session, next_ids, present, 19 + step))
            assert logits.shape == (2, 1, 30522) and np.abs(logits - out.logits.numpy()).max() < 1e-3
            cache, next_ids = out.cache, torch.from_numpy(logits[:, -1:].argmax(-1))


def test_causal_lm_export_without_kv_cache(tiny_llama_dir, tmp_path):
    result = _run("onnx", tiny_llama_dir, tmp_path, kv_cache=False)
    session = open_session(tmp_path / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"] and not result.metrics["kv_cache"]
    ids, mask = _feeds(30522, 2, 19)
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = modelio.load_model(tiny_llama_dir)(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(got - want).max() < 1e-3


def test_int8_and_int4_graphs_quantize_every_matmul_and_stay_close(tiny_bert_dir, tmp_path):
    int8 = _run("onnx-int8", tiny_bert_dir, tmp_path / "int8")
    assert int8.metrics["int8_ops"].get("QAttention") == 2 and int8.metrics["int8_ops"].get("MatMulInteger", 0) >= 4
    int4 = _run("onnx-int4", tiny_bert_dir, tmp_path / "int4", group_size=32)
    assert int4.metrics["matmul_nbits"] >= 4
    model = modelio.load_model(tiny_bert_dir)
    ids, mask = _feeds(1000, 4, 24)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)
    for folder in (tmp_path / "int8", tmp_path / "int4"):
        got = open_session(folder / "model.onnx").run(None, {"input_ids": ids.numpy(),
                                                            "attention_mask": mask.numpy()})[0]
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(got).mean(1), want, dim=-1)
        assert cosine.min() > 0.95, (folder.name, cosine)


def test_a_quantized_pytorch_input_is_refused(tmp_path, tiny_llama_dir):
    import shutil

    src = tmp_path / "ct"
    shutil.copytree(tiny_llama_dir, src)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors"}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="already quantized"):
        _run("onnx", src, tmp_path / "out")


def test_the_evaluator_measures_an_onnx_artifact_like_any_other(tiny_bert_dir, bert_onnx):
    _, dst = bert_onnx
    config = EvaluationConfig(latency_iterations=3, warmup=1, quality_sentences=60)
    figures = evaluate_folder(dst, config, reference=tiny_bert_dir)
    assert figures["format"] == "ONNX" and figures["kind"] == "encoder"
    assert figures["latency"]["p50_ms"] > 0
    # Not counted for ONNX graphs: absent and said why, never a 0 that would pass a gate.
    assert "flops" not in figures and "ONNX" in figures["not_measured"]["flops"]
    assert figures["encoder"]["mean_reference_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert figures["parameter_bytes"] == (dst / "model.onnx").stat().st_size
    torch_params = sum(p.numel() for p in modelio.load_model(tiny_bert_dir).parameters())
    assert figures["parameters"] == pytest.approx(torch_params, rel=0.05)


@pytest.mark.parametrize("method, op, extra, bits", [
    ("onnx-int8", "MatMulNBits", {}, 8),  # a causal LM's default INT8: weights only, float activations
    ("onnx-int8", "MatMulInteger", {"causal_lm_activations": "dynamic-int8"}, None),
    ("onnx-int4", "MatMulNBits", {}, 4)])
def test_causal_lm_weights_are_quantized_too(tiny_llama_dir, tmp_path, method, op, extra, bits):
    from services.optimizer.onnx_runtime import op_counts

    result = _run(method, tiny_llama_dir, tmp_path, **extra)
    assert result.metrics.get("bits") == bits
    counts = op_counts(tmp_path / "model.onnx")
    # 2 layers x 7 Linears, plus the head: every projection runs on quantized weights.
    assert counts.get(op, 0) + counts.get("DynamicQuantizeMatMul", 0) >= 14, counts
    model = modelio.load_model(tiny_llama_dir)
    ids, _ = _feeds(30522, 1, 24)
    session = open_session(tmp_path / "model.onnx")
    got = session.run(None, _causal_feeds(session, ids))[0]
    with torch.no_grad():
        want = model(input_ids=ids).logits.numpy()
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    assert agree > (0.95 if bits == 8 else 0.8), agree


def test_the_evaluator_decodes_an_onnx_causal_lm_and_serves_it_without_torch(tiny_llama_dir, tmp_path):
    from services.evaluator.engine import run_probe
    from services.evaluator.probe import ProbePlan

    _run("onnx-int8", tiny_llama_dir, tmp_path)
    config = EvaluationConfig(batch_size=1, sequence_length=16, latency_iterations=2, warmup=1, decode_tokens=3,
                              quality_windows=1)
    figures, base = evaluate_folder(tmp_path, config), evaluate_folder(tiny_llama_dir, config)
    assert figures["decode"]["iterations"] == 3 and figures["serving_runtime"] == "onnxruntime"
    assert figures["perplexity"] == pytest.approx(base["perplexity"], rel=0.01)
    served = run_probe("serving", ProbePlan(models=[str(tmp_path)]))
    assert served["decode_steps"] > 0 and served["torch_loaded"] is False


@pytest.mark.parametrize("method", ["onnx-int8", "onnx-int4"])
def test_parameters_of_a_blockwise_graph_count_each_weight_once(tiny_bpe_llama_dir, tmp_path, method):
    from services.evaluator.onnx_model import onnx_parameters

    _run(method, tiny_bpe_llama_dir, tmp_path)  # untied head: every weight stored once
    torch_params = sum(p.numel() for p in modelio.load_model(tiny_bpe_llama_dir).parameters())
    assert onnx_parameters(tmp_path) == pytest.approx(torch_params, rel=0.01)


def test_int8_weights_follow_the_cpu_s8_with_vnni_u8_without(tiny_bert_dir, tmp_path):
    import onnx

    from services.common.measure.isa import support
    from services.common.measure.machine import this_cpu

    auto = _run("onnx-int8", tiny_bert_dir, tmp_path / "auto")
    expected = "s8" if support("int8", this_cpu().isa_features).accelerated else "u8"
    assert auto.metrics["weight_type"] == expected
    u8 = _run("onnx-int8", tiny_bert_dir, tmp_path / "u8", weights="u8", fuse=False)
    graph = onnx.load(str(tmp_path / "u8" / "model.onnx")).graph
    quantized = [i for i in graph.initializer if i.name.endswith("_quantized")]
    assert quantized and {i.data_type for i in quantized} == {onnx.TensorProto.UINT8}, u8.metrics
    # fastest-cpu resolves the weight type of the class it builds for, not this worker's.
    built = METHODS["fastest-cpu"].run(METHODS["fastest-cpu"].config_cls(isa_class="avx2"), tiny_bert_dir,
                                       tmp_path / "avx2", ProgressReporter())
    assert built.compression["resolved"]["config"]["weights"] == "u8" and built.metrics["weight_type"] == "u8"


def test_a_causal_lms_int8_graph_quantizes_its_embedding_table_too_and_stays_close(tiny_llama_dir, tmp_path):
    import onnx

    result = _run("onnx-int8", tiny_llama_dir, tmp_path)
    assert result.metrics["embedding_gathers_8bit"] == 1 and result.metrics["matmul_nbits"] >= 4
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    # No float vocabulary-sized table is left: the Gather reads 8-bit blocks, the head its MatMulNBits copy.
    hidden = modelio.read_config(tiny_llama_dir)["hidden_size"]
    assert not [i.name for i in graph.initializer
                if list(i.dims) == [30522, hidden] and i.data_type == onnx.TensorProto.FLOAT]
    assert [n.op_type for n in graph.node].count("GatherBlockQuantized") == 1
    session = open_session(tmp_path / "model.onnx")
    ids, _ = _feeds(30522, 2, 19)
    logits, *_ = session.run(None, _causal_feeds(session, ids))
    with torch.no_grad():
        want = modelio.load_model(tiny_llama_dir)(input_ids=ids).logits.numpy()
    assert np.abs(logits - want).max() < 0.05 * np.abs(want).max()
    assert (logits.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_mixed_bits_put_the_least_sensitive_layers_in_4_bits_under_the_average_and_stay_close(tiny_llama_dir,
                                                                                              tmp_path):
    import onnx

    result = _run("onnx-mixed", tiny_llama_dir, tmp_path, average_bits=6.0, calibration_samples=2)
    metrics = result.metrics
    # The tiny model's head is most of its MatMul weights: the budget is met, not closely.
    assert 4.0 < metrics["average_bits"] <= 6.0 and 0 < metrics["layers_4bit"] < metrics["layers"]
    assert metrics["embedding_gathers_8bit"] == 1 and metrics["calibration_windows"] == 2
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    bits = sorted({a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"})
    assert bits == [4, 8] and not any(n.op_type == "MatMul" and n.input[1].endswith("weight") for n in graph.node)
    # The most sensitive layers (per parameter) were kept in 8 bits.
    four = {n.name for n in graph.node if n.op_type == "MatMulNBits"
            and any(a.name == "bits" and a.i == 4 for a in n.attribute)}
    assert not any(name.startswith(tuple(metrics["most_sensitive"][:1])) for name in four)
    session = open_session(tmp_path / "model.onnx")
    ids, _ = _feeds(30522, 2, 19)
    logits, *_ = session.run(None, _causal_feeds(session, ids))
    with torch.no_grad():
        want = modelio.load_model(tiny_llama_dir)(input_ids=ids).logits.numpy()
    assert (logits.argmax(-1) == want.argmax(-1)).mean() > 0.8


def test_the_mixed_plan_meets_the_budget_by_the_least_damage_per_bit():
    from services.optimizer.mixed_bits import WeightMatMul, average_bits, plan

    layers = [WeightMatMul("a", "x", "wa", 100), WeightMatMul("b", "x", "wb", 100), WeightMatMul("c", "x", "wc", 200)]
    sensitivity = {"a": 5.0, "b": 1.0, "c": 4.0}  # per bit saved: a 0.0125, b 0.0025, c 0.005
    assert plan(layers, sensitivity, 8.0) == set()
    assert plan(layers, sensitivity, 7.0) == {"b"}  # 100 of 400 params at 4 bits: 7.0 on average
    assert plan(layers, sensitivity, 5.0) == {"b", "c"} and average_bits(layers, {"b", "c"}) == 5.0
    assert plan(layers, sensitivity, 4.0) == {"a", "b", "c"}
