"""Continuous batching: a sequence decoded beside others gives exactly the tokens it gets alone from
`model.generate`, whatever joins or leaves around it; the batch really batches; admission keeps the KV
reservation within budget by queueing; stop ids, max_tokens, cancellation, errors and close end
generations with the right reason; seeded sampling does not depend on the neighbours.

Tiny random models (fp32) built here: Llama (rotary positions, GQA) and GPT-2 (learned absolute
positions), so the per-row positions and the cache stacking are not Llama-specific.

To make "mid-generation" and "queued" deterministic on a loaded machine, requests are submitted from
inside another request's callback (which runs on the engine thread between steps), and a `_Gate`
request holds the engine in its callback while the test queues several requests at once.
"""

from __future__ import annotations

import functools
import threading

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from services.serving.continuous import ContinuousBatcher, ContinuousConfig, QueueFull, SamplingParams

VOCAB = 1000
EOS = 2
# Weights larger than the default 0.02: attention then really depends on which keys are visible and at which
# positions (near-uniform attention would hide a wrong mask or position), and argmax margins stay wide.
INIT = 0.2
WAIT = 30  # seconds: generous, the runs take milliseconds


def _llama():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=0, initializer_range=INIT)
    return LlamaForCausalLM(config).eval()


def _gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256,
                        bos_token_id=1, eos_token_id=EOS, pad_token_id=0, initializer_range=INIT)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture(scope="module")
def gpt2():
    return _gpt2()


@pytest.fixture
def make_batcher():
    """Batchers closed after the test, whatever happens."""
    made = []

    def make(model, eos=(EOS,), **config):
        batcher = ContinuousBatcher(model, ContinuousConfig(**config), eos_token_ids=eos)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def _prompt(n: int, start: int = 10) -> list[int]:
    return [(start + 37 * i) % (VOCAB - 10) + 10 for i in range(n)]


def _generate(model, prompt, max_new_tokens) -> list[int]:
    """What the sequence gets alone: transformers' own greedy decoding (which keeps the eos if it stops)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=0)
    return out[0, len(prompt):].tolist()


class _Recorder:
    """An on_event that keeps every event; `then` runs after a given token count (e.g. to submit more)."""

    def __init__(self, batcher=None, then: dict | None = None):
        self.events: list[tuple[int | None, str | None]] = []
        self.stats: list[dict] = []
        self._batcher = batcher
        self._then = then or {}

    def __call__(self, token, reason):
        self.events.append((token, reason))
        if self._batcher is not None:
            self.stats.append(self._batcher.stats())
        action = self._then.get(len(self.tokens)) if reason is None else None
        if action is not None:
            action()

    @property
    def tokens(self) -> list[int]:
        return [t for t, _ in self.events if t is not None]

    @property
    def reason(self) -> str | None:
        return self.events[-1][1] if self.events else None


class _Gate:
    """A one-token request whose final callback blocks the engine thread until released, so the test can
    queue requests that the engine then sees all at once."""

    def __init__(self, batcher):
        self.held = threading.Event()
        self.release = threading.Event()
        batcher.submit([5], SamplingParams(max_tokens=1, temperature=0), self._on_event)
        assert self.held.wait(WAIT)

    def _on_event(self, token, reason):
        self.held.set()
        assert self.release.wait(WAIT)


def _greedy_no_eos(model, prompt, n) -> list[int]:
    """Greedy tokens with nothing stopping early, by full forwards without a cache (for batchers without eos
    ids; generate() can only suppress an eos, not ignore it)."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def _wait_all(gens):
    for gen in gens:
        assert gen.wait(WAIT), f"generation {gen.id} did not finish"


# ---- parameters ----

@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
])
def test_sampling_params_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_batch_size": 0}, "max_batch_size"), ({"max_kv_tokens": 1}, "max_kv_tokens"),
    ({"max_queued": -1}, "max_queued"),
])
def test_config_is_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ContinuousConfig(**kwargs)


