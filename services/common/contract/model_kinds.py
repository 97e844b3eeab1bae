"""The kinds of model a method may take, and how a model's config.json tells them apart.

Torch-free, so the gateway can tell the kind of a job's model before the job exists (a path's or an
artifact's config.json) and refuse a method that does not take it.

The kind is transformers' own answer, not a guess from class names: a causal LM is what
`AutoModelForCausalLM` maps (GPT-2's GPT2LMHeadModel included), an encoder is a family with a masked-LM
head that is not a seq2seq model (BERT's family, DeBERTa-v2, ModernBERT ...), loaded bare by AutoModel.
Encoder families come first because BERT and RoBERTa also have a causal-LM head in the mapping.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path

CAUSAL_LM = "causal-lm"  # decoder language models: what AutoModelForCausalLM maps
ENCODER = "encoder"  # masked-LM families (BERT-style encoders), loaded bare by AutoModel
MODEL_KINDS = (CAUSAL_LM, ENCODER)

_MAPPINGS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
             "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES")


@functools.cache
def auto_mappings() -> dict[str, dict[str, str]]:
    """transformers' model_type → class-name tables for causal LM, masked LM and (text or speech) seq2seq.

    Read from the literal tables in modeling_auto.py's source, because importing that module imports
    torch and the gateway stays torch-free; imported instead where the source no longer parses so."""
    spec = importlib.util.find_spec("transformers")
    source = Path(spec.origin).parent / "models" / "auto" / "modeling_auto.py"
    found: dict[str, dict[str, str]] = {}
    try:
        for node in ast.parse(source.read_text()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in _MAPPINGS):
                found[node.targets[0].id] = dict(ast.literal_eval(node.value.args[0]))
    except (OSError, SyntaxError, ValueError, AttributeError, IndexError, TypeError):
        found = {}
    if set(found) != set(_MAPPINGS):
        from transformers.models.auto import modeling_auto

        found = {name: dict(getattr(modeling_auto, name)) for name in _MAPPINGS}
    return found


def kind_of_type(model_type: str) -> str | None:
    """ENCODER or CAUSAL_LM for a transformers model_type; None for any other (vision, seq2seq, ...).
    Encoder-decoder families are neither, though the mappings give BART and Whisper a causal-LM class
    (their decoder alone) and BART a masked-LM one."""
    tables = auto_mappings()
    if (model_type in tables["MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"]
            or model_type in tables["MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"]):
        return None
    if model_type in tables["MODEL_FOR_MASKED_LM_MAPPING_NAMES"]:
        return ENCODER
    if model_type in tables["MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"]:
        return CAUSAL_LM
    return None


def kind_of(config: Mapping) -> str | None:
    """CAUSAL_LM or ENCODER from a model's config.json contents; None for any other architecture.
    The model_type decides; a config without one is a causal LM where an architecture it lists is a
    class AutoModelForCausalLM maps."""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return kind_of_type(model_type)
    tables = auto_mappings()
    causal_classes = {name for model_type, name in tables["MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"].items()
                      if kind_of_type(model_type) == CAUSAL_LM}
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and any(a in causal_classes for a in architectures if isinstance(a, str)):
        return CAUSAL_LM
    return None


def with_article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"
