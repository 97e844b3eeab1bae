"""ONNX export, fusion, INT8 / 4-bit weights on tiny models: reload and numerical agreement with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.common import modelio
from services.common.engine_api import ProgressReporter
from services.evaluator.engine import EvaluationConfig, evaluate_folder
from services.optimizer.engine import METHODS
from services.common.onnx_session import open_session


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


def test_causal_lm_export_keeps_the_tied_head_once_and_agrees(tiny_llama_dir, tmp_path):
    result = _run("onnx", tiny_llama_dir, tmp_path)
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    vocab_sized = [i for i in graph.initializer if 30522 in i.dims]
    assert len(vocab_sized) == 1, [i.name for i in vocab_sized]  # embedding and head share one tensor
    assert result.metrics["kind"] == "causal-lm"
    session = open_session(tmp_path / "model.onnx")
    model = modelio.load_model(tiny_llama_dir)
    ids, mask = _feeds(30522, 2, 19)
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(got - want).max() < 1e-3


def test_int8_and_int4_graphs_quantize_every_matmul_and_stay_close(tiny_bert_dir, tmp_path):
    int8 = _run("onnx-int8", tiny_bert_dir, tmp_path / "int8")
    assert int8.metrics["int8_ops"].get("QAttention") == 2 and int8.metrics["int8_ops"].get("MatMulInteger", 0) >= 4
    int4 = _run("onnx-int4", tiny_bert_dir, tmp_path / "int4", block_size=32)
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
    assert figures["latency"]["p50_ms"] > 0 and figures["flops"] == 0  # not counted for ONNX graphs
    assert figures["encoder"]["mean_reference_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert figures["parameter_bytes"] == (dst / "model.onnx").stat().st_size
    torch_params = sum(p.numel() for p in modelio.load_model(tiny_bert_dir).parameters())
    assert figures["parameters"] == pytest.approx(torch_params, rel=0.05)


@pytest.mark.parametrize("method, op, extra", [("onnx-int8", "MatMulInteger", {"allow_causal_lm": True}),
                                               ("onnx-int4", "MatMulNBits", {})])
def test_causal_lm_weights_are_quantized_too(tiny_llama_dir, tmp_path, method, op, extra):
    from services.optimizer.onnx_runtime import op_counts

    _run(method, tiny_llama_dir, tmp_path, **extra)
    counts = op_counts(tmp_path / "model.onnx")
    # 2 layers x 7 Linears, plus the head: every projection runs on quantized weights.
    assert counts.get(op, 0) + counts.get("DynamicQuantizeMatMul", 0) >= 14, counts
    model = modelio.load_model(tiny_llama_dir)
    ids, mask = _feeds(30522, 1, 24)
    got = open_session(tmp_path / "model.onnx").run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits.numpy()
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    assert agree > 0.8, agree


def test_int8_activations_on_a_causal_lm_are_refused_unless_asked(tiny_llama_dir, tmp_path):
    from services.common.engine_api import NotPossibleHere

    with pytest.raises(NotPossibleHere, match="allow_causal_lm"):
        _run("onnx-int8", tiny_llama_dir, tmp_path)
