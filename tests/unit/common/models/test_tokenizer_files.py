
from transformers import AutoTokenizer

from services.common.models.builtin_models import builtin_folder
from services.common.runtime.settings import default_cache
from services.common.models.tokenizer_files import copy_tokenizer

TEXT = "def f(x):\n    return x ** 2  # naïve café, 東京, emoji 🙂 and <|endoftext|>"


def test_compact_tokenizer_json_is_smaller_and_encodes_identically(tmp_path):
    src = builtin_folder("smollm2-135m", default_cache())
    copy_tokenizer(src, tmp_path)
    assert (tmp_path / "tokenizer.json").stat().st_size < 0.5 * (src / "tokenizer.json").stat().st_size
    original, compact = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(tmp_path)
    from pydoc_data.topics import topics

    for text in [TEXT, *list(topics.values())[:20]]:
        assert compact(text).input_ids == original(text).input_ids
    assert compact.decode(compact(TEXT).input_ids) == original.decode(original(TEXT).input_ids)
