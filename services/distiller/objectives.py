"""What a distillation stage minimises: the response term on cached teacher outputs, plus the
feature and attention terms its config weighs in, computed against a live teacher forward.

Teacher outputs that the response term needs are computed once for every training and validation
item (top-k logits per token for causal LMs, pooled sentence embeddings for encoders) and kept in
checkpoints, so neither a step nor a resumed run pays the teacher again for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from services.common.calibration.blocks import decoder_blocks
from services.common.datasets.training_data import TrainingData
from services.common.models.architecture import Architecture
from services.common.models.families import is_causal_lm
from services.distiller import temperature as temperatures
from services.distiller.configs import AttentionConfig, FeatureConfig, ResponseConfig, pairs
from services.distiller.losses.attention import distribution_loss, relation_loss
from services.distiller.losses.feature import Projections, hidden_state_loss, layer_map, width_map
from services.distiller.losses.response import (
    embedding_loss,
    logit_divergence,
    mean_pool,
    next_token_cross_entropy,
)

CACHE_BATCH = 8


def _causal(model: nn.Module) -> bool:
    return is_causal_lm(model)


def _forward(model: nn.Module, batch: dict, ids: torch.Tensor, **flags):
    extra = {"use_cache": False} if _causal(model) else {}
    inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch:
        inputs["token_type_ids"] = batch["token_type_ids"]
    return model(**inputs, **extra, **flags)


@contextmanager
def _capture(model: nn.Module, names: list[str]):
    """Outputs of the named submodules during one forward, in the order named."""
    found: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _a, out, n=n: found.__setitem__(n, out)) for n in names]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


class Objective(nn.Module):
    """Its own parameters (feature projections) train with the student."""

    def __init__(self, config: ResponseConfig, student: nn.Module, teacher: nn.Module,
                 hidden_basis: torch.Tensor | None = None) -> None:
        """`hidden_basis` [teacher width, student width]: where a narrower student's directions sit
        in the teacher's space; projections back to the teacher's width start from it."""
        super().__init__()
        self.config = config
        self.causal = _causal(teacher)
        self.teacher = [teacher]  # a list: not a submodule, so not trained or checkpointed
        self.cache: dict[str, torch.Tensor] = {}
        s_blocks, t_blocks = len(decoder_blocks(student)), len(decoder_blocks(teacher))
        self.feature_weight = config.feature_weight if isinstance(config, FeatureConfig) else 0.0
        self.attention_weight = config.attention_weight if isinstance(config, AttentionConfig) else 0.0
        self.pairs: list[tuple[int, int]] = []
        if self.feature_weight or self.attention_weight:
            explicit = pairs(config.feature_layers) if config.feature_layers else None
            self.pairs = layer_map(s_blocks, t_blocks, config.layer_map, config.last_k, explicit)
        self.projections = Projections(self.pairs, student.config.hidden_size, teacher.config.hidden_size,
                                       hidden_basis) if self.feature_weight else None
        # An encoder's pooled embedding is matched in the teacher's width.
        self.pooled_map = None if self.causal else width_map(student.config.hidden_size,
                                                             teacher.config.hidden_size, hidden_basis)
        self.attention_kind = ""
        self.restore_attention: dict[int, str] = {}
        if self.attention_weight:
            self.attention_kind = self._attention_kind(student, teacher)
            if self.attention_kind == "distribution":
                self.restore_attention = {id(m): m.config._attn_implementation for m in (student, teacher)}
                for model in (student, teacher):
                    model.set_attn_implementation("eager")
            else:
                self.relation_heads = config.relation_heads or getattr(teacher.config, "num_key_value_heads", None) \
                    or teacher.config.num_attention_heads

    def _attention_kind(self, student: nn.Module, teacher: nn.Module) -> str:
        same_heads = student.config.num_attention_heads == teacher.config.num_attention_heads
        kind = self.config.attention_loss
        if kind == "distribution" and not same_heads:
            raise ValueError(f"attention_loss: 'distribution' needs equal head counts; the student has "
                             f"{student.config.num_attention_heads}, the teacher {teacher.config.num_attention_heads} "
                             "(use 'relations' or 'auto')")
        if kind == "auto":
            return "distribution" if same_heads else "relations"
        return kind

    def restore(self, *models: nn.Module) -> None:
        """Puts back the attention implementation the models had (eager was only to read probabilities)."""
        for model in models:
            if id(model) in self.restore_attention:
                model.set_attn_implementation(self.restore_attention[id(model)])

    # ---- teacher outputs cached once ---------------------------------------------------

    @torch.no_grad()
    def cache_teacher(self, data: TrainingData, on_batch: Callable[[int, int], None]) -> None:
        teacher = self.teacher[0]
        items = sorted(data.train_items + data.validation_items)
        chunks = [items[i:i + CACHE_BATCH] for i in range(0, len(items), CACHE_BATCH)]
        values, ids, pooled = [], [], []
        for n, chunk in enumerate(chunks, start=1):
            batch = data.batch(chunk)
            out = _forward(teacher, batch, batch["input_ids"])
            if self.causal:
                top = out.logits.float().topk(self.config.top_k, dim=-1)
                values.append(top.values.half())
                ids.append(top.indices.int())
            else:
                pooled.append(mean_pool(out.last_hidden_state.float(), batch["attention_mask"]))
            on_batch(n, len(chunks))
        position = torch.full((max(items) + 1,), -1, dtype=torch.long)
        position[torch.tensor(items)] = torch.arange(len(items))
        self.cache = {"position": position}
        if self.causal:
            self.cache.update(top_values=torch.cat(values), top_ids=torch.cat(ids))
        else:
            self.cache["pooled"] = torch.cat(pooled)

    # ---- the loss -----------------------------------------------------------------------

    def temperature_for(self, batch: dict, progress: float) -> float:
        c = self.config
        if not self.causal or c.temperature_schedule == "constant":
            return c.temperature
        if c.temperature_schedule == "annealed":
            return temperatures.annealed(c.temperature, c.final_temperature, progress)
        rows = self.cache["position"][batch["index"]]
        return temperatures.adaptive(self.cache["top_values"][rows], c.target_entropy)

    def forward(self, student: nn.Module, batch: dict, progress: float) -> dict[str, torch.Tensor]:
        """The loss terms of one batch, 'loss' their weighted sum; `progress` in [0, 1] drives annealing."""
        c = self.config
        ids = batch.get("student_input_ids", batch["input_ids"])
        relations = self.attention_kind == "relations"
        arch = Architecture(student, "attention relations (distillation)") if relations else None
        names = [f"{self._block_name(student, s)}.{n}" for s, _ in self.pairs for n in arch.qkv] if arch else []
        flags = {"output_hidden_states": bool(self.feature_weight),
                 "output_attentions": self.attention_kind == "distribution"}
        with _capture(student, names) as student_qkv:
            out = _forward(student, batch, ids, **{k: v for k, v in flags.items() if v})
        rows = self.cache["position"][batch["index"]]
        terms: dict[str, torch.Tensor] = {}
        temperature = self.temperature_for(batch, progress)
        if self.causal:
            kd = logit_divergence(out.logits, self.cache["top_values"][rows], self.cache["top_ids"][rows],
                                  temperature, c.divergence, batch["attention_mask"])
            terms["response"] = kd
            if c.alpha < 1.0:
                terms["cross_entropy"] = next_token_cross_entropy(out.logits, ids)
            total = c.alpha * kd + (1 - c.alpha) * terms.get("cross_entropy", 0.0)
        else:
            pooled = self.pooled_map(mean_pool(out.last_hidden_state.float(), batch["attention_mask"]))
            terms["response"] = embedding_loss(pooled, self.cache["pooled"][rows], c.embedding_loss)
            total = terms["response"]
        if self.feature_weight or self.attention_weight:
            teacher = self.teacher[0]
            t_arch = Architecture(teacher, "attention relations (distillation)") if arch else None
            t_names = [f"{self._block_name(teacher, t)}.{n}" for _, t in self.pairs for n in t_arch.qkv] if t_arch else []
            with torch.no_grad(), _capture(teacher, t_names) as teacher_qkv:
                t_out = _forward(teacher, batch, batch["input_ids"], **{k: v for k, v in flags.items() if v})
            mask = batch["attention_mask"]
            if self.feature_weight:
                terms["feature"] = hidden_state_loss(out.hidden_states, t_out.hidden_states, self.projections, mask)
                total = total + self.feature_weight * terms["feature"]
            if self.attention_kind == "distribution":
                terms["attention"] = distribution_loss(out.attentions, t_out.attentions, self.pairs, mask)
            elif self.attention_kind == "relations":
                terms["attention"] = sum(
                    relation_loss(tuple(student_qkv[n] for n in names[3 * i:3 * i + 3]),
                                  tuple(teacher_qkv[n] for n in t_names[3 * i:3 * i + 3]), self.relation_heads, mask)
                    for i in range(len(self.pairs))) / len(self.pairs)
            if self.attention_kind:
                total = total + self.attention_weight * terms["attention"]
        terms["loss"] = total
        terms["temperature"] = torch.tensor(temperature)
        return terms

    @staticmethod
    def _block_name(model: nn.Module, one_based: int) -> str:
        blocks = decoder_blocks(model)
        names = {id(m): n for n, m in model.named_modules()}
        return names[id(blocks[one_based - 1])]

    @torch.no_grad()
    def validate(self, student: nn.Module, batches: list[dict]) -> dict[str, float]:
        """The response term at temperature 1 on the validation items (`validation_loss`: comparable
        across steps whatever the temperature schedule) and, for a causal LM, its perplexity on their
        next tokens (`validation_perplexity`: what a user reads against the tokens trained on)."""
        total, nll, count = 0.0, 0.0, 0
        for batch in batches:
            ids = batch.get("student_input_ids", batch["input_ids"])
            out = _forward(student, batch, ids)
            rows = self.cache["position"][batch["index"]]
            if self.causal:
                value = logit_divergence(out.logits, self.cache["top_values"][rows], self.cache["top_ids"][rows],
                                         1.0, "forward-kl", batch["attention_mask"])
                nll += float(next_token_cross_entropy(out.logits, ids)) * len(batch["index"])
            else:
                value = embedding_loss(self.pooled_map(mean_pool(out.last_hidden_state.float(),
                                                                 batch["attention_mask"])),
                                       self.cache["pooled"][rows], self.config.embedding_loss)
            total += float(value) * len(batch["index"])
            count += len(batch["index"])
        figures = {"validation_loss": total / count if count else 0.0}
        if self.causal and count:
            figures["validation_perplexity"] = math.exp(nll / count)
        return figures
