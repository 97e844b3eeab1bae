"""Writes quantized models in the compressed-tensors format (transformers and vLLM load it).

The writer streams: every tensor that is not a quantized weight is copied from the
source checkpoint one at a time, and each quantized module contributes its integer codes
and scales. Layout per scheme, as compressed-tensors 0.20 reads it and llm-compressor 0.14 writes it:
- symmetric weight-only ("pack-quantized", 4 or 8 bits): `weight_packed` (int32 words),
  `weight_scale`, `weight_shape`;
- with quantized activations (W8A8) or asymmetric ("int-quantized"): `weight` (int8 codes),
  `weight_scale` and, when asymmetric, `weight_zero_point` (int8). Packed asymmetric
  zero-points do not reload in transformers 5.24, so asymmetric codes stay unpacked.
Scales are float16.

When only Linear layers are quantized, all with one scheme (the default recipes), the
config is the one vLLM and llm-compressor users expect: one group targeting "Linear" and
the Linears left float (the LM head) under `ignore`. Quantized embeddings or a mixed
allocation need per-module targets, which vLLM does not load: those checkpoints are for
transformers. A tied LM head then keeps only its scales: its codes are the embedding's, and
transformers re-ties the weight on load.

Two layouts stock transformers reloads only by dequantizing at load (`"dequantize": true` in the
config, transformers' own CompressedTensorsConfig option; the file stays compressed for other readers):
- transformers' Conv1D projections (GPT-2, `Family.conv1d`): compressed-tensors quantizes only Linear
  and Embedding modules, so a Conv1D is written in its own [in, out] orientation: the codes and scales
  of the Linear-oriented grid transposed, strategy "block" with blocks one group tall and one column
  wide (one scale per output feature and group of input features, exactly the Linear grid's);
- pack-quantized Linears of a family whose weight init reads every Linear's `.weight`
  (`Family.reloads_packed` False: Falcon, ModernBERT), which a packed module no longer has.
transformers dequantizes every module with one config group's scheme, so these need one group,
and computes them with float activations (a W8A8 config's activation scheme stays for other readers).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from services.common.calibration.blocks import named_blocks
from services.common.models import families
from services.common.models.safetensors_writer import write_safetensors
from services.quantizer.activations import ActivationScheme
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme

WEIGHTS_FILE = "model.safetensors"
CONV1D = "Conv1D"  # transformers' Conv1D (pytorch_utils), the kind and the config target of its modules


@dataclass
class QuantizedWeight:
    scheme: WeightScheme
    params: QuantParams
    codes: torch.Tensor  # grid indices as produced by qscheme.quantize, [out, in]
    kind: str = "Linear"  # or "Embedding", or "Conv1D" (codes still [out, in]; written transposed)
    activations: ActivationScheme | None = None  # W8A8: how the layer's inputs are quantized
    input_scale: torch.Tensor | None = None  # static activation scale, shape [1]


def _exact(module_name: str) -> str:
    """A compressed-tensors target matching exactly this module."""
    return "re:^" + re.escape(module_name) + "$"


def _format(scheme: WeightScheme, activations: ActivationScheme | None = None, kind: str = "Linear") -> str:
    # 8-bit embeddings stay unpacked, the layout transformers reloads them from.
    packed = scheme.symmetric and activations is None and (kind in ("Linear", CONV1D) or scheme.bits < 8)
    return "pack-quantized" if packed else "int-quantized"


def quantization_config(quantized: dict[str, QuantizedWeight], float_linears: list[str] | None = None) -> dict:
    """The `quantization_config` block of config.json. `float_linears`: the Linear modules left
    in float; given, and when every quantized module is a Linear of one scheme, the config
    targets "Linear" and ignores those."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    by_scheme: dict[tuple, list[str]] = defaultdict(list)
    for name, qw in quantized.items():
        by_scheme[(qw.scheme, qw.kind, qw.activations)].append(name)
    standard = float_linears is not None and len(by_scheme) == 1 and next(iter(by_scheme))[1] == "Linear"
    groups = {}
    conv1d_only = len(by_scheme) == 1 and next(iter(by_scheme))[1] == CONV1D
    for i, ((scheme, kind, acts), names) in enumerate(sorted(by_scheme.items(), key=lambda kv: sorted(kv[1])[0])):
        grouped = scheme.group_size > 0
        if kind == CONV1D:
            # Transposed grid: a block one group of input rows tall (all of them, per channel: the
            # tallest layer's, shorter ones padded) and one output column wide.
            height = scheme.group_size or max(quantized[n].codes.shape[1] for n in names)
            grid = {"strategy": "block", "block_structure": [height, 1]}
        else:
            grid = {"strategy": "group" if grouped else "channel",
                    "group_size": scheme.group_size if grouped else None}
        groups[f"group_{i}"] = QuantizationScheme(
            targets=["Linear"] if standard else [CONV1D] if conv1d_only else [_exact(n) for n in sorted(names)],
            weights=QuantizationArgs(num_bits=scheme.bits, type="int", symmetric=scheme.symmetric,
                                     scale_dtype=SCALE_DTYPE, **grid),
            input_activations=None if acts is None else QuantizationArgs(
                num_bits=acts.bits, type="int", symmetric=True, dynamic=acts.dynamic,
                strategy="token" if acts.dynamic else "tensor"),
            format=_format(scheme, acts, kind),
        )
    formats = {_format(s, a, k) for s, k, a in by_scheme}
    config = QuantizationConfig(config_groups=groups, quantization_status="compressed",
                                format=formats.pop() if len(formats) == 1 else "mixed-precision",
                                ignore=sorted(float_linears) if standard else [])
    return {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors", "sparsity_config": {},
            "transform_config": {}, **config.model_dump(exclude=["quant_method"])}


