"""Static and INT8 KV caches against the default on a tiny Llama: same tokens, same (or nearly the
same) perplexity, the INT8 cache holding ~1/4 of the bytes."""

from __future__ import annotations

import pytest
import torch

from services.common.models import modelio
from services.evaluator import quality
from services.optimizer import kv_cache


@pytest.fixture(scope="module")
def model_and_windows(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir).eval()
    windows = quality.text_windows(modelio.load_tokenizer(tiny_llama_dir), 2)[:, :144]
    return model, windows


def test_chunked_perplexity_through_the_default_cache_equals_one_full_pass(model_and_windows):
    model, windows = model_and_windows
    with torch.inference_mode():
        logits = model(input_ids=windows).logits[:, 64:-1]
    full = torch.exp(torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 65:].flatten()))
    assert kv_cache.chunked_perplexity(model, windows, "dynamic") == pytest.approx(float(full), rel=1e-4)


def test_static_and_int8_caches_decode_like_the_default(model_and_windows):
    model, windows = model_and_windows
    prompt = windows[:1, :48]
    runs = {kind: kv_cache.greedy_decode(model, prompt, 12, kind) for kind in kv_cache.KINDS}
    assert runs["static"].tokens == runs["dynamic"].tokens
    assert sum(a == b for a, b in zip(runs["int8"].tokens, runs["dynamic"].tokens)) >= 10
    geometry_bytes = 2 * 2 * 2 * 16 * 4  # layers x (k, v) x kv heads x head dim x fp32, per token
    assert runs["dynamic"].cache_bytes == geometry_bytes * (48 + 11)
    assert runs["static"].cache_bytes == geometry_bytes * (48 + 12)  # preallocated to prompt + new tokens
    # int8 codes plus one f16 scale per 16-wide vector: (16 + 2) / 64 of fp32.
    assert runs["int8"].cache_bytes == pytest.approx(runs["dynamic"].cache_bytes * 18 / 64, rel=1e-6)


def test_int8_cache_perplexity_stays_close(model_and_windows):
    model, windows = model_and_windows
    base = kv_cache.chunked_perplexity(model, windows, "dynamic")
    assert kv_cache.chunked_perplexity(model, windows, "int8") == pytest.approx(base, rel=0.01)
    with pytest.raises(ValueError, match="kv cache"):
        kv_cache.new_cache("fp4", model, 16)
