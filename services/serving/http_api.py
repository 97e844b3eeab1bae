"""The replica's HTTP front end (aiohttp): the Open Inference Protocol's REST API (`/v2/...`, with
Triton's binary tensor extension, as `tritonclient.http` speaks it), OpenAI's API for the models it
fits (`/v1/models`, `/v1/completions`, `/v1/chat/completions` with server-sent events when
`stream` is set, `/v1/embeddings` for encoders) and Prometheus metrics at `/metrics`.

Errors are the protocols' own: OIP answers `{"error": message}` with 400 / 404 / 503, OpenAI's
routes `{"error": {"message", "type", "param", "code"}}`, so each client raises its usual exception
type (openai.BadRequestError, NotFoundError; tritonclient's InferenceServerException).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.runtime import auth
from services.serving import oip_models
from services.serving.deployment import QueueFull
from services.serving.encoders import ServingError
from services.serving.oip_tensors import TensorError, http_response, parse_http_request
from services.serving.replica import (
    SERVER_NAME,
    SERVER_VERSION,
    DeploymentLoading,
    DeploymentNotFound,
    Replica,
    figures_of,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
# The largest body aiohttp reads at all; each deployment's max_request_bytes is checked below it.
MAX_BODY = 64 * 1024 * 1024
UNSUPPORTED_OPENAI = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None, "suffix": None,
                      "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "tools": None,
                      "functions": None, "response_format": None}


PUBLIC_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")
REPLICA = web.AppKey("replica", Replica)
PRINCIPAL = web.RequestKey("principal", auth.Principal)


def build_app(replica: Replica, tokens=None) -> web.Application:
    """`tokens` (auth.TokenTable): every route but health and metrics needs a known bearer token, and a
    tenant's token reaches only its tenant's deployments (the openai client sends its api_key so)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_authenticated(tokens)])
    app[REPLICA] = replica
    app.add_routes([
        web.get("/v2/health/live", _live), web.get("/v2/health/ready", _ready), web.get("/v2", _server_metadata),
        web.get("/v2/models/{name}", _model_metadata), web.get("/v2/models/{name}/versions/{version}", _model_metadata),
        web.get("/v2/models/{name}/ready", _model_ready), web.get("/v2/models/{name}/stats", _model_stats),
        web.get("/v2/models/{name}/versions/{version}/ready", _model_ready),
        web.post("/v2/models/{name}/infer", _oip_infer), web.post("/v2/models/{name}/versions/{version}/infer", _oip_infer),
        web.get("/v1/models", _openai_models), web.post("/v1/completions", _completions),
        web.post("/v1/chat/completions", _chat_completions), web.post("/v1/embeddings", _embeddings),
        web.get("/metrics", _metrics),
    ])
    return app


