"""One cell of the compatibility matrix: a family's tiny model through one built-in recipe with
`modelpress.compress`, and what came of it.

A cell works (the output reloads and computes close to the float model), is refused (a
FAILED_PRECONDITION that names the family), is not applicable (a stage's method does not take the
family's kind: the chain check refuses it before anything runs), or is an error: anything else,
including a refusal that does not say which family it refuses.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

WORKS, REFUSED, NOT_APPLICABLE, ERROR = "works", "refused", "n/a", "error"

# The recipes the matrix runs: one per method family a user meets first (casts, weight-only RTN,
# calibrated GPTQ / AWQ / SmoothQuant, unstructured and structured pruning, the three engine exports).
RECIPES = ("fp16", "w4a16-rtn", "int8-weight-only", "w4a16-gptq", "w4a16-awq", "w8a8-smoothquant",
           "prune-sparsegpt-50", "prune-mlp", "prune-heads", "onnx-int8", "openvino-int8", "gguf-q8_0")
# Kept small so the whole matrix runs in minutes: a tiny model needs no more to exercise the code.
OVERRIDES = {"calibration_samples": 8, "calibration_sequence_length": 32, "recovery_minutes": 0.0}
# The least cosine similarity between the output's logits (or hidden states) and the float model's:
# a reload that lost its weights lands near 0; half the weights pruned stays well above these.
MIN_AGREEMENT = {"prune-sparsegpt-50": 0.3, "prune-mlp": 0.3, "prune-heads": 0.3}
DEFAULT_MIN_AGREEMENT = 0.8
PROMPT_IDS = (5, 17, 42, 99, 7, 64, 201, 33, 12, 150, 88, 3)


@dataclass
class Cell:
    family: str
    recipe: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    agreement: float | None = None


def _stage_methods(recipe: str):
    from services.common.contract.recipes import get_recipe
    from services.common.contract.techniques import engine_module

    for stage in get_recipe(recipe).stages:
        yield importlib.import_module(engine_module(stage.technique)).METHODS[stage.method]


def applies(recipe: str, contract_kind: str) -> bool:
    """Whether every stage's method takes the family's contract kind."""
    return all(not m.model_kinds or contract_kind in m.model_kinds for m in _stage_methods(recipe))


def overrides_for(recipe: str) -> dict:
    declared = {name for m in _stage_methods(recipe) for name in m.config_cls.model_fields}
    return {key: value for key, value in OVERRIDES.items() if key in declared}


def run_cell(family: str, recipe: str, model_dir: Path, out: Path) -> Cell:
    import modelpress
    from modelpress import errors
    from services.common.contract import model_kinds

    kind = model_kinds.kind_of_type(family)
    if not applies(recipe, kind):
        return Cell(family, recipe, NOT_APPLICABLE, f"its methods do not take {kind} models")
    start = time.perf_counter()
    try:
        run = modelpress.compress(model_dir, recipe, out, overrides=overrides_for(recipe))
    except errors.FailedPrecondition as exc:
        message = exc.details()
        outcome = REFUSED if family in message else ERROR
        prefix = "" if outcome == REFUSED else "FAILED_PRECONDITION not naming the family: "
        return Cell(family, recipe, outcome, prefix + message, round(time.perf_counter() - start, 1))
    except Exception as exc:  # noqa: BLE001 -- the matrix records what a user gets back, whatever it is
        return Cell(family, recipe, ERROR, f"{type(exc).__name__}: {exc}"[:500], round(time.perf_counter() - start, 1))
    try:
        agreement = check_output(model_dir, out, run.stages[-1].result.format, kind)
    except Exception as exc:  # noqa: BLE001 -- a failed check is the cell's outcome
        return Cell(family, recipe, ERROR, f"output check: {type(exc).__name__}: {exc}"[:500],
                    round(time.perf_counter() - start, 1))
    seconds = round(time.perf_counter() - start, 1)
    least = MIN_AGREEMENT.get(recipe, DEFAULT_MIN_AGREEMENT)
    if agreement is not None and not agreement >= least:
        return Cell(family, recipe, ERROR, f"output disagrees with the float model (cosine {agreement:.3f} < "
                    f"{least})", seconds, agreement)
    return Cell(family, recipe, WORKS, "", seconds, agreement)


def check_output(model_dir: Path, out: Path, fmt: str, kind: str) -> float | None:
    """The output loaded by what its users load it with; the cosine similarity of its outputs to the
    float model's where it is a transformers folder (None for engine formats, loaded only)."""
    if fmt in ("ARTIFACT_FORMAT_HF_SAFETENSORS", "ARTIFACT_FORMAT_COMPRESSED_TENSORS"):
        return _agreement(_stock(model_dir, kind), _stock(out, kind), kind)
    if fmt == "ARTIFACT_FORMAT_PACKED_SAFETENSORS":
        from services.common.models import modelio

        return _agreement(_stock(model_dir, kind), modelio.load_model(out, dtype=None), kind)
    if fmt == "ARTIFACT_FORMAT_ONNX":
        import onnxruntime

        onnxruntime.InferenceSession(str(next(out.rglob("*.onnx"))), providers=["CPUExecutionProvider"])
    elif fmt == "ARTIFACT_FORMAT_OPENVINO_IR":
        import openvino

        openvino.Core().compile_model(str(next(out.rglob("*.xml"))), "CPU")
    elif fmt == "ARTIFACT_FORMAT_GGUF":
        from services.optimizer import gguf_export

        gguf = next(out.glob("*.gguf"))
        config = json.loads((model_dir / "config.json").read_text())
        _gguf_layout(gguf, config)
        if gguf_export.reads_in_transformers(config):
            return _agreement(_stock(model_dir, kind), gguf_export.load_in_transformers(out, gguf.name, model_dir), kind)
    return None


