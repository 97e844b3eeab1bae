"""Dynamic batching: concurrent requests grouped into one engine call, up to a maximum batch size
and a maximum wait, then answered one by one — and a load generator that measures it against
batch-1 serving.

Any engine fits behind it: `run_batch(ids, mask) -> outputs` with a leading batch axis (an ONNX
Runtime session, an OpenVINO request, a PyTorch model). Sequences of one batch are right-padded
to the longest with mask 0, so an encoder's masked mean pooling is unchanged by the padding.

Padding is compute: a batch costs about batch × longest tokens (measured on MiniLM INT8 here: calls
of 16 pydoc sentences in arrival order ran slower per sentence than serving them one by one, and
1.7x faster once grouped by length). So the batcher keeps a pool of waiting requests and cuts each
engine call from it around the oldest request (which bounds its wait): the largest run of requests
of neighbouring lengths, up to `max_batch_size`, whose padded tokens stay within `max_padding` of
their real tokens. The pool is larger than one call whenever load is, so calls fill with requests
of like length instead of whatever arrived together.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

RunBatch = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    pad_id: int = 0
    # Padded tokens allowed per call, as a share of its real tokens (inf: one call per window).
    max_padding: float = 0.25

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size: must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms: must not be negative")
        if self.max_padding < 0:
            raise ValueError("max_padding: must not be negative")


def group_around(lengths: Sequence[int], anchor: int, max_batch_size: int, max_padding: float) -> list[int]:
    """Indices of `lengths` for one engine call that includes `anchor`: the most requests of
    neighbouring lengths (fewest padded tokens among equals), at most max_batch_size, padded to their
    longest with at most max_padding × their real tokens of padding."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    prefix = np.concatenate([[0], np.cumsum(sizes)])
    at = order.index(anchor)
    best, best_key = (at, at + 1), (1, 0)
    for lo in range(max(0, at - max_batch_size + 1), at + 1):
        for hi in range(at + 1, min(len(order), lo + max_batch_size) + 1):
            real = prefix[hi] - prefix[lo]
            padded = (hi - lo) * sizes[hi - 1]
            if padded > (1 + max_padding) * real:
                break  # a longer request only adds padding to this window
            key = (hi - lo, -(padded - real))
            if key > best_key:
                best, best_key = (lo, hi), key
    return [order[k] for k in range(*best)]


class DynamicBatcher:
    """One worker thread owns the engine; `submit` may be called from any number of threads."""

    def __init__(self, run_batch: RunBatch, config: BatchingConfig) -> None:
        self.run_batch = run_batch
        self.config = config
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._serve, name="dynamic-batcher", daemon=True)
        self._worker.start()

    def submit(self, ids: Sequence[int]) -> Future:
        if self._closed.is_set():
            raise RuntimeError("the batcher is closed")
        if len(ids) == 0:
            raise ValueError("ids: a request needs at least one token")
        future: Future = Future()
        self._queue.put((np.asarray(ids, dtype=np.int64), future, time.perf_counter()))
        return future

    def close(self) -> None:
        self._closed.set()
        self._queue.put(None)
        self._worker.join()

    def _serve(self) -> None:
        pending: list = []  # (ids, future, arrived), oldest first
        stopping = False  # close() was called: what is pending is still served, nothing more is read
        while pending or not stopping:
            if not pending:
                item = self._queue.get()
                if item is None:
                    break
                pending.append(item)
            # Wait for more while the oldest request may (its max_wait_ms) and fewer than a full call are waiting;
            # then take whatever else is queued, without waiting. (Waiting for a full call of like lengths instead
            # left the engine idle: measured here, fewer requests/s than this at 32 clients.)
            deadline = pending[0][2] + self.config.max_wait_ms / 1000
            while not stopping:
                remaining = deadline - time.perf_counter()
                try:
                    if len(pending) < self.config.max_batch_size and remaining > 0:
                        item = self._queue.get(timeout=remaining)
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    pending.append(item)
            chosen = group_around([len(ids) for ids, _, _ in pending], 0, self.config.max_batch_size,
                                  self.config.max_padding)
            self._run([pending[i] for i in chosen])
            taken = set(chosen)
            pending = [item for i, item in enumerate(pending) if i not in taken]

    def _run(self, batch: list) -> None:
        longest = max(len(ids) for ids, _, _ in batch)
        ids = np.full((len(batch), longest), self.config.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, (request, _, _) in enumerate(batch):
            ids[row, :len(request)] = request
            mask[row, :len(request)] = 1
        self.batch_sizes.append(len(batch))
        try:
            outputs = self.run_batch(ids, mask)
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the engine's error
            for _, future, _ in batch:
                future.set_exception(exc)
            return
        for row, (request, future, _) in enumerate(batch):
            future.set_result(outputs[row, :len(request)])


@dataclass
class LoadFigures:
    mode: str
    requests: int
    clients: int
    seconds: float
    requests_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    mean_batch_size: float


def serve_under_load(run_batch: RunBatch, requests: Sequence[Sequence[int]], *, clients: int,
                     config: BatchingConfig, mode: str) -> LoadFigures:
    """`clients` threads each send their share of `requests` one after another (closed loop);
    every request's latency is from submit to answer."""
    batcher = DynamicBatcher(run_batch, config)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(mine: Sequence[Sequence[int]]) -> None:
        for ids in mine:
            start = time.perf_counter()
            batcher.submit(ids).result()
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

    shares = [requests[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for done in [pool.submit(client, share) for share in shares]:
            done.result()
    seconds = time.perf_counter() - start
    batcher.close()
    return LoadFigures(mode=mode, requests=len(requests), clients=clients, seconds=seconds,
                       requests_per_s=len(requests) / seconds, latency_p50_ms=float(np.percentile(latencies, 50)),
                       latency_p95_ms=float(np.percentile(latencies, 95)),
                       mean_batch_size=float(np.mean(batcher.batch_sizes)))


def compare_batching(run_batch: RunBatch, requests: Sequence[Sequence[int]], *, clients: int,
                     config: BatchingConfig) -> list[LoadFigures]:
    """Batch-1 serving and dynamic batching under the same closed-loop load, batch-1 first."""
    single = BatchingConfig(max_batch_size=1, max_wait_ms=0, pad_id=config.pad_id, max_padding=0)
    run_batch(*_warm(requests[0]))
    return [serve_under_load(run_batch, requests, clients=clients, config=single, mode="batch-1"),
            serve_under_load(run_batch, requests, clients=clients, config=config,
                             mode=f"dynamic (max {config.max_batch_size}, {config.max_wait_ms:g} ms, "
                                  f"padding ≤ {config.max_padding:g})")]


def _warm(ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    row = np.asarray(ids, dtype=np.int64)[None]
    return row, np.ones_like(row)
