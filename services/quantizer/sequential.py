"""Data-aware quantization block by block, on the shared calibration core.

The embedding is rounded first, so calibration sees it as the quantized model will; then
services/common/calibration/sequential.py walks the blocks, an algorithm's `BlockStep` turning
each block's input statistics into codes (and possibly rewriting float tensors, e.g. folding
smoothing scales into a norm), the quantized block's outputs feeding the next block. Linears
outside the blocks (an untied LM head, a pooler) are rounded to nearest at the end, except an LM
head given a `head_rounding`: that one is rounded last on its own inputs (the final norm of the
quantized last block's outputs), and when it is tied to the embedding, the embedding takes its
codes (the embedding then feeds the first block in float: its error there costs far less than in
the head, whose every logit it moves).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from services.common.calibration.blocks import capture_first_block_inputs, final_norm, named_blocks
from services.common.calibration.hessian import inputs_hessian
from services.common.calibration.sequential import BlockWork, FloatTargets, run_blocks
from services.common.calibration.streaming import StreamingModel
from services.common.calibration.walk_checkpoint import ResultCodec, WalkCheckpoints
from services.common.runtime.memory import release_free_memory
from services.common.models.packed import Int8Embedding
from services.quantizer.activations import ActivationScheme
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme, dequantize
from services.quantizer.rtn import quantize_rtn, round_weight
from services.quantizer.spilled_codes import CodeSpill
from services.quantizer.targets import Target

__all__ = ["BlockStep", "BlockWork", "QUANTIZED_WEIGHT_CODEC", "SequentialResult", "quantize_sequential"]

# (done, total, module name, figures) after each module.
OnLayer = Callable[[int, int, str, dict], None]
# Yields (module name, its codes, figures for the progress event) for every layer it quantizes.
BlockStep = Callable[[BlockWork], Iterator[tuple[str, QuantizedWeight, dict]]]
# (float weight, Hessian of its inputs, scheme, kind) -> its codes and figures: how an LM head is
# rounded on its calibration inputs (gptq.gptq_head_rounding).
HeadRounding = Callable[[torch.Tensor, torch.Tensor, WeightScheme, str], tuple[QuantizedWeight, dict]]


def _encode(qw: QuantizedWeight) -> dict:
    acts = qw.activations
    return {"codes": qw.codes, "scale": qw.params.scale, "zero_point": qw.params.zero_point,
            "scheme": [qw.scheme.bits, qw.scheme.group_size, qw.scheme.symmetric], "kind": qw.kind,
            "activations": None if acts is None else [acts.dynamic, acts.bits, acts.per_tensor],
            "input_scale": qw.input_scale}


def _decode(saved: dict) -> QuantizedWeight:
    bits, group_size, symmetric = saved["scheme"]
    acts = saved["activations"]
    return QuantizedWeight(WeightScheme(bits, group_size, symmetric), QuantParams(saved["scale"], saved["zero_point"]),
                           saved["codes"], kind=saved["kind"],
                           activations=None if acts is None else ActivationScheme(*acts),
                           input_scale=saved["input_scale"])


# A walk checkpoint keeps the finished layers' codes through this (no pickled objects).
QUANTIZED_WEIGHT_CODEC = ResultCodec(encode=_encode, decode=_decode)


@dataclass
class SequentialResult:
    quantized: dict[str, QuantizedWeight]
    # Float tensors the algorithm changed (checkpoint names without prefix → new values).
    rewritten: dict[str, torch.Tensor]
    # Linears no calibration token reached (experts the router never chose): rounded to nearest.
    uncalibrated: list[str] = field(default_factory=list)
    # Where the block Linears' codes live until they are written (None: in memory).
    spill: CodeSpill | None = None


def uncalibrated_first(step: BlockStep) -> BlockStep:
    """A Linear no calibration token reached (an expert the router never chose for these samples) has
    no statistics to calibrate from: it is rounded to nearest, said in its figures
    (`no_calibration_tokens`); the step gets the block's other Linears."""

    def wrapped(work: BlockWork) -> Iterator[tuple[str, QuantizedWeight, dict]]:
        idle = [n for n in work.layers if work.stats[n].rows == 0]
        for name in idle:
            target, module = work.targets[name], work.layers[name]
            qw, error = round_weight(module.weight.data, target.scheme, target.kind)
            module.weight.data = dequantize(qw.codes, qw.params).to(module.weight.dtype)
            yield name, qw, {"method": "rtn", "no_calibration_tokens": True, "relative_weight_error": error}
        if not idle:
            yield from step(work)
            return
        busy = [n for n in work.layers if n not in idle]
        yield from step(dataclasses.replace(work, layers={n: work.layers[n] for n in busy},
                                            targets={n: work.targets[n] for n in busy},
                                            stats={n: work.stats[n] for n in busy}))

    return wrapped


