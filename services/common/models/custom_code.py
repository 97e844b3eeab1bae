"""A model folder's pointers at its own Python code (`auto_map`: transformers imports modeling_*.py from
the folder under trust_remote_code). modelpress never runs such code: a model that needs it is refused
at load, and every output the mesh writes has the pointers removed."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.models.model_errors import UnsupportedModelError

# JSON files transformers reads for custom-code pointers, and the pointers.
CUSTOM_CODE_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "processor_config.json",
                     "preprocessor_config.json")
CUSTOM_CODE_KEYS = ("auto_map", "custom_pipelines")


def check_no_custom_code(config: dict, what: str = "config.json") -> None:
    """UnsupportedModelError when the model needs its own code to load: an auto_map for an architecture
    transformers does not ship. (Beside a model_type it ships, the pointer is ignored: the stock class
    loads, with trust_remote_code=False.)"""
    from transformers import CONFIG_MAPPING

    key = next((key for key in CUSTOM_CODE_KEYS if key in config), None)
    if key and config.get("model_type") not in CONFIG_MAPPING:
        raise UnsupportedModelError(
            f"{what}: {key} points at the model's own Python code and model_type "
            f"{config.get('model_type')!r} is not an architecture transformers ships; modelpress never runs "
            "code from a model folder (trust_remote_code)")


def strip_custom_code(folder: Path) -> dict[str, list[str]]:
    """Removes the pointers from the JSON files of an output folder; file name -> keys removed."""
    removed = {}
    for name in CUSTOM_CODE_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue  # not ours to repair: loading it says what is wrong
        keys = [key for key in CUSTOM_CODE_KEYS if isinstance(data, dict) and key in data]
        if keys:
            path.write_text(json.dumps({k: v for k, v in data.items() if k not in keys}, indent=2))
            removed[name] = keys
    return removed
