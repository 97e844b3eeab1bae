"""The dynamic batcher: groups concurrent requests, answers each with its own rows, pads without
changing results, passes engine errors to every waiting caller, and beats batch-1 under load."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.serving.batching import BatchingConfig, DynamicBatcher, compare_batching, group_around


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


def test_a_call_is_cut_around_the_oldest_request_from_neighbouring_lengths_within_the_padding_bound():
    lengths = [40, 3, 5, 42, 4, 38, 90, 41, 39]
    # The oldest (40) goes with its neighbours in length, not with what arrived beside it.
    chosen = group_around(lengths, 0, max_batch_size=8, max_padding=0.25)
    assert sorted(lengths[i] for i in chosen) == [38, 39, 40, 41, 42]
    assert group_around(lengths, 0, max_batch_size=3, max_padding=0.25) in ([0, 3, 7], [8, 0, 7], [5, 8, 0])
    assert sorted(lengths[i] for i in group_around(lengths, 0, 3, 0.25)) in ([39, 40, 41], [40, 41, 42],
                                                                               [38, 39, 40])
    assert sorted(lengths[i] for i in group_around(lengths, 1, max_batch_size=8, max_padding=0.25)) == [3, 4, 5]
    assert group_around(lengths, 6, max_batch_size=8, max_padding=0.25) == [6]  # 90 alone would pad too much
    assert len(group_around(lengths, 6, max_batch_size=8, max_padding=float("inf"))) == 8
    for anchor in range(len(lengths)):
        group = group_around(lengths, anchor, 4, 0.25)
        real = sum(lengths[i] for i in group)
        assert anchor in group and len(group) <= 4
        assert len(group) * max(lengths[i] for i in group) <= 1.25 * real
    with pytest.raises(ValueError, match="max_padding"):
        BatchingConfig(max_padding=-1)


def test_under_load_calls_fill_with_requests_of_like_length():
    """While the engine runs, requests pool; the next calls take them by length, not by arrival: two very
    different lengths arriving interleaved go out in calls of one length each, as full as allowed."""
    calls: list = []
    release = threading.Event()

    def engine(ids, mask):
        release.wait(10)  # the first call holds the engine while the others arrive
        calls.append(ids.shape)
        return ids * mask

    batcher = DynamicBatcher(engine, BatchingConfig(max_batch_size=4, max_wait_ms=1))
    futures = [batcher.submit([1] * 30)]
    time.sleep(0.1)  # the first call has started
    futures += [batcher.submit([1] * (3 if i % 2 else 30)) for i in range(1, 16)]
    release.set()
    for i, future in enumerate(futures):
        assert len(future.result(timeout=10)) == (3 if i % 2 else 30)
    batcher.close()
    assert calls[0] == (1, 30) and sorted(calls[1:]) == [(3, 30), (4, 3), (4, 3), (4, 30)]


def test_close_serves_what_is_pending_first():
    release = threading.Event()
    calls: list = []

    def slow(ids, mask):
        release.wait(5)
        calls.append(ids.shape)
        return ids

    batcher = DynamicBatcher(slow, BatchingConfig(max_batch_size=1, max_wait_ms=0))
    futures = [batcher.submit([i + 1]) for i in range(3)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    release.set()
    closing.join(10)
    assert [f.result(timeout=1).tolist() for f in futures] == [[1], [2], [3]] and len(calls) == 3
