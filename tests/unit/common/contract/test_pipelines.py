"""Pipelines as data: parsing, gates, whole-chain validation, and the in-process runner."""

import json

import pytest

from modelpress.pipelines import (PipelineError, pipeline_data, pipeline_message, pipeline_text,
                                  read_pipeline_file)
from modelpress.structs import to_struct
from modelpress.v1 import common_pb2
from services.common.contract.chain import InvalidArgument, check_chain, resolve_stages, validate_recipe
from services.common.contract.gates import (GATE_METRICS, InvalidGate, failed_checks, gate_figures, parse_gate,
                                            stage_gate)
from services.common.contract.recipes import RECIPES, InvalidPipeline, pipeline_from_data, pipeline_from_message
from tests.unit.gateway.test_validation import methods, services_check

COMPOSITES = ("awq-onnx-int4", "awq-gguf-q4", "awq-openvino-int4", "smoothquant-onnx-int8")
HF = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


def _pipeline(*stages, name="mine"):
    return pipeline_from_data({"name": name, "stages": list(stages)})


def test_every_recipe_round_trips_through_its_file_form_and_the_contract():
    for recipe in RECIPES.values():
        again = pipeline_from_data(recipe.data())
        assert again.stages == recipe.stages and again.name == recipe.name
        over_the_wire = pipeline_from_message(pipeline_message(pipeline_data(recipe.message())))
        assert over_the_wire.stages == recipe.stages
        assert pipeline_from_message(recipe.message()).stages == recipe.stages  # no file shape in between


@pytest.mark.parametrize("fmt,suffix", [("yaml", ".yaml"), ("json", ".json")])
def test_the_one_writer_and_the_one_reader_of_pipeline_files_agree(tmp_path, fmt, suffix):
    for name in ("awq-onnx-int4", "openvino-int4", "minilm-edge"):
        path = tmp_path / f"{name}{suffix}"
        path.write_text(pipeline_text(RECIPES[name].message(), fmt, version=3))
        read = read_pipeline_file(path)
        assert pipeline_from_message(read).stages == RECIPES[name].stages and read.name == name
    nameless = tmp_path / f"team-int4{suffix}"
    nameless.write_text(pipeline_text(common_pb2.Pipeline(stages=[RECIPES["onnx-int4"].stages[0].message()]), fmt))
    assert read_pipeline_file(nameless, default_name="team-int4").name == "team-int4"
    assert read_pipeline_file(nameless).name == ""
    with pytest.raises(PipelineError, match="a pipeline file ends in .json, .yaml or .yml"):
        read_pipeline_file(tmp_path / "p.toml")


