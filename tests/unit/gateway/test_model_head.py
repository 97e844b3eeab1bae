"""What the gateway reads of a model before a job exists: a stored model's position limit from the
head of its tar, without the weights; a path model's checked against the caller's roots and read
through path_models off the event loop, with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from modelpress.v1 import common_pb2
from services.common.contract.chain import InvalidArgument
from services.common.runtime import auth
from services.common.store import path_models
from services.gateway import model_head
from services.gateway.access import PermissionDenied
from services.gateway.model_head import (
    ModelFilesTimeout,
    check_path_model,
    config_in_head,
    positions_in,
    read_model_head,
)
from tests.upload_corpus import _file, _tar, model_entries


def test_the_config_at_the_head_of_a_model_tar_gives_its_positions(tiny_bert_dir):
    data = _tar(model_entries(tiny_bert_dir))
    head = data[:64 * 1024]
    assert len(head) < len(data) and positions_in(config_in_head(head)) == 512


def test_a_head_that_cuts_the_config_or_lacks_it_tells_nothing():
    config = json.dumps({"max_position_embeddings": 77, "pad": "x" * 5000}).encode()
    data = _tar([_file("config.json", config), _file("model.safetensors", b"\0" * 10_000)])
    assert positions_in(config_in_head(data)) == 77
    assert config_in_head(data[:2048]) is None
    assert config_in_head(_tar([_file("weights.bin", b"\0" * 100)])) is None
    assert config_in_head(b"not a tar") is None


def test_position_keys_of_other_families():
    assert positions_in({"n_positions": 1024}) == 1024
    assert positions_in({"text_config": {"max_position_embeddings": 4096}}) == 4096
    assert positions_in({"hidden_size": 8}) is None


# ---- path models: read off the event loop, through path_models' checks, as the caller may ----

GLOBEX = auth.Principal("globex", False)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A shared root holding model `m` and acme's root holding model `m`."""
    for name in ("shared", "acme"):
        (tmp_path / name / "m").mkdir(parents=True)
        (tmp_path / name / "m" / "config.json").write_text('{"max_position_embeddings": 77}')
    monkeypatch.setenv("MODELPRESS_ALLOWED_ROOTS", f"{tmp_path / 'shared'}{os.pathsep}acme={tmp_path / 'acme'}")
    return tmp_path


async def test_a_path_models_config_gives_its_positions_and_a_fifo_gives_nothing_at_once(roots):
    ref = common_pb2.ModelRef(path=str(roots / "shared" / "m"))
    assert (await read_model_head(ref, store=None)).positions == 77
    (roots / "shared" / "m" / "config.json").unlink()
    os.mkfifo(roots / "shared" / "m" / "config.json")
    started = time.monotonic()
    assert await asyncio.wait_for(read_model_head(ref, store=None), 3) == model_head.ModelHead()
    assert time.monotonic() - started < 1


async def test_a_tenant_reads_no_config_under_another_tenants_root(roots):
    token = auth._current.set(GLOBEX)
    try:
        assert (await read_model_head(common_pb2.ModelRef(path=str(roots / "acme" / "m")), None)).positions is None
        assert (await read_model_head(common_pb2.ModelRef(path=str(roots / "shared" / "m")), None)).positions == 77
    finally:
        auth._current.reset(token)


async def test_admission_names_what_is_wrong_with_a_typed_error(roots):
    with pytest.raises(PermissionDenied, match=r"^model.path: .* lies under a root the operator opened to other "
                                               r"tenants"):
        await check_path_model(str(roots / "acme" / "m"), GLOBEX)
    await check_path_model(str(roots / "acme" / "m"), auth.Principal("acme", False))
    await check_path_model(str(roots / "acme" / "m"), auth.OPEN)
    (roots / "outside").write_bytes(b"secret")
    os.link(roots / "outside", roots / "shared" / "m" / "vocab.txt")
    with pytest.raises(PermissionDenied, match=r"^spec.reference.path: .*'vocab.txt' has 2 hard links"):
        await check_path_model(str(roots / "shared" / "m"), GLOBEX, "spec.reference")
    with pytest.raises(InvalidArgument, match="is outside the allowed roots"):
        await check_path_model(str(roots), GLOBEX)
    with pytest.raises(InvalidArgument, match="is not a folder"):
        await check_path_model(str(roots / "shared" / "absent"), GLOBEX)


async def test_a_stalled_filesystem_costs_its_caller_a_deadline_not_the_event_loop(roots, monkeypatch):
    monkeypatch.setattr(model_head, "MODEL_FILE_DEADLINE_S", 0.3)
    monkeypatch.setattr(path_models, "check_folder", lambda *args: time.sleep(1.5))
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    try:
        with pytest.raises(ModelFilesTimeout, match=r"^model.path: the filesystem did not answer within 0.3 s"):
            await check_path_model(str(roots / "shared" / "m"), GLOBEX)
    finally:
        ticker.cancel()
    assert ticks >= 5  # the loop ran on while the read was stuck
