"""The block-level pieces data-aware algorithms share: the inputs captured at the first
block, running one block on them, and the per-Linear Hessians (the text windows are in
services/common/datasets/calibration_text.py). Only the current block's inputs are ever held (see sequential.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from services.common.models.families import is_causal_lm


class _StopForward(Exception):
    pass


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The repeated blocks (Llama-style `model.layers`, BERT-style `encoder.layer`, ...)."""
    best: nn.ModuleList | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ValueError("unsupported architecture: no repeated blocks (nn.ModuleList) found")
    return best


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per sample, and the shared kwargs."""

    hidden: list[torch.Tensor]
    kwargs: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, batches: torch.Tensor) -> BlockInputs:
    blocks = decoder_blocks(model)
    captured = BlockInputs(hidden=[])

    def grab(module, args, kwargs):
        # Every argument by name, so a block given more than its hidden states positionally (DeBERTa's
        # attention mask) gets them again when run_block calls it with keywords.
        parameters = list(inspect.signature(module.forward).parameters)
        named = dict(zip(parameters, args)) | kwargs
        hidden = named.pop(parameters[0] if parameters[0] in named else "hidden_states")
        captured.hidden.append(hidden.detach())
        if not captured.kwargs:
            captured.kwargs = named
        raise _StopForward

    # A decoder must not build a KV cache here; encoders take no such argument.
    extra = {"use_cache": False} if is_causal_lm(model) else {}
    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for sample in batches:
            try:
                model(input_ids=sample.unsqueeze(0), **extra)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, inputs: BlockInputs, keep: bool = True) -> list[torch.Tensor]:
    """The block's outputs for every sample; with `keep=False` only run it (for its hooks)."""
    outputs = []
    with torch.no_grad():
        for hidden in inputs.hidden:
            out = block(hidden, **inputs.kwargs)
            if keep:
                outputs.append((out[0] if isinstance(out, tuple) else out).detach())
    return outputs


def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


@dataclass
class InputStats:
    """What a block's calibration pass saw entering one Linear."""

    hessian: torch.Tensor  # H = 2/n · Σ xᵀx  [in, in]
    abs_mean: torch.Tensor  # mean |x| per input channel (AWQ's activation salience)
    abs_max: torch.Tensor  # max |x| per input channel (SmoothQuant, static activation ranges)
    sample: list[torch.Tensor]  # every k-th row, for searches whose loss is not quadratic
    rows: int = 0

    def sample_rows(self) -> torch.Tensor:
        return torch.cat(self.sample) if self.sample else torch.zeros(0, self.hessian.shape[0])


class InputStatsCollector:
    """Accumulates InputStats over the rows fed to each Linear of a block.

    `sample_every` > 0 also keeps every k-th input row (a fixed stride, so reruns agree).
    """

    def __init__(self, layers: dict[str, nn.Linear], sample_every: int = 0) -> None:
        self.stats = {name: InputStats(torch.zeros(m.in_features, m.in_features), torch.zeros(m.in_features),
                                       torch.zeros(m.in_features), []) for name, m in layers.items()}
        self.sample_every = sample_every
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    @property
    def hessians(self) -> dict[str, torch.Tensor]:
        return {name: s.hessian for name, s in self.stats.items()}

    def _hook(self, name: str) -> Callable:
        def accumulate(_module, args, _output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            stats = self.stats[name]
            n_old, n_new = stats.rows, x.shape[0]
            keep = n_old / (n_old + n_new)
            stats.hessian.mul_(keep).addmm_(x.T, x, alpha=2.0 / (n_old + n_new))
            magnitude = x.abs()
            stats.abs_mean.mul_(keep).add_(magnitude.sum(dim=0), alpha=1.0 / (n_old + n_new))
            torch.maximum(stats.abs_max, magnitude.amax(dim=0), out=stats.abs_max)
            if self.sample_every:
                stats.sample.append(x[:: self.sample_every].clone())
            stats.rows = n_old + n_new

        return accumulate

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the LM head (Llama's `model.norm`, GPT-2's `ln_f`,
    GPT-NeoX's `final_layer_norm`): the one norm among the base model's own children; None when
    there is not exactly one."""
    blocks = decoder_blocks(model)
    base = getattr(model, "base_model", model)
    norms = [m for m in base.children() if m is not blocks and "norm" in type(m).__name__.lower()]
    return norms[0] if len(norms) == 1 else None


def named_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    return [(f"{prefix}.{i}", block) for i, block in enumerate(blocks)]


def shared_input_groups(hessians: dict[str, torch.Tensor], schemes: dict[str, object] | None = None
                        ) -> list[list[str]]:
    """Names grouped by identical Hessian (layers fed the same input) and, when given, the
    same scheme, in block order."""
    groups: list[list[str]] = []
    for name, h in hessians.items():
        for group in groups:
            first = hessians[group[0]]
            if schemes is not None and schemes[group[0]] != schemes[name]:
                continue
            if first.shape == h.shape and torch.equal(first, h):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def split_rows(name_modules: list[tuple[str, nn.Linear]]) -> Iterator[tuple[str, slice]]:
    """Row slices of a tensor stacked from these modules' weights, in order."""
    row = 0
    for name, module in name_modules:
        yield name, slice(row, row + module.weight.shape[0])
        row += module.weight.shape[0]
