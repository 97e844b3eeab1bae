"""A deployment's settings, declared once: validation, defaults and their descriptions. The gateway
validates DeployResult's config with it before a deployment exists, the serving replicas run with it,
the CLI and docs describe it from here."""

from __future__ import annotations

from pydantic import Field

from services.common.contract.config import MethodConfig


class DeploymentConfig(MethodConfig):
    threads: int = Field(2, ge=1, le=256, description="Intra-op threads of the deployment's engine")
    # Encoders: dynamic batching (services/serving/batching.py).
    max_batch_size: int = Field(16, ge=1, le=1024, description="Encoders: most requests run in one engine call; "
                                                             "causal LMs: most sequences decoded together per step")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="Encoders: how long the first request of a batch "
                                                             "waits for others to join it")
    max_padding: float = Field(0.25, ge=0, le=100, description="Encoders: padded tokens allowed per engine call, as "
                                                             "a share of its real tokens (requests of a window are "
                                                             "grouped by length)")
    # Causal LMs: continuous batching (services/serving/continuous.py).
    max_kv_tokens: int = Field(8192, ge=16, le=10_000_000,
                               description="Causal LMs: KV-cache budget in tokens (prompt + max_tokens of every "
                                           "running sequence); requests past it wait in the queue")
    max_queued: int = Field(256, ge=1, le=100_000, description="Requests waiting beyond the running batch; past it "
                                                               "a request is refused as unavailable (retryable)")
    max_input_tokens: int = Field(512, ge=1, le=1_000_000, description="Longest input accepted, in tokens; longer "
                                                                       "texts are refused, never cut silently")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024,
                                   description="Largest request body or tensor payload accepted, in bytes")
