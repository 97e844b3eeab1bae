"""Dynamic batching: concurrent requests grouped into one engine call, up to a maximum batch size
and a maximum wait, then answered one by one — and a load generator that measures it against
batch-1 serving.

Any engine fits behind it: `run_batch(ids, mask) -> outputs` with a leading batch axis (an ONNX
Runtime session, an OpenVINO request, a PyTorch model). Sequences of one batch are right-padded
to the longest with mask 0, so an encoder's masked mean pooling is unchanged by the padding.

Padding is compute: a batch costs about batch × longest tokens. So the requests collected in one
window are sorted by length and cut into engine calls whose padded tokens stay within
`max_padding` of their real tokens (measured on MiniLM here: one padded call of 16 pydoc
sentences was slower than serving them one by one).
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


def length_groups(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Indices of `lengths` cut into groups, shortest first, each padded to its longest with at most
    max_padding × its real tokens of padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups:
            candidate = real + lengths[i]
            if (len(groups[-1]) + 1) * lengths[i] <= (1 + max_padding) * candidate:
                groups[-1].append(i)
                real = candidate
                continue
        groups.append([i])
        real = lengths[i]
    return groups


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
        self._queue.put((np.asarray(ids, dtype=np.int64), future))
        return future

    def close(self) -> None:
        self._closed.set()
        self._queue.put(None)
        self._worker.join()

    def _collect(self, first) -> list:
        batch = [first]
        deadline = time.perf_counter() + self.config.max_wait_ms / 1000
        while len(batch) < self.config.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # keep the stop signal for the loop
                break
            batch.append(item)
        return batch

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            collected = self._collect(first)
            for group in length_groups([len(ids) for ids, _ in collected], self.config.max_padding):
                self._run([collected[i] for i in group])

    def _run(self, batch: list) -> None:
        longest = max(len(ids) for ids, _ in batch)
        ids = np.full((len(batch), longest), self.config.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, (request, _) in enumerate(batch):
            ids[row, :len(request)] = request
            mask[row, :len(request)] = 1
        self.batch_sizes.append(len(batch))
        try:
            outputs = self.run_batch(ids, mask)
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the engine's error
            for _, future in batch:
                future.set_exception(exc)
            return
        for row, (request, future) in enumerate(batch):
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
