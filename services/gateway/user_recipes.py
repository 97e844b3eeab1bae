"""User recipe templates in JetStream KV: one record per (name, version), versions immutable.

A recipe is saved as the contract's Recipe message (the same schema ListRecipes shows built-ins
in); `NAME` means its latest version, `NAME@3` one version. Built-in names are read-only. Each
tenant has its own names: another tenant's recipes are neither listed, read, run nor deleted (keys
`<tenant>/<name>.<version>`; the open mesh's tenant "" keeps the unprefixed keys it always had).
"""

from __future__ import annotations

import re

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from modelpress.v1 import gateway_pb2
from services.common.store.kv_records import RecordBucket
from services.common.contract.chain import InvalidArgument
from services.common.contract.recipes import RECIPES
from services.gateway.access import scoped, tenant_of

BUCKET = "modelpress_recipes"
# Key prefix of the per-name version counters (no recipe name starts with "_").
COUNTER = "_versions"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
REFERENCE = re.compile(r"^([^@]+)(?:@([1-9][0-9]{0,5}))?$")


class RecipeNotFound(LookupError):
    pass


def parse_reference(reference: str) -> tuple[str, int | None]:
    match = REFERENCE.match(reference.strip())
    if not match or not NAME.match(match.group(1)):
        raise InvalidArgument(f"recipe: {reference!r} is not NAME or NAME@VERSION (NAME: lower-case letters, digits, "
                              f"- and _, up to 64)")
    return match.group(1), int(match.group(2)) if match.group(2) else None


class RecipeStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._records = RecordBucket(js, BUCKET, gateway_pb2.Recipe)

    async def ensure(self) -> "RecipeStore":
        await self._records.ensure()
        return self

    async def _versions(self, own_name: str) -> list[int]:
        return sorted(int(k.rpartition(".")[2]) for k in await self._records.keys() if k.rpartition(".")[0] == own_name)

    async def create(self, recipe: gateway_pb2.Recipe, tenant: str = "") -> gateway_pb2.Recipe:
        """Stores `recipe` (already validated) as its name's next version. A version number is
        never given twice, even after its recipe was deleted (a counter per name remembers)."""
        name, version = parse_reference(recipe.name)
        if version is not None:
            raise InvalidArgument(f"pipeline.name: {recipe.name!r}: versions are given by the store, not chosen")
        if name in RECIPES:
            raise InvalidArgument(f"pipeline.name: {name!r} is a built-in recipe (read-only); choose another name")
        stored = gateway_pb2.Recipe()
        stored.CopyFrom(recipe)
        stored.builtin = False
        own_name = scoped(tenant, name)
        counter_key = f"{COUNTER}.{own_name}"
        for _ in range(10):  # compare-and-set on the counter: concurrent creates get distinct versions
            try:
                entry = await self._records.kv.get(counter_key)
                last, revision = gateway_pb2.Recipe.FromString(entry.value).version, entry.revision
            except KeyNotFoundError:  # the name's first version
                last, revision = 0, None
            stored.version = last + 1
            counter = gateway_pb2.Recipe(name=name, version=stored.version).SerializeToString()
            try:
                if revision is None:
                    await self._records.kv.create(counter_key, counter)
                else:
                    await self._records.kv.update(counter_key, counter, last=revision)
            except KeyWrongLastSequenceError:  # another create moved the counter first
                continue
            await self._records.put(f"{own_name}.{stored.version}", stored)
            return stored
        raise InvalidArgument(f"pipeline.name: {name!r} is being created concurrently; try again")

    async def get(self, reference: str, tenant: str = "") -> gateway_pb2.Recipe:
        name, version = parse_reference(reference)
        versions = await self._versions(scoped(tenant, name))
        if not versions:
            raise RecipeNotFound(f"recipe: unknown recipe {name!r}; allowed: {', '.join(RECIPES)}, or a stored "
                                 f"recipe (`modelpress recipes`)")
        version = version or versions[-1]
        if version not in versions:
            raise RecipeNotFound(f"recipe: {name} has no version {version}; versions: "
                                 f"{', '.join(map(str, versions))}")
        found = await self._records.get(f"{scoped(tenant, name)}.{version}")
        if found is None:
            raise RecipeNotFound(f"recipe: {name}@{version} was deleted")
        return found

    async def list(self, tenant: str = "") -> list[gateway_pb2.Recipe]:
        recipes = [await self._records.get(k) for k in await self._records.keys()
                   if not k.startswith(COUNTER) and tenant_of(k) == tenant]
        return sorted((r for r in recipes if r is not None), key=lambda r: (r.name, r.version))

    async def delete(self, reference: str, tenant: str = "") -> int:
        name, version = parse_reference(reference)
        if name in RECIPES:
            raise InvalidArgument(f"recipe: {name!r} is a built-in recipe (read-only)")
        versions = await self._versions(scoped(tenant, name))
        chosen = [v for v in versions if version is None or v == version]
        if not chosen:
            raise RecipeNotFound(f"recipe: no recipe {reference!r}")
        for v in chosen:
            await self._records.purge(f"{scoped(tenant, name)}.{v}")
        return len(chosen)

