import functools
from types import SimpleNamespace

import pytest

from modelpress.structs import to_struct
from modelpress.v1 import common_pb2
from services.common.contract.config import describe_registry
from services.common.contract.recipes import RECIPES
from services.common.contract.chain import InvalidArgument, Resolved, validate_recipe
from services.gateway.validation import check_model_ref, checked_id, checked_job_state, resolve_evaluation
from services.quantizer.engine import METHODS as QUANT_METHODS


def registries():
    from services.optimizer.engine import METHODS as OPT_METHODS
    from services.distiller.engine import METHODS as DISTILL_METHODS
    from services.pruner.engine import METHODS as PRUNE_METHODS

    return {common_pb2.TECHNIQUE_QUANTIZER: QUANT_METHODS, common_pb2.TECHNIQUE_PRUNER: PRUNE_METHODS,
            common_pb2.TECHNIQUE_DISTILLER: DISTILL_METHODS, common_pb2.TECHNIQUE_OPTIMIZER: OPT_METHODS}


def methods():
    """The services' methods as the gateway knows them: their Describe."""
    return {(technique, d.name): d for technique, registry in registries().items()
            for d in describe_registry(technique, registry)}


@functools.cache
def _servicers():
    from services.common.runtime.technique_servicer import TechniqueServicer

    return {technique: TechniqueServicer(technique, registry, SimpleNamespace(worker_id="unit"))
            for technique, registry in registries().items()}


def services_check(resolved: Resolved) -> None:
    """What the gateway does with resolved stages before a job exists: each engine stage's
    CheckConfig (the services' own check_config, here without the channel), placed by Resolved.refuse."""
    resolved.refuse({i: _servicers()[s.technique].check_config(s)[0] for i, s in enumerate(resolved.stages)
                     if s.technique != common_pb2.TECHNIQUE_EVALUATOR})


def test_unknown_recipe_lists_the_allowed_ones():
    with pytest.raises(InvalidArgument) as info:
        validate_recipe("int9", to_struct({}), methods())
    message = str(info.value)
    assert message.startswith("recipe: unknown recipe 'int9'")
    for name in RECIPES:
        assert name in message


def test_overrides_are_applied_and_checked():
    resolved = validate_recipe("int8-weight-only", to_struct({"embedding_bits": 0}), methods())
    stages = resolved.stages
    assert stages[0].method == "rtn" and resolved.overridden == [{"embedding_bits": "embedding_bits"}]
    assert stages[0].config["embedding_bits"] == 0 and stages[0].config["bits"] == 8
    services_check(resolved)
    # Structure is the gateway's own check: a key that addresses no field.
    with pytest.raises(InvalidArgument, match=r"overrides\.damping: no stage .* allowed: .*embedding_bits"):
        validate_recipe("int8-weight-only", to_struct({"damping": 0.1}), methods())


@pytest.mark.parametrize("recipe,overrides,wording", [
    ("int8-weight-only", {"symmetric": "yes"}, "overrides.symmetric: Input should be a valid boolean, got 'yes'"),
    ("int8-weight-only", {"symmetric": 1}, "overrides.symmetric: Input should be a valid boolean, got 1"),
    ("int8-weight-only", {"bits": True}, "overrides.bits: Input should be 4 or 8, got True"),
    ("w8a8-smoothquant", {"alpha": 1.5}, "overrides.alpha: Input should be less than or equal to 1, got 1.5"),
    ("w8a8-static", {"activations": "per-channel"},
     "overrides.activations: Input should be 'dynamic' or 'static', got 'per-channel'"),
])
def test_a_bad_override_value_is_refused_by_the_services_check_naming_the_override(recipe, overrides, wording):
    """Values are validated once, by pydantic on the service (CheckConfig); the gateway names the
    override that set the bad value, with the problem and what is allowed."""
    resolved = validate_recipe(recipe, to_struct(overrides), methods())  # the structure is sound
    with pytest.raises(InvalidArgument) as refused:
        services_check(resolved)
    assert str(refused.value) == wording


def test_a_recipe_whose_service_is_missing_is_refused():
    with pytest.raises(InvalidArgument, match=r"stages\[0\] \(rtn\): no running quantizer offers method .rtn."):
        validate_recipe("int8-weight-only", to_struct({}), {})


def test_model_refs():
    check_model_ref(common_pb2.ModelRef(builtin="smollm2-135m"))
    with pytest.raises(InvalidArgument, match="model.builtin: unknown builtin model 'gpt5'; allowed: smollm2-135m"):
        check_model_ref(common_pb2.ModelRef(builtin="gpt5"))
    with pytest.raises(InvalidArgument, match="model: set one of"):
        check_model_ref(common_pb2.ModelRef())


