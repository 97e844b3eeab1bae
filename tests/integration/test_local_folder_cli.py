"""Bringing a model is one step: on a mesh that reads no folders (no MODELPRESS_ALLOWED_ROOTS, as a
fresh `modelpress up`), `modelpress compress ./my-model` uploads the folder and runs the job on it; what
comes back holds everything the folder held beside its weights and says how to load it; and a refused
`path:` says how to bring the folder instead."""

from __future__ import annotations

import asyncio
import json
import re
import shutil

from services.cli import main as cli


def call(fn, *args, **kwargs):
    return asyncio.to_thread(fn, *args, **kwargs)


def _sentence_model(tiny_bert_dir, folder) -> None:
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                  "pooling_mode_mean_tokens": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    (folder / "README.md").write_text("# my model\n")


async def test_compress_of_a_local_folder_uploads_it_and_the_output_is_whole(gateway, tiny_bert_dir, tmp_path,
                                                                            monkeypatch, capsys):
    monkeypatch.delenv("MODELPRESS_ALLOWED_ROOTS", raising=False)
    _sentence_model(tiny_bert_dir, tmp_path / "my-model")
    monkeypatch.chdir(tmp_path)
    code = await call(cli.main, ["--gateway", gateway, "compress", "./my-model", "--recipe", "fp16", "--no-eval",
                                 "--wait", "--json"])
    run = capsys.readouterr()
    assert code == 0, run.err
    job = json.loads(run.out)  # stdout keeps the one document; the upload speaks on stderr
    uploaded = re.search(r"uploaded \./my-model as artifact (a-\S+) \(", run.err)
    assert uploaded and "./my-model is a folder here: uploading it first" in run.err
    assert job["model"]["artifact_id"] == uploaded[1] and job["state"] == "JOB_STATE_SUCCEEDED"

    assert await call(cli.main, ["--gateway", gateway, "download", job["job_id"], "--out", "out"]) == 0
    out = tmp_path / "out"
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "README.md", "vocab.txt"):
        assert (out / name).read_bytes() == (tmp_path / "my-model" / name).read_bytes(), name
    guide = (out / "HOW_TO_LOAD.md").read_text()
    assert "Hugging Face safetensors" in guide and "SentenceTransformer(folder)" in guide


async def test_a_path_the_mesh_may_not_read_says_how_to_bring_the_folder(gateway, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MODELPRESS_ALLOWED_ROOTS", raising=False)
    code = await call(cli.main, ["--gateway", gateway, "compress", f"path:{tmp_path}", "--recipe", "fp16",
                                 "--no-eval"])
    err = capsys.readouterr().err
    assert code == 2
    assert "local paths are disabled" in err
    assert "modelpress compress ./my-model" in err and "modelpress upload DIR" in err


async def test_a_relative_path_that_is_no_folder_here_is_refused_before_the_mesh(gateway, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    code = await call(cli.main, ["--gateway", gateway, "compress", "./not-here", "--recipe", "fp16", "--no-eval"])
    assert code == 2
    assert "model: './not-here' is no folder here, nor builtin:NAME, artifact:ID or path:DIR" in capsys.readouterr().err


async def test_evaluate_of_a_local_folder_uploads_it_first(gateway, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MODELPRESS_ALLOWED_ROOTS", raising=False)
    _sentence_model(tiny_bert_dir, tmp_path / "my-model")
    monkeypatch.chdir(tmp_path)
    quick = ["--iterations", "1", "--sentences", "8", "--json"]
    code = await call(cli.main, ["--gateway", gateway, "evaluate", "./my-model", *quick])
    run = capsys.readouterr()
    assert code == 0, run.err
    assert re.search(r"uploaded \./my-model as artifact a-\S+ \(", run.err)
    assert json.loads(run.out)["size_on_disk_bytes"] > 0  # measured, on the uploaded copy
