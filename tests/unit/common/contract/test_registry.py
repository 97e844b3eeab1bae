"""Registration beside the definition: the `@method` decorator builds a technique's registry, and
pluggable scorers are objects in name registries whose names are what their config field allows."""

import pytest
from pydantic import Field

from modelpress.v1 import common_pb2
from services.common.contract.config import ConfigError, MethodConfig, describe_method, parse_config
from services.common.contract.engine_api import CAUSAL_LM, MODEL_KINDS, ProgressMetric, StageResult
from services.common.contract.registry import MethodRegistry, NamedRegistry, RegistrationError

FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
ONNX = common_pb2.ARTIFACT_FORMAT_ONNX


class ToyConfig(MethodConfig):
    width: int = Field(4, ge=1, le=64, description="Toy width")


def test_the_decorator_registers_what_it_declares_and_returns_the_function_unchanged():
    toys = MethodRegistry(common_pb2.TECHNIQUE_OPTIMIZER)
    loss = ProgressMetric("loss", "per-layer", "toy")

    @toys.method("toy-export", config=ToyConfig, summary="A toy export", produces=(ONNX,),
                 model_kinds=(CAUSAL_LM,), metrics=(loss,))
    @toys.method("toy-copy", config=ToyConfig, summary="A toy copy", produces=(), model_kinds=MODEL_KINDS,
                 accepts=())
    def run(config, src, dst, reporter):
        return StageResult(format=ONNX, metrics={"width": config.width})

    assert run(ToyConfig(width=2), None, None, None).metrics == {"width": 2}
    assert list(toys) == ["toy-copy", "toy-export"]  # the lowest decorator registers first
    export, copy = toys["toy-export"], toys["toy-copy"]
    assert export.run is run and export.config_cls is ToyConfig and export.summary == "A toy export"
    assert (export.accepts, export.produces, export.model_kinds, export.metrics) == ((FLOAT,), (ONNX,), (CAUSAL_LM,),
                                                                                      (loss,))
    assert (copy.accepts, copy.produces, copy.model_kinds) == ((), (), MODEL_KINDS)


def test_a_declaration_that_cannot_hold_fails_when_its_module_is_imported():
    toys = MethodRegistry(common_pb2.TECHNIQUE_QUANTIZER)
    declared = {"config": ToyConfig, "summary": "s", "produces": (FLOAT,), "model_kinds": MODEL_KINDS}

    def first(config, src, dst, reporter): ...

    def second(config, src, dst, reporter): ...

    toys.method("toy", **declared)(first)
    toys.method("toy", **declared)(first)  # the same function again: a module imported twice
    with pytest.raises(RegistrationError, match=r"method 'toy' is registered twice: by .*first and by .*second"):
        toys.method("toy", **declared)(second)
    with pytest.raises(RegistrationError, match=r"model_kinds \['seq2seq'\] must name at least one of causal-lm"):
        toys.method("other", **{**declared, "model_kinds": ("seq2seq",)})(second)
    with pytest.raises(RegistrationError, match="model_kinds"):
        toys.method("other", **{**declared, "model_kinds": ()})(second)
    with pytest.raises(RegistrationError, match="config must be a MethodConfig class"):
        toys.method("other", **{**declared, "config": dict})(second)
    with pytest.raises(RegistrationError, match="a summary is required"):
        toys.method("other", **{**declared, "summary": ""})(second)
    with pytest.raises(TypeError, match="model_kinds"):  # a kind list is never defaulted
        toys.method("other", config=ToyConfig, summary="s", produces=(FLOAT,))(second)


def test_every_engine_method_declares_its_model_kinds_and_outputs_where_it_is_defined():
    from services.distiller import engine as distiller
    from services.optimizer import engine as optimizer
    from services.pruner import engine as pruner
    from services.quantizer import engine as quantizer

    from services.common.contract.registry import registry

    for technique, module in ((common_pb2.TECHNIQUE_QUANTIZER, quantizer), (common_pb2.TECHNIQUE_PRUNER, pruner),
                              (common_pb2.TECHNIQUE_DISTILLER, distiller), (common_pb2.TECHNIQUE_OPTIMIZER, optimizer)):
        assert module.METHODS is registry(technique) and module.METHODS
        for entry in module.METHODS.values():
            assert entry.produces and set(entry.model_kinds) <= set(MODEL_KINDS), entry.name
            assert entry.run.__module__.startswith(f"services.{module.__name__.split('.')[1]}."), entry.name
    # The kinds that differ from "any", each for a reason the engine states at run time.
    only_causal = {(technique, e.name) for technique, m in (("pruner", pruner), ("optimizer", optimizer))
                   for e in m.METHODS.values() if e.model_kinds == (CAUSAL_LM,)}
    # onnx-mixed measures sensitivity on calibration windows fed as a causal LM's prefill.
    assert only_causal == {("pruner", "heads"), ("optimizer", "gguf-f16"), ("optimizer", "gguf-q8_0"),
                           ("optimizer", "gguf-q4"), ("optimizer", "onnx-mixed")}
    assert optimizer.METHODS["fastest-cpu"].produces == (ONNX, common_pb2.ARTIFACT_FORMAT_OPENVINO_IR)


class Scorer:
    description = ""


def test_a_named_registry_gives_the_config_its_allowed_values_and_describe_its_choices():
    scores: NamedRegistry[Scorer] = NamedRegistry("toy score")

    @scores.register
    class Small(Scorer):
        name = "small"
        description = "the smallest"

    @scores.register
    class Large(Scorer):
        name = "large"
        description = "the largest"

    class ScoredConfig(MethodConfig):
        score: scores.choices() = Field("small", description=scores.described("Toy score"))  # type: ignore

    assert scores.names() == ("small", "large") and isinstance(scores.pick("large", "score"), Large)
    assert parse_config(ScoredConfig, {"score": "large"}).score == "large"
    with pytest.raises(ConfigError, match="score"):
        parse_config(ScoredConfig, {"score": "medium"})
    field = describe_method(common_pb2.TECHNIQUE_PRUNER, "toy", "t", ScoredConfig).fields[0]
    assert list(field.choices) == ["small", "large"]
    assert field.help == "Toy score: small: the smallest; large: the largest"
    with pytest.raises(ValueError, match="score: unknown toy score 'medium'; allowed: small, large"):
        scores.pick("medium", "score")


def test_a_named_registry_refuses_a_nameless_or_repeated_class():
    scores: NamedRegistry[Scorer] = NamedRegistry("toy score")

    class Nameless(Scorer):
        pass

    with pytest.raises(RegistrationError, match="a class attribute `name` is required"):
        scores.register(Nameless)

    class One(Scorer):
        name = "one"

    class Other(Scorer):
        name = "one"

    scores.register(One)
    with pytest.raises(RegistrationError, match="toy score 'one' is registered twice"):
        scores.register(Other)
    with pytest.raises(RegistrationError, match="no toy score is registered yet"):
        NamedRegistry("toy score").choices()
