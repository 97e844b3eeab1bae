"""The one Struct codec: what travels as a Struct comes back as it was sent, whole numbers as ints,
and what no config can mean is refused naming the key."""

import pytest
from google.protobuf import struct_pb2

from modelpress.structs import MAX_DEPTH, StructError, from_struct, to_struct, to_value


def test_values_come_back_as_sent_with_whole_numbers_as_ints():
    values = {"bits": 4, "alpha": 0.25, "name": "x", "on": True, "none": None,
              "nested": {"b": [1, 2.5, "y", False]}}
    back = from_struct(to_struct(values))
    assert back == values
    assert isinstance(back["bits"], int) and isinstance(back["nested"]["b"][0], int)
    whole = from_struct(to_struct({"bits": 4.0}))["bits"]  # a Struct holds every number as a double
    assert whole == 4 and isinstance(whole, int)


def test_a_struct_or_nothing_is_a_struct():
    sent = to_struct({"a": 1})
    copy = to_struct(sent)
    assert copy == sent and copy is not sent
    assert to_struct(None) == struct_pb2.Struct() == to_struct({})
    assert to_value(8).number_value == 8 and to_value("x").string_value == "x" and to_value(True).bool_value


@pytest.mark.parametrize("value,shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                         (float("-inf"), "-inf")])
def test_a_number_that_is_not_finite_is_refused_naming_the_key(value, shown):
    with pytest.raises(StructError, match=rf"^max_minutes: {shown} is not a finite number$"):
        from_struct(to_struct({"max_minutes": value}))
    with pytest.raises(StructError, match=r"^a\.b\[1\]: "):
        from_struct(to_struct({"a": {"b": [1, value]}}))


def test_nesting_past_the_bound_is_refused_naming_the_path():
    nested: dict = {"leaf": 1}
    for _ in range(MAX_DEPTH):
        nested = {"deeper": nested}
    with pytest.raises(StructError, match=r"^bits(\.deeper)+: nested deeper than 8 levels"):
        from_struct(to_struct({"bits": nested}))
    within: dict = {"leaf": 1}
    for _ in range(MAX_DEPTH - 2):
        within = {"deeper": within}
    assert from_struct(to_struct({"bits": within}))["bits"]["deeper"]


def test_struct_error_is_a_value_error():
    assert issubclass(StructError, ValueError)
