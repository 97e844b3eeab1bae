"""Quality: perplexity and top-1 for causal LMs; sentence-embedding task quality for encoders.

The text is CPython's pydoc topics, split by topic (services/common/datasets/corpus.py) so nothing
scored here was ever used for calibration or training: the held-out split by default, the
validation split for a search's choices. Plain PyTorch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from services.common.datasets import corpus

# Perplexity windows are 512 tokens whatever the latency shape, so figures stay comparable.
QUALITY_WINDOW = 512
KNN_K = 5


@dataclass(frozen=True)
class CausalLmQuality:
    perplexity: float
    top1_accuracy: float
    tokens: int


@dataclass(frozen=True)
class EncoderQualityFigures:
    sentences: int
    topics: int
    knn_topic_accuracy: float
    knn_k: int
    mean_reference_cosine: float = 0.0
    min_reference_cosine: float = 0.0
    neighbour_agreement: float = 0.0
    has_reference: bool = False


def text_windows(tokenizer, windows: int, length: int = QUALITY_WINDOW, split: str = "heldout") -> torch.Tensor:
    """The first `windows` non-overlapping windows of the split's pydoc text (held-out by default), [windows,
    length]."""
    ids = tokenizer(corpus.text_of(split), return_tensors="pt", add_special_tokens=False).input_ids[0]
    available = ids.numel() // length
    if windows > available:
        raise ValueError(f"quality_windows: {windows} asked, the {split} text has {available} of {length} tokens")
    return ids[: windows * length].view(windows, length)


def causal_lm_quality(model: nn.Module, windows: torch.Tensor) -> CausalLmQuality:
    """Perplexity and next-token top-1 accuracy, one window at a time."""
    nll_sum, correct, count = 0.0, 0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for window in windows.to(device):
            logits = model(input_ids=window.unsqueeze(0)).logits[0, :-1].float()
            targets = window[1:]
            nll_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
    return CausalLmQuality(perplexity=math.exp(nll_sum / count), top1_accuracy=correct / count, tokens=count)


def _prose_sentences(text: str, min_chars: int, max_chars: int) -> list[str]:
    sentences = []
    for paragraph in text.split("\n\n"):
        if paragraph.startswith("   "):  # indented: code or grammar
            continue
        for sentence in paragraph.replace("\n", " ").split(". "):
            sentence = sentence.strip()
            if min_chars <= len(sentence) <= max_chars:
                sentences.append(sentence)
    return sentences


def heldout_sentences(count: int, min_chars: int = 30, max_chars: int = 400) -> list[str]:
    """The first `count` prose sentences of the held-out pydoc text (code lines skipped)."""
    return _prose_sentences(corpus.heldout_text(), min_chars, max_chars)[:count]


def topic_sentences(count: int, min_per_topic: int = 8, max_per_topic: int = 40,
                    split: str = "heldout") -> tuple[list[str], list[str]]:
    """Up to `count` sentences of the split (held-out by default) labelled by their pydoc topic name,
    taken round-robin over the topics with at least `min_per_topic` sentences, none giving more than
    `max_per_topic`, so no topic dominates the k-NN vote."""
    by_topic = [(name, _prose_sentences(text, 30, 400)[:max_per_topic]) for name, text in corpus.topics_of(split)]
    by_topic = [(name, s) for name, s in by_topic if len(s) >= min_per_topic]
    sentences, labels = [], []
    depth = 0
    while len(sentences) < count and any(depth < len(s) for _, s in by_topic):
        for name, topic in by_topic:
            if depth < len(topic) and len(sentences) < count:
                sentences.append(topic[depth])
                labels.append(name)
        depth += 1
    return sentences, labels


def sentence_embeddings(model: nn.Module, tokenizer, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden states (the sentence-transformers recipe for MiniLM)."""
    chunks = []
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, max_length=256,
                              return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(chunks)


def _similarities_without_self(embeddings: torch.Tensor) -> torch.Tensor:
    sims = embeddings @ embeddings.T
    sims.fill_diagonal_(-float("inf"))
    return sims


def knn_topic_accuracy(embeddings: torch.Tensor, labels: list[str], k: int = KNN_K) -> float:
    """Leave-one-out k-NN classification by cosine; ties go to the nearest neighbour's label."""
    neighbours = _similarities_without_self(embeddings.float()).topk(k, dim=1).indices
    correct = 0
    for i, row in enumerate(neighbours.tolist()):
        votes = Counter(labels[j] for j in row)
        best = max(votes.values())
        predicted = next(labels[j] for j in row if votes[labels[j]] == best)
        correct += predicted == labels[i]
    return correct / len(labels)


def same_tokenization(tokenizer, reference_tokenizer, sentences: list[str]) -> float:
    """Share of the sentences both tokenizers split into the same pieces (compared as strings: a trimmed vocabulary
    numbers its pieces anew)."""
    if not sentences:
        return 1.0

    def pieces(of, sentence: str) -> list[str]:
        return of.convert_ids_to_tokens(of(sentence, add_special_tokens=False).input_ids)

    same = sum(pieces(tokenizer, s) == pieces(reference_tokenizer, s) for s in sentences)
    return same / len(sentences)


def encoder_quality(embeddings: torch.Tensor, labels: list[str], reference: torch.Tensor | None = None,
                    k: int = KNN_K) -> EncoderQualityFigures:
    figures = EncoderQualityFigures(sentences=len(labels), topics=len(set(labels)),
                                    knn_topic_accuracy=knn_topic_accuracy(embeddings, labels, k), knn_k=k)
    if reference is None:
        return figures
    if reference.shape != embeddings.shape:
        raise ValueError(f"reference embeddings {tuple(reference.shape)} do not match {tuple(embeddings.shape)}: "
                         "the reference must embed the same sentences in the same width")
    cosine = nn.functional.cosine_similarity(embeddings.float(), reference.float(), dim=-1)
    mine = _similarities_without_self(embeddings.float()).argmax(1)
    theirs = _similarities_without_self(reference.float()).argmax(1)
    return EncoderQualityFigures(
        sentences=figures.sentences, topics=figures.topics, knn_topic_accuracy=figures.knn_topic_accuracy, knn_k=k,
        mean_reference_cosine=float(cosine.mean()), min_reference_cosine=float(cosine.min()),
        neighbour_agreement=float((mine == theirs).float().mean()), has_reference=True)
