import pytest

from services.common.models.bounded_json import JsonTooDeep, loads_bounded, nesting_depth


def test_depth_counts_lists_and_objects():
    assert [nesting_depth(v) for v in (1, [], {"a": [1, {"b": []}]}, [[[[]]]])] == [0, 1, 4, 4]


def test_json_past_the_bound_or_the_stack_is_too_deep_by_name():
    assert loads_bounded('{"a": [1, {"b": 2}]}', "x.json") == {"a": [1, {"b": 2}]}
    with pytest.raises(JsonTooDeep, match="x.json: JSON nested 4 levels deep, past the 3"):
        loads_bounded("[[[[]]]]", "x.json", max_depth=3)
    with pytest.raises(JsonTooDeep, match="x.json: JSON nested past Python's recursion limit"):
        loads_bounded("[" * 100_000 + "]" * 100_000, "x.json")
    with pytest.raises(ValueError):
        loads_bounded("not json", "x.json")
