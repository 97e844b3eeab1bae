"""The exporters' KV-cache graphs for the families that needed more than tracing the model as it is:
sliding-window attention (Mistral; Gemma 2 and 3, mixing sliding and full layers), Falcon's
multi-query cache and ALiBi bias, routed experts (Mixtral, Qwen2-MoE, Qwen3-MoE). Each graph must
give PyTorch's logits for a prompt and then for a decode step through the cache it returned.

The windows here are shorter than the prompt, so the window is exercised (the families' defaults,
4096, are longer than anything a tiny test feeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.optimizer import onnx_export
from services.optimizer.cache_graph import (
    DENSE_EXPERTS,
    CacheGeometry,
    _float_alibi,
    dense_experts_forward,
    traceable,
)
from tests.compat import tiny_models

PROMPT = 11
WINDOW = 4  # < PROMPT: the prefill's mask and the decode step's both cut tokens off
HYBRID = ["sliding_attention", "full_attention"]
ONE = {"num_hidden_layers": 1}  # half the export time; two layers only where they differ
# name -> (model_type, config overrides)
CASES = {
    "mistral": ("mistral", {"sliding_window": WINDOW, **ONE}),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "layer_types": HYBRID}),
    "gemma3_text": ("gemma3_text", {"sliding_window": WINDOW, "layer_types": HYBRID}),
    "falcon": ("falcon", ONE),  # multi_query: one cached KV head
    "falcon-alibi": ("falcon", {"alibi": True, **ONE}),
    "mixtral": ("mixtral", ONE),
    "qwen2_moe": ("qwen2_moe", ONE),
    "qwen3_moe": ("qwen3_moe", ONE),
}
# One case per fix runs in `make test` (a hybrid sliding window, Falcon's ALiBi cache, routed experts);
# the rest with the compatibility matrix (`make test-compat`): each export costs seconds.
QUICK = {"gemma3_text", "falcon-alibi", "mixtral"}
PARAMS = [pytest.param(c, marks=() if c in QUICK else pytest.mark.compat) for c in CASES]
MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}
NO_SDPA = {"gemma2"}  # the engine loads these eager for OpenVINO too (transformers gives them no SDPA)


def _build(case: str, attention: str):
    from transformers import AutoModelForCausalLM

    model_type, overrides = CASES[case]
    config = tiny_models.tiny_config(model_type, tiny_models.BPE_VOCAB)
    for key, value in overrides.items():
        setattr(config, key, value)
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:config.num_hidden_layers]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention).eval()


@pytest.fixture(scope="module")
def models():
    """(case, attention) -> the tiny model, built once per module."""
    built: dict = {}

    def get(case: str, attention: str):
        if (case, attention) not in built:
            built[case, attention] = _build(case, attention)
        return built[case, attention]

    return get


def _prompt() -> torch.Tensor:
    return torch.randint(5, tiny_models.BPE_VOCAB - 1, (2, PROMPT), generator=torch.Generator().manual_seed(3))


def _reference(model, prompt: torch.Tensor, next_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's logits for the prompt, then for one step through transformers' own cache."""
    with torch.no_grad():
        first = model(input_ids=prompt, use_cache=True)
        second = model(input_ids=next_ids, cache=first.cache, use_cache=True)
    return first.logits.numpy(), second.logits.numpy()


def _step(ids: torch.Tensor, start: int) -> dict:
    batch, length = ids.shape
    return {"input_ids": ids.numpy(), "attention_mask": np.ones((batch, start + length), np.int64),
            "position_ids": np.broadcast_to(np.arange(start, start + length), (batch, length)).copy()}


