"""The deployments one serving replica hosts, by name, and the replica's metrics. The protocol front
ends (oip_grpc, http_api) look deployments up here."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.common.contract.deployment_config import DeploymentConfig
from services.common.runtime.auth import OPEN, Principal
from services.serving.deployment import load_deployment
from services.serving.encoders import ServingError
from services.serving.serving_metrics import ServingMetrics
from services.serving.shadow import Shadow

SERVER_NAME = "modelpress-serving"
SERVER_VERSION = "1"


class DeploymentNotFound(KeyError):
    """No deployment of that name on this replica (NOT_FOUND / HTTP 404)."""

    def __str__(self) -> str:
        return self.args[0]


class DeploymentLoading(RuntimeError):
    """This replica is loading that deployment, or has only just started and does not know its
    deployments yet: retry shortly (UNAVAILABLE / HTTP 503), unlike NOT_FOUND, which a client takes
    as final — a replacement replica must not tell the callers of a model it is about to serve that
    the model does not exist."""


class Replica:
    def __init__(self, starting: bool = False) -> None:
        self.deployments: dict[str, object] = {}
        self.metrics = ServingMetrics()
        self.started_at = time.time()
        self.loading: dict[str, str] = {}  # deployment name → its tenant, from the claim until it serves
        self.tenants: dict[str, str] = {}  # deployment name → its tenant ("" on an open mesh)
        # True until a mesh replica's first round over the deployment records has claimed its share.
        self.starting = starting

    def get(self, name: str, caller: Principal = OPEN):
        """The deployment `name`; DeploymentNotFound when there is none or the caller's tenant may not
        use it (another tenant's deployment is not found, as if it did not exist); DeploymentLoading
        while it loads here or the replica is starting."""
        deployment = self.deployments.get(name)
        if deployment is not None and not self._visible(name, self.tenants, caller):
            deployment = None
        if deployment is None:
            if self._visible(name, self.loading, caller) and name in self.loading:
                raise DeploymentLoading(f"model {name!r} is loading on this replica; retry shortly")
            if self.starting:
                raise DeploymentLoading(f"this replica is starting and has not taken its deployments yet (asked for "
                                        f"{name!r}); retry shortly")
            hosted = ", ".join(sorted(self.deployments)) or "none"
            raise DeploymentNotFound(f"no model {name!r} is served here (serving: {hosted})")
        return deployment

    @staticmethod
    def _visible(name: str, tenants: dict[str, str], caller: Principal) -> bool:
        return caller.operator or tenants.get(name, "") == caller.tenant

    def expect(self, name: str, tenant: str = "") -> None:
        """`name` is claimed here and will load: until it serves (or is let go), callers hear UNAVAILABLE."""
        self.loading[name] = tenant

    def forget(self, name: str) -> None:
        """A claim let go before it loaded."""
        self.loading.pop(name, None)

    async def add(self, name: str, folder: Path, config: DeploymentConfig | None = None, tenant: str = "",
                  shadow: tuple[Path, float] | None = None):
        """Loads the folder (off the event loop) and serves it under `name`, to `tenant`'s callers; with
        `shadow` (the original's folder, the share of requests it also runs), beside its original."""
        config = config or DeploymentConfig()
        self.expect(name, tenant)
        try:
            deployment = await asyncio.to_thread(load_deployment, name, Path(folder), config,
                                                 self.metrics.deployment(name))
            if shadow is not None:
                original = await asyncio.to_thread(load_deployment, f"{name}~original", Path(shadow[0]), config,
                                                   self.metrics.deployment(f"{name}~original"))
                if deployment.kind == "causal-lm" and (deployment.model is None or original.model is None):
                    original.close()
                    deployment.close()
                    raise ServingError(f"{name}: a shadow compares PyTorch logits, which an engine-run side (GGUF, "
                                       "ONNX) does not give; deploy without a shadow or shadow safetensors artifacts")
                deployment.shadow = Shadow(original, shadow[1])
        finally:
            self.forget(name)
        previous = self.deployments.pop(name, None)
        self.deployments[name] = deployment
        self.tenants[name] = tenant
        if previous is not None:
            previous.close()
        return deployment

    def remove(self, name: str) -> None:
        self.get(name)
        self.tenants.pop(name, None)
        self.deployments.pop(name).close()

    @property
    def ready(self) -> bool:
        return not self.loading and bool(self.deployments)

    def close(self) -> None:
        for deployment in self.deployments.values():
            deployment.close()
        self.deployments.clear()


def figures_of(deployment) -> dict:
    """A deployment's live figures: requests by outcome, latency percentiles, batch sizes, KV occupancy
    (causal LMs), the shadow's agreement — what /v2/models/NAME/stats answers and a slot carries."""
    figures = deployment.metrics.snapshot()
    if deployment.kind == "causal-lm":
        stats = deployment.batcher.stats()
        figures.update(kv_tokens_in_use=stats.get("kv_tokens_in_use", 0), queued=stats.get("queued", 0))
    if deployment.shadow is not None:
        figures["shadow"] = deployment.shadow.snapshot()
    return figures