def describe_uncalibrated(names: list[str]) -> str:
    """'model.layers.0.mlp.experts: experts 1, 3 (w1, w2, w3)': which experts got no calibration tokens."""
    by_module: dict[str, dict[str, set[str]]] = {}
    for name in names:
        module, _, rest = name.rpartition(".")
        parent, _, index = module.rpartition(".")
        if index.isdigit():
            by_module.setdefault(parent, {}).setdefault(index, set()).add(rest)
        else:
            by_module.setdefault(name, {})
    parts = []
    for module, experts in by_module.items():
        if not experts:
            parts.append(module)
            continue
        leaves = sorted(set().union(*experts.values()))
        parts.append(f"{module}: experts {', '.join(sorted(experts, key=int))} ({', '.join(leaves)})")
    return "; ".join(parts)


@torch.no_grad()
def quantize_sequential(source: StreamingModel, targets: list[Target], batches: torch.Tensor, step: BlockStep,
                        on_layer: OnLayer, *, propagate_quantized: bool = True, sample_every: int = 0,
                        finish_rest: bool = True, float_targets: FloatTargets = "none",
                        check_cancelled: Callable[[], None] = lambda: None,
                        checkpoints: WalkCheckpoints | None = None, spill: CodeSpill | None = None,
                        head_rounding: HeadRounding | None = None) -> SequentialResult:
    """`finish_rest` rounds the targets no block step quantized (head, pooler) at the end; an LM head
    with `head_rounding` (and a final norm to read through) is rounded on its inputs instead.
    The float outputs are kept for the step only when it asks (`float_targets`, QAT's targets) or
    when they feed the next block: they are as large as the inputs. With `spill`,
    each block Linear's codes go to a file as soon as they are done (spilled_codes): the walk then
    holds one block, the modules outside the blocks (embedding, head) are let go once the first
    block's inputs are computed, and read again only for targets left to round at the end."""
    model = source.model
    blocks = named_blocks(model)
    outside = [name for name, _ in blocks]
    if spill is not None and source.tied_head is None and (head := _head_name(model)):
        outside.append(head)  # not needed to compute the first block's inputs; read again if it is a target
    by_name = {t.name: t for t in targets}
    head = next((t for t in targets if t.role == "head"), None) if head_rounding and finish_rest else None
    if head is not None and final_norm(model) is None:
        head = None  # no norm found to read the head's inputs through: rounded to nearest with the rest
    calibrated_embedding = [t for t in targets if t.role == "embedding" and head is not None
                            and t.module.weight is head.module.weight]
    # An embedding that is not rounded here only computes the first block's inputs: kept as stored.
    source.load(exclude=outside, embedding_as_stored=not any(t.role == "embedding" and t not in calibrated_embedding
                                                             for t in targets))
    total = len(targets)
    done = 0
    quantized: dict[str, QuantizedWeight] = {}
    by_parameter: dict[int, QuantizedWeight] = {}

    uncalibrated: list[str] = []

    def record(name: str, qw: QuantizedWeight, figures: dict) -> None:
        nonlocal done
        quantized[name] = spill.keep(name, qw) if spill is not None and qw.kind != "Embedding" else qw
        if figures.get("no_calibration_tokens"):
            uncalibrated.append(name)
        done += 1
        on_layer(done, total, name, figures)

    def rounded(chosen: list[Target]) -> None:
        for name, qw in quantize_rtn(lambda t: t.module.weight.data, chosen, by_parameter=by_parameter).items():
            record(name, qw, {"method": "rtn"})

    # The embedding is quantized first; the first block's inputs are computed from its int8
    # codes (an Int8Embedding computes exactly the dequantized rows), never a float copy.
    embedding_targets = [t for t in targets if t.role == "embedding" and t not in calibrated_embedding]
    rounded(embedding_targets)
    for target in embedding_targets:
        source.model.set_submodule(target.name, int8_embedding(target.module, quantized[target.name]))
    release_free_memory()
    inputs = capture_first_block_inputs(model, batches)
    # A tied head needs no weights later: it reuses the embedding's codes (same parameter).
    for target in embedding_targets:
        source.model.set_submodule(target.name, target.module.to_empty(device="meta"))
    shared: dict[str, QuantizedWeight] = {}
    if spill is not None:
        # A target sharing a rounded parameter (a head tied to a quantized embedding) keeps its codes: letting
        # go of the modules makes new parameters, which the lookup by parameter would miss at the end.
        shared = {t.name: by_parameter[id(t.module.weight)] for t in targets
                  if t.name not in quantized and id(t.module.weight) in by_parameter}
        model.to_empty(device="meta")  # the blocks are on meta already; this lets go of the rest
    release_free_memory()
    if spill is not None and checkpoints is not None:
        checkpoints = _LettingGoAfterSaves(checkpoints, lambda: [spill.forget(n, qw) for n, qw in quantized.items()])
    walked = run_blocks(source, blocks, inputs, by_name, uncalibrated_first(step), record,
                        propagate_updated=propagate_quantized,
                        sample_every=sample_every, float_targets=float_targets,
                        check_cancelled=check_cancelled, checkpoints=checkpoints)
    if head is not None:
        source.load(exclude=[name for name, _ in blocks])
        qw, figures = head_rounding(head.module.weight.detach(), head_hessian(model, walked.hidden), head.scheme,
                                    "Embedding" if calibrated_embedding else head.kind)
        for target in calibrated_embedding:
            record(target.name, qw, {**figures, "tied_to": head.name})
        record(head.name, qw, figures)
    rest = [t for t in targets if t.name not in quantized] if finish_rest else []
    for target in [t for t in rest if t.name in shared]:
        record(target.name, shared[target.name], {"method": "rtn"})
    rest = [t for t in rest if t.name not in shared]
    if rest and spill is not None:
        source.load(exclude=[name for name, _ in blocks])
    rounded(rest)
    return SequentialResult(quantized, walked.rewritten, uncalibrated, spill)