def _signed(values: torch.Tensor, scheme: WeightScheme) -> torch.Tensor:
    """compressed-tensors stores asymmetric codes and zero-points shifted into the signed range."""
    return values if scheme.symmetric else values - 2 ** (scheme.bits - 1)


def module_tensors(name: str, qw: QuantizedWeight, *, codes: bool = True) -> dict[str, torch.Tensor]:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    # A Conv1D's tensors in its own [in, out] orientation (its scales [groups, out]).
    orient = (lambda t: t.t()) if qw.kind == CONV1D else (lambda t: t)
    out = {f"{name}.weight_scale": orient(qw.params.scale.to(SCALE_DTYPE)).contiguous()}
    if qw.params.zero_point is not None:
        out[f"{name}.weight_zero_point"] = orient(_signed(qw.params.zero_point, qw.scheme).to(torch.int8)).contiguous()
    if qw.input_scale is not None:
        out[f"{name}.input_scale"] = qw.input_scale.float().reshape(1).contiguous()
    if not codes:
        return out
    signed = orient(_signed(qw.codes, qw.scheme).to(torch.int8))
    if _format(qw.scheme, qw.activations, qw.kind) == "pack-quantized":
        out[f"{name}.weight_packed"] = pack_to_int32(signed, qw.scheme.bits).contiguous()
        out[f"{name}.weight_shape"] = torch.tensor(list(signed.shape), dtype=torch.int64)
    else:
        out[f"{name}.weight"] = signed.contiguous()
    return out


def dequantized_on_load(model_config, quantized: dict[str, QuantizedWeight], packed_tie: bool = False) -> bool:
    """Whether stock transformers reloads this checkpoint only dequantized at load (module docstring):
    Conv1D modules, packed Linears of a family whose init reads `.weight`, or a packed embedding its
    LM head is tied to (`packed_tie`). Such a checkpoint with more than one grid is refused, naming
    the family: transformers would dequantize every module with the first group's scheme."""
    family = families.family_of(model_config)
    conv1d = any(qw.kind == CONV1D for qw in quantized.values())
    packed = family is not None and not family.reloads_packed and any(
        _format(qw.scheme, qw.activations, qw.kind) == "pack-quantized" for qw in quantized.values())
    if not (conv1d or packed or packed_tie):
        return False
    # An embedding's rows are grouped as a Linear's: the same grid.
    schemes = {(qw.scheme, qw.kind if qw.kind == CONV1D else "Linear", qw.activations) for qw in quantized.values()}
    if len(schemes) > 1:
        why = ("keeps its block projections in transformers' Conv1D, which compressed-tensors does not quantize"
               if conv1d else "has a weight init that reads each Linear's .weight, which a packed Linear no longer has"
               if packed else "ties its LM head to a packed embedding, which transformers ties only once dequantized")
        recipes = "w4a16-rtn, int8-weight-only" + ("" if conv1d else ", w4a16-gptq, w4a16-awq")
        raise families.refuse(model_config, "weight quantization with more than one scheme (quantized embeddings or "
                              "LM head, mixed precision)",
                              f"{why}: stock transformers reloads it only dequantized at load, which it does with "
                              f"one scheme per checkpoint; this one has {len(schemes)}. One scheme for the block "
                              f"projections alone ({recipes}) reloads")
    return True


def _conv1d_kinds(model, quantized: dict[str, QuantizedWeight]) -> dict[str, QuantizedWeight]:
    """Marks the codes of GPT-2's Conv1D projections (quantized as targets.Conv1DLinear, whichever method
    rounded them) kind "Conv1D", so they are written in the Conv1D's orientation."""
    from services.quantizer.targets import Conv1DLinear

    return {name: replace(qw, kind=CONV1D) if isinstance(model.get_submodule(name), Conv1DLinear) else qw
            for name, qw in quantized.items()}