@pytest.mark.parametrize("case", PARAMS)
def test_onnx_graph_prefills_and_decodes_through_its_cache_like_pytorch(case, models, tmp_path):
    import onnx
    import onnxruntime as ort

    model = models(case, "eager")
    geometry = CacheGeometry.of(model.config)
    path = onnx_export.export(model, "causal-lm", tmp_path)
    graph = onnx.load(str(path)).graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.")]
    assert [d.dim_value for d in past[0].type.tensor_type.shape.dim][1::2] == [geometry.kv_heads, geometry.head_dim]
    if case in MOE:  # every expert projection a MatMul on a constant weight: MatMulNBits quantizes it
        assert not [n for n in graph.node if n.op_type in ("Gemm", "NonZero", "Histc")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prompt = _prompt()
    empty = np.zeros((2, geometry.kv_heads, 0, geometry.head_dim), np.float32)
    logits, *present = session.run(None, {**_step(prompt, 0), **{p.name: empty for p in past}})
    next_ids = torch.from_numpy(logits[:, -1:].argmax(-1))
    want_prefill, want_decode = _reference(model, prompt, next_ids)
    decoded, *_ = session.run(None, {**_step(next_ids, PROMPT), **dict(zip([p.name for p in past], present))})
    assert present[0].shape == (2, geometry.kv_heads, PROMPT, geometry.head_dim)
    assert np.abs(logits - want_prefill).max() < 1e-4
    assert decoded.shape == want_decode.shape and np.abs(decoded - want_decode).max() < 1e-4


@pytest.mark.parametrize("case", PARAMS)
def test_openvino_stateful_graph_prefills_and_decodes_like_pytorch(case, models):
    pytest.importorskip("openvino")
    import openvino as ov

    from services.optimizer import openvino_convert

    model = models(case, "eager" if case in NO_SDPA else "sdpa")
    ov_model = openvino_convert.convert(model, "causal-lm")
    openvino_convert.make_stateful(ov_model, CacheGeometry.of(model.config))
    request = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    prompt = _prompt()
    request.reset_state()
    logits = request.infer(_step(prompt, 0))[0].copy()
    next_ids = torch.from_numpy(logits[:, -1:].argmax(-1))
    want_prefill, want_decode = _reference(model, prompt, next_ids)
    decoded = request.infer(_step(next_ids, PROMPT))[0].copy()
    assert np.abs(logits - want_prefill).max() < 1e-4
    assert decoded.shape == want_decode.shape and np.abs(decoded - want_decode).max() < 1e-4


def test_the_sliding_window_is_in_force_at_these_lengths(models):
    """Guards the tests above: with the window the tiny models would otherwise have, the logits differ."""
    windowed = models("mistral", "eager")
    config = tiny_models.tiny_config("mistral", tiny_models.BPE_VOCAB)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    unwindowed = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        a, b = windowed(input_ids=_prompt()).logits, unwindowed(input_ids=_prompt()).logits
    assert config.sliding_window > PROMPT and (a - b).abs().max() > 1e-3


def test_falcon_cache_geometry_follows_its_attention():
    def geometry(**overrides):
        config = tiny_models.tiny_config("falcon", 64)
        for key, value in overrides.items():
            setattr(config, key, value)
        return CacheGeometry.of(config)

    assert geometry(multi_query=True, num_kv_heads=2) == CacheGeometry(layers=2, kv_heads=1, head_dim=16)
    assert geometry(multi_query=False, num_kv_heads=4).kv_heads == 4
    # Falcon-40B's layout broadcasts its KV groups to every query head before caching them.
    assert geometry(new_decoder_architecture=True, num_kv_heads=2).kv_heads == 4
    assert CacheGeometry.of(tiny_models.tiny_config("mistral", 64)) == CacheGeometry(2, 2, 16)


def test_falcon_alibi_without_bf16_multiply_is_transformers_own():
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    mask = torch.ones(2, 700, dtype=torch.long)
    mask[0, :30] = 0
    for heads in (1, 4, 5, 12, 71):
        assert torch.equal(_float_alibi(mask, heads, torch.float32), build_alibi_tensor(mask, heads, torch.float32))


def test_dense_experts_are_the_routed_ones_and_the_switch_is_undone(models):
    model = models("qwen3_moe", "eager")
    experts = model.model.layers[0].mlp.experts
    before = model.config._experts_implementation
    hidden = torch.randn(7, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    weights, index = torch.randn(7, 4).softmax(-1).topk(2, dim=-1)
    with torch.no_grad():
        want = experts(hidden, index, weights)
        assert torch.allclose(dense_experts_forward(experts, hidden, index, weights), want, atol=1e-6)
        with traceable(model):
            assert model.config._experts_implementation == DENSE_EXPERTS
            assert torch.allclose(experts(hidden, index, weights), want, atol=1e-6)
    assert model.config._experts_implementation == before
