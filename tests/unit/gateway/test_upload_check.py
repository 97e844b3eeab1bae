"""Each hostile or broken upload is refused by its first fault; good folders pass."""

from __future__ import annotations

import pytest

from services.gateway.upload_check import BadUpload, check_upload
from tests.upload_corpus import DATASET, HF, _file, _tar, corpus, model_entries


@pytest.fixture(scope="module")
def hostile(tiny_llama_dir):
    return corpus(tiny_llama_dir)


@pytest.mark.parametrize("name", ["not-a-tar", "truncated-tar", "dot-dot", "absolute", "symlink", "hardlink",
                                  "truncated-safetensors", "header-claims-4TiB", "lying-shape", "pickle-only",
                                  "no-config", "dataset-not-json", "dataset-no-text"])
def test_a_hostile_upload_is_refused_naming_its_fault(hostile, tmp_path, name):
    data, fmt, phrase = hostile[name]
    path = tmp_path / "upload.tar"
    path.write_bytes(data)
    with pytest.raises(BadUpload, match=phrase) as info:
        check_upload(path, fmt)
    assert len(str(info.value)) < 400


def test_a_model_folder_and_a_dataset_pass(tiny_llama_dir, tmp_path):
    model, dataset = tmp_path / "model.tar", tmp_path / "data.tar"
    model.write_bytes(_tar(model_entries(tiny_llama_dir)))
    dataset.write_bytes(_tar([_file("train.jsonl", b'{"text": "one"}\n\n{"text": "two"}\n')]))
    check_upload(model, HF)
    check_upload(dataset, DATASET)