def test_a_file_whose_shape_is_wrong_is_refused_by_the_reader_naming_the_place(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("stages:\n  - {technique: quantizer, method: rtn, confg: {bits: 4}}\n")
    with pytest.raises(PipelineError, match=r"^stages\[0\]: unknown keys confg; allowed: config, gate, method"):
        read_pipeline_file(typo)
    with pytest.raises(PipelineError, match=r"^stages\[0\]\.config: Unexpected type"):
        pipeline_message([{"technique": "quantizer", "method": "rtn", "config": {"bits": object()}}])


@pytest.mark.parametrize("data, message", [
    ({"stages": []}, r"pipeline.stages: a non-empty list"),
    ({"stages": [{"technique": "compiler", "method": "x"}]}, r"stages\[0\].technique: 'compiler' is not one of"),
    ({"stages": [{"technique": "quantizer"}]}, r"stages\[0\].method: required"),
    ({"stages": [{"technique": "quantizer", "method": "rtn", "sparsity": 1}]}, r"stages\[0\]: unknown keys sparsity"),
    ({"stages": [{"technique": "quantizer", "method": "rtn", "name": "a.b"}]}, r"stages\[0\].name: 'a.b' must"),
    ({"stages": [{"technique": "quantizer", "method": "rtn"}, {"technique": "quantizer", "method": "rtn"}]},
     r"stage names must differ; rtn repeats"),
    ({"stages": [{"technique": "quantizer", "method": "rtn", "config": [1]}]}, r"stages\[0\].config: expected"),
    ({"steps": []}, r"pipeline: unknown keys steps"),
])
def test_a_malformed_pipeline_names_the_place(data, message):
    with pytest.raises(InvalidPipeline, match=message):
        pipeline_from_data(data)


def test_gates_are_threshold_sets_or_bounds_and_say_which_figure_missed():
    assert [c.metric for c in parse_gate("recovery-99").checks] == ["quality_retention"]
    gate = parse_gate("perplexity_increase<=0.16, speedup >= 2")
    assert [(c.metric, c.comparison, c.threshold) for c in gate.checks] == [
        ("perplexity_increase", "<=", 0.16), ("speedup", ">=", 2.0)]
    assert parse_gate("") is None
    with pytest.raises(InvalidGate, match="'latency' is not a gate metric; allowed: size_ratio"):
        parse_gate("latency<=3")
    with pytest.raises(InvalidGate, match="neither a threshold set .*recovery-99.* nor a bound"):
        parse_gate("recovery-42")
    figures = {"perplexity_increase": 0.2, "speedup": 2.5}
    assert failed_checks(gate, figures) == ["perplexity_increase = 0.2, bound <= 0.16 (perplexity_increase <= 0.16)"]
    assert failed_checks(gate, {"perplexity_increase": 0.1, "speedup": 2.0}) == []
    # A figure the evaluation did not produce never passes a gate.
    assert failed_checks(parse_gate("decode_speedup>=1"), {}) == ["decode_speedup was not measured (bound >= 1)"]


def test_gate_figures_come_from_the_comparison_row_and_the_result():
    row = common_pb2.ComparisonRow(size_ratio=0.3, speedup=2.2, quality_retention=0.98, memory_ratio=0.5)
    result = common_pb2.CompressionResult(perplexity_increase=0.02, accuracy_loss=0.01)
    result.decode_speedup.speedup = 3.1
    figures = gate_figures(row, result)
    # Only what was measured: the row sets no parameter or FLOPs ratio, so the gate gets none.
    assert set(figures) == set(GATE_METRICS) - {"parameter_ratio", "flops_ratio"}
    assert (figures["size_ratio"], figures["decode_speedup"], figures["perplexity_increase"]) == (0.3, 3.1, 0.02)
    assert "decode_speedup" not in gate_figures(row, common_pb2.CompressionResult())


def test_the_whole_chain_is_checked_with_errors_naming_each_stage():
    described = methods()
    transform = {"name": "transform", "technique": "quantizer", "method": "awq-transform"}
    check = {"name": "check", "technique": "evaluator", "gate": "perplexity_increase<=0.16"}
    good = _pipeline(transform, {"name": "export", "technique": "optimizer", "method": "onnx-int4"}, check)
    stages = resolve_stages(good, to_struct({"transform.group_size": 64}), described).stages
    check_chain(stages, described, HF)
    assert [s.name for s in stages] == ["transform", "export", "check"] and stages[2].gate == check["gate"]
    assert stages[0].config["group_size"] == 64
    bad = _pipeline({"name": "quantize", "technique": "quantizer", "method": "gptq"},
                    {"name": "export", "technique": "optimizer", "method": "onnx-int8"})
    with pytest.raises(InvalidArgument, match=r"stages\[1\] \(export\): onnx-int8 does not accept compressed-tensors "
                                              r"\(what stages\[0\] writes\); it takes hf-safetensors"):
        check_chain(resolve_stages(bad, to_struct({}), described).stages, described, HF)
    wrong = _pipeline({**transform, "config": {"group_size": 100, "sparsity": 0.5}},
                      {"name": "export", "technique": "optimizer", "method": "onnx-int4", "gate": "recovery-99"},
                      {**check, "gate": "speed>=2"}, {"name": "x", "technique": "optimizer", "method": "tflite"})
    with pytest.raises(InvalidArgument) as info:
        resolve_stages(wrong, to_struct({}), described)
    message = str(info.value)
    for part in (r"stages[0] (transform).config.sparsity: not a field of awq-transform",
                 r"stages[1] (export).gate: only an evaluate stage carries a gate",
                 r"stages[2] (check).gate: 'speed' is not a gate metric",
                 r"stages[3] (x): no running optimizer offers method 'tflite'"):
        assert part in message, (part, message)
    # Values are the services' to validate (once, by pydantic), named by stage and field.
    valued = _pipeline({**transform, "config": {"group_size": 100, "bits": 3}}, check)
    with pytest.raises(InvalidArgument) as info:
        services_check(resolve_stages(valued, to_struct({}), described))
    bits, group = str(info.value).split("; ")  # in the order the config declares its fields
    assert group.startswith("stages[0] (transform).config.group_size: 100 is neither 0")
    assert bits == "stages[0] (transform).config.bits: Input should be 4 or 8, got 3"


def test_a_gate_is_parsed_once_and_travels_with_its_stage():
    described = methods()
    pipeline = _pipeline({"name": "transform", "technique": "quantizer", "method": "awq-transform"},
                         {"name": "check", "technique": "evaluator", "gate": "perplexity_increase<=0.16, speedup>=2"},
                         {"name": "export", "technique": "optimizer", "method": "onnx-int4"},
                         {"name": "kept", "technique": "evaluator", "gate": "recovery-99"})
    stages = resolve_stages(pipeline, to_struct({}), described).stages
    assert [(c.metric, c.comparison, c.threshold) for c in stages[1].gate_checks] == [
        ("perplexity_increase", "<=", 0.16), ("speedup", ">=", 2.0)]
    assert [c.metric for c in stages[3].gate_checks] == ["quality_retention"] and not stages[0].gate_checks
    # What the job checks is what was parsed, even if the text no longer parses (it is not read again).
    carried = common_pb2.StageSpec()
    carried.CopyFrom(stages[1])
    carried.gate = "perplexity_increase<=0.16, speedup>=2 (edited)"
    gate = stage_gate(carried)
    assert [c.metric for c in gate.checks] == ["perplexity_increase", "speedup"]
    assert failed_checks(gate, {"perplexity_increase": 0.2, "speedup": 3.0}) == [
        "perplexity_increase = 0.2, bound <= 0.16 (perplexity_increase <= 0.16)"]
    # A job stored before StageSpec carried the parsed gate: its text, parsed when checked.
    stored = common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_EVALUATOR, method="evaluate", gate="recovery-99")
    assert stage_gate(stored) == parse_gate("recovery-99")
    assert stage_gate(common_pb2.StageSpec()) is None