def test_impossible_requests_are_refused_at_submit(llama, make_batcher):
    batcher = make_batcher(llama, max_kv_tokens=64)
    greedy = SamplingParams(max_tokens=10, temperature=0)
    with pytest.raises(ValueError, match="max_tokens"):  # 60 + 10 > the whole KV budget: could never run
        batcher.submit(_prompt(60), greedy, lambda *_: None)
    with pytest.raises(ValueError, match="prompt_ids"):
        batcher.submit([], greedy, lambda *_: None)
    with pytest.raises(ValueError, match="prompt_ids"):
        batcher.submit([3, VOCAB], greedy, lambda *_: None)
    big = make_batcher(llama, max_kv_tokens=4096)
    with pytest.raises(ValueError, match="context"):  # beyond max_position_embeddings=256
        big.submit(_prompt(200), SamplingParams(max_tokens=100, temperature=0), lambda *_: None)
    assert batcher.stats()["queued"] == big.stats()["queued"] == 0


# ---- correctness beside other sequences ----

@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_tokens_equal_generate_alone_while_others_join_and_leave(family, request, make_batcher):
    model = request.getfixturevalue(family)
    # (prompt length, max_tokens): different lengths so rows are padded differently as they join and leave.
    specs = [(30, 24), (3, 20), (12, 8), (1, 16), (21, 6), (7, 12)]
    prompts = [_prompt(n, start=11 * i) for i, (n, _) in enumerate(specs)]
    expected = [_generate(model, p, m) for p, (_, m) in zip(prompts, specs)]
    assert min(len(e) for e in expected[:4]) >= 5, "an early eos would break the submission chain below"

    batcher = make_batcher(model, max_batch_size=4)
    gens: dict[int, object] = {}
    recs = [_Recorder(batcher) for _ in specs]

    def submit(*indices):
        def go():
            for i in indices:
                gens[i] = batcher.submit(prompts[i], SamplingParams(max_tokens=specs[i][1], temperature=0), recs[i])
        return go

    # Staggered: 1 and 2 join when 0 has 5 tokens, 3 when 1 has 3, 4 and 5 when 3 has 2 (5 waits for a free row).
    recs[0]._then = {5: submit(1, 2)}
    recs[1]._then = {3: submit(3)}
    recs[3]._then = {2: submit(4, 5)}
    submit(0)()
    assert gens[0].wait(WAIT)
    _wait_all([gens[i] for i in range(len(specs))])

    for i, rec in enumerate(recs):
        assert rec.tokens == expected[i], f"sequence {i} differs from generate()"
        assert rec.reason == ("stop" if expected[i][-1] == EOS else "length")
        assert gens[i].completion_tokens == len(expected[i]) and gens[i].prompt_tokens == specs[i][0]
        assert gens[i].first_token_at >= gens[i].submitted_at
    # Sequences really ran together: 1 and 2 joined while 0 was running, up to the 4 rows allowed.
    stats = batcher.stats()
    assert max(stats["batch_size_histogram"]) == 4
    assert recs[1].stats[0]["running"] >= 2
    assert stats["prefills"] == len(specs)
    assert stats["tokens_generated"] == sum(map(len, expected))
    assert (stats["running"], stats["queued"], stats["kv_tokens_in_use"], stats["kv_tokens_padded"]) == (0, 0, 0, 0)


