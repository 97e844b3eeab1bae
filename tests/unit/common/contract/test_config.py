from typing import Literal

import pytest
from pydantic import Field

from modelpress.v1 import common_pb2
from services.common.contract.config import (ConfigError, MethodConfig, check_value, describe_method, parse_config,
                                        struct_to_dict)
from services.common.store.events import to_struct


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
    assert not f["include_embeddings"].HasField("minimum")


@pytest.mark.parametrize("name,value,needle", [
    ("bits", 9, "above the maximum 8"),
    ("bits", 1, "below the minimum 2"),
    ("bits", 4.5, "expected an integer"),
    ("bits", True, "expected an integer"),
    ("alpha", "high", "expected a number"),
    ("scheme", "weird", "allowed: symmetric, asymmetric"),
    ("include_embeddings", 1, "expected true or false"),
])
def test_check_value_names_the_field_and_the_problem(name, value, needle):
    problem = check_value(fields()[name], value)
    assert problem is not None and problem.startswith(name) and needle in problem


@pytest.mark.parametrize("name,value", [("bits", 4), ("bits", 4.0), ("alpha", 1), ("scheme", "asymmetric"),
                                        ("include_embeddings", False)])
def test_check_value_accepts_valid_values(name, value):
    assert check_value(fields()[name], value) is None


def test_gateway_and_service_agree_on_struct_numbers():
    values = struct_to_dict(to_struct({"bits": 4, "alpha": 0.25}))
    assert values == {"bits": 4, "alpha": 0.25} and isinstance(values["bits"], int)
    assert parse_config(Example, values).bits == 4


def test_parse_config_rejects_unknown_and_bad_fields_by_name():
    with pytest.raises(ConfigError, match="bogus"):
        parse_config(Example, {"bogus": 1})
    with pytest.raises(ConfigError, match="bits"):
        parse_config(Example, {"bits": 99})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_even_where_no_bound_would_catch_them(value):
    from services.distiller.configs import ResponseConfig

    # alpha has bounds (a NaN passes every comparison as false), temperature too; through a Struct as a client sends it.
    for field in ("alpha", "temperature", "learning_rate"):
        with pytest.raises(ConfigError, match=field):
            parse_config(ResponseConfig, struct_to_dict(to_struct({field: value})))


def test_struct_nesting_past_the_bound_is_a_config_error_naming_the_key():
    nested: dict = {"leaf": 1}
    for _ in range(20):
        nested = {"deeper": nested}
    with pytest.raises(ConfigError, match=r"bits\.deeper\.deeper.*nested deeper than"):
        struct_to_dict(to_struct({"bits": nested}))
    assert struct_to_dict(to_struct({"a": {"b": [1, 2.5, "x", True, None]}})) == {"a": {"b": [1, 2.5, "x", True, None]}}


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
