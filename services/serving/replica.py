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


class Replica:
    def __init__(self) -> None:
        self.deployments: dict[str, object] = {}
        self.metrics = ServingMetrics()
        self.started_at = time.time()
        self.loading: set[str] = set()
        self.tenants: dict[str, str] = {}  # deployment name → its tenant ("" on an open mesh)

    def get(self, name: str, caller: Principal = OPEN):
        """The deployment `name`; DeploymentNotFound when there is none or the caller's tenant may not
        use it (another tenant's deployment is not found, as if it did not exist)."""
        deployment = self.deployments.get(name)
        if deployment is not None and not caller.operator and self.tenants.get(name, "") != caller.tenant:
            deployment = None
        if deployment is None:
            hosted = ", ".join(sorted(self.deployments)) or "none"
            raise DeploymentNotFound(f"no model {name!r} is served here (serving: {hosted})")
        return deployment

    async def add(self, name: str, folder: Path, config: DeploymentConfig | None = None, tenant: str = "",
                  shadow: tuple[Path, float] | None = None):
        """Loads the folder (off the event loop) and serves it under `name`, to `tenant`'s callers; with
        `shadow` (the original's folder, the share of requests it also runs), beside its original."""
        config = config or DeploymentConfig()
        self.loading.add(name)
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
            self.loading.discard(name)
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