def _gguf_layout(path: Path, config: dict) -> None:
    """The GGUF read with gguf's own reader against llama.cpp's tables, for every family (the only
    check where transformers' GGUF loader does not read the architecture): the declared architecture,
    every tensor name one llama.cpp's converter writes for it (gguf.constants.MODEL_TENSORS), the
    metadata llama.cpp needs, and the shapes of the embedding, attention and MLP tensors."""
    import gguf

    from services.common.models.families import FAMILIES

    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None
    arch = field("general.architecture")
    assert arch == FAMILIES[config["model_type"]].gguf, (arch, config["model_type"])
    arch_id = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    layers = field(f"{arch}.block_count")
    known = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[arch_id] for b in range(layers)}
    shapes = {t.name: tuple(int(d) for d in reversed(list(t.shape))) for t in reader.tensors}
    stray = [n for n in shapes if n.rsplit(".", 1)[0] not in known or n.rsplit(".", 1)[1] not in ("weight", "bias")]
    assert not stray, f"tensors llama.cpp's {arch!r} does not name: {stray}"
    keys = ["block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count"]
    missing = [k for k in keys if field(f"{arch}.{k}") is None]
    missing += [] if field(f"{arch}.attention.layer_norm_rms_epsilon") or field(f"{arch}.attention.layer_norm_epsilon") \
        else ["attention.layer_norm_(rms_)epsilon"]
    missing += [] if arch == "gpt2" or any(k.startswith(f"{arch}.rope.") for k in reader.fields) else ["rope.*"]
    missing += [] if "num_key_value_heads" not in config or field(f"{arch}.attention.head_count_kv") else ["head_count_kv"]
    missing += [k for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                            "tokenizer.ggml.merges") if k not in reader.fields]
    assert not missing, f"metadata llama.cpp needs is missing: {missing}"
    hidden, heads = field(f"{arch}.embedding_length"), field(f"{arch}.attention.head_count")
    kv, ff = field(f"{arch}.attention.head_count_kv") or heads, field(f"{arch}.feed_forward_length")
    assert (layers, hidden, heads) == tuple(config.get(k) or config.get(o) for k, o in (
        ("num_hidden_layers", "n_layer"), ("hidden_size", "n_embd"), ("num_attention_heads", "n_head")))
    head_dim = field(f"{arch}.attention.key_length") or hidden // heads
    experts, ffe = field(f"{arch}.expert_count"), field(f"{arch}.expert_feed_forward_length") or ff
    want = {"token_embd.weight": (config["vocab_size"], hidden), "output.weight": (config["vocab_size"], hidden),
            "attn_q.weight": (heads * head_dim, hidden), "attn_k.weight": (kv * head_dim, hidden),
            "attn_v.weight": (kv * head_dim, hidden), "attn_qkv.weight": ((heads + 2 * kv) * head_dim, hidden),
            "attn_output.weight": (hidden, heads * head_dim), "ffn_gate.weight": (ff, hidden),
            "ffn_down.weight": (hidden, ff), "ffn_gate_exps.weight": (experts, ffe, hidden),
            "ffn_up_exps.weight": (experts, ffe, hidden), "ffn_down_exps.weight": (experts, hidden, ffe),
            "ffn_gate_inp.weight": (experts, hidden), "attn_norm.weight": (hidden,), "output_norm.weight": (hidden,)}
    ups = {(ff, hidden), (2 * ff, hidden)}  # Phi-3 fuses gate and up into ffn_up
    wrong = {n: s for n, s in shapes.items() if (n.split(".", 2)[-1] == "ffn_up.weight" and s not in ups)
             or want.get(n.split(".", 2)[-1] if n.startswith("blk.") else n, s) != s}
    assert not wrong, f"tensors of the wrong shape for {arch!r}: {wrong}"
    assert any(n.endswith(("ffn_down.weight", "ffn_down_exps.weight")) for n in shapes)