def test_paths_only_under_allowed_roots(allowed_root, monkeypatch):
    (allowed_root / "m").mkdir()
    check_model_ref(common_pb2.ModelRef(path=str(allowed_root / "m")))
    with pytest.raises(InvalidArgument, match="outside the allowed roots"):
        check_model_ref(common_pb2.ModelRef(path="/etc"))
    monkeypatch.delenv("MODELPRESS_ALLOWED_ROOTS")
    with pytest.raises(InvalidArgument, match="local paths are disabled"):
        check_model_ref(common_pb2.ModelRef(path=str(allowed_root / "m")))


def test_evaluation_defaults_and_bounds():
    resolved = resolve_evaluation(common_pb2.EvaluationSpec(batch_size=4))
    assert (resolved.batch_size, resolved.sequence_length, resolved.quality_windows) == (4, 128, 8)
    with pytest.raises(InvalidArgument, match=r"evaluation.quality_windows: 99 is outside \[0, 32\]"):
        resolve_evaluation(common_pb2.EvaluationSpec(quality_windows=99))
    # Quality is scored on the held-out split unless a search asks for validation; calibration never.
    assert resolved.quality_split == "heldout"
    assert resolve_evaluation(common_pb2.EvaluationSpec(quality_split="validation")).quality_split == "validation"
    with pytest.raises(InvalidArgument, match="evaluation.quality_split: 'calibration' is not one of heldout, "
                                              "validation"):
        resolve_evaluation(common_pb2.EvaluationSpec(quality_split="calibration"))


def test_every_recipe_resolves_against_the_services_methods_and_its_config_is_valid():
    for name, recipe in RECIPES.items():
        resolved = validate_recipe(name, to_struct({}), methods())
        assert [s.method for s in resolved.stages] == [s.method for s in recipe.stages]
        services_check(resolved)


def test_overrides_address_one_stage_by_name_and_an_ambiguous_bare_field_is_refused():
    from services.common.contract.recipes import RecipeDef, RecipeStage
    from services.common.contract.chain import resolve_stages

    two = RecipeDef("awq-then-int4", "test", (
        RecipeStage(common_pb2.TECHNIQUE_QUANTIZER, "awq", {"bits": 4, "group_size": 64}, name="quantize"),
        RecipeStage(common_pb2.TECHNIQUE_OPTIMIZER, "openvino-int4", name="export")))
    overrides = to_struct({"quantize.group_size": 128, "export.group_size": 32, "bits": 8})
    resolved = resolve_stages(two, overrides, methods())
    stages = resolved.stages
    assert stages[0].config["group_size"] == 128 and stages[1].config["group_size"] == 32
    assert stages[0].config["bits"] == 8 and "bits" not in stages[1].config  # declared by one stage: goes there
    # The override's Value, as sent, is the stage's: no other form in between.
    assert stages[0].config.fields["group_size"] == overrides.fields["quantize.group_size"]
    assert resolved.overridden == [{"group_size": "quantize.group_size", "bits": "bits"},
                                   {"group_size": "export.group_size"}]
    services_check(resolved)
    with pytest.raises(InvalidArgument, match=r"overrides\.group_size: stages quantize, export all take this field; "
                                              r"address one: quantize\.group_size, export\.group_size"):
        resolve_stages(two, to_struct({"group_size": 128}), methods())
    with pytest.raises(InvalidArgument, match=r"overrides\.prune\.sparsity: no stage named 'prune'; stages: quantize"):
        resolve_stages(two, to_struct({"prune.sparsity": 0.5}), methods())
    with pytest.raises(InvalidArgument, match=r"overrides\.export\.damping: stage 'export' takes no field 'damping'"):
        resolve_stages(two, to_struct({"export.damping": 0.1}), methods())
    # A bad value: the services' check, named by the override that set it (the recipe's own config
    # by its stage), with what is allowed.
    with pytest.raises(InvalidArgument) as refused:
        services_check(resolve_stages(two, to_struct({"quantize.group_size": 100}), methods()))
    assert str(refused.value).startswith("overrides.quantize.group_size: 100 is neither 0")
    assert "a power of two from 16 to 1024" in str(refused.value)
    bad_default = RecipeDef("awq-g100", "test", (
        RecipeStage(common_pb2.TECHNIQUE_QUANTIZER, "awq", {"group_size": 100}, name="quantize"),))
    with pytest.raises(InvalidArgument, match=r"^stages\[0\] \(quantize\)\.config\.group_size: 100 is neither 0"):
        services_check(resolve_stages(bad_default, to_struct({}), methods()))


