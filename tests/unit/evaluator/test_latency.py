"""Interleaved rounds: every model gets every predecessor alike, so what one model leaves behind (PyTorch's
threads still spinning after the baseline's pass) does not fall on the same model every round."""

from collections import Counter
from itertools import pairwise

from services.evaluator.latency import round_order


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
