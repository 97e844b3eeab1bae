"""Causal LMs served from their ONNX graph (exported with its KV cache) by the continuous batcher:
greedy tokens equal the float model's, alone and while other sequences of other lengths join and
leave the batch (the graph honours the left-padded mask and per-row positions)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from services.common.contract.config import parse_config
from services.common.contract.deployment_config import DeploymentConfig
from services.common.contract.engine_api import ProgressReporter
from services.serving.continuous import SamplingParams
from services.serving.deployment import load_deployment
from services.serving.encoders import ServingError
from services.serving.serving_metrics import ServingMetrics

PROMPTS = ["The for statement is used to iterate over", "A module", "Exceptions are raised when an error occurs and"]


@pytest.fixture(scope="module")
def onnx_dir(tiny_bpe_llama_dir, tmp_path_factory):
    from services.optimizer.configs import OnnxConfig
    from services.optimizer.engine import run_onnx

    folder = tmp_path_factory.mktemp("served-llama-onnx")
    run_onnx(parse_config(OnnxConfig, {}), tiny_bpe_llama_dir, folder, ProgressReporter())
    return folder


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == 0:  # the tiny model's eos
                break
    return ids[len(prompt):]


def test_an_onnx_causal_lm_generates_the_float_models_tokens_in_a_shared_batch(onnx_dir, tiny_bpe_llama_dir):
    from transformers import AutoModelForCausalLM

    deployment = load_deployment("lm", onnx_dir, DeploymentConfig(threads=1, max_batch_size=4),
                                 ServingMetrics().deployment("lm"))
    try:
        assert deployment.format == "ONNX" and deployment.model is None
        model = AutoModelForCausalLM.from_pretrained(tiny_bpe_llama_dir, dtype=torch.float32).eval()
        prompts = [deployment.encode(text) for text in PROMPTS]
        want = [_greedy(model, prompt, 10) for prompt in prompts]

        async def together():
            return await asyncio.gather(*(deployment.complete(p, SamplingParams(max_tokens=10, temperature=0))
                                          for p in prompts))

        done = asyncio.run(together())
        for (text, _, count), tokens in zip(done, want):
            assert count == len(tokens) and text == deployment.tokenizer.decode(tokens, skip_special_tokens=True)
        assert max(deployment.batcher.stats()["batch_size_histogram"]) >= 2  # they really shared steps
    finally:
        deployment.close()


def test_a_graph_without_its_kv_cache_is_refused_by_name(tiny_bpe_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from services.optimizer.onnx_export import export

    folder = tmp_path / "no-past"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes((tiny_bpe_llama_dir / name).read_bytes())
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_llama_dir, dtype=torch.float32, attn_implementation="eager")
    export(model.eval(), "causal-lm", folder, with_past=False)
    with pytest.raises(ServingError, match="past_key_values"):
        load_deployment("lm", folder, DeploymentConfig(threads=1), ServingMetrics().deployment("lm"))
