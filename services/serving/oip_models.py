"""What a deployment looks like through the Open Inference Protocol (v2): its tensors' names, types
and shapes, and one inference from decoded input tensors to output tensors — shared by the gRPC and
the REST front ends, which only translate the wire.

Encoders take a BYTES `text` tensor ([batch], UTF-8; the server tokenizes, so a caller needs no
tokenizer) or `input_ids` (+ `attention_mask`) and answer `embedding` [batch, hidden] FP32, pooled as
the model's sentence-transformers modules say. Causal LMs take `text` and answer `text_output`
(BYTES), with the request's parameters max_tokens, temperature, top_p, seed and stop; streamed
(`stream`), a causal LM answers one prompt with a response per piece of text as it is generated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import numpy as np

from services.serving.encoders import ServingError

PLATFORM = "modelpress"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


def inputs_of(deployment) -> list[TensorSpec]:
    if deployment.kind == "encoder":
        return [TensorSpec("text", "BYTES", (-1,)), TensorSpec("input_ids", "INT64", (-1, -1)),
                TensorSpec("attention_mask", "INT64", (-1, -1))]
    return [TensorSpec("text", "BYTES", (-1,))]


def outputs_of(deployment) -> list[TensorSpec]:
    if deployment.kind == "encoder":
        return [TensorSpec("embedding", "FP32", (-1, deployment.hidden_size or -1))]
    return [TensorSpec("text_output", "BYTES", (-1,))]


async def infer(deployment, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, object]
                ) -> dict[str, np.ndarray]:
    _check_inputs(deployment, inputs)
    if deployment.kind == "encoder":
        return {"embedding": await deployment.embed(_encoder_rows(deployment, inputs))}
    texts = _texts(inputs)
    params, stop = sampling(parameters)
    prompts = [deployment.encode(t) for t in texts]
    done = await asyncio.gather(*(deployment.complete(p, params, stop) for p in prompts))
    return {"text_output": np.array([text.encode() for text, _, _ in done], dtype=object)}


async def stream(deployment, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, object]
                 ) -> AsyncIterator[tuple[dict[str, np.ndarray], dict | None]]:
    """A streamed request's responses as (outputs, final): `final` is None while more follow, and on
    the last one the figures that end it (a causal LM's finish_reason and completion_tokens). A causal
    LM takes one prompt and answers each new piece of text; other models answer once."""
    if deployment.kind != "causal-lm":
        yield await infer(deployment, inputs, parameters), {}
        return
    _check_inputs(deployment, inputs)
    texts = _texts(inputs)
    if len(texts) != 1:
        raise ServingError(f"text: a streamed generation takes one prompt (shape [1]), got {len(texts)}; send one "
                           "request per prompt on the stream")
    params, stop = sampling(parameters)
    prompt = deployment.encode(texts[0])
    async with contextlib.aclosing(deployment.stream(prompt, params, stop)) as deltas:
        async for delta in deltas:
            final = None if delta.finish_reason is None else {"finish_reason": delta.finish_reason,
                                                              "completion_tokens": delta.completion_tokens}
            yield {"text_output": np.array([delta.text.encode()], dtype=object)}, final


def _check_inputs(deployment, inputs: Mapping[str, np.ndarray]) -> None:
    known = {spec.name for spec in inputs_of(deployment)}
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ServingError(f"{deployment.name} has no input {', '.join(map(repr, unknown))} "
                           f"(it takes {', '.join(sorted(known))})")


def _encoder_rows(deployment, inputs: Mapping[str, np.ndarray]) -> list[list[int]]:
    if "text" in inputs:
        if "input_ids" in inputs:
            raise ServingError("give either text or input_ids, not both")
        return deployment.tokenize(_texts(inputs))
    if "input_ids" not in inputs:
        raise ServingError("no input: give text (BYTES) or input_ids (INT64)")
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ServingError(f"input_ids: expected an integer tensor [batch, tokens], got {ids.dtype} "
                           f"{list(ids.shape)}")
    mask = inputs.get("attention_mask")
    if mask is not None and mask.shape != ids.shape:
        raise ServingError(f"attention_mask: shape {list(mask.shape)} differs from input_ids' {list(ids.shape)}")
    return [row[m != 0].tolist() if mask is not None else row.tolist()
            for row, m in zip(ids.astype(np.int64), mask if mask is not None else ids)]


def _texts(inputs: Mapping[str, np.ndarray]) -> list[str]:
    if "text" not in inputs:
        raise ServingError("no input: give text (BYTES)")
    text = inputs["text"]
    if text.dtype != object:
        raise ServingError(f"text: expected a BYTES tensor, got {text.dtype}")
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in text.reshape(-1)]
    except UnicodeDecodeError:
        raise ServingError("text: not UTF-8") from None


def sampling(parameters: Mapping[str, object]):
    """(SamplingParams, stop strings) from the request's generation parameters (OIP request parameters
    or a JSON body's fields)."""
    from services.serving.continuous import SamplingParams  # torch: causal-LM replicas only

    allowed = {"max_tokens", "temperature", "top_p", "seed", "stop"}
    values = {k: v for k, v in parameters.items() if k in allowed}
    stop = values.pop("stop", ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ServingError("stop: up to 4 strings")
    for key, kind in (("max_tokens", int), ("seed", int)):
        if key in values and (not isinstance(values[key], int) or isinstance(values[key], bool)):
            raise ServingError(f"{key}: an integer is expected, got {values[key]!r}")
    for key in ("temperature", "top_p"):
        if key in values and (not isinstance(values[key], (int, float)) or isinstance(values[key], bool)):
            raise ServingError(f"{key}: a number is expected, got {values[key]!r}")
    try:
        return SamplingParams(**values), stop
    except (TypeError, ValueError) as exc:
        raise ServingError(str(exc)) from None
