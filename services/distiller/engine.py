"""The distiller's methods, one per loss family: each a typed config and the one training run,
registered here (`@method`); METHODS is the registry the servicer and the in-process API read.

Engine code only: folders in, folder out, progress and checkpoints through a ProgressReporter.
The student is this stage's input, reshaped by the config (students.py), or an uploaded one; the
teacher is the `teacher` artifact or, left empty, the job's input model (so after a prune stage
the pruned model learns from the unpruned original).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from modelpress.v1 import common_pb2
from services.common.calibration.blocks import decoder_blocks
from services.common.contract.engine_api import MODEL_KINDS, ProgressMetric, ProgressReporter, StageResult
from services.common.contract.registry import method, registry
from services.common.datasets.training_data import training_data
from services.common.measure.curves import thin
from services.common.measure.flops import forward_flops, parameter_counts
from services.common.models import modelio
from services.common.models.carried_files import carry_beside_weights
from services.common.models.families import is_causal_lm
from services.common.models.float_checkpoint import refuse_quantized
from services.common.models.reload import reload_difference
from services.distiller.configs import AttentionConfig, FeatureConfig, ResponseConfig, SelfConfig
from services.distiller.data import augment, next_token_proposals
from services.distiller.factorized import factorize
from services.distiller.objectives import Objective
from services.distiller.students import build_student
from services.distiller.training import LoopState, train
from services.distiller.vocabulary import kept_token_ids, rewrite_tokenizer, trim_embeddings

D = common_pb2.TECHNIQUE_DISTILLER
FLOAT = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
CURVE_POINTS = 100


def _architecture(model) -> str:
    return (model.config.architectures or [type(model).__name__])[0]


def check_compatible(teacher_dir: Path, student_dir: Path) -> None:
    """Same kind of model and the same tokenizer, or the losses compare different things."""
    t_config, s_config = modelio.read_config(teacher_dir), modelio.read_config(student_dir)
    t_kind, s_kind = modelio.model_kind(t_config), modelio.model_kind(s_config)
    if t_kind != s_kind:
        raise ValueError(f"teacher and student differ in kind: the teacher is a {t_kind}, the student a {s_kind}")
    t_vocab = modelio.load_tokenizer(teacher_dir).get_vocab()
    s_vocab = modelio.load_tokenizer(student_dir).get_vocab()
    if t_vocab != s_vocab:
        differing = len(set(t_vocab.items()) ^ set(s_vocab.items()))
        raise ValueError(f"teacher and student use different tokenizers ({len(t_vocab)} and {len(s_vocab)} tokens, "
                         f"{differing} entries differ); distill between models of one tokenizer")


def _distill(name: str) -> Callable[[ResponseConfig, Path, Path, ProgressReporter], StageResult]:
    """The training run as method `name` (its config's loss terms make the family)."""

    def run(config: ResponseConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
        return _run(name, config, src, dst, reporter)

    return run


def _run(name: str, config: ResponseConfig, src: Path, dst: Path, reporter: ProgressReporter) -> StageResult:
    reporter.report(0, 1, "loading teacher and student")
    teacher_dir = config.local_path("teacher") or src
    student_dir = config.local_path("student") or src
    for folder in {teacher_dir, student_dir}:
        refuse_quantized(folder)
    check_compatible(teacher_dir, student_dir)
    teacher = modelio.load_model(teacher_dir, dtype=torch.float32)
    student_input = modelio.load_model(student_dir, dtype=torch.float32)
    tokenizer = modelio.load_tokenizer(teacher_dir)
    causal = is_causal_lm(teacher)
    data = training_data(tokenizer, config.text(), causal, config.calibration_samples,
                         config.calibration_sequence_length, config.validation_share)
    proposals = None
    if config.augment_copies and config.augment_source == "teacher":
        reporter.report(0, 1, "the teacher proposes the tokens augmented copies swap in")
        proposals = next_token_proposals(teacher, data, config.augment_top_k)
    augment(data, config.augment_copies, config.augment_share, config.seed, proposals)
    importance = [data.batch(data.train_items[i:i + 8]) for i in range(0, min(len(data.train_items), 32), 8)]
    built = build_student(student_input, config, importance)
    student = built.model
    del student_input
    keep = None
    if config.vocabulary == "corpus":
        if causal:
            raise ValueError("vocabulary: 'corpus' is for encoders; a causal LM's output layer would lose the tokens "
                             "its teacher predicts")
        keep = kept_token_ids(tokenizer, _tokenizer_json(student_dir), data.texts())
        new_of = {old: new for new, old in enumerate(keep)}
        trim_embeddings(student, keep, new_of)
        token_map = torch.zeros(len(tokenizer.get_vocab()), dtype=torch.long)
        token_map[torch.tensor(keep)] = torch.arange(len(keep))
        data.token_map = token_map
    if config.vocabulary == "factorized":
        if causal:
            raise ValueError("vocabulary: 'factorized' is for encoders; a causal LM ties its table to its output layer")
        student = factorize(student, config.embedding_rank, config.calibration_sequence_length)
    objective = Objective(config, student, teacher, built.hidden_basis)

    def prepare_teacher() -> None:
        objective.cache_teacher(data, lambda i, n: reporter.report(0, 1, f"teacher outputs cached ({i}/{n} batches)"))

    before = parameter_counts(teacher)["parameters"]
    state = train(student, objective, data, config, reporter, prepare_teacher)
    reporter.report(1, 1, "saving the student")
    objective.restore(student, teacher)
    student.save_pretrained(dst, safe_serialization=True)
    carry_beside_weights(student_dir, dst)
    if keep is not None:
        rewrite_tokenizer(student_dir, dst, keep)
    sample = data.batch(data.train_items[:1])
    figures = _figures(teacher, student, state, before, config)
    figures.update({"kept_layers": built.kept_layers, "vocabulary_size": len(keep) if keep else None,
                    "embedding_rank": config.embedding_rank if config.vocabulary == "factorized" else None,
                    "train_items": len(data.train_items), "validation_items": len(data.validation_items),
                    "reload_max_abs_difference": reload_difference(
                        student, dst, sample.get("student_input_ids", sample["input_ids"]), sample["attention_mask"],
                        what="the student")})
    figures["tokenizer_round_trip"] = _tokenizer_round_trip(dst, data) if keep is not None else None
    compression = {"method": name, **config.model_dump()}
    return StageResult(format=FLOAT, architecture=_architecture(student), compression=compression, metrics=figures)


def _tokenizer_json(folder: Path) -> dict:
    import json

    path = folder / "tokenizer.json"
    if not path.exists():
        raise ValueError("vocabulary: 'corpus' needs the student's tokenizer.json (a fast tokenizer)")
    return json.loads(path.read_text())


def _figures(teacher, student, state: LoopState, teacher_params: int, config: ResponseConfig) -> dict:
    flops_teacher, _ = forward_flops(teacher, 128)
    flops_student, _ = forward_flops(student, 128)
    params = parameter_counts(student)["parameters"]
    return {
        "steps": state.step, "seconds": round(state.seconds, 1), "stopped": state.stopped, "tokens": state.tokens,
        "precision": state.precision,
        "resumed_from_step": state.resumed_from_step, "best_validation_loss": state.best_validation
        if state.validation else None, "best_step": state.best_step,
        "loss_curves": {name: thin(values, CURVE_POINTS) for name, values in state.curves.items()},
        "validation_curve": state.validation, "validation_perplexity_curve": state.validation_perplexity,
        "parameters_teacher": teacher_params, "parameters": params, "parameters_ratio": params / teacher_params,
        "flops_teacher": flops_teacher, "flops_after": flops_student, "flops_ratio": flops_student / flops_teacher,
        "flops_shape": "1x128", "blocks_teacher": len(decoder_blocks(teacher)), "blocks": len(decoder_blocks(student)),
    }


def _tokenizer_round_trip(folder: Path, data) -> float:
    """Share of training pieces the written tokenizer encodes to exactly the teacher's tokens."""
    tokenizer = modelio.load_tokenizer(folder)
    texts = data.texts()[:200]
    same = 0
    for text in texts:
        teacher_ids = data.tokenizer(text, add_special_tokens=False).input_ids
        student_ids = tokenizer(text, add_special_tokens=False).input_ids
        same += data.token_map[torch.tensor(teacher_ids, dtype=torch.long)].tolist() == student_ids
    return same / len(texts) if texts else 1.0


LOSS = ProgressMetric("loss", "curve", "Training loss (weighted sum of the terms)")
RESPONSE = ProgressMetric("response", "curve", "Response term: logit divergence or pooled-embedding loss")
FEATURE = ProgressMetric("feature", "curve", "Hidden-state MSE of the matched blocks")
ATTENTION = ProgressMetric("attention", "curve", "Attention distribution or relation KL of the matched blocks")
VALIDATION = ProgressMetric("validation_loss", "curve", "Response term at T = 1 on the validation items")
VALIDATION_PERPLEXITY = ProgressMetric("validation_perplexity", "curve",
                                       "Causal LMs: perplexity of the validation items' next tokens")
LEARNING_RATE = ProgressMetric("learning_rate", "schedule", "AdamW learning rate")
TEMPERATURE = ProgressMetric("temperature", "schedule", "Softmax temperature of the matched distributions")

CURVES = (LOSS, RESPONSE, VALIDATION, VALIDATION_PERPLEXITY, LEARNING_RATE, TEMPERATURE)

# Every loss family trains causal LMs (logit divergences) and encoders (pooled embeddings).
method(D, "distill-response", config=ResponseConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS, metrics=CURVES,
       summary="Response-based: KL on temperature-softened logits (forward, reverse, JSD; hard-label mix) for causal "
               "LMs, pooled-embedding MSE/cosine for encoders; student built from the input (layers, MLP width, "
               "vocabulary) or uploaded")(_distill("distill-response"))
method(D, "distill-feature", config=FeatureConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
       metrics=(LOSS, RESPONSE, FEATURE, VALIDATION, LEARNING_RATE, TEMPERATURE),
       summary="Feature-based: the response term plus hidden-state MSE of matched blocks through learned projections "
               "where widths differ")(_distill("distill-feature"))
method(D, "distill-attention", config=AttentionConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS,
       metrics=(LOSS, RESPONSE, ATTENTION, VALIDATION, LEARNING_RATE, TEMPERATURE),
       summary="Attention-based: the response term plus attention-distribution KL (equal heads, TinyBERT) or "
               "Q-Q/K-K/V-V relation KL (MiniLMv2)")(_distill("distill-attention"))
method(D, "distill-self", config=SelfConfig, produces=(FLOAT,), model_kinds=MODEL_KINDS, metrics=CURVES,
       summary="Self-distillation: the stage's input (pruned or otherwise compressed) learns from its own original; "
               "reinitialize=true trains a born-again copy")(_distill("distill-self"))

METHODS = registry(D)
