"""The dynamic batcher: groups concurrent requests, answers each with its own rows, pads without
changing results, passes engine errors to every waiting caller, and beats batch-1 under load."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.serving.batching import BatchingConfig, DynamicBatcher, compare_batching, length_groups


def _echo_engine(calls: list):
    """ids -> ids * 2 (per token), recording each call's batch shape."""
    def run(ids, mask):
        calls.append(ids.shape)
        return (ids * 2) * mask

    return run


def test_concurrent_requests_are_grouped_and_answered_with_their_own_rows():
    calls: list = []
    batcher = DynamicBatcher(_echo_engine(calls), BatchingConfig(max_batch_size=4, max_wait_ms=200,
                                                                 max_padding=float("inf")))
    requests = [list(range(1, n + 1)) for n in (3, 5, 2, 4)]
    barrier = threading.Barrier(4)
    results = [None] * 4

    def client(i):
        barrier.wait()
        results[i] = batcher.submit(requests[i]).result(timeout=10)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert calls == [(4, 5)]  # one call, padded to the longest request
    for request, result in zip(requests, results):
        assert result.tolist() == [2 * x for x in request]


def test_a_lone_request_waits_at_most_max_wait_and_errors_reach_every_caller():
    calls: list = []
    batcher = DynamicBatcher(_echo_engine(calls), BatchingConfig(max_batch_size=8, max_wait_ms=20))
    start = time.perf_counter()
    assert batcher.submit([7]).result(timeout=5).tolist() == [14]
    assert time.perf_counter() - start < 1.0 and calls == [(1, 1)]
    batcher.close()

    def broken(ids, mask):
        raise RuntimeError("engine fell over")

    batcher = DynamicBatcher(broken, BatchingConfig(max_batch_size=2, max_wait_ms=50))
    futures = [batcher.submit([1]), batcher.submit([2])]
    for future in futures:
        with pytest.raises(RuntimeError, match="fell over"):
            future.result(timeout=5)
    batcher.close()
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=0)


def test_dynamic_batching_beats_batch_1_when_each_call_has_a_fixed_cost():
    def engine(ids, mask):  # 20 ms per call whatever the batch: what batching amortizes
        time.sleep(0.02)
        return ids.astype(np.float32)

    batch1, dynamic = compare_batching(engine, [[1, 2, 3]] * 48, clients=8,
                                       config=BatchingConfig(max_batch_size=8, max_wait_ms=5))
    assert batch1.mean_batch_size == 1 and dynamic.mean_batch_size > 3
    assert dynamic.requests_per_s > 2.5 * batch1.requests_per_s
    assert dynamic.latency_p95_ms < batch1.latency_p95_ms


def test_a_window_is_cut_into_calls_that_bound_padding():
    lengths = [40, 3, 5, 42, 4, 38, 90]
    groups = length_groups(lengths, max_padding=0.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [[lengths[i] for i in g] for g in groups] == [[3, 4, 5], [38, 40, 42], [90]]
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert len(group) * max(lengths[i] for i in group) <= 1.25 * real
    assert length_groups(lengths, max_padding=float("inf")) == [sorted(range(7), key=lambda i: lengths[i])]
    with pytest.raises(ValueError, match="max_padding"):
        BatchingConfig(max_padding=-1)