def _authenticated(tokens):
    @web.middleware
    async def middleware(request: web.Request, handler):
        request[PRINCIPAL] = auth.OPEN
        if tokens is not None and request.path not in PUBLIC_PATHS:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            principal = tokens.principal(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
            if principal is None:
                message = "no credentials: send 'Authorization: Bearer <token>'" if not token.strip() else \
                    "the bearer token is not known to this mesh"
                body = {"error": {"message": message, "type": "authentication_error", "param": None,
                                  "code": "invalid_api_key"}} if request.path.startswith("/v1/") else {"error": message}
                return web.json_response(body, status=401)
            request[PRINCIPAL] = principal
        return await handler(request)
    return middleware


def _deployment(request: web.Request, name: str):
    return request.app[REPLICA].get(name, request[PRINCIPAL])


# --- Open Inference Protocol, REST -------------------------------------------------------------

def _oip_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def _ready(request: web.Request) -> web.Response:
    ready = request.app[REPLICA].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


async def _model_metadata(request: web.Request) -> web.Response:
    try:
        deployment = _deployment(request, request.match_info["name"])
    except DeploymentNotFound as exc:
        return _oip_error(404, str(exc))
    except DeploymentLoading as exc:
        return _oip_error(503, str(exc))
    tensors = lambda specs: [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
    return web.json_response({"name": deployment.name, "versions": ["1"], "platform": oip_models.PLATFORM,
                              "inputs": tensors(oip_models.inputs_of(deployment)),
                              "outputs": tensors(oip_models.outputs_of(deployment))})


async def _model_ready(request: web.Request) -> web.Response:
    try:
        ready = bool(_deployment(request, request.match_info["name"]))
    except (DeploymentNotFound, DeploymentLoading):
        ready = False
    return web.json_response({"name": request.match_info["name"], "ready": ready}, status=200 if ready else 404)


async def _model_stats(request: web.Request) -> web.Response:
    """The deployment's figures (Triton's statistics path, modelpress's content): requests by outcome,
    latency percentiles, batch sizes, KV occupancy, and the shadow's agreement with the original."""
    try:
        deployment = _deployment(request, request.match_info["name"])
    except DeploymentNotFound as exc:
        return _oip_error(404, str(exc))
    except DeploymentLoading as exc:
        return _oip_error(503, str(exc))
    return web.json_response(figures_of(deployment))


async def _oip_infer(request: web.Request) -> web.Response:
    start = time.perf_counter()
    try:
        deployment = _deployment(request, request.match_info["name"])
    except DeploymentNotFound as exc:
        return _oip_error(404, str(exc))
    except DeploymentLoading as exc:
        return _oip_error(503, str(exc))
    outcome = "error"
    try:
        body = await request.read()
        _check_size(len(body), deployment)
        header = request.headers.get(HEADER_LENGTH)
        parsed = parse_http_request(body, int(header) if header else None,
                                    max_bytes=deployment.config.max_request_bytes)
        outputs = await oip_models.infer(deployment, parsed.inputs, parsed.parameters)
        wanted = parsed.output_binary_flags(outputs)  # TensorError naming an output the model lacks
        content, header_length = http_response(deployment.name, "1", parsed.id,
                                               {k: outputs[k] for k in wanted}, wanted)
        outcome = "ok"
        headers = {HEADER_LENGTH: str(header_length)} if header_length is not None else {}
        return web.Response(body=content, headers=headers,
                            content_type="application/octet-stream" if header_length is not None
                            else "application/json")
    except (ServingError, TensorError, ValueError) as exc:
        outcome = "invalid"
        return _oip_error(400, str(exc))
    except QueueFull as exc:
        outcome = "unavailable"
        return _oip_error(503, str(exc))
    finally:
        deployment.metrics.request("oip-rest", outcome, time.perf_counter() - start)


def _check_size(size: int, deployment) -> None:
    if size > deployment.config.max_request_bytes:
        raise ServingError(f"the request body of {size:,} bytes is larger than this deployment's max_request_bytes "
                           f"({deployment.config.max_request_bytes:,})")


# --- OpenAI ------------------------------------------------------------------------------------

class OpenAiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def response(self) -> web.Response:
        return web.json_response({"error": {"message": str(self), "type": self.kind, "param": self.param,
                                             "code": self.code}}, status=self.status)


def _openai(protocol: str, kind: str | None) -> Callable:
    """Wraps an OpenAI route: the body parsed, the model looked up (and of the right kind), errors
    answered in OpenAI's shape, the request counted."""
    def wrap(handler: Callable[[web.Request, object, dict], Awaitable[web.StreamResponse]]):
        async def route(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            deployment, outcome = None, "error"
            try:
                body = await _json_body(request)
                deployment = _openai_model(request, body, kind)
                _check_size(request.content_length or 0, deployment)
                response = await handler(request, deployment, body)
                outcome = "ok"
                return response
            except OpenAiError as exc:
                outcome = "invalid"
                return exc.response()
            except (ServingError, ValueError) as exc:
                outcome = "invalid"
                return OpenAiError(400, str(exc)).response()
            except QueueFull as exc:
                outcome = "unavailable"
                return OpenAiError(503, str(exc), "server_overloaded").response()
            finally:
                if deployment is not None:
                    deployment.metrics.request(protocol, outcome, time.perf_counter() - start)
        return route
    return wrap


async def _json_body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise OpenAiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise OpenAiError(400, "the body is not a JSON object")
    return body


def _openai_model(request: web.Request, body: dict, kind: str | None):
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAiError(400, "model: required (a name from /v1/models)", param="model")
    try:
        deployment = _deployment(request, name)
    except DeploymentNotFound as exc:
        raise OpenAiError(404, str(exc), "not_found_error", "model", "model_not_found") from None
    except DeploymentLoading as exc:  # the openai client retries a 503 by itself
        raise OpenAiError(503, str(exc), "service_unavailable", "model", "model_loading") from None
    if kind is not None and deployment.kind != kind:
        route = "/v1/embeddings" if deployment.kind == "encoder" else "/v1/completions or /v1/chat/completions"
        what = "an encoder" if deployment.kind == "encoder" else "a causal LM"
        raise OpenAiError(400, f"{name} is {what}: use {route}", param="model")
    return deployment


async def _openai_models(request: web.Request) -> web.Response:
    replica, caller = request.app[REPLICA], request[PRINCIPAL]
    visible = [n for n in sorted(replica.deployments) if caller.operator or replica.tenants.get(n, "") == caller.tenant]
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": int(replica.started_at), "owned_by": "modelpress"}
        for name in visible]})