def write_compressed_tensors(source, quantized: dict[str, QuantizedWeight], folder: Path,
                             tied_head: tuple[str, str] | None = None,
                             rewritten: dict[str, torch.Tensor] | None = None, spill=None) -> None:
    """`source` is a StreamingModel of the float model the codes were computed from;
    `rewritten` holds float tensors the algorithm changed (e.g. norms smoothing folded into).
    Written block by block (`_shards`); with `spill` (spilled_codes.CodeSpill), each module's codes
    are let go once its shard is written, so writing holds a shard, not the model."""
    head = tied_head[0] if tied_head else None
    packed_tie = head in quantized and _format(quantized[head].scheme, kind=quantized[head].kind) == "pack-quantized"
    if packed_tie:
        # A packed module has no `.weight` for transformers to tie: the head is left out of the config
        # and ties to the embedding once the load has dequantized it.
        quantized = {n: qw for n, qw in quantized.items() if n != head}
    given = quantized
    quantized = _conv1d_kinds(source.model, quantized)
    dequantize = dequantized_on_load(source.model.config, quantized, packed_tie=packed_tie)
    folder.mkdir(parents=True, exist_ok=True)
    quantized_keys = {source.key(f"{n}.weight") for n in quantized}
    try:
        blocks = [name for name, _ in named_blocks(source.model)]
    except ValueError:  # no repeated blocks: one group
        blocks = []

    def block_of(name: str) -> int:
        return next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), len(blocks))

    float_keys: dict[int, list[str]] = defaultdict(list)
    for key in source.reader.keys():
        if key not in quantized_keys:
            float_keys[block_of(key.removeprefix(source.checkpoint_prefix))].append(key)
    modules: dict[int, list[str]] = defaultdict(list)
    for name in quantized:
        modules[block_of(name)].append(name)

    def block_tensors(index: int) -> dict[str, torch.Tensor]:
        tensors = {}
        for key in float_keys[index]:
            changed = (rewritten or {}).get(source.name_of(key))
            tensors[key.removeprefix(source.checkpoint_prefix)] = (
                source.reader.get(key) if changed is None else changed).contiguous()
        for name in modules[index]:
            # Under the checkpoint's own module name (a Mixtral expert's block_sparse_moe.experts.3.w1):
            # transformers' conversion mapping renames and merges it again on reload.
            stored = source.key(f"{name}.weight").removeprefix(source.checkpoint_prefix).removesuffix(".weight")
            tensors.update(module_tensors(stored, quantized[name], codes=name != head))
            if spill is not None:  # packed now: the pages reading the codes mapped in are let go
                spill.forget(name, quantized[name])
                spill.forget(name, given[name])
        tensors.pop(f"{head}.weight", None)
        return tensors

    write_shards(folder, (block_tensors(i) for i in range(len(blocks) + 1)))

    float_linears = [n for n, m in source.model.named_modules() if isinstance(m, torch.nn.Linear) and n not in quantized]
    config = json.loads((source.reader.folder / "config.json").read_text())
    config["quantization_config"] = quantization_config(quantized, float_linears)
    if dequantize:
        config["quantization_config"]["dequantize"] = True
    config["dtype"] = "float32"
    if tied_head:
        config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


# Output shards hold whole blocks up to about this size; a model whose output fits is one file.
SHARD_BYTES = 1 << 30
INDEX_FILE = "model.safetensors.index.json"


def write_shards(folder: Path, groups, after=lambda index: None) -> None:
    """Writes `groups` (an iterable of {name: tensor}, built one at a time) as safetensors files of
    about SHARD_BYTES, each group whole in one file: `model.safetensors` when one file holds them
    all (the layout a small model has always had), else model-0000i-of-0000n.safetensors with the
    index transformers reads. `after(i)` is called once group i is on disk."""
    pending: dict[str, torch.Tensor] = {}
    pending_groups: list[int] = []
    shards: list[tuple[Path, list[str]]] = []
    total = 0

    def flush() -> None:
        path = folder / f"model-{len(shards) + 1:05d}.safetensors.part"
        write_safetensors(path, pending, metadata={"format": "pt"})
        shards.append((path, sorted(pending)))
        for index in pending_groups:
            after(index)
        pending.clear()
        pending_groups.clear()

    for index, tensors in enumerate(groups):
        pending.update(tensors)
        pending_groups.append(index)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        total += size
        del tensors
        if sum(t.numel() * t.element_size() for t in pending.values()) >= SHARD_BYTES:
            flush()
    if pending or not shards:
        flush()
    if len(shards) == 1:
        shards[0][0].rename(folder / WEIGHTS_FILE)
        return
    weight_map = {}
    for i, (path, names) in enumerate(shards, 1):
        final = folder / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        path.rename(final)
        weight_map.update({name: final.name for name in names})
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2, sort_keys=True))


def is_compressed_tensors(folder: Path) -> bool:
    config_path = Path(folder) / "config.json"
    if not config_path.exists():
        return False
    quant = json.loads(config_path.read_text()).get("quantization_config") or {}
    return quant.get("quant_method") == "compressed-tensors"


def is_standard_layout(folder: Path) -> bool:
    """One group targeting "Linear": the layout vLLM's compressed-tensors integration loads."""
    quant = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config") or {}
    groups = list((quant.get("config_groups") or {}).values())
    return len(groups) == 1 and groups[0].get("targets") == ["Linear"]
