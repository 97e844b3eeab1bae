"""Typed runtime settings shared by every service, read from flags or MODELPRESS_* env vars."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from services.common.contract.techniques import TECHNIQUE_SERVICES
from services.common.store.disk_bounds import process_tag

# Where each technique service listens by default under `modelpress up`.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50051,
    "quantizer": 50052,
    "pruner": 50053,
    "distiller": 50054,
    "evaluator": 50055,
    "optimizer": 50056,
    "serving": 50057,
}
# The serving service's HTTP server (OIP REST, OpenAI API, metrics), beside its gRPC port.
DEFAULT_SERVING_HTTP_PORT = 8000


def default_home() -> Path:
    return Path(os.environ.get("MODELPRESS_HOME", Path.home() / ".modelpress"))


def default_cache(home: Path | None = None) -> Path:
    """Built-in models dequantized once and fetched artifacts; shareable between homes."""
    return Path(os.environ.get("MODELPRESS_CACHE", (home or default_home()) / "cache"))


class ServiceSettings(BaseModel):
    """What a service process needs to start: where it listens and where NATS is."""

    name: str
    listen: str = Field(description="host:port the gRPC server binds")
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS URL; a cluster's servers joined by commas")
    nats_replicas: int = Field(1, ge=1, le=5, description="Copies of each stream, KV bucket and object store this "
                               "process creates (3 on a JetStream cluster of 3 or more)")
    home: Path = Field(default_factory=default_home)
    # Seconds a graceful shutdown waits for in-flight RPCs.
    grace_s: float = 10.0
    # Gateway only: gRPC target of each technique service.
    targets: dict[str, str] = Field(default_factory=dict)
    # Gateway only: how long a job waits for a live replica of a stage's service before it
    # fails with UNAVAILABLE (it says every few seconds that it is waiting).
    replica_wait_s: float = Field(120.0, gt=0)
    # A tokens file (services/common/runtime/auth.py): every RPC but health and reflection needs a token
    # in it. None: the service is open to whoever reaches its port.
    auth_tokens: Path | None = None
    # PEM files of the server's TLS certificate and key; with a client CA, clients must present a
    # certificate it signed (mutual TLS). None: plaintext gRPC.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Gateway only: the CA that signed the technique services' certificates; given, the gateway
    # reaches them over TLS and presents targets_tls_cert/targets_tls_key (else its tls_cert/tls_key),
    # so workers started with --tls-client-ca set to that identity's CA answer the gateway alone.
    # None: plaintext.
    targets_tls_ca: Path | None = None
    # Gateway only: its client certificate and key toward the technique services, apart from the
    # certificate its own clients see (under `modelpress up --auth` those stay plaintext on 127.0.0.1
    # while the workers ask for mutual TLS). None: tls_cert/tls_key, if any.
    targets_tls_cert: Path | None = None
    targets_tls_key: Path | None = None
    # A file holding the mesh's shared secret (services/common/runtime/mesh_tickets.py): the gateway
    # signs every call to a technique service with it, and a technique service given one serves
    # signed calls alone (health and reflection stay public). None: unsigned calls, served to anyone.
    mesh_secret: Path | None = None
    # Refuse to start against a NATS server that lets anyone in (set where auth is on).
    require_nats_auth: bool = False
    checkpoint_every_s: float = Field(60.0, ge=0.0, description="Least seconds between two checkpoints of a "
                                      "calibration walk (GPTQ, AWQ, SparseGPT ...) a retried stage goes on from")
    # Fetched artifacts kept on disk (LRU by bytes; a folder used in the last 10 minutes stays).
    cache_max_bytes: int = Field(20 * 1024**3, gt=0)
    # Gateway only: how long a job's lease lasts unrenewed; a dead gateway's jobs are taken over
    # by another within about this plus a third of the other's lease.
    job_lease_s: float = Field(15.0, ge=1.0, le=600.0)
    # Gateway only: unfinished jobs one tenant may have at once (RESOURCE_EXHAUSTED past it).
    max_jobs_per_tenant: int = Field(32, gt=0)
    max_measurements_per_tenant: int = Field(2, gt=0, description="Evaluate, Compare and RunBenchmark calls one "
                                             "tenant may have running at once across the mesh (RESOURCE_EXHAUSTED "
                                             "past it)")
    max_running_jobs_per_tenant: int = Field(8, ge=0, description="Jobs of one tenant a gateway runs at once; the "
                                                                 "others wait their turn, PENDING (0: no limit)")
    # Gateway only: the largest upload taken (RESOURCE_EXHAUSTED past it); spooled under work_dir.
    max_upload_bytes: int = Field(8 * 1024**3, gt=0)
    # Gateway only: retention (services/gateway/retention.py); tagged artifacts and their jobs are kept.
    job_ttl_s: float = Field(0.0, ge=0.0, description="Seconds a finished job is kept (0: until deleted)")
    artifact_ttl_s: float = Field(0.0, ge=0.0, description="Seconds an upload no job uses is kept (0: until deleted)")
    store_max_bytes: int = Field(0, ge=0, description="Size bound of the artifact store; uploads and jobs are refused "
                                                      "once it is reached (0: unbounded)")
    retention_sweep_s: float = Field(60.0, gt=0.0, description="Seconds between sweeps for what outlived its TTL")
    # Serving only: where its HTTP server binds, and the host its endpoints are published under (the
    # listen host by default; a pod's IP or a Service's DNS name behind 0.0.0.0).
    http_listen: str = Field(f"127.0.0.1:{DEFAULT_SERVING_HTTP_PORT}",
                             description="Serving: host:port of the HTTP server (OIP REST, OpenAI API, metrics)")
    advertise_host: str = Field("", description="Serving: the host its endpoints name (default: the listen host)")

    @field_validator("listen")
    @classmethod
    def _has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"listen must be host:port, got {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> "ServiceSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS first)")
        if (self.targets_tls_cert is None) != (self.targets_tls_key is None):
            raise ValueError("targets_tls_cert and targets_tls_key go together: give both or neither")
        if self.targets_tls_cert is not None and self.targets_tls_ca is None:
            raise ValueError("targets_tls_cert needs targets_tls_ca (a client certificate is sent over TLS only)")
        return self

    @property
    def checks_mesh_tickets(self) -> bool:
        """A technique service with a mesh secret serves the gateway's signed calls alone; the gateway
        uses the same secret to sign, and answers its own clients by their tokens."""
        return self.mesh_secret is not None and self.name in TECHNIQUE_SERVICES.values()

    @property
    def work_dir(self) -> Path:
        """Scratch space for artifacts this process fetched or produced: one folder per process,
        so one that died is told apart and swept at the next start (disk_bounds.sweep_scratch)."""
        return self.home / "work" / self.name / process_tag()

    @property
    def cache_dir(self) -> Path:
        return default_cache(self.home)

    @classmethod
    def from_args(cls, name: str, argv: list[str] | None = None) -> "ServiceSettings":
        """Each field of FLAG_FIELDS from its flag, else from MODELPRESS_<FIELD>, else its declared
        default (declared once, above); pydantic checks them as it checks any value."""
        env = os.environ
        parser = argparse.ArgumentParser(prog=f"modelpress-{name}")
        parser.add_argument("--listen", default=env.get("MODELPRESS_LISTEN", f"127.0.0.1:{DEFAULT_PORTS[name]}"))
        for field in FLAG_FIELDS:
            info = cls.model_fields[field]
            flag = "--" + field.replace("_", "-")
            help_text = f"{info.description or field} (${ENV_PREFIX}{field.upper()})"
            if info.annotation is bool:
                parser.add_argument(flag, action="store_true", default=None, help=help_text)
            else:
                parser.add_argument(flag, default=None, help=help_text)
        args = parser.parse_args(argv)
        given = {}
        for field in FLAG_FIELDS:
            value = getattr(args, field)
            if value is None:
                value = env.get(ENV_PREFIX + field.upper()) or None
            if value is not None:
                given[field] = value
        targets = {
            svc: env.get(f"MODELPRESS_{svc.upper()}_TARGET", f"127.0.0.1:{DEFAULT_PORTS[svc]}")
            for svc in TECHNIQUE_SERVICES.values()
        }
        return cls(name=name, listen=args.listen, targets=targets, **given)


ENV_PREFIX = "MODELPRESS_"
# Settings a flag (--field-name) or MODELPRESS_FIELD_NAME sets; the flag wins.
FLAG_FIELDS = ("nats_url", "nats_replicas", "home", "grace_s", "replica_wait_s", "auth_tokens", "tls_cert", "tls_key",
               "tls_client_ca", "targets_tls_ca", "targets_tls_cert", "targets_tls_key", "mesh_secret",
               "require_nats_auth", "cache_max_bytes", "max_jobs_per_tenant", "max_measurements_per_tenant", "max_running_jobs_per_tenant",
               "max_upload_bytes", "job_lease_s", "job_ttl_s", "artifact_ttl_s", "store_max_bytes",
               "retention_sweep_s", "checkpoint_every_s", "http_listen", "advertise_host")