def test_concurrent_clients_are_decoded_in_one_batch(llama, make_batcher):
    batcher = make_batcher(llama, max_batch_size=8)
    prompts = [_prompt(n, start=n) for n in (4, 9, 2, 15, 6, 11)]
    barrier = threading.Barrier(len(prompts))
    recs = [_Recorder() for _ in prompts]
    gens = [None] * len(prompts)

    def client(i):
        barrier.wait()
        gens[i] = batcher.submit(prompts[i], SamplingParams(max_tokens=12, temperature=0), recs[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait_all(gens)

    for p, rec in zip(prompts, recs):
        assert rec.tokens == _generate(llama, p, 12)
    stats = batcher.stats()
    hist = stats["batch_size_histogram"]
    assert max(hist) > 1
    # Fewer decode steps than serving one at a time would take (each prefill gives the first token).
    assert stats["steps"] == sum(hist.values()) < sum(len(r.tokens) - 1 for r in recs)
    assert (stats["running"], stats["kv_tokens_in_use"], stats["kv_tokens_padded"]) == (0, 0, 0)


def test_padding_is_trimmed_when_the_longest_sequence_leaves(llama, make_batcher):
    batcher = make_batcher(llama, eos=())
    long, short = _prompt(40), _prompt(2, start=99)
    rec_short = _Recorder(batcher)
    gen = {}

    def submit_short():
        gen["short"] = batcher.submit(short, SamplingParams(max_tokens=15, temperature=0), rec_short)

    rec_long = _Recorder(batcher, then={1: submit_short})
    long_gen = batcher.submit(long, SamplingParams(max_tokens=4, temperature=0), rec_long)
    _wait_all([long_gen])
    _wait_all([gen["short"]])

    assert rec_long.reason == "length" and rec_short.reason == "length"
    assert rec_short.tokens == _greedy_no_eos(llama, short, 15)
    # While both ran, the short row was left-padded to the long one's length...
    assert max(s["kv_tokens_padded"] for s in rec_short.stats) >= 2 * 41
    # ...and once the long one left, the cache shrank to the short row alone: its prompt + tokens fed so far
    # (13 when its 14th token arrives); its last token comes after the row left the batch.
    assert rec_short.stats[-2]["kv_tokens_padded"] == len(short) + 15 - 2
    assert rec_short.stats[-1]["kv_tokens_padded"] == 0


# ---- admission ----

def test_kv_budget_queues_requests_and_is_never_exceeded(llama, make_batcher):
    # Each request reserves 10 + 10 = 20 KV tokens: a budget of 45 fits two at a time.
    batcher = make_batcher(llama, max_batch_size=8, max_kv_tokens=45)
    prompts = [_prompt(10, start=7 * i) for i in range(5)]
    recs = [_Recorder(batcher) for _ in prompts]
    gate = _Gate(batcher)
    gens = [batcher.submit(p, SamplingParams(max_tokens=10, temperature=0), r) for p, r in zip(prompts, recs)]
    gate.release.set()
    _wait_all(gens)

    for p, rec in zip(prompts, recs):
        assert rec.tokens == _generate(llama, p, 10)
    seen = [s for rec in recs for s in rec.stats]
    assert max(s["kv_tokens_in_use"] for s in seen) <= 45
    assert max(s["running"] for s in seen) == 2
    assert recs[0].stats[0]["queued"] == 3  # the three others waited, they were not refused
    # FIFO, and a queued request starts only after a running one freed its reservation.
    starts = [g.first_token_at for g in gens]
    assert starts == sorted(starts)
    assert starts[2] >= min(gens[0].finished_at, gens[1].finished_at)
    assert max(batcher.stats()["batch_size_histogram"]) == 2
    assert batcher.stats()["kv_tokens_in_use"] == 0


def test_queue_full_raises_and_close_cancels_queued_and_running(llama, make_batcher):
    batcher = make_batcher(llama, max_batch_size=1, max_queued=2, eos=())
    recs = [_Recorder() for _ in range(3)]
    gate = _Gate(batcher)
    gens = [batcher.submit(_prompt(4), SamplingParams(max_tokens=100, temperature=0), r) for r in recs[:2]]
    with pytest.raises(QueueFull):
        batcher.submit(_prompt(4), SamplingParams(max_tokens=5), recs[2])
    assert issubclass(QueueFull, RuntimeError)

    # The first runs (the second waits: one row only); at its third token its callback closes the batcher, from
    # the engine thread itself (which must not deadlock), then the test closes it again and joins the engine.
    recs[0]._then = {3: batcher.close}
    gate.release.set()
    assert gens[0].wait(WAIT)
    batcher.close()
    assert [r.reason for r in recs[:2]] == ["cancelled", "cancelled"]
    assert recs[0].events[-1] == (None, "cancelled") and len(recs[0].tokens) == 3
    assert recs[1].events == [(None, "cancelled")]
    assert all(g.done for g in gens)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_prompt(4), SamplingParams(), lambda *_: None)


# ---- how sequences end ----

def test_stop_ids_eos_and_max_tokens_end_with_the_right_reason(llama, make_batcher):
    prompt = _prompt(6, start=3)
    free = make_batcher(llama, eos=())  # no eos: runs to max_tokens
    ref = _Recorder()
    free.submit(prompt, SamplingParams(max_tokens=20, temperature=0), ref).wait(WAIT)
    assert ref.reason == "length" and len(ref.tokens) == 20 and ref.events[-1] == (ref.tokens[-1], "length")
    # A token that first appears after a few others, to stop on.
    k = next(i for i in range(2, 20) if ref.tokens[i] not in ref.tokens[:i])
    stop = ref.tokens[k]

    rec = _Recorder()
    free.submit(prompt, SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(stop,)), rec).wait(WAIT)
    assert rec.tokens == ref.tokens[:k + 1] and rec.events[-1] == (stop, "stop")

    with_eos = make_batcher(llama, eos=(stop,))  # the same through the model's eos ids
    rec = _Recorder()
    gen = with_eos.submit(prompt, SamplingParams(max_tokens=20, temperature=0), rec)
    gen.wait(WAIT)
    assert rec.tokens == ref.tokens[:k + 1] and rec.reason == "stop" and gen.completion_tokens == k + 1

    rec = _Recorder()
    free.submit(prompt, SamplingParams(max_tokens=1, temperature=0), rec).wait(WAIT)
    assert rec.events == [(ref.tokens[0], "length")]  # ended at its prefill, never joined a decode step
    assert free.stats()["running"] == 0


