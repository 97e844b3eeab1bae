"""Each hostile or broken upload is refused by its first fault; good folders pass."""

from __future__ import annotations

import pytest

from services.gateway.upload_check import BadUpload, UnpackedTooLarge, check_upload
from tests.upload_corpus import DATASET, HF, _file, _tar, corpus, model_entries


@pytest.fixture(scope="module")
def hostile(tiny_llama_dir):
    return corpus(tiny_llama_dir)


@pytest.mark.parametrize("name", ["not-a-tar", "truncated-tar", "dot-dot", "absolute", "symlink", "hardlink",
                                  "truncated-safetensors", "header-claims-4TiB", "lying-shape", "pickle-only",
                                  "no-config", "dataset-not-json", "dataset-no-text", "gnu-sparse",
                                  "contiguous-file", "fifo", "long-component", "deep-config",
                                  "deeper-than-bound-config", "deep-safetensors-header", "pickle-beside-xml"])
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


def test_files_adding_up_past_the_bound_are_refused_naming_it(tiny_llama_dir, tmp_path):
    entries = model_entries(tiny_llama_dir)
    total = sum(len(data) for _, data in entries)
    path = tmp_path / "model.tar"
    path.write_bytes(_tar(entries))
    check_upload(path, HF, max_unpacked_bytes=total)
    with pytest.raises(UnpackedTooLarge, match=f"over the {total - 1} bytes an upload may take"):
        check_upload(path, HF, max_unpacked_bytes=total - 1)


def test_openvino_weights_pass_only_with_the_ir_that_indexes_them(tiny_llama_dir, tmp_path):
    """The pickle rule is per file: raw IR weights are known by their pair's content, not by any .xml."""
    ir = b'<?xml version="1.0"?>\n<net name="m" version="11"><layers><layer type="Const">' \
         b'<data element_type="f32" shape="4" offset="0" size="16" /></layer></layers></net>'
    path = tmp_path / "model.tar"
    good = model_entries(tiny_llama_dir)
    path.write_bytes(_tar([*good, _file("openvino_model.xml", ir), _file("openvino_model.bin", b"\1" * 16)]))
    check_upload(path, HF)
    path.write_bytes(_tar([*good, _file("openvino_model.xml", ir), _file("openvino_model.bin", b"\1" * 17)]))
    with pytest.raises(BadUpload, match="openvino_model.bin: a pickle"):
        check_upload(path, HF)
    pickle_sized = b"\x80" + b"\1" * 15  # the size the IR indexes, a pickle's first byte
    path.write_bytes(_tar([*good, _file("openvino_model.xml", ir), _file("openvino_model.bin", pickle_sized)]))
    with pytest.raises(BadUpload, match="openvino_model.bin: a pickle"):
        check_upload(path, HF)


def test_a_config_past_the_json_bound_and_a_dataset_line_past_its_bound_are_refused(tiny_llama_dir, tmp_path,
                                                                                     monkeypatch):
    from services.common.models.bounded_json import MAX_JSON_BYTES
    from services.gateway import upload_check

    entries = [entry for entry in model_entries(tiny_llama_dir) if entry[0].name != "config.json"]
    path = tmp_path / "model.tar"
    path.write_bytes(_tar([_file("config.json", b"{" + b" " * MAX_JSON_BYTES + b"}"), *entries]))
    with pytest.raises(BadUpload, match=f"config.json: over {MAX_JSON_BYTES:,} bytes"):
        check_upload(path, HF)
    monkeypatch.setattr(upload_check, "MAX_JSONL_LINE_BYTES", 64)
    path.write_bytes(_tar([_file("train.jsonl", b'{"text": "one"}\n{"text": "' + b"x" * 100 + b'"}\n')]))
    with pytest.raises(BadUpload, match="train.jsonl line 2: over 64 bytes"):
        check_upload(path, DATASET)