def _stock(folder: Path, kind: str):
    """The folder loaded by stock transformers, as a user of it would."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    return auto.from_pretrained(folder, dtype=torch.float32).eval()


def _agreement(want, got, kind: str) -> float:
    import torch

    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        a, b = (m(input_ids=ids).logits if kind == "causal-lm" else m(input_ids=ids).last_hidden_state
                for m in (want, got))
    a, b = a.float().flatten(), b.float().flatten()
    if not torch.isfinite(b).all():
        return float("nan")
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _counts(cells: list[Cell]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in cells:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    return counts


def write_results(cells: list[Cell], path: Path, families: list[str], mesh: list[Cell] = ()) -> None:
    """bench/results/compat.json: family × recipe → outcome, with the counts; `mesh`: the cells run as
    jobs through a mesh (test_mesh_families), recorded where that test ran."""
    counts = _counts(cells)
    from services.common.measure.machine import describe_machine

    document = {
        "what": "every declared family's tiny random model through each recipe with modelpress.compress "
                "(tests/compat; make test-compat)",
        "machine": describe_machine().as_dict(),  # outcomes may differ by ISA (an engine's kernels)
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "families": families, "recipes": list(RECIPES), "overrides": OVERRIDES, "counts": counts,
        "cells": [asdict(c) for c in sorted(cells, key=lambda c: (families.index(c.family), RECIPES.index(c.recipe)))],
    }
    if mesh:
        from services.common.models.families import FAMILIES

        order = list(FAMILIES)
        document["mesh"] = {
            "what": "each family's tiny model uploaded through the gateway with modelpress.Client, one calibrated "
                    "recipe and its exports run on the upload as jobs (tests/compat/test_mesh_families.py)",
            "counts": _counts(mesh),
            "cells": [asdict(c) for c in sorted(mesh, key=lambda c: (order.index(c.family), c.recipe))]}
    path.write_text(json.dumps(document, indent=1) + "\n")
