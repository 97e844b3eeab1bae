"""Who is calling: API tokens checked on every gateway RPC, each naming a tenant and a role.

The operator keeps a tokens file (JSON) of token hashes, never the tokens themselves:

    {"tokens": [{"name": "acme-ci", "tenant": "acme", "role": "user", "sha256": "<hex>"}]}

`modelpress token create` appends an entry and prints the token once. Clients send
`authorization: Bearer <token>`. A mesh started without a tokens file is open: every caller is
the unnamed operator (the local default, on 127.0.0.1 only).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from pydantic import BaseModel, Field, ValidationError

from services.common.runtime.rpc_guards import replace_behaviour, responses_of

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
TOKEN_PREFIX = "mp_"
# Reachable without a token: load balancers and probes ask for health, tools list the API.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthConfigError(ValueError):
    """The tokens file cannot be used (unreadable, malformed, a tenant name out of shape)."""


class TokenEntry(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    tenant: str = Field(pattern=TENANT_PATTERN)
    role: Literal["user", "operator"] = "user"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TokensFile(BaseModel):
    tokens: list[TokenEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """The caller of one RPC. An operator sees and manages every tenant's jobs and artifacts."""

    tenant: str
    operator: bool
    name: str = ""

    @property
    def label(self) -> str:
        return f"tenant {self.tenant!r}" if self.tenant else "the open mesh"


OPEN = Principal(tenant="", operator=True, name="open")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("modelpress_principal", default=OPEN)


def current() -> Principal:
    """The caller of the RPC being served (OPEN on a mesh without tokens)."""
    return _current.get()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_tokens(path: Path) -> TokensFile:
    try:
        return TokensFile.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise AuthConfigError(f"tokens file {path} does not exist") from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise AuthConfigError(f"tokens file {path}: {exc}") from None


def add_token(path: Path, *, name: str, tenant: str, role: str = "user") -> str:
    """Appends a new token's hash to the file (created 0600 if missing); returns the token."""
    table = read_tokens(path) if path.exists() else TokensFile()
    if any(entry.name == name for entry in table.tokens):
        raise AuthConfigError(f"tokens file {path} already has a token named {name!r}")
    token = new_token()
    try:
        table.tokens.append(TokenEntry(name=name, tenant=tenant, role=role, sha256=token_digest(token)))
    except ValidationError as exc:
        raise AuthConfigError(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(table.model_dump_json(indent=2))
    os.chmod(scratch, 0o600)
    scratch.replace(path)
    return token


class TokenTable:
    """The tokens file as a lookup, re-read when it changes (tokens are added without a restart)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._by_digest: dict[str, TokenEntry] = {}
        self._load()

    def _load(self) -> None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            raise AuthConfigError(f"tokens file {self._path} does not exist") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._by_digest = {entry.sha256: entry for entry in read_tokens(self._path).tokens}
            self._stamp = stamp

    def principal(self, token: str) -> Principal | None:
        try:
            self._load()
        except AuthConfigError:
            pass  # a file being rewritten: the last good table answers
        entry = self._by_digest.get(token_digest(token))
        if entry is None:
            return None
        return Principal(tenant=entry.tenant, operator=entry.role == "operator", name=entry.name)


def bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a missing or unknown token; otherwise serves the call as its principal."""

    def __init__(self, table: TokenTable) -> None:
        self._table = table

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _refusal(handler, "no credentials: send 'authorization: Bearer <token>'")
        principal = self._table.principal(token) if token else None
        if principal is None:
            return _refusal(handler, "the bearer token is not known to this gateway")
        return _as_principal(handler, principal)


def _refusal(handler, message: str):
    def refusing(behaviour, requests_stream: bool, responses_stream: bool):
        if responses_stream:
            async def refuse_stream(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                yield  # pragma: no cover - makes this an async generator like the handler it replaces
            return refuse_stream

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        return refuse

    return replace_behaviour(handler, refusing)


def _as_principal(handler, principal: Principal):
    def serving(behaviour, requests_stream: bool, responses_stream: bool):
        if responses_stream:
            async def stream(request, context):
                _current.set(principal)  # each RPC runs in its own task: this stays with the call
                async for response in responses_of(behaviour, request, context):
                    yield response
            return stream

        async def unary(request, context):
            _current.set(principal)
            return await behaviour(request, context)
        return unary

    return replace_behaviour(handler, serving)
