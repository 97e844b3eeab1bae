"""One vocabulary: a config field name means one thing with one range in every service."""

import pytest
from pydantic import Field, ValidationError

from modelpress.v1 import common_pb2
from services.common.contract.config import MethodConfig, describe_registry
from services.common.contract.fields import GROUP_SIZE, GroupSize

SHARED = ("group_size", "bits", "lazy_batch_columns", "damping", "calibration_samples",
          "calibration_sequence_length")


def _described():
    from services.distiller.engine import METHODS as distiller
    from services.optimizer.engine import METHODS as optimizer
    from services.pruner.engine import METHODS as pruner
    from services.quantizer.engine import METHODS as quantizer

    registries = {common_pb2.TECHNIQUE_QUANTIZER: quantizer, common_pb2.TECHNIQUE_PRUNER: pruner,
                  common_pb2.TECHNIQUE_DISTILLER: distiller, common_pb2.TECHNIQUE_OPTIMIZER: optimizer}
    return [d for technique, methods in registries.items() for d in describe_registry(technique, methods)]


def test_a_shared_field_has_one_type_range_and_meaning_in_every_method():
    seen: dict[str, set] = {}
    for method in _described():
        for field in method.fields:
            if field.name in SHARED:
                shape = (field.type, tuple(field.choices), field.minimum if field.HasField("minimum") else None,
                         field.maximum if field.HasField("maximum") else None)
                seen.setdefault(field.name, set()).add(shape)
    assert set(seen) >= {"group_size", "bits", "lazy_batch_columns", "damping", "calibration_samples"}
    assert {name: shapes for name, shapes in seen.items() if len(shapes) > 1} == {}


def test_no_method_calls_two_different_things_block_size():
    # GPTQ's lazy batch and ONNX Runtime's 4-bit block were both "block_size".
    assert not [m.name for m in _described() if any(f.name == "block_size" for f in m.fields)]


class _Grid(MethodConfig):
    group_size: GroupSize = Field(64, description=GROUP_SIZE)


@pytest.mark.parametrize("value", [0, 16, 32, 128, 1024])
def test_group_size_is_zero_or_a_power_of_two_from_16(value):
    assert _Grid(group_size=value).group_size == value


@pytest.mark.parametrize("value", [8, 48, 100, 2048, -32])
def test_other_group_sizes_are_refused_naming_the_field(value):
    with pytest.raises(ValidationError, match="group_size"):
        _Grid(group_size=value)
