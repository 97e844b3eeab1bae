"""Stored artifacts as users ask about them: their lineage, tags (result versions) and listings,
read from each artifact's meta record (never by fetching the artifact).

Tags are a tenant's own names (stored `<tenant>/<name>:<version>`, like recipes): an artifact
shared by two tenants (one output reused) carries both tenants' tags, each tenant sees and
versions only its own; an operator sees them all, with their tenant.

The same goes for the rest of what a shared output's meta tells: the recipes of the jobs that made
or reused it (a user recipe's name is recorded `<tenant>/<name>`), the model it was made from and
the inputs and jobs of its lineage. A tenant sees built-in recipe names and its own, artifacts it
holds, and jobs of its own; another tenant's upload id or job id is left out, never shown."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from modelpress.v1 import common_pb2
from services.common.store.artifact_store import ArtifactStore, StoredArtifact
from services.common.runtime.auth import Principal
from modelpress.structs import to_struct
from services.common.contract.chain import InvalidArgument
from services.common.contract.recipes import RECIPES
from services.gateway.access import scoped, tenant_of

TAG = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})(?::([1-9][0-9]{0,5}))?$")


def visible_tags(stored: StoredArtifact, viewer: Principal) -> list[str]:
    held = (stored.meta or {}).get("tags", [])
    if viewer.operator:
        return list(held)
    own = viewer.tenant + "/" if viewer.tenant else ""
    return [t.removeprefix(own) for t in held if tenant_of(t) == viewer.tenant]


def recipe_record(tenant: str, recipe: str) -> str:
    """A job's recipe as its output's meta records it: a built-in's name, or the tenant's own."""
    return recipe if recipe in RECIPES else scoped(tenant, recipe)


def visible_recipes(stored: StoredArtifact, viewer: Principal) -> list[str]:
    recorded = (stored.meta or {}).get("recipes", [])
    if viewer.operator:
        return list(recorded)
    own = viewer.tenant + "/" if viewer.tenant else ""
    return [r if r in RECIPES else r.removeprefix(own) for r in recorded
            if r in RECIPES or tenant_of(r) == viewer.tenant]


def visible_ref(text: str, held: set[str] | None) -> str:
    """A model reference as written in meta (artifact:ID, builtin:NAME, path:DIR); "" for an
    artifact the viewer does not hold. `held`: the viewer's artifact ids, None for an operator."""
    if held is None or not text.startswith("artifact:") or text.removeprefix("artifact:") in held:
        return text
    return ""


def summary(stored: StoredArtifact, viewer: Principal, held: set[str] | None) -> common_pb2.ArtifactSummary:
    """The artifact as `viewer` may see it; `held`: the artifact ids it holds (None: an operator)."""
    meta = stored.meta or {}
    return common_pb2.ArtifactSummary(
        artifact=stored.ref, base_model=visible_ref(meta.get("base_model", ""), held),
        methods=[link.get("method", "") for link in meta.get("chain", [])],
        tags=visible_tags(stored, viewer), recipes=visible_recipes(stored, viewer))


def lineage(stored: StoredArtifact) -> list[common_pb2.LineageStage]:
    stages = []
    for link in (stored.meta or {}).get("chain", []):
        stage = common_pb2.LineageStage(
            technique=link.get("technique", ""), method=link.get("method", ""), input=link.get("input", ""),
            input_digest=link.get("input_digest", ""), service_version=link.get("service_version", ""),
            versions=link.get("versions", {}), key=link.get("key", ""), worker=link.get("worker", ""),
            format=link.get("format", ""), job_id=link.get("job_id", ""), stage_index=link.get("stage_index", 0))
        stage.config.CopyFrom(to_struct(link.get("config", {})))
        stage.metrics.CopyFrom(to_struct(link.get("metrics", {})))
        stages.append(stage)
    return stages


def parse_tag(tag: str) -> tuple[str, int | None]:
    match = TAG.match(tag.strip())
    if not match:
        raise InvalidArgument(f"tag: {tag!r} is not NAME or NAME:VERSION (NAME: letters, digits, . _ -; "
                              f"VERSION: a positive integer)")
    name, version = match.groups()
    return name, int(version) if version else None


async def tag_artifact(store: ArtifactStore, artifact_id: str, tag: str, tenant: str = ""
                       ) -> tuple[StoredArtifact, str]:
    """Adds the tenant's NAME:VERSION to the artifact (the next version of NAME when none is
    given). A version names one artifact: giving NAME:V that another artifact holds is refused."""
    name, version = parse_tag(tag)
    own_name = scoped(tenant, name)
    target = await store.stat(artifact_id)
    taken: dict[int, str] = {}
    for other in await store.list_stored():
        for held in other.meta.get("tags", []):
            held_name, _, held_version = held.partition(":")
            if held_name == own_name:
                taken[int(held_version)] = other.ref.id
    if version is None:
        already = [v for v, holder in taken.items() if holder == artifact_id]
        version = already[0] if already else max(taken, default=0) + 1
    elif taken.get(version, artifact_id) != artifact_id:
        raise InvalidArgument(f"tag: {name}:{version} already names artifact {taken[version]}; "
                              f"tag {name} alone to get the next version ({max(taken) + 1})")
    tags = sorted(set((target.meta or {}).get("tags", [])) | {f"{own_name}:{version}"})
    return await store.update_meta(artifact_id, tags=tags), f"{name}:{version}"


def matches(shown: common_pb2.ArtifactSummary, tag: str, model: str, recipe: str) -> bool:
    """Whether the artifact, as its viewer sees it (summary), passes ListArtifacts' filters: what
    the viewer may not see never matches (no filter tells another tenant's ids apart)."""
    if tag:
        name, version = parse_tag(tag)
        wanted = {f"{name}:{version}"} if version else None
        if not any((t in wanted) if wanted else t.partition(":")[0] == name for t in shown.tags):
            return False
    if model and shown.base_model != model:
        return False
    return not recipe or recipe in shown.recipes


async def private_lineage(stages: list[common_pb2.LineageStage], viewer: Principal, held: set[str] | None,
                          tenant_of_job: Callable[[str], Awaitable[str | None]]) -> list[common_pb2.LineageStage]:
    """An output reused across tenants keeps the chain of the job that made it first: for a tenant,
    each stage still shows how the shared artifact was made, but not another tenant's job (nor a
    job that is gone, whose tenant is unknown) or an input artifact it does not hold; an operator
    sees everything."""
    if viewer.operator:
        return stages
    for stage in stages:
        stage.input = visible_ref(stage.input, held)
        if stage.job_id and await tenant_of_job(stage.job_id) != viewer.tenant:
            stage.job_id = ""
            stage.stage_index = 0
    return stages