def _generation_request(deployment, body: dict, prompt: list[int], chat: bool):
    for key, allowed in UNSUPPORTED_OPENAI.items():
        if key in body and body[key] not in (allowed, None) and not (key == "logit_bias" and body[key] == {}):
            raise OpenAiError(400, f"{key}: only {allowed!r} is supported", param=key)
    values = {k: body[k] for k in ("temperature", "top_p", "seed", "stop") if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens") if chat else None
    max_tokens = max_tokens if max_tokens is not None else body.get("max_tokens")
    values["max_tokens"] = deployment.default_max_tokens(prompt, chat) if max_tokens is None else max_tokens
    return oip_models.sampling(values)


def _usage(prompt: list[int], completion: int) -> dict:
    return {"prompt_tokens": len(prompt), "completion_tokens": completion, "total_tokens": len(prompt) + completion}


@_openai("openai-completions", "causal-lm")
async def _completions(request: web.Request, deployment, body: dict) -> web.StreamResponse:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise OpenAiError(400, "prompt: a string is expected", param="prompt")
    ids = deployment.encode(prompt)
    params, stop = _generation_request(deployment, body, ids, chat=False)
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.get("stream"):
        def chunk(text: str, reason: str | None) -> dict:
            return {"id": ident, "object": "text_completion", "created": created, "model": deployment.name,
                    "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]}
        return await _sse(request, deployment, ids, params, stop, chunk, body, "text_completion")
    text, reason, count = await deployment.complete(ids, params, stop)
    return web.json_response({"id": ident, "object": "text_completion", "created": created, "model": deployment.name,
                              "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
                              "usage": _usage(ids, count)})


@_openai("openai-chat", "causal-lm")
async def _chat_completions(request: web.Request, deployment, body: dict) -> web.StreamResponse:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAiError(400, "messages: a non-empty list is expected", param="messages")
    ids = deployment.encode_chat([_message(m, i) for i, m in enumerate(messages)])
    params, stop = _generation_request(deployment, body, ids, chat=True)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.get("stream"):
        first = [True]

        def chunk(text: str, reason: str | None) -> dict:
            delta = {"role": "assistant", "content": text} if first[0] else ({"content": text} if text else {})
            first[0] = False
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": deployment.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]}
        return await _sse(request, deployment, ids, params, stop, chunk, body, "chat.completion.chunk")
    text, reason, count = await deployment.complete(ids, params, stop)
    return web.json_response({"id": ident, "object": "chat.completion", "created": created, "model": deployment.name,
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                           "finish_reason": reason, "logprobs": None}],
                              "usage": _usage(ids, count)})


def _message(message, index: int) -> dict:
    if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "developer"):
        raise OpenAiError(400, f"messages[{index}]: an object with a role of system, user, assistant or developer "
                               "is expected", param="messages")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text is served
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise OpenAiError(400, f"messages[{index}].content: only text parts are supported", param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise OpenAiError(400, f"messages[{index}].content: a string is expected", param="messages")
    role = "system" if message["role"] == "developer" else message["role"]
    return {"role": role, "content": content}


async def _sse(request: web.Request, deployment, ids: list[int], params, stop, chunk: Callable[[str, str | None], dict],
               body: dict, obj: str) -> web.StreamResponse:
    """Server-sent events, one per text delta, then (when asked) a usage chunk, then [DONE]. Leaving
    early (the client went away) cancels the generation."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    completion = 0
    # Closed at once when the client goes away (a write fails): the generation is cancelled then, not
    # whenever the abandoned generator is collected.
    async with contextlib.aclosing(deployment.stream(ids, params, stop)) as deltas:
        async for delta in deltas:
            completion = delta.completion_tokens
            await response.write(f"data: {json.dumps(chunk(delta.text, delta.finish_reason))}\n\n".encode())
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {**chunk("", None), "choices": [], "usage": _usage(ids, completion)}
        await response.write(f"data: {json.dumps(usage)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@_openai("openai-embeddings", "encoder")
async def _embeddings(request: web.Request, deployment, body: dict) -> web.Response:
    given = body.get("input")
    if isinstance(given, str):
        rows = deployment.tokenize([given])
    elif isinstance(given, list) and given and all(isinstance(t, str) for t in given):
        rows = deployment.tokenize(given)
    elif isinstance(given, list) and given and all(isinstance(t, int) for t in given):
        rows = [given]
    elif isinstance(given, list) and given and all(isinstance(r, list) and r and all(isinstance(t, int) for t in r)
                                                   for r in given):
        rows = given
    else:
        raise OpenAiError(400, "input: a string, a list of strings, or token ids are expected", param="input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise OpenAiError(400, "encoding_format: float or base64", param="encoding_format")
    if body.get("dimensions") not in (None, deployment.hidden_size):
        raise OpenAiError(400, f"dimensions: this model gives {deployment.hidden_size}", param="dimensions")
    vectors = await deployment.embed(rows)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64"
             else v.astype(np.float64).tolist()} for i, v in enumerate(vectors)]
    tokens = sum(len(r) for r in rows)
    return web.json_response({"object": "list", "data": data, "model": deployment.name,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _metrics(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    for deployment in replica.deployments.values():
        figures = figures_of(deployment)  # the gauges read at scrape time
        deployment.metrics.occupancy(figures.get("kv_tokens_in_use", 0), figures.get("queued", 0))
    return web.Response(body=generate_latest(replica.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