def test_cancel_mid_generation_frees_the_budget_for_the_queue(llama, make_batcher):
    # Budget for one request at a time: the second can only start once the first is cancelled.
    batcher = make_batcher(llama, max_kv_tokens=120, eos=())
    first, second = _Recorder(batcher), _Recorder(batcher)
    gens = {}
    first._then = {5: lambda: gens["first"].cancel()}
    gate = _Gate(batcher)
    gens["first"] = batcher.submit(_prompt(8), SamplingParams(max_tokens=100, temperature=0), first)
    gens["second"] = batcher.submit(_prompt(8, start=50), SamplingParams(max_tokens=100, temperature=0), second)
    third = batcher.submit(_prompt(3), SamplingParams(max_tokens=100, temperature=0), _Recorder())
    third.cancel()  # while still queued: it ends without running
    gate.release.set()
    _wait_all([gens["first"], third])

    assert first.events[-1] == (None, "cancelled") and len(first.tokens) == 5  # left at the very next step
    assert gens["first"].finish_reason == "cancelled" and gens["first"].completion_tokens == 5
    assert first.stats[-1]["kv_tokens_in_use"] == 0  # released before the final event
    assert third.finish_reason == "cancelled" and third.completion_tokens == 0
    _wait_all([gens["second"]])
    assert second.reason == "length" and len(second.tokens) == 100
    assert second.tokens == _greedy_no_eos(llama, _prompt(8, start=50), 100)
    assert batcher.stats()["prefills"] == 2 + 1  # the gate, first and second; never the cancelled third


