"""A model's position limit read from the head of its tar, without the weights."""

from __future__ import annotations

import json

from services.gateway.model_head import config_in_head, positions_in
from tests.upload_corpus import _file, _tar, model_entries


def test_the_config_at_the_head_of_a_model_tar_gives_its_positions(tiny_bert_dir):
    data = _tar(model_entries(tiny_bert_dir))
    head = data[:64 * 1024]
    assert len(head) < len(data) and positions_in(config_in_head(head)) == 512


def test_a_head_that_cuts_the_config_or_lacks_it_tells_nothing():
    config = json.dumps({"max_position_embeddings": 77, "pad": "x" * 5000}).encode()
    data = _tar([_file("config.json", config), _file("model.safetensors", b"\0" * 10_000)])
    assert positions_in(config_in_head(data)) == 77
    assert config_in_head(data[:2048]) is None
    assert config_in_head(_tar([_file("weights.bin", b"\0" * 100)])) is None
    assert config_in_head(b"not a tar") is None


def test_position_keys_of_other_families():
    assert positions_in({"n_positions": 1024}) == 1024
    assert positions_in({"text_config": {"max_position_embeddings": 4096}}) == 4096
    assert positions_in({"hidden_size": 8}) is None
