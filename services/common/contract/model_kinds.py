"""The kinds of model a method may take, and how a model's config.json tells them apart.

Torch-free, so the gateway can tell the kind of a job's model before the job exists (a path's or an
artifact's config.json) and refuse a method that does not take it.
"""

from __future__ import annotations

CAUSAL_LM = "causal-lm"  # decoder language models: any *ForCausalLM architecture
ENCODER = "encoder"  # BERT-style encoders, loaded bare by AutoModel
MODEL_KINDS = (CAUSAL_LM, ENCODER)

ENCODER_TYPES = frozenset({"bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra"})


def kind_of(config: dict) -> str | None:
    """CAUSAL_LM or ENCODER from a model's config.json contents; None for any other architecture."""
    architectures = config.get("architectures") or []
    if any(isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures):
        return CAUSAL_LM
    if config.get("model_type") in ENCODER_TYPES:
        return ENCODER
    return None


def with_article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"