def test_composite_recipes_chain_and_a_request_gives_a_recipe_or_a_pipeline():
    described = methods()
    for name in COMPOSITES:
        resolved = validate_recipe(name, to_struct({}), described)
        recipe, stages = resolved.recipe, resolved.stages
        check_chain(stages, described, HF)
        assert [s.name for s in stages] == ["transform", "export"]
        assert recipe.stages[0].technique == common_pb2.TECHNIQUE_QUANTIZER
        assert recipe.stages[1].technique == common_pb2.TECHNIQUE_OPTIMIZER
    pipeline = pipeline_message(RECIPES["awq-onnx-int4"].data() | {"name": "mine"})
    assert validate_recipe("", to_struct({}), described, pipeline).recipe.name == "mine"
    with pytest.raises(InvalidArgument, match="recipe, pipeline: give a recipe name or a pipeline, not both"):
        validate_recipe("onnx", to_struct({}), described, pipeline)
    with pytest.raises(InvalidArgument, match="pipeline.name: 'onnx-int4' is a built-in recipe's name"):
        validate_recipe("", to_struct({}), described, pipeline_message(RECIPES["onnx-int4"].data()))
    with pytest.raises(InvalidArgument, match="recipe: required"):
        validate_recipe("", to_struct({}), described, None)


def test_in_process_compress_runs_the_composite_and_records_the_chain(tiny_llama_dir, tmp_path):
    import modelpress

    seen = []
    run = modelpress.compress(tiny_llama_dir, "awq-onnx-int4", tmp_path / "out",
                              overrides={"calibration_samples": 2, "calibration_sequence_length": 32},
                              progress=lambda i, name, p: seen.append((i, name)))
    assert [s.method for s in run.stages] == ["awq-transform", "onnx-int4"]
    assert list((tmp_path / "out").glob("*.onnx")) and not (tmp_path / "out" / ".stages").exists()
    assert {name for _, name in seen} == {"transform", "export"}
    lineage = json.loads((tmp_path / "out" / "modelpress_pipeline.json").read_text())
    assert [s["method"] for s in lineage["stages"]] == ["awq-transform", "onnx-int4"]
    assert lineage["stages"][0]["config"]["calibration_samples"] == 2
    assert lineage["stages"][0]["format"] == "ARTIFACT_FORMAT_HF_SAFETENSORS"


def test_in_process_compress_refuses_a_bad_chain_before_any_stage_runs(tiny_llama_dir, tmp_path):
    import modelpress

    # In-process errors are the client's own types.
    with pytest.raises(modelpress.InvalidArgument, match=r"stages\[1\] \(export\): onnx does not accept "
                                                         r"compressed-tensors"):
        modelpress.compress(tiny_llama_dir, [{"technique": "quantizer", "method": "rtn"},
                                             {"name": "export", "technique": "optimizer", "method": "onnx"}],
                            tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(modelpress.InvalidArgument, match="evaluate stages and their gates run on the mesh"):
        modelpress.compress(tiny_llama_dir, [{"technique": "evaluator", "gate": "recovery-99"}], tmp_path / "out")


def test_describe_publishes_each_methods_artifact_inputs_and_progress_metrics():
    described = methods()
    gptq = described[(common_pb2.TECHNIQUE_QUANTIZER, "gptq")]
    assert [(i.field, list(i.formats)) for i in gptq.inputs] == [
        ("calibration_dataset", [common_pb2.ARTIFACT_FORMAT_DATASET_JSONL])]
    assert [(m.name, m.kind) for m in gptq.progress_metrics] == [
        ("loss", "per-layer"), ("end_to_end_kl", "curve"), ("end_to_end_validation_kl", "curve")]
    qat = described[(common_pb2.TECHNIQUE_QUANTIZER, "qat")]
    assert {m.name for m in qat.progress_metrics if m.kind == "curve"} == {
        "block_loss_before", "block_loss_after", "end_to_end_kl", "end_to_end_validation_kl"}
    assert not described[(common_pb2.TECHNIQUE_OPTIMIZER, "onnx")].inputs
    # Every progress metric a method declares is one of the two kinds the report draws.
    assert {m.kind for d in described.values() for m in d.progress_metrics} <= {"per-layer", "curve", "schedule"}


def test_an_evaluate_stage_cannot_come_first():
    with pytest.raises(InvalidArgument, match=r"stages\[0\] \(check\): an evaluate stage measures what a stage "
                                              r"before it made; it cannot be first"):
        resolve_stages(_pipeline({"name": "check", "technique": "evaluator", "gate": "recovery-99"}), to_struct({}),
                       methods())
