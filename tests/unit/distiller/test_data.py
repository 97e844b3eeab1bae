"""Training data: augmented copies train on words the calibration text never has, validation stays as written."""

from __future__ import annotations

import pytest
import torch

from services.common.datasets import corpus
from services.common.datasets.training_data import training_data
from services.common.models import modelio
from services.distiller.data import augment, next_token_proposals, replacement_ids


def _words(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False).input_ids)


def test_augmented_pieces_swap_a_share_of_their_tokens_for_whole_words_and_leave_validation_alone(tiny_bert_dir):
    tokenizer = modelio.load_tokenizer(tiny_bert_dir)
    data = training_data(tokenizer, corpus.calibration_text(), False, 200, 64, 0.1)
    originals, validation = list(data.train_items), list(data.validation_items)
    written = list(data.pieces)
    augment(data, copies=2, share=0.3, seed=0)

    assert data.train_items[:len(originals)] == originals and len(data.train_items) == 3 * len(originals)
    assert data.validation_items == validation and data.texts() == written
    calibration_words = {w for piece in written for w in _words(tokenizer, piece)}
    swapped = new_words = compared = 0
    for n, item in enumerate(data.train_items[len(originals):]):
        source = _words(tokenizer, data.pieces[originals[n % len(originals)]])[:64]
        copy = _words(tokenizer, data.pieces[item])
        if len(copy) != len(source):  # a swapped-in word may split differently once decoded
            continue
        compared += len(source)
        swapped += sum(a != b for a, b in zip(source, copy))
        new_words += sum(b not in calibration_words for a, b in zip(source, copy) if a != b)
    assert compared > 1000 and 0.2 < swapped / compared < 0.35
    assert new_words > 0.5 * swapped  # most swapped-in words are ones the calibration text never uses
    # The same seed draws the same copies; the batches carry them like any other item.
    again = training_data(tokenizer, corpus.calibration_text(), False, 200, 64, 0.1)
    augment(again, copies=2, share=0.3, seed=0)
    assert again.pieces == data.pieces
    batch = data.batch(data.train_items[-4:])
    assert batch["input_ids"].shape[0] == 4 and batch["index"].tolist() == data.train_items[-4:]


def test_augmented_windows_of_a_causal_lm_keep_their_length(tiny_llama_dir):
    tokenizer = modelio.load_tokenizer(tiny_llama_dir)
    data = training_data(tokenizer, corpus.calibration_text(), True, 40, 32, 0.1)
    originals = list(data.train_items)
    augment(data, copies=1, share=0.5, seed=3)
    extra = data.windows[len(originals) + len(data.validation_items):]
    assert extra.shape == (len(originals), 32)
    changed = extra != data.windows[originals]
    assert 0.4 < changed.float().mean() < 0.6
    assert torch.isin(extra[changed], replacement_ids(tokenizer)).all()
    assert data.validation_items and max(data.validation_items) < len(originals) + len(data.validation_items)


def test_teacher_proposed_swaps_are_the_teachers_likely_next_tokens_never_the_written_one(tiny_llama_dir):
    tokenizer = modelio.load_tokenizer(tiny_llama_dir)
    teacher = modelio.load_model(tiny_llama_dir, dtype=torch.float32)
    data = training_data(tokenizer, corpus.calibration_text(), True, 40, 32, 0.1)
    originals = list(data.train_items)
    proposals = next_token_proposals(teacher, data, top_k=5)
    # Place j's candidates are the teacher's top 5 after the window's first j tokens.
    window = data.windows[originals[3]]
    logits = teacher(input_ids=window[None, :10]).logits[0, -1]
    assert set(proposals.ids[3, 10].tolist()) == set(logits.topk(5).indices.tolist())

    augment(data, copies=2, share=0.3, seed=1, proposals=proposals)
    extra = data.windows[len(originals) + len(data.validation_items):]
    assert extra.shape == (2 * len(originals), 32)
    source = data.windows[originals].repeat(2, 1)
    changed = extra != source
    assert not changed[:, 0].any()  # the first token has no prefix to propose from
    assert 0.2 < changed.float().mean() < 0.4
    candidates = proposals.ids.repeat(2, 1, 1)
    rows, places = changed.nonzero(as_tuple=True)
    assert (candidates[rows, places] == extra[rows, places].unsqueeze(-1)).any(-1).all()
    # Swaps favour what the teacher finds likely: its top candidate more often than its fifth.
    rank = (candidates[rows, places] == extra[rows, places].unsqueeze(-1)).int().argmax(-1)
    assert (rank == 0).sum() > (rank == 4).sum()


def test_teacher_proposals_are_refused_for_an_encoder_naming_the_field(tiny_bert_dir):
    tokenizer = modelio.load_tokenizer(tiny_bert_dir)
    data = training_data(tokenizer, corpus.calibration_text(), False, 20, 32, 0.1)
    with pytest.raises(ValueError, match="augment_source"):
        next_token_proposals(None, data, top_k=5)
