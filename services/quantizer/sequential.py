"""Data-aware quantization block by block, on the shared calibration core.

The embedding is rounded first, so calibration sees it as the quantized model will; then
services/common/calibration/sequential.py walks the blocks, an algorithm's `BlockStep` turning
each block's input statistics into codes (and possibly rewriting float tensors, e.g. folding
smoothing scales into a norm), the quantized block's outputs feeding the next block. Linears
outside the blocks (an untied LM head, a pooler) are rounded to nearest at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from services.common.calibration.blocks import capture_first_block_inputs, named_blocks
from services.common.calibration.sequential import BlockWork, run_blocks
from services.common.calibration.streaming import StreamingModel
from services.common.calibration.walk_checkpoint import ResultCodec, WalkCheckpoints
from services.common.runtime.memory import release_free_memory
from services.common.models.packed import Int8Embedding
from services.quantizer.activations import ActivationScheme
from services.quantizer.ct_format import QuantizedWeight
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme
from services.quantizer.rtn import quantize_rtn
from services.quantizer.targets import Target

__all__ = ["BlockStep", "BlockWork", "QUANTIZED_WEIGHT_CODEC", "SequentialResult", "quantize_sequential"]

# (done, total, module name, figures) after each module.
OnLayer = Callable[[int, int, str, dict], None]
# Yields (module name, its codes, figures for the progress event) for every layer it quantizes.
BlockStep = Callable[[BlockWork], Iterator[tuple[str, QuantizedWeight, dict]]]


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


@torch.no_grad()
def quantize_sequential(source: StreamingModel, targets: list[Target], batches: torch.Tensor, step: BlockStep,
                        on_layer: OnLayer, *, propagate_quantized: bool = True, sample_every: int = 0,
                        finish_rest: bool = True, keep_float_outputs: bool = False,
                        check_cancelled: Callable[[], None] = lambda: None,
                        checkpoints: WalkCheckpoints | None = None) -> SequentialResult:
    """`finish_rest` rounds the targets no block step quantized (head, pooler) at the end.
    The float block's outputs are kept for the step only when it asks (`keep_float_outputs`,
    QAT's targets) or when they feed the next block: they are as large as the inputs."""
    model = source.model
    blocks = named_blocks(model)
    source.load(exclude=[name for name, _ in blocks])
    by_name = {t.name: t for t in targets}
    total = len(targets)
    done = 0
    quantized: dict[str, QuantizedWeight] = {}
    by_parameter: dict[int, QuantizedWeight] = {}

    def record(name: str, qw: QuantizedWeight, figures: dict) -> None:
        nonlocal done
        quantized[name] = qw
        done += 1
        on_layer(done, total, name, figures)

    def rounded(chosen: list[Target]) -> None:
        for name, qw in quantize_rtn(lambda t: t.module.weight.data, chosen, by_parameter=by_parameter).items():
            record(name, qw, {"method": "rtn"})

    # The embedding is quantized first; the first block's inputs are computed from its int8
    # codes (an Int8Embedding computes exactly the dequantized rows), never a float copy.
    embedding_targets = [t for t in targets if t.role == "embedding"]
    rounded(embedding_targets)
    for target in embedding_targets:
        source.model.set_submodule(target.name, int8_embedding(target.module, quantized[target.name]))
    release_free_memory()
    inputs = capture_first_block_inputs(model, batches)
    # A tied head needs no weights later: it reuses the embedding's codes (same parameter).
    for target in embedding_targets:
        source.model.set_submodule(target.name, target.module.to_empty(device="meta"))
    release_free_memory()
    walked = run_blocks(source, blocks, inputs, by_name, step, record, propagate_updated=propagate_quantized,
                        sample_every=sample_every, keep_float_outputs=keep_float_outputs,
                        check_cancelled=check_cancelled, checkpoints=checkpoints)
    if finish_rest:
        rounded([t for t in targets if t.name not in quantized])
    return SequentialResult(quantized, walked.rewritten)


def int8_embedding(original: torch.nn.Embedding, qw: QuantizedWeight) -> Int8Embedding:
    module = Int8Embedding(original.num_embeddings, original.embedding_dim, original.padding_idx)
    module.weight = qw.codes.to(torch.int8)
    module.weight_scale = qw.params.scale.to(SCALE_DTYPE).float().reshape(-1)
    return module
