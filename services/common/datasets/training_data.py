"""Training data for the techniques that train (the distiller's students, the quantizer's end-to-end
scale tuning): token windows (causal LMs) or text pieces (encoders) from the calibration split or an
uploaded dataset, split into training and validation items, and batches drawn from them by a seeded
generator whose state travels in checkpoints (a resumed run draws the same batches)."""

from __future__ import annotations

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
