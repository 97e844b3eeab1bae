"""Held-out sets from other sources than the calibration text: labelled, repeatable, and sharing no
sentence with what calibrates or trains."""

import pytest

from services.common.datasets import corpus, heldout_sets
from services.evaluator import quality


@pytest.mark.parametrize("name", heldout_sets.HELDOUT_SETS)
def test_each_set_has_enough_labelled_sentences_for_a_knn_vote_and_none_from_the_calibration_text(name):
    sentences, labels = quality.topic_sentences(222, split=name)
    assert len(sentences) == 222 and len(set(labels)) >= 8
    calibration = corpus.calibration_text().replace("\n", " ")
    assert not [s for s in sentences if s in calibration]
    assert quality.topic_sentences(222, split=name) == (sentences, labels)  # the same on every run


@pytest.mark.parametrize("name", heldout_sets.HELDOUT_SETS)
def test_each_set_is_prose_without_markup(name):
    text = corpus.text_of(name)
    assert ":class:`" not in text and "](http" not in text and "<img" not in text and "```" not in text


def test_the_sets_are_measurable_splits_and_an_unknown_set_is_named():
    assert set(heldout_sets.HELDOUT_SETS) <= set(corpus.SPLITS)
    assert {n for n, _ in corpus.topics_of("torch-docs")} == set(heldout_sets.TORCH_MODULES)
    with pytest.raises(ValueError, match="wiki"):
        heldout_sets.topics_of("wiki")


def test_a_set_gives_perplexity_windows(tiny_llama_dir):
    from services.common.models import modelio

    tokenizer = modelio.load_tokenizer(tiny_llama_dir)
    windows = {name: quality.text_windows(tokenizer, 4, length=128, split=name) for name in heldout_sets.HELDOUT_SETS}
    assert all(w.shape == (4, 128) for w in windows.values())
    assert len({tuple(w[0].tolist()) for w in windows.values()}) == 3