def test_a_chain_is_checked_stage_by_stage_before_a_job_exists():
    from services.common.contract.recipes import RecipeDef, RecipeStage
    from services.common.contract.chain import check_chain, resolve_stages

    Q, O = common_pb2.TECHNIQUE_QUANTIZER, common_pb2.TECHNIQUE_OPTIMIZER
    hf, ct = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS, common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS
    described = methods()
    export = resolve_stages(RECIPES["onnx-int8"], to_struct({}), described).stages
    check_chain(export, described, hf)
    check_chain(export, described, None)  # a path: its format is learnt when the stage reads it
    with pytest.raises(InvalidArgument, match=r"stages\[0\] \(onnx-int8\): onnx-int8 does not accept compressed-tensors "
                                              r"\(the job's model\); it takes hf-safetensors"):
        check_chain(export, described, ct)
    quantize_then_export = resolve_stages(RecipeDef("gptq-onnx", "t", (RecipeStage(Q, "gptq"), RecipeStage(O, "onnx"))),
                                          to_struct({}), described).stages
    with pytest.raises(InvalidArgument, match=r"stages\[1\] \(onnx\): onnx does not accept compressed-tensors "
                                              r"\(what stages\[0\] writes\)"):
        check_chain(quantize_then_export, described, hf)
    cast_then_export = resolve_stages(RecipeDef("bf16-openvino", "t", (RecipeStage(Q, "bf16"),
                                                                       RecipeStage(O, "openvino"))), to_struct({}),
                                      described).stages
    check_chain(cast_then_export, described, hf)  # a bf16 checkpoint is still float safetensors


def test_config_problems_names_each_field_and_the_rules_across_fields():
    """What CheckConfig answers: Describe's per-field bounds miss a rule across fields."""
    from services.common.contract.config import validated
    from services.pruner.configs import MagnitudeConfig, SparseGptConfig, StructuredConfig

    def config_problems(config_cls, values):
        return validated(config_cls, values)[1]

    assert config_problems(SparseGptConfig, {"structure": "2:4"}) == []
    (problem,) = config_problems(SparseGptConfig, {"structure": "2:4", "sparsity": 0.3})
    assert problem.startswith("sparsity: 0.3 contradicts structure 2:4")  # no pydantic "Value error, " prefix
    assert config_problems(MagnitudeConfig, {"scope": "global", "structure": "4:8"})[0].startswith("scope:")
    assert config_problems(StructuredConfig, {})[0].startswith("nothing to prune")
    problems = config_problems(SparseGptConfig, {"damping": 0, "lazy_batch_columns": 8})
    assert [p.split(":")[0] for p in problems] == ["damping", "lazy_batch_columns"]


@pytest.mark.parametrize("bad", ["*", ">", "j.1", "jobs.>", "é-1", "a\x00b", "-leading", "x" * 129, "a b"])
def test_an_id_of_another_shape_is_invalid_and_cited_short(bad):
    with pytest.raises(InvalidArgument, match="job_id: .* is not a job id") as info:
        checked_id(bad, "job_id", "job")
    assert len(str(info.value)) < 200


def test_ids_the_mesh_hands_out_pass_and_a_huge_one_is_cited_cut():
    for good in ("j-0123456789abcdef", "a-0123456789abcdef0123", "c-00ff", "ckpt-j-1-0-abcdef", " j-1 "):
        assert checked_id(good, "job_id", "job") == good.strip()
    with pytest.raises(InvalidArgument, match="job_id: required"):
        checked_id("  ", "job_id", "job")
    with pytest.raises(InvalidArgument) as info:
        checked_id("y" * 5_000_000, "artifact_id", "artifact")
    assert "(5000000 characters)" in str(info.value) and len(str(info.value)) < 200


def test_a_job_state_outside_the_enum_is_invalid():
    assert checked_job_state(0) == 0 and checked_job_state(common_pb2.JOB_STATE_FAILED) == common_pb2.JOB_STATE_FAILED
    with pytest.raises(InvalidArgument, match="state: 99 is not a JobState"):
        checked_job_state(99)


def test_a_nan_override_or_pipeline_config_is_invalid_argument_naming_it():
    # The override travels as sent; the service's codec refuses it, and the gateway names the override.
    resolved = validate_recipe("distill-response", to_struct({"max_minutes": float("nan")}), methods())
    with pytest.raises(InvalidArgument, match=r"^overrides\.max_minutes: nan is not a finite number$"):
        services_check(resolved)
    from modelpress.pipelines import pipeline_message

    pipeline = pipeline_message({"name": "mine", "stages": [
        {"technique": "quantizer", "method": "rtn", "config": {"bits": 4}},
        {"technique": "optimizer", "method": "onnx", "config": {"opset": float("inf")}}]})
    with pytest.raises(InvalidArgument, match=r"pipeline\.stages\[1\]\.config\.opset: inf is not a finite number"):
        validate_recipe("", to_struct({}), methods(), pipeline)


