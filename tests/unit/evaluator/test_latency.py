"""Interleaved rounds: every model gets every predecessor alike, and no timed pass runs right after another
model's (PyTorch's threads still spin after the baseline's pass returns)."""

import time
from collections import Counter
from itertools import pairwise
from types import SimpleNamespace

import torch

from services.evaluator.latency import HANDOVER_PASSES, interleaved_decode, interleaved_forward, round_order


def test_each_round_is_a_permutation_and_the_same_round_repeats():
    for n in (1, 2, 3, 5):
        for r in range(40):
            assert sorted(round_order(r, n)) == list(range(n))
    assert round_order(7, 4) == round_order(7, 4)


def test_over_the_rounds_every_model_follows_the_baseline_about_as_often():
    # A cyclic rotation made model 1 the baseline's successor in every round: 40 of 40.
    n, rounds = 3, 40
    sequence = [i for r in range(rounds) for i in round_order(r, n)]
    after_baseline = Counter(b for a, b in pairwise(sequence) if a == 0)
    assert set(after_baseline) >= {1, 2}
    assert max(after_baseline[1], after_baseline[2]) <= 2 * min(after_baseline[1], after_baseline[2])


class _Wake(torch.nn.Module):
    """A pass that is slow when another model ran last (its threads still busy), fast after its own."""

    def __init__(self, name: str, last: list[str]) -> None:
        super().__init__()
        self.name, self.last = name, last
        self.anchor = torch.nn.Parameter(torch.zeros(0))  # the device timing reads

    def forward(self, input_ids, attention_mask=None, cache=None, **_):
        time.sleep(0.03 if self.last[-1:] != [self.name] else 0.001)
        self.last.append(self.name)
        return SimpleNamespace(last_hidden_state=input_ids.float(), logits=torch.zeros(*input_ids.shape, 4),
                               cache=cache)


def test_no_timed_pass_runs_in_the_wake_of_another_model():
    last: list[str] = []
    figures = interleaved_forward([_Wake("a", last), _Wake("b", last)], batch_size=1, sequence_length=4, rounds=6,
                                  warmup=0)
    assert all(max(f.samples_ms) < 20 for f in figures)
    assert last.count("a") == 6 * (1 + HANDOVER_PASSES)


def test_no_timed_decode_step_runs_in_the_wake_of_another_model():
    last: list[str] = []
    figures = interleaved_decode([_Wake("a", last), _Wake("b", last)], batch_size=1, prompt_length=4, tokens=5,
                                 warmup=1)
    assert [f.iterations for f in figures] == [5, 5] and all(max(f.samples_ms) < 20 for f in figures)