def test_an_error_ends_only_the_affected_generations_and_the_engine_goes_on(make_batcher):
    model = _llama()
    forward = model.forward
    fail = {"prefill_with": 999, "decode_rows": 3}

    @functools.wraps(forward)
    def flaky(input_ids=None, **kwargs):
        if input_ids.shape[1] > 1 and fail["prefill_with"] in input_ids[0].tolist():
            raise RuntimeError("prefill boom")
        if input_ids.shape[1] == 1 and input_ids.shape[0] == fail["decode_rows"]:
            fail["decode_rows"] = None  # once
            raise RuntimeError("decode boom")
        return forward(input_ids=input_ids, **kwargs)

    model.forward = flaky
    batcher = make_batcher(model, eos=())
    greedy = SamplingParams(max_tokens=8, temperature=0)

    bad = _Recorder()
    batcher.submit([4, 999, 5], greedy, bad).wait(WAIT)
    assert bad.events == [(None, "error")]

    recs = [_Recorder() for _ in range(3)]
    gate = _Gate(batcher)
    gens = [batcher.submit(_prompt(4, start=i), greedy, r) for i, r in enumerate(recs)]
    gate.release.set()
    _wait_all(gens)
    assert [r.reason for r in recs] == ["error"] * 3  # the failed step's rows, after their first tokens
    assert all(r.events[-1] == (None, "error") for r in recs)

    def raising(token, reason):
        raise ValueError("consumer bug")

    broken = batcher.submit(_prompt(5), SamplingParams(max_tokens=50, temperature=0), raising)
    assert broken.wait(WAIT) and broken.finish_reason == "cancelled" and broken.completion_tokens == 1

    after = _Recorder()
    batcher.submit(_prompt(6), greedy, after).wait(WAIT)
    assert after.reason == "length" and after.tokens == _greedy_no_eos(_llama(), _prompt(6), 8)
    stats = batcher.stats()
    assert (stats["running"], stats["kv_tokens_in_use"], stats["kv_tokens_padded"]) == (0, 0, 0)


# ---- sampling ----

def test_seeded_sampling_is_reproducible_whatever_runs_beside_it(gpt2, make_batcher):
    batcher = make_batcher(gpt2, eos=())
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=1234)
    prompt = _prompt(5)

    alone = _Recorder()
    batcher.submit(prompt, params, alone).wait(WAIT)

    beside = _Recorder()
    others = [_Recorder() for _ in range(3)]
    gate = _Gate(batcher)
    gens = [batcher.submit(_prompt(9, start=1), SamplingParams(max_tokens=25, seed=7), others[0]),
            batcher.submit(_prompt(2, start=2), SamplingParams(max_tokens=10), others[1])]
    gens.append(batcher.submit(prompt, params, beside))
    gens.append(batcher.submit(_prompt(14, start=3), SamplingParams(max_tokens=30, temperature=0), others[2]))
    gate.release.set()
    _wait_all(gens)

    assert max(batcher.stats()["batch_size_histogram"]) == 4
    assert beside.tokens == alone.tokens and len(alone.tokens) == 20
    other_seed = _Recorder()
    batcher.submit(prompt, SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=4321), other_seed).wait(WAIT)
    assert other_seed.tokens != alone.tokens  # the seed matters: this really samples


def test_top_p_keeps_only_the_nucleus(llama, make_batcher):
    prompt = _prompt(7)
    with torch.inference_mode():
        probs = torch.softmax(llama(torch.tensor([prompt])).logits[0, -1], dim=-1)
    sorted_probs, order = probs.sort(descending=True)
    size = int((sorted_probs.cumsum(-1) - sorted_probs < 0.3).sum())
    nucleus = set(order[:size].tolist())
    assert 1 < size < 50  # a sharp enough distribution that drawing only from the nucleus by chance is unlikely

    batcher = make_batcher(llama, eos=())
    firsts = []
    for seed in range(40):
        rec = _Recorder()
        batcher.submit(prompt, SamplingParams(max_tokens=1, temperature=1.0, top_p=0.3, seed=seed), rec).wait(WAIT)
        firsts.append(rec.tokens[0])
    assert set(firsts) <= nucleus and len(set(firsts)) > 1
    # A nucleus of one token is greedy decoding.
    greedy, tiny_p = _Recorder(), _Recorder()
    batcher.submit(prompt, SamplingParams(max_tokens=10, temperature=0), greedy).wait(WAIT)
    batcher.submit(prompt, SamplingParams(max_tokens=10, temperature=1.0, top_p=1e-6, seed=3), tiny_p).wait(WAIT)
    assert tiny_p.tokens == greedy.tokens
