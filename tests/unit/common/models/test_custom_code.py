import json

from services.common.models.custom_code import strip_custom_code


def test_outputs_lose_their_pointers_at_custom_code_and_nothing_else(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "m.M"}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["t.T", None]},
                                                                "custom_pipelines": {}, "model_max_length": 8}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"max_length": 8}))
    assert strip_custom_code(tmp_path) == {"config.json": ["auto_map"],
                                           "tokenizer_config.json": ["auto_map", "custom_pipelines"]}
    assert json.loads((tmp_path / "config.json").read_text()) == {"model_type": "llama"}
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {"model_max_length": 8}
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"max_length": 8}
    assert strip_custom_code(tmp_path) == {}
