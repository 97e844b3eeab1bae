"""`modelpress up` options that need no process: replica counts and the one target over them."""

import pytest

from services.cli.launcher import LaunchError, parse_replicas, process_name, replica_target


def test_replicas_parse_per_technique_service():
    assert parse_replicas("quantizer=2, evaluator=3,gateway=2") == {"quantizer": 2, "evaluator": 3, "gateway": 2}
    assert parse_replicas("") == {}


@pytest.mark.parametrize("text, needle", [
    ("nats=2", "SERVICE one of"), ("quantizer", "SERVICE=N"), ("quantizer=0", "1 to 8"),
    ("quantizer=9", "1 to 8"), ("quantizer=two", "1 to 8"), ("quantiser=2", "'quantiser=2'"),
])
def test_bad_replica_counts_are_refused_naming_the_item(text, needle):
    with pytest.raises(LaunchError, match=needle):
        parse_replicas(text)


def test_one_target_lists_every_replica_for_round_robin():
    assert replica_target([50052]) == "127.0.0.1:50052"
    assert replica_target([50052, 50152]) == "ipv4:127.0.0.1:50052,127.0.0.1:50152"
    assert [process_name("pruner", i) for i in (1, 2)] == ["pruner", "pruner-2"]
