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
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.models import families
from services.common.models.safetensors_writer import write_safetensors
from services.quantizer.activations import ActivationScheme
from services.quantizer.qscheme import SCALE_DTYPE, QuantParams, WeightScheme

WEIGHTS_FILE = "model.safetensors"


@dataclass
class QuantizedWeight:
    scheme: WeightScheme
    params: QuantParams
    codes: torch.Tensor  # grid indices as produced by qscheme.quantize, [out, in]
    kind: str = "Linear"  # or "Embedding"
    activations: ActivationScheme | None = None  # W8A8: how the layer's inputs are quantized
    input_scale: torch.Tensor | None = None  # static activation scale, shape [1]


def _exact(module_name: str) -> str:
    """A compressed-tensors target matching exactly this module."""
    return "re:^" + re.escape(module_name) + "$"


def _format(scheme: WeightScheme, activations: ActivationScheme | None = None, kind: str = "Linear") -> str:
    # 8-bit embeddings stay unpacked, the layout transformers reloads them from.
    packed = scheme.symmetric and activations is None and (kind == "Linear" or scheme.bits < 8)
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
    for i, ((scheme, kind, acts), names) in enumerate(sorted(by_scheme.items(), key=lambda kv: sorted(kv[1])[0])):
        grouped = scheme.group_size > 0
        groups[f"group_{i}"] = QuantizationScheme(
            targets=["Linear"] if standard else [_exact(n) for n in sorted(names)],
            weights=QuantizationArgs(num_bits=scheme.bits, type="int", symmetric=scheme.symmetric,
                                     strategy="group" if grouped else "channel",
                                     group_size=scheme.group_size if grouped else None, scale_dtype=SCALE_DTYPE),
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

    out = {f"{name}.weight_scale": qw.params.scale.to(SCALE_DTYPE).contiguous()}
    if qw.params.zero_point is not None:
        out[f"{name}.weight_zero_point"] = _signed(qw.params.zero_point, qw.scheme).to(torch.int8).contiguous()
    if qw.input_scale is not None:
        out[f"{name}.input_scale"] = qw.input_scale.float().reshape(1).contiguous()
    if not codes:
        return out
    signed = _signed(qw.codes, qw.scheme).to(torch.int8)
    if _format(qw.scheme, qw.activations, qw.kind) == "pack-quantized":
        out[f"{name}.weight_packed"] = pack_to_int32(signed, qw.scheme.bits).contiguous()
        out[f"{name}.weight_shape"] = torch.tensor(list(signed.shape), dtype=torch.int64)
    else:
        out[f"{name}.weight"] = signed.contiguous()
    return out


def _check_reloads_packed(model_config, quantized: dict[str, QuantizedWeight]) -> None:
    """A refusal naming the family where stock transformers cannot reload pack-quantized Linears of it."""
    family = families.family_of(model_config)
    if family is None or family.reloads_packed:
        return
    if any(_format(qw.scheme, qw.activations, qw.kind) == "pack-quantized" for qw in quantized.values()):
        raise families.refuse(model_config, "weight-only quantization (compressed-tensors pack-quantized)",
                              "does not reload in stock transformers with packed Linears (its weight init reads "
                              "each Linear's .weight, which a packed one no longer has); W8A8 keeps .weight")


def write_compressed_tensors(source, quantized: dict[str, QuantizedWeight], folder: Path,
                             tied_head: tuple[str, str] | None = None,
                             rewritten: dict[str, torch.Tensor] | None = None) -> None:
    """`source` is a StreamingModel of the float model the codes were computed from;
    `rewritten` holds float tensors the algorithm changed (e.g. norms smoothing folded into)."""
    _check_reloads_packed(source.model.config, quantized)
    folder.mkdir(parents=True, exist_ok=True)
    quantized_keys = {source.key(f"{n}.weight") for n in quantized}
    tensors: dict[str, torch.Tensor] = {}
    for key in source.reader.keys():
        if key not in quantized_keys:
            name = key.removeprefix(source.checkpoint_prefix)
            changed = (rewritten or {}).get(name)
            tensors[name] = (source.reader.get(key) if changed is None else changed).contiguous()
    head = tied_head[0] if tied_head else None
    for name in list(quantized):
        tensors.update(module_tensors(name, quantized[name], codes=name != head))
    tensors.pop(f"{head}.weight", None)
    write_safetensors(folder / WEIGHTS_FILE, tensors, metadata={"format": "pt"})

    float_linears = [n for n, m in source.model.named_modules() if isinstance(m, torch.nn.Linear) and n not in quantized]
    config = json.loads((source.reader.folder / "config.json").read_text())
    config["quantization_config"] = quantization_config(quantized, float_linears)
    config["dtype"] = "float32"
    if tied_head:
        config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


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
