"""Built-in facts the gateway uses without materialising a model agree with the shipped files."""

from __future__ import annotations

import json

import gguf

from services.common.models.builtin_models import get_builtin
from tests.conftest import minilm_folder


def test_position_limits_match_the_shipped_models():
    assert json.loads((minilm_folder() / "config.json").read_text())["max_position_embeddings"] == \
        get_builtin("minilm-l6").max_positions
    smollm2 = get_builtin("smollm2-135m")
    field = gguf.GGUFReader(smollm2.package_dir() / smollm2.relative_path).fields["llama.context_length"]
    assert int(field.parts[field.data[0]][0]) == smollm2.max_positions
