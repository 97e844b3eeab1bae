"""Shared fixtures: a real nats-server on a free port, and tiny random models that load in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.store.nats_server import start_nats_server

# One cache of the dequantized built-in models for every test (unit and e2e): a fresh
# machine builds SmolLM2's FP32 copy once, not once per test module.
os.environ.setdefault("MODELPRESS_CACHE", str(Path.home() / ".cache" / "modelpress"))


def minilm_folder() -> Path:
    from services.common.models.builtin_models import get_builtin

    model = get_builtin("minilm-l6")
    return model.package_dir() / model.relative_path


def _copy_tokenizer(dst: Path) -> None:
    from services.common.models.tokenizer_files import copy_tokenizer

    copy_tokenizer(minilm_folder(), dst)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with tied embeddings and MiniLM's tokenizer (so perplexity runs on real text)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    _copy_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    _copy_tokenizer(folder)
    return folder


def served_nats(tmp_path_factory, name: str = "nats"):
    """A nats-server for a fixture's scope: yields its URL, stops it after."""
    proc, url = start_nats_server(tmp_path_factory.mktemp(name))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory):
    yield from served_nats(tmp_path_factory)


@pytest.fixture(scope="session")
async def js(nats_url):
    from services.common.store import nats_conn

    nc = await nats_conn.connect(nats_url, name="tests")
    yield nats_conn.jetstream(nc)
    await nc.close()


@pytest.fixture
def allowed_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path), "/tmp"]))
    return tmp_path


@pytest.fixture(scope="session")
def noisy_bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny encoder with Gaussian noise (std 0.3) on every weight: embeddings drift from the original's."""
    import shutil

    import torch

    from services.common.models import modelio

    folder = tmp_path_factory.mktemp("tiny-bert-noisy")
    shutil.copytree(tiny_bert_dir, folder, dirs_exist_ok=True)
    model = modelio.load_model(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_bpe_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained here on pydoc text (the tokenizer
    family GGUF files carry), untied head, 4 heads over 2 KV heads."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.common.datasets import corpus

    folder = tmp_path_factory.mktemp("tiny-bpe-llama")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([corpus.calibration_text()[:200_000]], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    LlamaForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder
