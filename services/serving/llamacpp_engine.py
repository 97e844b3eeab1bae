"""GGUF deployments run by llama.cpp (llama-cpp-python, the optional `llamacpp` extra), behind the
same contract as the continuous batcher (`submit(prompt, params, on_event) -> Generation`,
`stats()`, `close()`), so generation.CausalDeployment, the OpenAI and OIP front ends, metrics and
admission work unchanged.

Why one sequence at a time: llama-cpp-python's `Llama` holds one sequence in its context; the
parallel slots of llama.cpp's own server are not reachable through it. Requests wait FIFO in a
bounded queue (QueueFull past max_queued, as the batcher does), and a prompt that shares a prefix
with the previous one reuses its KV cache (llama.cpp's prefix match). Sampling follows the
batcher's parameters exactly: temperature 0 is greedy; otherwise softmax(logits / T) cut to top_p,
with llama.cpp's own top-k / min-p / repetition penalties turned off.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.serving.continuous import ContinuousConfig, Generation, OnEvent, QueueFull, SamplingParams
from services.serving.encoders import ServingError

logger = logging.getLogger(__name__)

EXTRA = "llamacpp"


class EngineMissing(ServingError):
    """The artifact's engine is not installed on this replica (FAILED_PRECONDITION); names the extra."""


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise EngineMissing(f"GGUF deployments are run by llama.cpp, which this serving replica lacks: install "
                            f"the {EXTRA!r} extra (pip install 'modelpress[{EXTRA}]', which builds "
                            "llama-cpp-python) or deploy the compressed-tensors / ONNX artifact") from None
    return llama_cpp


@dataclass(eq=False)
class _Request:
    gen: Generation
    prompt: list[int]
    params: SamplingParams
    on_event: OnEvent
    stop_ids: frozenset[int]


class LlamaCppEngine:
    def __init__(self, gguf_path: Path, config: ContinuousConfig, *, eos_token_ids: Sequence[int], threads: int,
                 context_length: int, on_step: Callable[[int, float], None] | None = None) -> None:
        llama_cpp = _llama_cpp()
        self._config = config
        self._n_ctx = min(config.max_kv_tokens, context_length)
        self._llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=self._n_ctx, n_threads=threads,
                                    n_threads_batch=threads, n_batch=min(512, self._n_ctx), verbose=False)
        self._vocab = self._llm.n_vocab()
        self._eos = frozenset(int(t) for t in eos_token_ids) | {int(self._llm.token_eos())}
        self._on_step = on_step
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._ids = 0
        self._closed = False
        self._running: _Request | None = None
        self._steps = self._prefills = self._tokens = 0
        self._histogram: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name="llamacpp-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, on_event: OnEvent) -> Generation:
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids: must not be empty")
        if min(prompt) < 0 or max(prompt) >= self._vocab:
            raise ValueError(f"prompt_ids: token ids must be in [0, {self._vocab})")
        if len(prompt) + params.max_tokens > self._n_ctx:
            raise ValueError(f"max_tokens: prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the "
                             f"llama.cpp context of {self._n_ctx} tokens")
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._queue) >= self._config.max_queued:
                raise QueueFull(f"{len(self._queue)} requests queued (max_queued={self._config.max_queued})")
            self._ids += 1
            gen = Generation(self._ids, len(prompt), self._notify)
            self._queue.append(_Request(gen, prompt, params, on_event, self._eos | set(params.stop_token_ids)))
            self._wakeup.notify()
        return gen

    def stats(self) -> dict:
        with self._lock:
            running = self._running
            return {
                "running": int(running is not None),
                "queued": len(self._queue),
                "kv_tokens_in_use": self._llm.n_tokens if running is not None else 0,
                "kv_tokens_budget": self._n_ctx,
                "steps": self._steps,
                "tokens_generated": self._tokens,
                "batch_size_histogram": dict(sorted(self._histogram.items())),
                "prefills": self._prefills,
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wakeup.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
            self._llm.close()

    def _notify(self) -> None:
        with self._lock:
            self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._queue:
                    self._wakeup.wait()
                if self._closed:
                    break
                req = self._running = self._queue.popleft()
            try:
                self._generate(req)
            except Exception:
                logger.exception("llama.cpp generation %s failed", req.gen.id)
                self._finish(req, "error")
            finally:
                with self._lock:
                    self._running = None
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for req in queued:
            self._finish(req, "cancelled")

    def _generate(self, req: _Request) -> None:
        gen, params = req.gen, req.params
        if gen._cancelled:
            self._finish(req, "cancelled")
            return
        self._llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
        tokens = self._llm.generate(req.prompt, temp=params.temperature, top_p=params.top_p, top_k=0, min_p=0.0,
                                    typical_p=1.0, repeat_penalty=1.0)
        started = time.perf_counter()
        try:
            for token in tokens:
                now = time.perf_counter()
                with self._lock:
                    if gen.completion_tokens == 0:
                        self._prefills += 1
                    else:
                        self._steps += 1
                        self._histogram[1] += 1
                    self._tokens += 1
                if gen.completion_tokens and self._on_step is not None:
                    self._on_step(1, now - started)
                started = now
                gen.completion_tokens += 1
                if gen.first_token_at is None:
                    gen.first_token_at = time.monotonic()
                if token in req.stop_ids:
                    self._finish(req, "stop", token)
                    return
                if gen.completion_tokens >= params.max_tokens:
                    self._finish(req, "length", token)
                    return
                req.gen.deliver(req.on_event, token, None)
                if gen._cancelled or self._closed:
                    self._finish(req, "cancelled")
                    return
        finally:
            tokens.close()

    def _finish(self, req: _Request, reason: str, token: int | None = None) -> None:
        if not req.gen.done:
            req.gen.end(req.on_event, reason, token)
