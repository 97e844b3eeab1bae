"""A search's winner deployed under its name: once, again the same deployment when a restarted search repeats
the call, and refused when another deployment holds the name."""

from __future__ import annotations

import pytest

from modelpress.v1 import common_pb2
from services.gateway.deployments import Deployments, NameTaken


def _search(job_id: str, name: str) -> common_pb2.Job:
    return common_pb2.Job(job_id=job_id, tenant="acme", search=common_pb2.SearchSpec(deploy_as=name),
                          output=common_pb2.ArtifactRef(id=f"a-{job_id}", format=common_pb2.ARTIFACT_FORMAT_ONNX))


async def test_a_repeated_deploy_of_the_same_search_returns_its_deployment_and_another_search_is_refused(js):
    deployments = await Deployments(js).ensure()
    first = await deployments.deploy_winner(_search("j-1", "winner-test"), "causal-lm")
    assert (first.name, first.job_id, first.artifact_id, first.tenant) == ("winner-test", "j-1", "a-j-1", "acme")
    again = await deployments.deploy_winner(_search("j-1", "winner-test"), "causal-lm")
    assert again.deployment_id == first.deployment_id
    with pytest.raises(NameTaken):
        await deployments.deploy_winner(_search("j-2", "winner-test"), "causal-lm")
