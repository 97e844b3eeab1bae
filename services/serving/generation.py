"""Causal LMs served: prompts (or chat messages through the model's own chat template) in, text out as
it is generated, from the continuous batcher (services/serving/continuous.py).

Text is decoded from all tokens generated so far, so a character split across tokens is emitted once
whole; a stop string ends the generation where it starts (the string itself is not returned), and
text that could still become a stop string is held back until it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.contract.deployment_config import DeploymentConfig
from services.common.models.artifact_format import detect_format
from services.serving.continuous import ContinuousBatcher, ContinuousConfig, SamplingParams
from services.serving.continuous import QueueFull as EngineQueueFull
from services.serving.deployment import QueueFull
from services.serving.encoders import ServingError
from services.serving.serving_metrics import DeploymentMetrics

SERVED_FORMATS = ("hf-safetensors", "compressed-tensors", "packed-safetensors", "GGUF", "ONNX")
# OpenVINO's causal-LM IR is stateful (make_stateful: the KV cache lives inside the infer request), so rows
# of a shared batch cannot be stacked and dropped as the batcher does.
REFUSED = {"OpenVINO IR": "its KV cache lives inside OpenVINO's infer request (a stateful model), which continuous "
                          "batching cannot share between sequences; serve the ONNX, GGUF or safetensors artifact"}
CHAT_DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Delta:
    text: str
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error" on the last delta
    completion_tokens: int = 0


@dataclass
class CausalDeployment:
    name: str
    folder: Path
    config: DeploymentConfig
    format: str
    tokenizer: object  # transformers' tokenizer: the chat template and decoding
    batcher: object  # continuous.ContinuousBatcher (PyTorch, ONNX), or llamacpp_engine.LlamaCppEngine for GGUF
    metrics: DeploymentMetrics
    context_length: int
    model: object = None  # the torch model the batcher runs (the shadow compares its logits); None for engines
    kind: str = "causal-lm"
    shadow: object | None = None  # shadow.Shadow: the original, run on a sampled share of prompts

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True).input_ids
        return self._checked(ids)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ServingError(f"{self.name}: the model has no chat template; use /v1/completions")
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # noqa: BLE001 - the template's own complaint about the messages
            raise ServingError(f"messages: the model's chat template refused them ({exc})") from None
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        return self._checked(list(ids))

    def _checked(self, ids: list[int]) -> list[int]:
        if not ids:
            raise ServingError("the prompt is empty")
        if len(ids) > self.config.max_input_tokens:
            raise ServingError(f"the prompt has {len(ids)} tokens, more than this deployment's max_input_tokens "
                               f"({self.config.max_input_tokens})")
        return ids

    def default_max_tokens(self, prompt: Sequence[int], chat: bool) -> int:
        room = min(self.context_length, self.config.max_kv_tokens) - len(prompt)
        return max(1, min(room, CHAT_DEFAULT_MAX_TOKENS if chat else 16))

    def check_room(self, prompt: Sequence[int], max_tokens: int) -> None:
        if len(prompt) + max_tokens > self.context_length:
            raise ServingError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) is past the model's "
                               f"context of {self.context_length} tokens")
        if len(prompt) + max_tokens > self.config.max_kv_tokens:
            raise ServingError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) is past this "
                               f"deployment's KV-cache budget of {self.config.max_kv_tokens} tokens")

    async def stream(self, prompt: Sequence[int], params: SamplingParams, stop: Sequence[str] = ()
                     ) -> AsyncIterator[Delta]:
        """Text deltas as tokens arrive; the last one carries the finish reason. Leaving the iteration
        early (a client that went away) cancels the generation."""
        self.check_room(prompt, params.max_tokens)
        if self.shadow is not None:
            self.shadow.after_prompt(self.model, prompt)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        arrived = time.perf_counter()

        def on_event(token: int | None, reason: str | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (token, reason))

        try:
            generation = self.batcher.submit(list(prompt), params, on_event)
        except EngineQueueFull as exc:
            raise QueueFull(f"{self.name}: {exc}") from None
        except ValueError as exc:
            raise ServingError(str(exc)) from None
        tokens: list[int] = []
        sent = ""  # text already yielded
        finished = False
        try:
            while not finished:
                token, reason = await events.get()
                if token is not None:
                    if not tokens:
                        self.metrics.first_token(time.perf_counter() - arrived)
                    tokens.append(token)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                cut = _first_stop(text, stop, len(sent))
                if cut is not None:
                    text, reason = text[:cut], "stop"
                    generation.cancel()
                elif reason is None:
                    text = text[:len(text) - _held_back(text, stop)]
                    if text.endswith("\ufffd"):
                        continue  # a character split across tokens: wait for the rest
                finished = reason is not None
                delta = text[len(sent):] if text.startswith(sent) else ""
                sent = text if text.startswith(sent) else sent
                if delta or finished:
                    yield Delta(delta, reason if finished else None, len(tokens))
        finally:
            if not finished:
                generation.cancel()
            self.metrics.generated(len(tokens))

    async def complete(self, prompt: Sequence[int], params: SamplingParams, stop: Sequence[str] = ()
                       ) -> tuple[str, str, int]:
        """(text, finish reason, completion tokens) once the generation ends."""
        parts, reason, count = [], "stop", 0
        async with contextlib.aclosing(self.stream(prompt, params, stop)) as deltas:
            async for delta in deltas:
                parts.append(delta.text)
                reason, count = delta.finish_reason or reason, delta.completion_tokens
        return "".join(parts), reason, count

    def close(self) -> None:
        self.batcher.close()
        if self.shadow is not None:
            self.shadow.close()


def _first_stop(text: str, stop: Sequence[str], searched_to: int) -> int | None:
    """Where the earliest stop string starts in `text` (searching from a little before what was already
    sent, as a stop string may straddle it), or None."""
    found = [i for s in stop if s and (i := text.find(s, max(0, searched_to - len(s)))) >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if s.startswith(text[-k:]):
                longest = k
                break
    return longest


def load_causal_lm(name: str, folder: Path, config: DeploymentConfig, model_config: dict,
                   metrics: DeploymentMetrics) -> CausalDeployment:
    fmt = detect_format(folder)
    if fmt not in SERVED_FORMATS:
        why = REFUSED.get(fmt, "this replica has no engine for it")
        raise ServingError(f"{Path(folder).name}: a causal LM in {fmt} is not served: {why}")
    from services.common.models import modelio

    # The tokenizer files travel beside every artifact's weights (GGUF too): text and chat templates are
    # turned into ids here, whichever engine runs them.
    tokenizer = modelio.load_tokenizer(folder)
    eos = _eos_ids(folder, model_config, tokenizer)
    context = int(model_config.get("max_position_embeddings") or model_config.get("n_positions") or 2048)
    engine_config = ContinuousConfig(max_batch_size=config.max_batch_size, max_kv_tokens=config.max_kv_tokens,
                                     max_queued=config.max_queued)
    model = None
    if fmt == "GGUF":
        from services.serving.llamacpp_engine import LlamaCppEngine

        engine = LlamaCppEngine(_gguf_file(folder), engine_config, eos_token_ids=eos, threads=config.threads,
                                context_length=context, on_step=metrics.batch)
    elif fmt == "ONNX":
        from services.serving.decoders import OnnxDecoder

        try:
            decoder = OnnxDecoder(folder, config.threads, int(model_config.get("vocab_size") or 0), context)
        except TypeError as exc:
            raise ServingError(str(exc)) from None
        engine = ContinuousBatcher(decoder, engine_config, eos_token_ids=eos, on_step=metrics.batch)
    else:
        import torch

        torch.set_num_threads(config.threads)
        model = modelio.load_model(folder).eval()
        engine = ContinuousBatcher(model, engine_config, eos_token_ids=eos, on_step=metrics.batch)
    return CausalDeployment(name=name, folder=folder, config=config, format=fmt, tokenizer=tokenizer,
                            batcher=engine, metrics=metrics, context_length=context, model=model)


def _gguf_file(folder: Path) -> Path:
    """The GGUF file the optimizer's manifest names (gguf_model.json), else the folder's only one."""
    manifest = Path(folder) / "gguf_model.json"
    if manifest.exists():
        return Path(folder) / json.loads(manifest.read_text())["file"]
    files = sorted(Path(folder).glob("*.gguf"))
    if len(files) != 1:
        raise ServingError(f"{Path(folder).name}: {len(files)} .gguf files and no gguf_model.json naming one")
    return files[0]


def _eos_ids(folder: Path, model_config: dict, tokenizer) -> list[int]:
    """End-of-sequence ids from generation_config.json (chat models list their end-of-turn token
    there), the config and the tokenizer."""
    ids: set[int] = set()
    generation = Path(folder) / "generation_config.json"
    for source in (json.loads(generation.read_text()) if generation.exists() else {}, model_config):
        value = source.get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
