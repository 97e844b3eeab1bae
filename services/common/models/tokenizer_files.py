"""Copies a model's tokenizer files into an artifact, with tokenizer.json written compactly.

Hugging Face writes tokenizer.json indented and with merges as pairs: 3.5 MB for
SmolLM2, where the same content minified, with merges as "a b" strings, is 1.3 MB —
a visible share of an INT4 artifact. The compact form loads to the same tokenizer
(tests/unit/common/models/test_tokenizer_files.py checks the encodings).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "tokenizer.model", "merges.txt", "vocab.json", "added_tokens.json", "chat_template.jinja",
                   "generation_config.json")


def compact_tokenizer_json(text: str) -> str:
    data = json.loads(text)
    merges = (data.get("model") or {}).get("merges")
    # Pairs become "a b" only when no part holds a space (byte-level BPE never does);
    # otherwise the legacy form would be ambiguous.
    if merges and isinstance(merges[0], list) and not any(" " in part for pair in merges for part in pair):
        data["model"]["merges"] = [" ".join(pair) for pair in merges]
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if not (src / name).exists():
            continue
        if name == "tokenizer.json":
            (dst / name).write_text(compact_tokenizer_json((src / name).read_text(encoding="utf-8")),
                                    encoding="utf-8")
        else:
            shutil.copy2(src / name, dst / name)
