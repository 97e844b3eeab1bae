"""modelpress.compress: the client's error types, enum names, and the job document every surface shares."""

import json

import pytest

import modelpress
from modelpress.results import job_document


def test_a_bad_recipe_config_or_model_is_the_clients_invalid_argument(tiny_bert_dir, tmp_path):
    with pytest.raises(modelpress.InvalidArgument, match="recipe: unknown recipe 'no-such-recipe'"):
        modelpress.compress(tiny_bert_dir, "no-such-recipe", tmp_path / "a")
    with pytest.raises(modelpress.InvalidArgument, match="overrides.nonsense: no stage takes this field"):
        modelpress.compress(tiny_bert_dir, "onnx-int8", tmp_path / "b", overrides={"nonsense": 1})
    with pytest.raises(modelpress.InvalidArgument, match="is not a model folder"):
        modelpress.compress(tmp_path / "missing", "onnx-int8", tmp_path / "c")
    with pytest.raises(modelpress.InvalidArgument, match="evaluate stages and their gates run on the mesh"):
        modelpress.compress(tiny_bert_dir, [{"technique": "evaluator", "gate": "recovery-99"}], tmp_path / "d")
    with pytest.raises(modelpress.InvalidArgument, match=r"stages\[1\] \(export\): onnx does not accept"):
        modelpress.compress(tiny_bert_dir, [{"technique": "quantizer", "method": "rtn"},
                                            {"name": "export", "technique": "optimizer", "method": "onnx"}],
                            tmp_path / "e")
    # Still a grpc.RpcError with a status, like every client error; a bad value is placed where it was
    # written, as the gateway places what the services' CheckConfig finds.
    with pytest.raises(modelpress.ModelpressError) as refused:
        modelpress.compress(tiny_bert_dir, "onnx-int8", tmp_path / "f", overrides={"opset": "high"})
    assert refused.value.code().name == "INVALID_ARGUMENT"
    assert refused.value.details() == "overrides.opset: Input should be a valid integer, got 'high'"
    with pytest.raises(modelpress.InvalidArgument, match=r"stages\[0\] \(rtn\)\.config\.bits: Input should be 4 or 8, "
                                                         r"got 3$"):
        modelpress.compress(tiny_bert_dir, [{"technique": "quantizer", "method": "rtn", "config": {"bits": 3}}],
                            tmp_path / "g")
    with pytest.raises(modelpress.InvalidArgument, match=r": stages\[0\]: unknown keys confg"):
        modelpress.compress(tiny_bert_dir, [{"technique": "quantizer", "method": "rtn", "confg": {}}], tmp_path / "h")


def test_what_this_process_cannot_run_is_failed_precondition(tiny_bert_dir, tmp_path):
    """An engine this machine lacks (TensorRT without a GPU): the client's FailedPrecondition, as on the mesh."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(modelpress.FailedPrecondition, match="tensorrt"):
        modelpress.compress(tiny_bert_dir, "tensorrt-fp16", tmp_path / "out")


def test_the_run_reads_as_a_job_document_with_enum_names(tiny_bert_dir, tmp_path):
    run = modelpress.compress(tiny_bert_dir, "onnx-int8", tmp_path / "out")
    stage = run.stages[0]
    assert (stage.technique, stage.result.format) == ("TECHNIQUE_OPTIMIZER", "ARTIFACT_FORMAT_ONNX")
    document = run.document()
    assert document == job_document(run.job) and json.loads(json.dumps(document)) == document
    assert document["state"] == "JOB_STATE_SUCCEEDED" and document["recipe"] == "onnx-int8"
    assert document["stages"][0]["spec"]["method"] == "onnx-int8"
    assert document["stages"][0]["output"]["format"] == "ARTIFACT_FORMAT_ONNX"
    assert document["stages"][0]["metrics"] == json.loads(json.dumps(stage.result.metrics, default=str))
    result = document["result"]
    # Nothing is measured in-process: every figure is None with why, but for the output's size.
    assert result["compressed_model_size_bytes"] == document["output"]["size_bytes"] > 0
    assert result["compression_ratio"] is None and result["perplexity_increase"] is None
    assert "in-process runs do not evaluate" in result["not_measured"]["compression_ratio"]
    assert result["headline"]["text"].startswith("onnx-int8: ") and result["headline"]["colour"] == "green"
    lineage = json.loads((tmp_path / "out" / "modelpress_pipeline.json").read_text())
    assert lineage["stages"][0]["format"] == "ARTIFACT_FORMAT_ONNX"
