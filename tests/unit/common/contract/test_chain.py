"""The chain check refuses, before a job exists, a method that does not take the job's model kind
and a method whose engine no optimizer worker reports available."""

import pytest

from modelpress.structs import to_struct
from modelpress.v1 import common_pb2
from services.common.contract.chain import (InvalidArgument, MethodUnavailable, check_chain, check_engines,
                                            declared_fields, resolve_configs, resolve_stages)
from services.common.contract.config import describe_registry
from services.common.contract.recipes import RECIPES

HF = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS


def _registries():
    from services.distiller.engine import METHODS as distiller
    from services.optimizer.engine import METHODS as optimizer
    from services.pruner.engine import METHODS as pruner
    from services.quantizer.engine import METHODS as quantizer

    return ((common_pb2.TECHNIQUE_QUANTIZER, quantizer), (common_pb2.TECHNIQUE_PRUNER, pruner),
            (common_pb2.TECHNIQUE_DISTILLER, distiller), (common_pb2.TECHNIQUE_OPTIMIZER, optimizer))


@pytest.fixture(scope="module")
def described():
    """The methods as the gateway knows them: the services' Describe."""
    return {(technique, d.name): d for technique, registry in _registries()
            for d in describe_registry(technique, registry)}


@pytest.fixture(scope="module")
def registered():
    """The methods as an in-process run knows them: the engines' registries."""
    return {(technique, name): m for technique, registry in _registries() for name, m in registry.items()}


def stages_of(recipe: str, described) -> list[common_pb2.StageSpec]:
    return resolve_stages(RECIPES[recipe], to_struct({}), described).stages


def test_descriptions_and_registry_entries_answer_the_chain_alike(described, registered):
    """The gateway checks against Describe, an in-process run against the registries: the same
    fields, and the same refusals."""
    assert described.keys() == registered.keys()
    for key, method in registered.items():
        assert declared_fields(method) == declared_fields(described[key])
    for recipe in RECIPES.values():
        resolved, configs = resolve_configs(recipe, {}, registered)
        assert resolved.stages == resolve_stages(recipe, to_struct({}), described).stages
        assert [type(c) for c in configs] == [registered[(s.technique, s.method)].config_cls
                                              for s in recipe.stages]
    for source in (described, registered):
        stages = stages_of("gguf-q8_0", source)
        with pytest.raises(InvalidArgument, match=r"stages\[0\] \(gguf-q8_0\): gguf-q8_0 takes causal-lm"):
            check_chain(stages, source, HF, "encoder")


def test_in_process_values_are_validated_by_pydantic_and_placed_as_the_gateway_places_them(registered):
    recipe = RECIPES["w4a16-gptq"]
    resolved, (config,) = resolve_configs(recipe, {"group_size": 128, "calibration_samples": 4}, registered)
    assert (config.group_size, config.bits, config.calibration_samples) == (128, 4, 4)
    assert resolved.overridden == [{"group_size": "group_size", "calibration_samples": "calibration_samples"}]
    with pytest.raises(InvalidArgument) as refused:
        resolve_configs(recipe, {"gptq.bits": 3, "symmetric": 1}, registered)
    assert str(refused.value) == ("overrides.gptq.bits: Input should be 4 or 8, got 3; "
                                  "overrides.symmetric: Input should be a valid boolean, got 1")
    with pytest.raises(InvalidArgument, match=r"^overrides\.nonsense: no stage takes this field"):
        resolve_configs(recipe, {"nonsense": 1}, registered)


def test_describe_publishes_the_kinds_each_method_declares(described):
    assert list(described[(common_pb2.TECHNIQUE_OPTIMIZER, "gguf-q8_0")].model_kinds) == ["causal-lm"]
    assert list(described[(common_pb2.TECHNIQUE_PRUNER, "heads")].model_kinds) == ["causal-lm"]
    assert list(described[(common_pb2.TECHNIQUE_QUANTIZER, "gptq")].model_kinds) == ["causal-lm", "encoder"]


@pytest.mark.parametrize("recipe,method,stage", [("gguf-q8_0", "gguf-q8_0", "gguf-q8_0"), ("prune-heads", "heads", "prune"),
                                                 ("awq-gguf-q4", "gguf-q4", "export")])
def test_a_method_that_does_not_take_the_models_kind_is_refused_naming_stage_method_kind_and_what_it_takes(
        recipe, method, stage, described):
    stages = stages_of(recipe, described)
    index = [s.method for s in stages].index(method)
    with pytest.raises(InvalidArgument) as refused:
        check_chain(stages, described, HF, "encoder")
    assert str(refused.value) == (f"stages[{index}] ({stage}): {method} takes causal-lm models; the job's model is "
                                  "an encoder")
    check_chain(stages, described, HF, "causal-lm")
    check_chain(stages, described, HF, None)  # a kind not told up front: the stage itself says


def test_methods_for_any_kind_pass_an_encoder(described):
    for recipe in ("onnx-int8", "prune-mlp", "minilm-edge", "w4a16-gptq", "distill-attention"):
        check_chain(stages_of(recipe, described), described, HF, "encoder")


def engine(name: str, available: bool, methods: dict[str, str], reason: str = "") -> common_pb2.EngineInfo:
    return common_pb2.EngineInfo(name=name, available=available, reason=reason, methods=methods)


def test_a_method_whose_engine_every_worker_lacks_is_unavailable(described):
    stages = stages_of("tensorrt-fp16", described)
    cpu_only = engine("tensorrt", False, {"fp16": "tensorrt-fp16"}, "needs an NVIDIA GPU with CUDA; this worker has none")
    onnx = engine("onnxruntime", True, {"fp32": "onnx", "int8": "onnx-int8"})
    with pytest.raises(MethodUnavailable) as refused:
        check_engines(stages, [onnx, cpu_only, cpu_only])
    assert str(refused.value) == ("stages[0] (tensorrt-fp16): tensorrt-fp16 needs the tensorrt engine, which no "
                                  "optimizer worker can run: needs an NVIDIA GPU with CUDA; this worker has none")
    check_engines(stages, [cpu_only, engine("tensorrt", True, {"fp16": "tensorrt-fp16"})])  # one GPU replica
    check_engines(stages_of("onnx-int8", described), [onnx, cpu_only])
    # openvino-bf16 is the openvino method with a config: the method is the engine's whichever recipe names it
    no_openvino = engine("openvino", False, {"fp32": "openvino", "bf16": "openvino-bf16"}, "openvino missing")
    with pytest.raises(MethodUnavailable, match=r"stages\[1\] \(export\): openvino-int4 needs the openvino engine"):
        check_engines(stages_of("awq-openvino-int4", described),
                      [engine("openvino", False, {"int4": "openvino-int4"}, "openvino missing")])
    with pytest.raises(MethodUnavailable, match=r"openvino needs the openvino engine"):
        check_engines(stages_of("openvino-bf16", described), [no_openvino])
