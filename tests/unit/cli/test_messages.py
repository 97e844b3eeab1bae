"""What the CLI says on stderr when it stops: how to come back to a detached job, and that no
gateway answers (but not when the gateway answered about a service behind it)."""

import grpc

from modelpress.errors import Unavailable
from services.cli import messages


def test_detaching_names_the_exact_commands_to_watch_and_cancel():
    text = messages.detached("j-5d548277faa745cb")
    assert "keeps running" in text
    assert "modelpress watch j-5d548277faa745cb" in text
    assert "modelpress jobs cancel j-5d548277faa745cb" in text


def test_the_commands_carry_the_gateway_the_caller_named():
    text = messages.detached("j-1", "10.0.0.7:50051")
    assert "modelpress --gateway 10.0.0.7:50051 watch j-1" in text
    assert "modelpress --gateway 10.0.0.7:50051 jobs cancel j-1" in text


def test_a_refused_connection_is_no_gateway_and_says_how_to_start_one():
    unavailable = grpc.StatusCode.UNAVAILABLE
    refused = Unavailable(unavailable, "failed to connect to all addresses; last error: UNKNOWN: "
                                       "ipv4:127.0.0.1:1: Failed to connect to remote host: "
                                       "Connection refused")
    unresolved = Unavailable(unavailable, "DNS resolution failed for nohost:50051: C-ares status")
    assert messages.gateway_unreachable(refused) and messages.gateway_unreachable(unresolved)
    assert messages.no_gateway("127.0.0.1:50051") == (
        "no modelpress gateway answers at 127.0.0.1:50051: start it with `modelpress up` "
        "(or pass --gateway HOST:PORT)")


def test_a_gateway_reporting_a_dead_service_is_not_mistaken_for_no_gateway():
    service_down = Unavailable(grpc.StatusCode.UNAVAILABLE,
                               "quantizer: UNAVAILABLE: failed to connect to all addresses; last error: ...")
    no_replica = Unavailable(grpc.StatusCode.UNAVAILABLE, "no live replica of evaluator: nothing answers")
    refused_but_not_found = Unavailable(grpc.StatusCode.NOT_FOUND, "failed to connect to all addresses")
    assert not any(messages.gateway_unreachable(e) for e in (service_down, no_replica, refused_but_not_found))


def test_not_found_for_download_names_both_kinds_of_id():
    text = messages.neither_job_nor_artifact("a-0000")
    assert text.startswith("NOT_FOUND: 'a-0000'") and "job" in text and "artifact" in text


def test_a_refused_path_says_how_to_bring_the_folder_and_other_errors_say_nothing_more():
    for refusal in ("model.path: local paths are disabled (the operator sets MODELPRESS_ALLOWED_ROOTS)",
                    "model.path: '/home/me/m' is outside the allowed roots /srv/models"):
        hint = messages.refused_path_hint(refusal)
        assert "modelpress compress ./my-model --recipe" in hint and "modelpress upload DIR" in hint
    assert messages.refused_path_hint("recipe: unknown recipe 'x'") is None