def head_hessian(model: torch.nn.Module, hidden: list[torch.Tensor]) -> torch.Tensor:
    """H = 2/n · Σ xᵀx of the LM head's inputs: the final norm of the last block's outputs."""
    norm = final_norm(model)
    return inputs_hessian(norm(h) for h in hidden)


def _head_name(model: torch.nn.Module) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


class _LettingGoAfterSaves:
    """A walk's checkpoints that, after each save, let go of the spilled codes' pages the save read
    (saving serialises every finished layer's codes, which maps them all in)."""

    def __init__(self, checkpoints: WalkCheckpoints, let_go: Callable[[], object]) -> None:
        self._checkpoints, self._let_go = checkpoints, let_go

    def __getattr__(self, name: str):
        return getattr(self._checkpoints, name)

    def save(self, state, blocks: int) -> None:
        self._checkpoints.save(state, blocks)
        self._let_go()


def int8_embedding(original: torch.nn.Embedding, qw: QuantizedWeight) -> Int8Embedding:
    groups = qw.params.scale.shape[1] if qw.params.scale.dim() == 2 else 1
    module = Int8Embedding(original.num_embeddings, original.embedding_dim, original.padding_idx, groups)
    module.weight = qw.codes.to(torch.int8)
    scale = qw.params.scale.to(SCALE_DTYPE).float()
    module.weight_scale = scale.reshape(-1) if groups == 1 else scale
    return module