def test_a_path_is_checked_by_its_name_alone_without_opening_anything(allowed_root):
    """What lies in the folder (links, FIFOs, hard links) is checked off the event loop, later."""
    check_model_ref(common_pb2.ModelRef(path=str(allowed_root / "not-yet-there")))
    with pytest.raises(InvalidArgument, match="not an absolute path"):
        check_model_ref(common_pb2.ModelRef(path="relative/m"))


@pytest.mark.parametrize("path", ["/tmp/a\x00b", "/tmp/" + "x" * 5000])
def test_a_path_with_a_nul_or_thousands_of_characters_is_invalid_and_cited_short(allowed_root, path):
    with pytest.raises(InvalidArgument) as info:
        check_model_ref(common_pb2.ModelRef(path=path))
    assert str(info.value).startswith("model.path") and len(str(info.value)) < 300


def test_a_measurement_past_the_work_budget_is_refused_naming_the_budget():
    from services.gateway.validation import MAX_TOKENS_PER_PASS, WorkBudgetExceeded

    with pytest.raises(WorkBudgetExceeded, match=r"256 x 8192 = 2097152 tokens in one pass.*work budget"):
        resolve_evaluation(common_pb2.EvaluationSpec(batch_size=256, sequence_length=8192))
    with pytest.raises(WorkBudgetExceeded, match="grid x iterations"):
        resolve_evaluation(common_pb2.EvaluationSpec(batch_sizes=[8] * 8, sequence_lengths=[2048] * 8,
                                                     latency_iterations=1000))
    within = resolve_evaluation(common_pb2.EvaluationSpec(batch_size=8, sequence_length=MAX_TOKENS_PER_PASS // 8))
    assert within.batch_size == 8
    # A skipped evaluation measures nothing, so it costs nothing.
    assert resolve_evaluation(common_pb2.EvaluationSpec(skip=True, batch_size=256, sequence_length=8192)).skip


def test_free_text_of_any_request_is_bounded_by_one_table_naming_the_field_and_the_limit():
    from modelpress.v1 import gateway_pb2
    from services.gateway import validation
    from services.gateway.validation import check_request_text

    limits = validation.TEXT_LIMITS

    def refused(request) -> str:
        with pytest.raises(InvalidArgument) as info:
            check_request_text(request)
        return str(info.value)

    assert refused(gateway_pb2.CreateJobRequest(name="n" * 1_000_000)) == \
        f"name: at most {limits['name']} characters, got 1000000"
    pipeline = common_pb2.Pipeline(name="p", summary="s" * 5000)
    assert refused(gateway_pb2.CreateRecipeRequest(pipeline=pipeline)) == \
        f"pipeline.summary: at most {limits['summary']} characters, got 5000"
    stages = [common_pb2.StageSpec(method="rtn"), common_pb2.StageSpec(method="evaluate", gate="g" * 2000)]
    assert refused(gateway_pb2.CreateJobRequest(pipeline=common_pb2.Pipeline(stages=stages))) == \
        f"pipeline.stages[1].gate: at most {limits['gate']} characters, got 2000"
    assert refused(gateway_pb2.CreateJobRequest(overrides=to_struct({"group_size": "x" * 20_000}))).startswith(
        f"overrides: at most {validation.STRUCT_LIMIT_BYTES} bytes, got ")
    assert refused(gateway_pb2.TagArtifactRequest(artifact_id="a-1", tag="t" * 129)) == \
        f"tag: at most {limits['tag']} characters, got 129"
    assert refused(gateway_pb2.CompareRequest(threshold_set="x" * 2000)) == \
        f"threshold_set: at most {validation.DEFAULT_TEXT_LIMIT} characters, got 2000"
    assert refused(gateway_pb2.RecommendStrategyRequest(candidate_recipes=["fp16"] * 33)) == \
        "candidate_recipes: at most 32 entries, got 33"
    assert refused(gateway_pb2.CreateJobRequest(
        evaluation=common_pb2.EvaluationSpec(reference=common_pb2.ModelRef(path="/" + "d" * 5000)))) == \
        f"evaluation.reference.path: at most {limits['path']} characters, got 5001"
    # Requests within every bound pass untouched.
    check_request_text(gateway_pb2.CreateJobRequest(name="n" * 256, recipe="fp16", overrides=to_struct({"bits": 4}),
                                                    pipeline=common_pb2.Pipeline(stages=stages[:1])))
