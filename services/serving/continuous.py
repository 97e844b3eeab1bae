"""Continuous batching for causal LMs: one engine thread decodes every running sequence together,
one token per step, while requests join and leave between steps.

Why: a decoder's step over [batch, 1] new tokens costs about as much for 8 rows as for 1 (the
weights are read once), so serving concurrent requests together multiplies throughput. Grouping
whole requests (`batching.DynamicBatcher`) would make a short answer wait for the longest one in
its group; here a newcomer's prefill joins the running batch at the next step and a finished
sequence leaves at once.

The engine loop (`ContinuousBatcher._run`, one thread that owns the model):

1. Admission: queued requests are admitted in FIFO order while the batch has room
   (`max_batch_size`) and the KV budget allows. A request reserves prompt + max_tokens KV tokens
   for its whole life (so a running sequence can never run out of cache mid-answer); one that
   does not fit waits in the queue, it is not failed. FIFO is strict — a small request does not
   jump a large one at the head — so a large request cannot starve.
2. Prefill: each newcomer runs its own forward over its prompt into a fresh `DynamicCache`,
   which yields its first token, and its cache rows are joined to the batch's cache.
3. Decode: one forward over [batch, 1] (each row's last token) against the batch's cache, then
   each row samples with its own parameters (greedy, temperature, top-p; its own
   `torch.Generator`, so a seeded request draws the same tokens whatever runs beside it).
4. Rows that finished (eos / stop id / max_tokens) or were cancelled leave: their cache rows are
   dropped at once, and their KV reservation is released for the queue.

How per-sequence caches share one batch: the batch holds one transformers `DynamicCache` whose
per-layer keys/values are [batch, heads, T, head_dim], every row right-aligned (left-padded to
the common length T), plus a [batch, T] mask of real tokens. Each step passes that mask (with a
1 for the new token) as the 2D `attention_mask` and each row's own `position_ids` (its real
length), so padding is invisible to the model: rotary/absolute positions are per row, and the
padded keys are masked out. A newcomer's cache is left-padded (or the batch is) to the longer of
the two and concatenated along the batch axis. Since all rows grow by one token a step, T always
equals the longest row's length once leading all-padding columns are trimmed — which happens
whenever rows leave — so padding never grows beyond what the longest current row needs.

Only models whose every layer caches plain keys/values (`DynamicLayer`) fit that scheme: Llama,
Qwen, Mistral, GPT-2 and most decoders. Linear-attention / recurrent layers are refused at
construction. Sliding-window models work, keeping the full history in the cache (masks still
apply the window).

Callbacks: `on_event(token_id, finish_reason)` runs on the engine thread, never under the
engine's lock; each generated token is delivered exactly once, either as (token, None) or, for
the token that ends the sequence, as (token, "stop" | "length"). "cancelled" and "error" come as
(None, reason). A stop / eos token is passed (and counted in completion_tokens, as
`model.generate` keeps it too); the caller decides whether to show it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F

from services.serving.decoders import as_decoder

logger = logging.getLogger(__name__)

OnEvent = Callable[[int | None, str | None], None]
FINISH_REASONS = ("stop", "length", "cancelled", "error")


class QueueFull(RuntimeError):
    """The admission queue holds max_queued requests already: the caller should shed load (HTTP 429/503)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 → greedy
    top_p: float = 1.0
    # Seeds the request's own torch.Generator: the same seed gives the same tokens whatever else runs in the batch.
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # besides the model's eos ids

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens: must be at least 1")
        if not self.temperature >= 0:  # also refuses NaN
            raise ValueError("temperature: must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


@dataclass(frozen=True)
class ContinuousConfig:
    max_batch_size: int = 8  # sequences decoded together per step
    # KV budget in tokens: the sum over running sequences of prompt + max_tokens. The cache tensors hold
    # batch × longest row (rows are left-padded), so the bytes in use can exceed budget × bytes-per-token
    # when lengths differ; `stats()["kv_tokens_padded"]` shows the real footprint.
    max_kv_tokens: int = 4096
    max_queued: int = 256  # waiting requests beyond which submit raises QueueFull

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size: must be at least 1")
        if self.max_kv_tokens < 2:
            raise ValueError("max_kv_tokens: must be at least 2 (a 1-token prompt and 1 new token)")
        if self.max_queued < 0:
            raise ValueError("max_queued: must not be negative")


class Generation:
    """The caller's handle on one request: live counts, timestamps (time.monotonic) and cancel()."""

    def __init__(self, gen_id: int, prompt_tokens: int, wake: Callable[[], None]) -> None:
        self.id = gen_id
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.finish_reason: str | None = None
        self._cancelled = False
        self._done = threading.Event()
        self._wake = wake

    def cancel(self) -> None:
        """The generation leaves the batch (or the queue) at the next step and frees its KV budget; it ends
        with "cancelled" unless it finished first."""
        self._cancelled = True
        self._wake()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the final event was delivered; False on timeout."""
        return self._done.wait(timeout)

    # ---- engine side (every engine behind this contract: the batcher, llamacpp_engine) ----

    def deliver(self, on_event: OnEvent, token: int | None, reason: str | None) -> None:
        """A consumer's callback that raises must not stop the engine: its generation is cancelled instead."""
        try:
            on_event(token, reason)
        except Exception:
            logger.exception("on_event of generation %s raised; cancelling it", self.id)
            self._cancelled = True

    def end(self, on_event: OnEvent, reason: str, token: int | None = None) -> None:
        """Records the finish and delivers the final event (once the caller has released what it held)."""
        self.finish_reason, self.finished_at = reason, time.monotonic()
        try:
            self.deliver(on_event, token, reason)
        finally:
            self._done.set()


@dataclass(eq=False)
class _Request:
    """Engine-side state of one generation."""

    gen: Generation
    prompt: list[int]
    params: SamplingParams
    on_event: OnEvent
    stop_ids: frozenset[int]
    reserve: int  # KV tokens reserved from admission to the end: prompt + max_tokens
    generator: torch.Generator | None = None
    admitted: bool = False
    last_token: int = -1  # sampled but not yet in the cache: the next step's input
    cached: int = 0  # real tokens in this row's cache, which is also the next token's position
    finished: bool = False


class ContinuousBatcher:
    """Continuous batching over a causal LM: a transformers *ForCausalLM (eval mode) or a decoder of
    services/serving/decoders.py (an ONNX graph with its KV cache); see the module docstring."""

    def __init__(self, model, config: ContinuousConfig, *, eos_token_ids: Sequence[int],
                 on_step: Callable[[int, float], None] | None = None) -> None:
        """`on_step(batch size, seconds)` is called from the engine thread after each decode step
        (the replica's metrics)."""
        self._decoder = as_decoder(model)
        self._on_step = on_step
        self._config = config
        self._eos = frozenset(int(t) for t in eos_token_ids)
        self._device = self._decoder.device
        self._vocab = self._decoder.vocab_size
        self._max_positions = self._decoder.max_positions

        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._ids = itertools.count(1)
        self._closed = False
        self._active = 0  # admitted, not finished
        self._reserved = 0  # KV tokens reserved by admitted requests
        self._padded = 0  # batch × T of the cache tensors
        self._steps = 0
        self._prefills = 0
        self._tokens = 0
        self._histogram: Counter[int] = Counter()

        # Engine-thread-only state: the running rows, in cache order, their joint cache and mask.
        self._rows: list[_Request] = []
        self._cache = None  # the decoder's cache: .layers of keys/values [batch, heads, T, dim]
        self._mask: torch.Tensor | None = None  # [batch, T] bool, True on real tokens

        self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
        self._thread.start()

    # ---- caller side (any thread) ----

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, on_event: OnEvent) -> Generation:
        """Queues a request. ValueError if it could never run (empty, out-of-vocab ids, longer than the KV
        budget or the model's context); QueueFull when max_queued requests are waiting already."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids: must not be empty")
        if min(prompt) < 0 or max(prompt) >= self._vocab:
            raise ValueError(f"prompt_ids: token ids must be in [0, {self._vocab})")
        reserve = len(prompt) + params.max_tokens
        if reserve > self._config.max_kv_tokens:
            raise ValueError(
                f"max_tokens: prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the KV budget "
                f"max_kv_tokens={self._config.max_kv_tokens}"
            )
        if self._max_positions is not None and reserve > self._max_positions:
            raise ValueError(
                f"max_tokens: prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) exceeds the model's "
                f"context of {self._max_positions} positions"
            )
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._queue) >= self._config.max_queued:
                raise QueueFull(f"{len(self._queue)} requests queued (max_queued={self._config.max_queued})")
            gen = Generation(next(self._ids), len(prompt), self._notify)
            self._queue.append(_Request(gen, prompt, params, on_event, self._eos | set(params.stop_token_ids),
                                        reserve))
            self._wakeup.notify()
        return gen

    def stats(self) -> dict:
        with self._lock:
            return {
                "running": self._active,
                "queued": len(self._queue),
                "kv_tokens_in_use": self._reserved,
                "kv_tokens_budget": self._config.max_kv_tokens,
                "kv_tokens_padded": self._padded,
                "steps": self._steps,
                "tokens_generated": self._tokens,
                "batch_size_histogram": dict(sorted(self._histogram.items())),
                "prefills": self._prefills,
            }

    def close(self) -> None:
        """Stops the engine; queued and running generations end with "cancelled"."""
        with self._lock:
            self._closed = True
            self._wakeup.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _notify(self) -> None:
        with self._lock:
            self._wakeup.notify()

    # ---- engine thread ----

    def _run(self) -> None:
        # inference_mode is thread-local: the engine thread enters it for its whole life.
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._closed and not self._queue and not self._rows:
                        self._wakeup.wait()
                    if self._closed:
                        break
                    dropped = self._take_cancelled_queued()
                    admitted = self._admit()
                try:
                    self._iteration(dropped, admitted)
                except Exception:
                    # A bug or an unexpected failure outside the guarded forwards (e.g. out of memory while
                    # trimming): the batch's state cannot be trusted, so its generations end with "error"
                    # rather than the engine thread dying and leaving every caller waiting.
                    logger.exception("engine step failed; ending the running generations")
                    self._abandon_batch(admitted)
            self._shutdown()

    def _iteration(self, dropped: list[_Request], admitted: list[_Request]) -> None:
        for req in dropped:
            self._finish(req, "cancelled")
        for req in admitted:
            self._prefill(req)
        # After the prefills, so that a cancel from any callback so far is honoured before the next forward.
        self._drop_rows([r for r in self._rows if r.gen._cancelled], "cancelled")
        if self._rows:
            self._decode_step()

    def _abandon_batch(self, admitted: list[_Request]) -> None:
        rows = self._rows
        self._rows, self._cache, self._mask = [], None, None
        self._update_padded()
        for req in [*rows, *admitted]:  # _finish skips those that had already ended
            self._finish(req, "error")

    def _take_cancelled_queued(self) -> list[_Request]:
        """(under the lock) Cancelled requests still in the queue: they leave without ever running."""
        dropped = [r for r in self._queue if r.gen._cancelled]
        for req in dropped:
            self._queue.remove(req)
        return dropped

    def _admit(self) -> list[_Request]:
        """(under the lock) Pops queued requests in FIFO order while the batch has room and their KV
        reservation fits the budget. The head waits rather than being skipped, so it cannot starve."""
        admitted = []
        while self._queue and self._active < self._config.max_batch_size:
            head = self._queue[0]
            if self._reserved + head.reserve > self._config.max_kv_tokens:
                break
            self._queue.popleft()
            head.admitted = True
            self._active += 1
            self._reserved += head.reserve
            admitted.append(head)
        return admitted

    def _prefill(self, req: _Request) -> None:
        """The newcomer's own forward over its prompt: its cache and its first token; it then joins the batch."""
        if req.gen._cancelled:
            self._finish(req, "cancelled")
            return
        try:
            cache = self._decoder.new_cache()
            logits = self._decoder.prefill(torch.tensor([req.prompt], device=self._device), cache)
            req.generator = _generator(req.params.seed, self._device)
            token = _sample(logits, req.params, req.generator)
        except Exception:
            logger.exception("prefill failed for generation %s", req.gen.id)
            self._finish(req, "error")
            return
        with self._lock:
            self._prefills += 1
        req.cached = len(req.prompt)
        if (reason := self._take_token(req, token)) is None:
            self._join(req, cache)
        else:
            self._finish(req, reason, token)

    def _decode_step(self) -> None:
        """One forward over every running row's last token, then per-row sampling; finished rows leave."""
        rows = self._rows
        ids = torch.tensor([[r.last_token] for r in rows], device=self._device)
        positions = torch.tensor([[r.cached] for r in rows], device=self._device)
        mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        started = time.perf_counter()
        try:
            logits = self._decoder.decode(ids, mask, positions, self._cache)
        except Exception:
            # The joint cache may be half-updated (some layers appended, some not): nothing in it can be trusted.
            logger.exception("decode step failed; ending its %d generations", len(rows))
            self._drop_rows(list(rows), "error")
            return
        self._mask = mask
        with self._lock:
            self._padded = mask.numel()
            self._steps += 1
            self._histogram[len(rows)] += 1
        if self._on_step is not None:
            self._on_step(len(rows), time.perf_counter() - started)
        greedy = logits.argmax(dim=-1).tolist()  # one batched argmax serves every greedy row
        leaving, failed = [], []
        for i, req in enumerate(rows):
            req.cached += 1
            try:
                token = greedy[i] if req.params.temperature == 0 else _sample(logits[i], req.params, req.generator)
            except Exception:  # e.g. NaN logits in that row: only it fails
                logger.exception("sampling failed for generation %s", req.gen.id)
                failed.append(req)
                continue
            if (reason := self._take_token(req, token)) is not None:
                leaving.append((req, reason, token))
        self._drop_rows(failed, "error")
        # Rows leave before their final event: a caller woken by it sees their cache gone from the stats.
        self._drop_rows([req for req, _, _ in leaving], None)
        for req, reason, token in leaving:
            self._finish(req, reason, token)

    def _take_token(self, req: _Request, token: int) -> str | None:
        """Counts a new token and delivers it while the sequence goes on (None); the finish reason when
        the token ends it, which the caller delivers with _finish once the row is out of the batch."""
        gen = req.gen
        gen.completion_tokens += 1
        if gen.first_token_at is None:
            gen.first_token_at = time.monotonic()
        with self._lock:
            self._tokens += 1
        if token in req.stop_ids:
            return "stop"
        if gen.completion_tokens >= req.params.max_tokens:
            return "length"
        req.last_token = token
        req.gen.deliver(req.on_event, token, None)
        return None

    def _join(self, req: _Request, cache) -> None:
        """Adds a prefilled row to the batch: both sides left-padded to the longer length, then stacked."""
        if not self._rows:
            self._rows, self._cache = [req], cache
            self._mask = torch.ones(1, req.cached, dtype=torch.bool, device=self._device)
            self._update_padded()
            return
        width = max(self._mask.shape[1], req.cached)
        try:
            # Built aside and swapped in whole: if this fails (out of memory), the batch is left as it was.
            stacked = [
                (torch.cat([_left_pad(joint.keys, width), _left_pad(new.keys, width)]),
                 torch.cat([_left_pad(joint.values, width), _left_pad(new.values, width)]))
                for joint, new in zip(self._cache.layers, cache.layers, strict=True)
            ]
        except Exception:
            logger.exception("joining generation %s to the batch failed", req.gen.id)
            self._finish(req, "error")
            return
        for layer, (keys, values) in zip(self._cache.layers, stacked):
            layer.keys, layer.values = keys, values
        new_mask = torch.ones(1, req.cached, dtype=torch.bool, device=self._device)
        self._mask = torch.cat([_left_pad_mask(self._mask, width), _left_pad_mask(new_mask, width)])
        self._rows.append(req)
        self._update_padded()

    def _drop_rows(self, rows: list[_Request], reason: str | None) -> None:
        """Removes rows from the batch (their cache rows go at once), trims padding columns no row needs any
        more, and ends the rows with `reason` (None: they already ended)."""
        if not rows:
            return
        gone = set(map(id, rows))
        keep = [i for i, r in enumerate(self._rows) if id(r) not in gone]
        if keep:
            index = torch.tensor(keep, device=self._device)
            mask = self._mask.index_select(0, index)
            # Rows are right-aligned, so the first column any survivor uses is where its longest row starts.
            start = int(mask.any(dim=0).to(torch.int8).argmax())
            for layer in self._cache.layers:
                layer.keys = layer.keys.index_select(0, index)[:, :, start:]
                layer.values = layer.values.index_select(0, index)[:, :, start:]
            self._mask = mask[:, start:]
            self._rows = [self._rows[i] for i in keep]
        else:
            self._rows, self._cache, self._mask = [], None, None
        self._update_padded()
        if reason is not None:
            for req in rows:
                self._finish(req, reason)

    def _update_padded(self) -> None:
        with self._lock:
            self._padded = 0 if self._mask is None else self._mask.numel()

    def _finish(self, req: _Request, reason: str, token: int | None = None) -> None:
        """Ends a generation once: releases its reservation first (so the callback already sees the budget
        freed), then delivers the final event."""
        if req.finished:
            return
        req.finished = True
        with self._lock:
            if req.admitted:
                self._active -= 1
                self._reserved -= req.reserve
        req.gen.end(req.on_event, reason, token)

    def _shutdown(self) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for req in queued:
            self._finish(req, "cancelled")
        self._drop_rows(list(self._rows), "cancelled")


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    """Each request draws from its own generator, so its tokens do not depend on its neighbours' draws."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # nondeterministic
    else:
        generator.manual_seed(seed)
    return generator


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a row's logits: argmax at temperature 0, else softmax(logits / T) restricted to the
    smallest set of most likely tokens whose mass reaches top_p."""
    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1:
        # Stable sort: equal probabilities keep a fixed order, so a seed gives the same draw every time.
        probs, order = probs.sort(descending=True, stable=True)
        # Keep a token while the mass before it is below top_p (the most likely one always stays).
        probs = probs * ((probs.cumsum(-1) - probs) < params.top_p)
        return int(order[torch.multinomial(probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, heads, T, dim] → [batch, heads, width, dim] with zeros in front (masked out by the caller)."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0)) if states.shape[-2] < width else states


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0), value=False) if mask.shape[1] < width else mask
