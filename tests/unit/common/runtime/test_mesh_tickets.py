"""Mesh tickets: a ticket is good for the one method and request it was signed for, with the mesh's
secret, for FRESH_FOR_S either way; every other ticket is refused naming what is wrong."""

from __future__ import annotations

import pytest

from modelpress.structs import to_struct
from modelpress.v1 import common_pb2, technique_pb2
from services.common.runtime import mesh_tickets
from services.common.runtime.mesh_tickets import FRESH_FOR_S, MeshSecretError, problem, read_secret, sign

SECRET = b"s" * 32
RUN = "/modelpress.v1.TechniqueService/Run"
NOW = 1_700_000_000.0


def _run(job_id: str = "job-a", **config) -> technique_pb2.TechniqueServiceRunRequest:
    return technique_pb2.TechniqueServiceRunRequest(stage=common_pb2.StageRequest(
        job_id=job_id, stage_index=0, method="rtn", config=to_struct(config or {"bits": 4, "group_size": 128})))


def test_a_ticket_is_good_for_its_method_and_request_within_the_window():
    ticket = sign(SECRET, RUN, _run(), NOW)
    assert ticket.startswith(f"{mesh_tickets.VERSION}.{int(NOW * 1000)}.")
    for late in (0, FRESH_FOR_S - 1, -(FRESH_FOR_S - 1)):
        assert problem(SECRET, RUN, _run(), ticket, NOW + late) is None


def test_the_whole_request_is_signed_whatever_order_its_config_was_built_in():
    built_backwards = _run(group_size=128, bits=4)
    assert problem(SECRET, RUN, built_backwards, sign(SECRET, RUN, _run(bits=4, group_size=128), NOW), NOW) is None


@pytest.mark.parametrize("method, request_, secret", [
    (RUN, _run("job-b"), SECRET),  # another job's id: no publishing into its event stream
    (RUN, _run(bits=2, group_size=128), SECRET),  # another config
    ("/modelpress.v1.EvaluatorService/Evaluate", _run(), SECRET),  # another method
    (RUN, _run(), b"t" * 32),  # another mesh's secret
], ids=["job id", "config", "method", "secret"])
def test_a_ticket_for_anything_else_is_a_bad_signature(method, request_, secret):
    ticket = sign(SECRET, RUN, _run(), NOW)
    assert problem(secret, method, request_, ticket, NOW).startswith("bad mesh ticket signature")


def test_a_stale_or_early_ticket_is_expired_saying_how_far_off_it_is():
    ticket = sign(SECRET, RUN, _run(), NOW)
    assert "signed 400 s ago" in problem(SECRET, RUN, _run(), ticket, NOW + 400)
    assert "400 s in the future" in problem(SECRET, RUN, _run(), ticket, NOW - 400)


@pytest.mark.parametrize("ticket, needle", [
    (None, "no mesh ticket"), ("", "malformed"), ("v2.1.abc", "malformed"), ("v1.soon." + "0" * 64, "malformed"),
    ("v1.1700000000000." + "0" * 63, "malformed"), ("v1.\u00b2." + "0" * 64, "malformed"),
    ("v1.1700000000000." + "\u00e9" * 64, "malformed"),
])
def test_a_missing_or_malformed_ticket_is_named(ticket, needle):
    assert needle in problem(SECRET, RUN, _run(), ticket, NOW)


def test_an_undecodable_request_cannot_match_a_ticket():
    assert problem(SECRET, RUN, object(), sign(SECRET, RUN, _run(), NOW), NOW).startswith("bad mesh ticket signature")


def test_the_secret_file_is_read_stripped_and_refused_when_short_or_missing(tmp_path):
    path = tmp_path / "mesh.secret"
    path.write_text(mesh_tickets.new_secret() + "\n")
    assert len(read_secret(path)) >= mesh_tickets.MIN_SECRET_BYTES and not read_secret(path).endswith(b"\n")
    path.write_text("short\n")
    with pytest.raises(MeshSecretError, match="5 bytes"):
        read_secret(path)
    with pytest.raises(MeshSecretError, match="does not exist"):
        read_secret(tmp_path / "missing")
