from typing import Literal

import pytest
from pydantic import Field

from modelpress.structs import to_struct
from modelpress.v1 import common_pb2
from services.common.contract.config import (ConfigError, MethodConfig, describe_method, parse_config,
                                             validated)


class Example(MethodConfig):
    bits: int = Field(8, ge=2, le=8, description="weight bits")
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    include_embeddings: bool = True


def fields():
    return {f.name: f for f in describe_method(common_pb2.TECHNIQUE_QUANTIZER, "x", "", Example).fields}


def test_description_carries_types_defaults_choices_and_bounds():
    f = fields()
    assert f["bits"].type == common_pb2.FIELD_TYPE_INT and f["bits"].default_value.number_value == 8
    assert (f["bits"].minimum, f["bits"].maximum) == (2, 8)
    assert f["bits"].help == "weight bits"
    assert list(f["scheme"].choices) == ["symmetric", "asymmetric"]
    assert f["scheme"].type == common_pb2.FIELD_TYPE_STRING
    assert f["include_embeddings"].type == common_pb2.FIELD_TYPE_BOOL
    assert f["include_embeddings"].default_value.bool_value is True
    assert not f["include_embeddings"].HasField("minimum")


# What check_value, the gateway's hand mirror of pydantic, used to refuse: pydantic (strict) refuses
# each, naming the field, the problem with what is allowed, and the value given.
@pytest.mark.parametrize("name,value,wording", [
    ("bits", 9, "bits: Input should be less than or equal to 8, got 9"),
    ("bits", 1, "bits: Input should be greater than or equal to 2, got 1"),
    ("bits", 4.5, "bits: Input should be a valid integer, got 4.5"),
    ("bits", True, "bits: Input should be a valid integer, got True"),
    ("bits", "4", "bits: Input should be a valid integer, got '4'"),
    ("alpha", "high", "alpha: Input should be a valid number, got 'high'"),
    ("scheme", "weird", "scheme: Input should be 'symmetric' or 'asymmetric', got 'weird'"),
    ("include_embeddings", 1, "include_embeddings: Input should be a valid boolean, got 1"),
    ("include_embeddings", "yes", "include_embeddings: Input should be a valid boolean, got 'yes'"),
    ("bogus", 1, "bogus: not a field of this method; allowed: bits, alpha, scheme, include_embeddings"),
])
def test_validated_names_the_field_the_problem_and_the_value(name, value, wording):
    config, problems = validated(Example, {name: value})
    assert config is None and problems == [wording]
    # The same through a Struct, as a stage travels, but for 4.5 vs 4 (a Struct's whole numbers are ints).
    assert validated(Example, to_struct({name: value}))[1] == [wording]


@pytest.mark.parametrize("name,value", [("bits", 4), ("alpha", 1), ("alpha", 0.25), ("scheme", "asymmetric"),
                                        ("include_embeddings", False)])
def test_validated_accepts_valid_values_and_keeps_their_type(name, value):
    config, problems = validated(Example, {name: value})
    assert problems == [] and getattr(config, name) == value


def test_a_struct_is_validated_as_its_values_whole_numbers_as_ints():
    config, problems = validated(Example, to_struct({"bits": 4, "alpha": 0.25}))
    assert problems == [] and config.bits == 4 and isinstance(config.bits, int) and config.alpha == 0.25
    assert validated(Example, to_struct({"bits": 4.0}))[0].bits == 4  # a Struct holds 4 as 4.0


def test_every_problem_is_listed_at_once():
    problems = validated(Example, {"bits": 99, "scheme": "weird", "bogus": 1})[1]
    assert [p.split(":")[0] for p in problems] == ["bits", "scheme", "bogus"]


def test_parse_config_rejects_unknown_and_bad_fields_by_name():
    with pytest.raises(ConfigError, match="bogus"):
        parse_config(Example, {"bogus": 1})
    with pytest.raises(ConfigError, match="bits"):
        parse_config(Example, to_struct({"bits": 99}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_even_where_no_bound_would_catch_them(value):
    from services.distiller.configs import ResponseConfig

    # alpha has bounds (a NaN passes every comparison as false), temperature too; through a Struct as a
    # client sends it (the codec refuses it) and as Python values (pydantic refuses it).
    for field in ("alpha", "temperature", "learning_rate"):
        with pytest.raises(ConfigError, match=field):
            parse_config(ResponseConfig, to_struct({field: value}))
        with pytest.raises(ConfigError, match=f"{field}: Input should be a finite number"):
            parse_config(ResponseConfig, {field: value})


def test_struct_nesting_past_the_bound_is_a_problem_naming_the_key():
    nested: dict = {"leaf": 1}
    for _ in range(20):
        nested = {"deeper": nested}
    (problem,) = validated(Example, to_struct({"bits": nested}))[1]
    assert problem.startswith("bits.deeper.deeper") and "nested deeper than 8 levels" in problem


def test_work_budgets_refuse_training_and_calibration_past_them_naming_the_product():
    from services.distiller.configs import ResponseConfig
    from services.pruner.configs import WandaConfig
    from services.quantizer.configs import GptqConfig, QatConfig

    # The finding: QAT at 10 000 steps x 1024 samples x 4096 tokens passed every field bound.
    qat = QatConfig(steps_per_block=10000, calibration_samples=1024, calibration_sequence_length=4096, batch_windows=64)
    problems = qat.work_problems()
    assert len(problems) == 2
    assert problems[0].startswith("calibration: calibration_samples x calibration_sequence_length (1024 x 4096) = "
                                  "4,194,304 tokens is past the work budget of 2,097,152")
    assert problems[1].startswith("training: steps_per_block x batch_windows x calibration_sequence_length "
                                  "(10000 x 64 x 4096)")
    assert QatConfig().work_problems() == [] and GptqConfig().work_problems() == []
    assert GptqConfig(calibration_samples=512, calibration_sequence_length=4096).work_problems() == []
    assert ResponseConfig(max_steps=1_000_000, batch_size=512, calibration_sequence_length=128).work_problems()[0] \
        .startswith("training: max_steps x batch_size")
    assert ResponseConfig(max_steps=0).work_problems() == []  # bounded by max_minutes alone
    wanda = WandaConfig(recovery_steps=100000, recovery_batch=64, recovery_sequence_length=2048, recovery_minutes=1)
    assert wanda.work_problems()[0].startswith("recovery: schedule_steps x recovery_steps")
