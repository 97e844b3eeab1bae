"""What the distiller adds to the shared training data (services/common/datasets/training_data.py):
augmented copies of the training items (words drawn from the vocabulary, or proposed by a causal
teacher), and the inputs a model's forward takes from a batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from services.common.datasets.training_data import TrainingData


def replacement_ids(tokenizer) -> torch.Tensor:
    """Token ids that stand for a whole word of two letters or more: what a swapped-in token may be
    (WordPiece continuations would glue onto the word before; special tokens are not text)."""
    special = set(tokenizer.all_special_ids)
    ids = [i for token, i in tokenizer.get_vocab().items()
           if i not in special and not token.startswith("##")
           and len(word := token.lstrip("\u0120\u2581")) >= 2 and word.isalpha()]
    if not ids:
        raise ValueError("augment_copies: the tokenizer's vocabulary has no whole-word tokens to swap in")
    return torch.tensor(sorted(ids))


@dataclass
class Proposals:
    """A causal teacher's top-k next tokens at every place of the training windows: what may be
    written there instead (logits [items, length, k], ids alike; place 0 has none)."""

    items: list[int]
    logits: torch.Tensor
    ids: torch.Tensor


@torch.no_grad()
def next_token_proposals(teacher, data: TrainingData, top_k: int, batch_size: int = 8) -> Proposals:
    """The teacher's top-k for the token at each place of every training window, given the window
    before it (the prediction made one place earlier, shifted to the place it predicts)."""
    if not data.causal:
        raise ValueError("augment_source: 'teacher' proposes next tokens, which only a causal LM has; an encoder "
                         "swaps whole words drawn from the vocabulary")
    items = list(data.train_items)
    logits, ids = [], []
    for start in range(0, len(items), batch_size):
        windows = data.windows[items[start:start + batch_size]]
        out = teacher(input_ids=windows, attention_mask=torch.ones_like(windows), use_cache=False).logits.float()
        top = out[:, :-1].topk(top_k, dim=-1)
        pad = torch.zeros(len(windows), 1, top_k)
        logits.append(torch.cat([pad, top.values], 1).half())
        ids.append(torch.cat([pad.int(), top.indices.int()], 1))
    return Proposals(items, torch.cat(logits), torch.cat(ids))


def augment(data: TrainingData, copies: int, share: float, seed: int, proposals: Proposals | None = None) -> None:
    """TinyBERT's augmentation: `copies` more of each training item with `share` of its tokens swapped,
    appended to the training items; the teacher's outputs on them are the targets. Without `proposals`
    (a sentence encoder has no masked-LM proposals) a swapped-in token is a whole word drawn uniformly
    from the vocabulary: the calibration text uses a few thousand of a tokenizer's tokens, and the copies
    train every row of the token table and the blocks on words the text never has. With a causal
    teacher's `proposals` it is drawn from the teacher's next-token distribution at that place (never
    the token written there): text the teacher finds plausible, so the copies stay near the language
    the student will read while giving it contexts the calibration split does not hold. Validation
    items stay as written."""
    if copies <= 0:
        return
    generator = torch.Generator().manual_seed(seed + 1)
    originals = list(data.train_items)
    count = len(data.windows) if data.causal else len(data.pieces)
    data.written_items = count
    if proposals is not None:
        if not data.causal or proposals.items != originals:
            raise ValueError("augment: the teacher's proposals are for another set of training windows")
        row_of = {item: row for row, item in enumerate(proposals.items)}

        def swapped(ids: torch.Tensor, item: int) -> torch.Tensor:
            logits = proposals.logits[row_of[item]].float()
            candidates = proposals.ids[row_of[item]].long()
            logits = logits.masked_fill(candidates == ids.unsqueeze(-1), -math.inf)  # a swap changes the token
            picks = torch.multinomial(logits[1:].softmax(-1), 1, generator=generator).squeeze(-1)
            chosen = torch.rand(len(ids) - 1, generator=generator) < share
            out = ids.clone()
            out[1:] = torch.where(chosen, candidates[1:].gather(-1, picks.unsqueeze(-1)).squeeze(-1), ids[1:])
            return out
    else:
        swap_in = replacement_ids(data.tokenizer)

        def swapped(ids: torch.Tensor, item: int | None = None) -> torch.Tensor:
            chosen = torch.rand(ids.shape, generator=generator) < share
            picks = swap_in[torch.randint(len(swap_in), ids.shape, generator=generator)]
            return torch.where(chosen, picks, ids)

    if data.causal:
        extra = [swapped(data.windows[i], i) for _ in range(copies) for i in originals]
        data.windows = torch.cat([data.windows, torch.stack(extra)])
    else:
        encoded = data.tokenizer([data.pieces[i] for i in originals], add_special_tokens=False,
                                 truncation=True, max_length=data.sequence_length).input_ids
        data.pieces = data.pieces + [data.tokenizer.decode(swapped(torch.tensor(ids)).tolist())
                                     for _ in range(copies) for ids in encoded]
    data.train_items = originals + list(range(count, count + copies * len(originals)))


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The part of a batch a model's forward takes (no item indices, no student-vocabulary ids)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}
