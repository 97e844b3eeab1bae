"""GGUF deployments: the optimizer's GGUF artifact served by llama.cpp through the same deployment
contract as the PyTorch batcher (greedy tokens as the float model's, seeded sampling repeatable,
stop / length / cancel, a bounded queue), and a replica without the extra refuses by naming it."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest
import torch

from services.common.contract.deployment_config import DeploymentConfig
from services.common.contract.engine_api import ProgressReporter
from services.optimizer.engine import METHODS
from services.serving.continuous import QueueFull, SamplingParams
from services.serving.deployment import load_deployment
from services.serving.serving_metrics import ServingMetrics


@pytest.fixture(scope="module")
def gguf_dir(tiny_bpe_llama_dir, tmp_path_factory):
    entry = METHODS["gguf-f16"]
    out = tmp_path_factory.mktemp("gguf-f16")
    entry.run(entry.config_cls(verify_reload=False), tiny_bpe_llama_dir, out, ProgressReporter())
    return out


def _deploy(folder, **config):
    return load_deployment("tiny-gguf", folder, DeploymentConfig(threads=1, **config), ServingMetrics().deployment("tiny-gguf"))


def _greedy(folder, prompt: list[int], n: int, eos: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == eos:
                break
    return ids[len(prompt):]


def test_a_replica_without_the_extra_names_it(gguf_dir, monkeypatch):
    from services.serving.llamacpp_engine import EngineMissing

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(EngineMissing, match=r"modelpress\[llamacpp\]"):
        _deploy(gguf_dir)


def test_gguf_is_served_by_llama_cpp_as_the_float_model_generates(gguf_dir, tiny_bpe_llama_dir):
    pytest.importorskip("llama_cpp", reason="the llamacpp extra (make test-llamacpp)")
    deployment = _deploy(gguf_dir, max_queued=1)
    try:
        assert deployment.format == "GGUF" and deployment.model is None
        prompt = deployment.encode("The for statement is used to iterate over")
        want = _greedy(tiny_bpe_llama_dir, prompt, 12, eos=0)

        async def scenario():
            text, reason, count = await deployment.complete(prompt, SamplingParams(max_tokens=12, temperature=0))
            assert count == len(want) and reason == ("stop" if want[-1] == 0 else "length")
            assert text == deployment.tokenizer.decode(want, skip_special_tokens=True)
            sampled = [await deployment.complete(prompt, SamplingParams(max_tokens=10, temperature=1.0, seed=7))
                       for _ in range(2)]
            assert sampled[0] == sampled[1]
            # A stop string ends the text where it starts; the string is not returned.
            if len(text) > 3:
                stop = text[2:4]
                cut, why, _ = await deployment.complete(prompt, SamplingParams(max_tokens=12, temperature=0), [stop])
                assert why == "stop" and cut == text[:text.find(stop)]

                await asyncio.sleep(0.5)  # the engine sees the cancel at its next token

        asyncio.run(scenario())
        stats = deployment.batcher.stats()
        assert stats["prefills"] >= 4 and stats["tokens_generated"] >= len(want) and stats["running"] == 0
    finally:
        deployment.close()


def test_the_queue_is_bounded_and_a_cancelled_generation_ends(gguf_dir):
    pytest.importorskip("llama_cpp", reason="the llamacpp extra (make test-llamacpp)")
    deployment = _deploy(gguf_dir, max_queued=1)
    engine = deployment.batcher
    started, released = threading.Event(), threading.Event()

    def slow(token, reason):  # holds the engine thread on the first token, so the next request queues
        started.set()
        released.wait(10)

    try:
        prompt = deployment.encode("Modules are objects")
        running = engine.submit(prompt, SamplingParams(max_tokens=50, temperature=0), slow)
        assert started.wait(10)
        waiting = engine.submit(prompt, SamplingParams(max_tokens=2, temperature=0), lambda t, r: None)
        with pytest.raises(QueueFull):
            engine.submit(prompt, SamplingParams(max_tokens=2), lambda t, r: None)
        running.cancel()
        released.set()
        assert running.wait(10) and waiting.wait(10)
        assert running.finish_reason in ("cancelled", "stop") and running.completion_tokens < 50
        with pytest.raises(ValueError, match="context"):
            engine.submit(prompt, SamplingParams(max_tokens=10_000), lambda t, r: None)
    finally:
        deployment.close()
