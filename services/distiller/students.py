"""Students built from a model: fewer blocks (uniform or by block importance), a narrower MLP,
a trimmed vocabulary (vocabulary.py) or new weights of the same shape (born-again). Every student
is a model of the teacher's own class that stock transformers reloads from its config; a factorized
table (factorized.py, applied by the caller) makes an encoder an AlbertModel, which it reloads too."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from services.common.models.families import is_causal_lm
from services.common.models.architecture import Architecture, keep_layers
from services.common.calibration.blocks import decoder_blocks
from services.distiller.configs import StudentConfig
from services.distiller.data import model_inputs
from services.distiller.width import hidden_basis, narrow_hidden


@dataclass
class BuiltStudent:
    model: nn.Module
    kept_layers: list[int] = field(default_factory=list)  # 0-based blocks of the input kept
    vocabulary: list[int] | None = None  # old token ids kept, ascending; None = the input's vocabulary
    token_map: dict[int, int] | None = None
    # [input width, student width] when the hidden width was narrowed: maps the student's states
    # back to the input's directions (the objective starts its projections from it).
    hidden_basis: torch.Tensor | None = None


def uniform_layers(total: int, keep: int) -> list[int]:
    """The last block of each of `keep` equal groups, so the input's last block is always kept."""
    return sorted({round((j + 1) * total / keep) - 1 for j in range(keep)})


@torch.no_grad()
def block_influence(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """1 - mean cos(block input, block output) over the real tokens (ShortGPT's block influence):
    a block that barely turns the residual stream matters least."""
    blocks = len(decoder_blocks(model))
    totals, count = torch.zeros(blocks), 0
    extra = {"use_cache": False} if is_causal_lm(model) else {}
    for batch in batches:
        states = model(**model_inputs(batch), output_hidden_states=True, **extra).hidden_states
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
        for i in range(blocks):
            cos = nn.functional.cosine_similarity(states[i].float(), states[i + 1].float(), dim=-1)
            totals[i] += float(cos[mask].sum())
        count += int(mask.sum())
    return 1.0 - totals / count


def _mlp_keep(arch: Architecture, block: nn.Module, width: int) -> torch.Tensor:
    """Neurons with the largest ‖input rows‖·‖output column‖, in their order."""
    weight = lambda w: w.detach().float()
    norm = lambda t: t.norm(dim=-1)
    rows, cols = arch.mlp_rows(block, weight, norm), arch.mlp_columns(block, weight, norm)
    return (rows * cols).topk(width).indices.sort().values


def build_student(model: nn.Module, config: StudentConfig, batches: list[dict] | None = None) -> BuiltStudent:
    """A new model from `model` (left unchanged). `batches` of calibration text: what block
    importance and a narrower hidden width are measured on. Vocabulary trimming is applied by the
    caller, which owns the tokenizer files."""
    student = copy.deepcopy(model)
    blocks = decoder_blocks(student)
    total = len(blocks)
    kept = list(range(total))
    layers = config.kept_layers(total)
    if layers != total:
        if layers > total:
            raise ValueError(f"student_layers: {layers} asked, the input has {total} blocks")
        if config.layer_selection == "uniform":
            kept = uniform_layers(total, layers)
        else:
            if not batches:
                raise ValueError("layer_selection: 'importance' needs calibration batches")
            kept = sorted(block_influence(student, batches).topk(layers).indices.tolist())
        keep_layers(student, blocks, kept)
    if config.student_mlp_width:
        arch = Architecture(student, "a student (distillation)")
        for block in decoder_blocks(student):
            width = arch.mlp_width(block)
            if config.student_mlp_width > width:
                raise ValueError(f"student_mlp_width: {config.student_mlp_width} asked, the input's MLP is {width} wide")
            arch.cut_mlp(block, _mlp_keep(arch, block, config.student_mlp_width))
        arch.set_mlp_width(config.student_mlp_width)  # the family's field (intermediate_size, n_inner ...)
    basis = None
    hidden = student.config.hidden_size
    if config.student_hidden_size and config.student_hidden_size != hidden:
        if config.student_hidden_size > hidden:
            raise ValueError(f"student_hidden_size: {config.student_hidden_size} asked, the input is {hidden} wide")
        if not batches:
            raise ValueError("student_hidden_size: needs calibration batches")
        basis = hidden_basis(student, batches, config.student_hidden_size)
        narrow_hidden(student, decoder_blocks(student), basis)
    if config.reinitialize:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        try:
            student.apply(student._init_weights)
            if hasattr(student, "tie_weights"):
                student.tie_weights()
        finally:
            torch.random.set_rng_state(generator_state)
    return BuiltStudent(student, kept, hidden_basis=basis)
