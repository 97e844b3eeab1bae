"""An uploaded dataset's texts are what calibration and training read; the example the docs upload is one."""

import json
from pathlib import Path

import pytest

from services.common.datasets.calibration_text import calibration_text

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "datasets" / "support-tickets"


def test_the_documented_example_dataset_reads_as_its_forty_texts():
    texts = [json.loads(line)["text"] for line in (EXAMPLE / "part-0.jsonl").read_text().splitlines()]
    assert len(texts) == 40
    assert calibration_text(EXAMPLE) == "\n\n".join(texts)


def test_a_line_without_text_is_named(tmp_path):
    (tmp_path / "part-0.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"part-0.jsonl:2 is not a JSON object with a 'text' field"):
        calibration_text(tmp_path)
