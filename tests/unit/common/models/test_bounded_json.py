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


def test_a_json_file_past_the_byte_bound_is_refused_without_reading_it_whole():
    import io

    from services.common.models.bounded_json import JsonTooLarge, read_capped

    stream = io.BytesIO(b" " * 5000 + b"{}")
    with pytest.raises(JsonTooLarge, match="config.json: over 4,096 bytes"):
        read_capped(stream, "config.json", limit=4096)
    assert stream.tell() == 4097  # one byte past the bound read, not the whole stream
    assert read_capped(io.BytesIO(b"{}"), "config.json", limit=4096) == b"{}"
