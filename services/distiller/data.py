"""Training data: token windows (causal LMs) or text pieces (encoders) from the calibration split or
an uploaded dataset, split into training and validation items, and batches drawn from them by a
seeded generator whose state travels in checkpoints (a resumed run draws the same batches)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from services.common.datasets.calibration_text import text_pieces


@dataclass
class TrainingData:
    causal: bool
    windows: torch.Tensor | None  # [items, length] token ids (causal LMs)
    pieces: list[str] | None  # encoders
    train_items: list[int]
    validation_items: list[int]
    tokenizer: object
    sequence_length: int
    # Old -> new token ids of a student with a trimmed vocabulary (None: the same ids).
    token_map: torch.Tensor | None = None
    # Items past this one are augmented copies (augment); None: none.
    written_items: int | None = None

    def texts(self) -> list[str]:
        """The training text's pieces as written (no augmented copies)."""
        return (self.pieces or [])[:self.written_items]

    def batch(self, items: list[int]) -> dict:
        """Teacher inputs, plus `student_input_ids` where the student's vocabulary differs; `index`
        names the items so cached teacher outputs line up."""
        if self.causal:
            ids = self.windows[items]
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        else:
            batch = dict(self.tokenizer([self.pieces[i] for i in items], padding=True, truncation=True,
                                        max_length=self.sequence_length, return_tensors="pt"))
        batch["index"] = torch.tensor(items)
        if self.token_map is not None:
            batch["student_input_ids"] = self.token_map[batch["input_ids"]]
        return batch

    def draw(self, batch_size: int, generator: torch.Generator) -> dict:
        picks = torch.randint(len(self.train_items), (batch_size,), generator=generator).tolist()
        return self.batch([self.train_items[i] for i in picks])

    def validation_batches(self, batch_size: int) -> list[dict]:
        items = self.validation_items
        return [self.batch(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def training_data(tokenizer, text: str, causal: bool, samples: int, sequence_length: int,
                  validation_share: float) -> TrainingData:
    if causal:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
        available = ids.numel() // sequence_length
        if available < 2:
            raise ValueError(f"calibration_sequence_length: the training text holds {available} windows of "
                             f"{sequence_length} tokens; at least 2 are needed (one to validate on)")
        windows = ids[: available * sequence_length].view(available, sequence_length)
        picks = torch.linspace(0, available - 1, min(samples, available)).round().long().unique()
        windows, pieces, count = windows[picks], None, len(picks)
    else:
        pieces = text_pieces(text)
        if len(pieces) < 2:
            raise ValueError("training text: fewer than 2 paragraphs of 30 characters or more")
        every = max(1, len(pieces) // samples)
        pieces = pieces[::every][:samples]
        windows, count = None, len(pieces)
    # Every k-th item validates, so both splits cover the whole text.
    held = max(1, round(count * validation_share)) if validation_share > 0 else 0
    step = count // held if held else 0
    validation = list(range(step - 1, count, step))[:held] if held else []
    train = [i for i in range(count) if i not in set(validation)]
    return TrainingData(causal, windows, pieces, train, validation, tokenizer, sequence_length)


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
