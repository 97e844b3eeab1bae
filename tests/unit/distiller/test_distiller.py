"""Distiller on tiny random models: losses, temperatures, students, the training loop and its resume."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import pytest
import torch

from services.common.models import modelio
from services.common.contract.config import parse_config
from services.common.contract.engine_api import ProgressReporter
from services.distiller import temperature
from services.distiller.configs import FeatureConfig, ResponseConfig, StudentConfig
from services.distiller.engine import METHODS
from services.distiller.losses.attention import relation, relation_loss
from services.distiller.losses.feature import Projections, hidden_state_loss, layer_map
from services.distiller.losses.response import embedding_loss, logit_divergence
from services.distiller.students import build_student, uniform_layers
from tests.memory_checkpoints import MemoryCheckpoints

SHORT = {"max_steps": 4, "calibration_samples": 24, "calibration_sequence_length": 32, "batch_size": 4,
         "validate_every": 2, "checkpoint_every": 2, "warmup_steps": 1}


@pytest.fixture(scope="module")
def deep_bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    from tests.conftest import _copy_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bert4")
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=2)).eval().save_pretrained(folder)
    _copy_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import _copy_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama4")
    LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
                     ).eval().save_pretrained(folder)
    _copy_tokenizer(folder)
    return folder


@pytest.mark.parametrize("divergence", ["forward-kl", "reverse-kl", "jsd"])
def test_each_logit_divergence_is_zero_for_the_teacher_itself_and_positive_otherwise(divergence):
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 50) * 3
    top = teacher.topk(50, dim=-1)  # the whole vocabulary: the student equal to the teacher is exact
    same = logit_divergence(teacher, top.values, top.indices, 2.0, divergence)
    other = logit_divergence(torch.randn(2, 5, 50), top.values, top.indices, 2.0, divergence)
    assert abs(float(same)) < 1e-5 and float(other) > 1e-3


def test_the_embedding_losses_vanish_only_at_the_teacher():
    teacher = torch.randn(4, 16)
    for kind in ("mse", "cosine", "mse+cosine"):
        assert float(embedding_loss(teacher.clone(), teacher, kind)) < 1e-6
        assert float(embedding_loss(teacher + torch.randn(4, 16), teacher, kind)) > 1e-3


def test_hidden_state_and_relation_losses_vanish_at_the_teacher_and_train_the_student_only():
    torch.manual_seed(0)
    states = tuple(torch.randn(2, 6, 8) for _ in range(3))
    mask = torch.ones(2, 6)
    pairs = layer_map(2, 2, "uniform")
    assert float(hidden_state_loss(states, states, Projections(pairs, 8, 8), mask)) < 1e-9
    student = tuple(s.clone().requires_grad_(True) for s in states)
    teacher = tuple(s + torch.randn_like(s) for s in states)
    loss = relation_loss(student, teacher, 2, mask)
    assert float(relation_loss(teacher, teacher, 2, mask)) < 1e-5 and float(loss) > 1e-3
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(not t.requires_grad for t in teacher)
    # Relations compare different widths through the same number of heads.
    assert relation(torch.randn(2, 6, 12), 3, mask).shape == relation(torch.randn(2, 6, 6), 3, mask).shape


def test_layer_maps_and_uniform_selection_keep_the_last_block():
    assert layer_map(3, 6, "uniform") == [(1, 2), (2, 4), (3, 6)]
    assert layer_map(3, 6, "last-k", last_k=2) == [(2, 5), (3, 6)]
    with pytest.raises(ValueError, match="feature_layers"):
        layer_map(3, 6, "uniform", explicit=[(4, 1)])
    assert uniform_layers(6, 3) == [1, 3, 5] and uniform_layers(30, 22)[-1] == 29


def test_temperature_schedules():
    assert temperature.annealed(4.0, 1.0, 0.5) == pytest.approx(2.5)
    peaked = torch.tensor([[20.0, 0.0, 0.0, 0.0]])
    t = temperature.adaptive(peaked, 0.5)
    assert temperature.mean_entropy(peaked, t) == pytest.approx(0.5 * math.log(4), rel=1e-3)
    assert t > temperature.adaptive(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), 0.5)  # a peaked teacher is softened more


def test_a_student_built_from_its_teacher_has_the_asked_shape_and_reloads(deep_llama_dir, tmp_path):
    teacher = modelio.load_model(deep_llama_dir)
    config = parse_config(StudentConfig, {"student_layers": 2, "student_mlp_width": 64})
    built = build_student(teacher, config)
    assert built.kept_layers == [1, 3] and len(teacher.model.layers) == 4  # the teacher is left whole
    built.model.save_pretrained(tmp_path)
    reloaded = modelio.load_model(tmp_path)
    assert reloaded.config.num_hidden_layers == 2 and reloaded.config.intermediate_size == 64
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, built.model(input_ids=ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match="student_layers"):
        parse_config(StudentConfig, {"student_layers": 2, "student": "a-123"})


def test_a_full_width_rotation_leaves_an_rmsnorm_model_unchanged_and_a_narrower_one_reloads(deep_llama_dir,
                                                                                            tmp_path):
    # With unit norm gains, any orthonormal basis of the full width is a rotation of the residual
    # stream: every reader, writer, embedding and the tied head must follow it for the logits to stay.
    from services.common.calibration.blocks import decoder_blocks
    from services.distiller.width import hidden_basis, narrow_hidden

    model = modelio.load_model(deep_llama_dir)
    with torch.no_grad():
        for module in model.modules():
            if "RMSNorm" in type(module).__name__:
                module.weight.fill_(1.0)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    rotated = copy.deepcopy(model)
    torch.manual_seed(1)
    basis = torch.linalg.qr(torch.randn(64, 64)).Q
    narrow_hidden(rotated, decoder_blocks(rotated), basis)
    with torch.no_grad():
        assert torch.allclose(rotated(input_ids=ids).logits, before, atol=1e-4)
    narrow = copy.deepcopy(model)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "index": torch.arange(2)}
    narrow_hidden(narrow, decoder_blocks(narrow), hidden_basis(narrow, [batch], 32))
    narrow.save_pretrained(tmp_path)
    reloaded = modelio.load_model(tmp_path)
    assert reloaded.config.hidden_size == 32 and reloaded.config.head_dim == model.config.head_dim
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()  # still tied
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, narrow(input_ids=ids).logits, atol=1e-5)


def test_a_narrower_encoder_student_starts_closer_to_its_teacher_than_new_weights_of_its_shape(deep_bert_dir,
                                                                                               tmp_path):
    method = METHODS["distill-response"]
    runs = {}
    for label, extra in (("principal", {}), ("new", {"reinitialize": True})):
        config = parse_config(method.config_cls, {**SHORT, "max_steps": 1, "student_hidden_size": 16, **extra})
        runs[label] = method.run(config, deep_bert_dir, tmp_path / label, ProgressReporter()).metrics
    narrow = modelio.load_model(tmp_path / "principal")
    assert narrow.config.hidden_size == 16 and narrow.encoder.layer[0].attention.self.query.weight.shape == (16, 16)
    assert runs["principal"]["parameters"] < 0.6 * runs["principal"]["parameters_teacher"]
    assert runs["principal"]["reload_max_abs_difference"] < 1e-4
    assert runs["principal"]["loss_curves"]["response"][0] < runs["new"]["loss_curves"]["response"][0]
    with pytest.raises(ValueError, match="not a multiple of the 2 attention heads"):
        method.run(parse_config(method.config_cls, {**SHORT, "student_hidden_size": 15}), deep_bert_dir,
                   tmp_path / "odd", ProgressReporter())


def test_a_trimmed_vocabulary_tokenizes_the_training_text_as_before_and_reloads(deep_bert_dir, tmp_path):
    method = METHODS["distill-response"]
    config = parse_config(method.config_cls, {**SHORT, "student_layers": 2, "vocabulary": "corpus"})
    result = method.run(config, deep_bert_dir, tmp_path / "out", ProgressReporter())
    figures = result.metrics
    assert figures["tokenizer_round_trip"] == 1.0 and figures["vocabulary_size"] < 30522 / 4
    assert figures["parameters_ratio"] < 0.5 and figures["reload_max_abs_difference"] < 1e-4
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model = AutoModel.from_pretrained(tmp_path / "out")
    ids = tokenizer(["a word the corpus never used: zyxwvut"], return_tensors="pt").input_ids
    assert tokenizer.unk_token_id not in ids[0].tolist() and int(ids.max()) < model.config.vocab_size


@pytest.mark.parametrize("method,extra", [("distill-feature", {"student_layers": 2}),
                                          ("distill-attention", {"student_layers": 2, "attention_loss": "distribution"}),
                                          ("distill-attention", {"student_layers": 2, "attention_loss": "relations"}),
                                          ("distill-response", {"student_layers": 2, "alpha": 0.5,
                                                                "temperature_schedule": "adaptive"})])
def test_every_family_trains_a_causal_student_whose_loss_terms_are_reported(deep_llama_dir, tmp_path, method, extra):
    entry = METHODS[method]
    events = []
    result = entry.run(parse_config(entry.config_cls, {**SHORT, **extra}), deep_llama_dir, tmp_path,
                       ProgressReporter(sink=events.append))
    curves = result.metrics["loss_curves"]
    assert result.metrics["steps"] == 4 and result.metrics["blocks"] == 2
    expected = {"distill-feature": "feature", "distill-attention": "attention"}.get(method, "cross_entropy")
    assert expected in curves and all(v > 0 for v in curves[expected])
    assert [e.step for e in events if "loss" in e.metrics] == [1, 2, 3, 4]
    assert len(result.metrics["validation_curve"]) >= 2


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(deep_bert_dir, tmp_path):
    entry = METHODS["distill-feature"]
    config = parse_config(FeatureConfig, {**SHORT, "max_steps": 6, "student_layers": 2, "student_mlp_width": 32})
    whole = entry.run(config, deep_bert_dir, tmp_path / "whole", ProgressReporter())
    checkpoints = MemoryCheckpoints(tmp_path, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        entry.run(config, deep_bert_dir, tmp_path / "killed", ProgressReporter(checkpoints=checkpoints))
    checkpoints.stop_after = 0
    resumed = entry.run(config, deep_bert_dir, tmp_path / "resumed", ProgressReporter(checkpoints=checkpoints))
    assert resumed.metrics["resumed_from_step"] == 2 and checkpoints.saves == [2, 4, 6]
    assert resumed.metrics["loss_curves"]["loss"] == pytest.approx(whole.metrics["loss_curves"]["loss"], rel=1e-5)
    a, b = modelio.load_model(tmp_path / "whole"), modelio.load_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_a_teacher_with_another_tokenizer_or_kind_is_refused(deep_bert_dir, deep_llama_dir, tmp_path):
    entry = METHODS["distill-response"]
    config = parse_config(ResponseConfig, {**SHORT, "teacher": "a-teacher"})
    config.bind_local("teacher", deep_bert_dir)
    with pytest.raises(ValueError, match="differ in kind"):
        entry.run(config, deep_llama_dir, tmp_path / "a", ProgressReporter())
    other = tmp_path / "other-tokenizer"
    shutil.copytree(deep_bert_dir, other)
    vocab = (other / "vocab.txt").read_text().splitlines()
    (other / "vocab.txt").write_text("\n".join(vocab[:-1] + ["[EXTRA]"]) + "\n")
    (other / "tokenizer.json").unlink()
    config = parse_config(ResponseConfig, {**SHORT, "teacher": "a-teacher"})
    config.bind_local("teacher", other)
    with pytest.raises(ValueError, match="different tokenizers"):
        entry.run(config, deep_bert_dir, tmp_path / "b", ProgressReporter())


def test_self_distillation_starts_at_zero_loss_and_born_again_does_not(deep_bert_dir, tmp_path):
    # An encoder: its pooled-embedding loss is exactly zero at the teacher (a causal LM's top-k
    # KL is not, by design: mass outside the teacher's top-k still counts against the student).
    entry = METHODS["distill-self"]
    original = copy.deepcopy(modelio.load_model(deep_bert_dir).state_dict())
    same = entry.run(parse_config(entry.config_cls, {**SHORT, "max_steps": 1}), deep_bert_dir, tmp_path / "same",
                     ProgressReporter())
    born = entry.run(parse_config(entry.config_cls, {**SHORT, "max_steps": 1, "reinitialize": True}),
                     deep_bert_dir, tmp_path / "born", ProgressReporter())
    assert same.metrics["loss_curves"]["response"][0] < 1e-4 < born.metrics["loss_curves"]["response"][0]
    assert all(torch.equal(v, original[k]) for k, v in modelio.load_model(deep_bert_dir).state_dict().items())


def test_training_that_only_loses_on_the_validation_items_hands_back_its_input(deep_bert_dir, tmp_path):
    # The student is its own teacher: zero loss before the first step, so no step can beat the input.
    entry = METHODS["distill-self"]
    result = entry.run(parse_config(entry.config_cls, {**SHORT, "learning_rate": 0.05}), deep_bert_dir,
                       tmp_path / "out", ProgressReporter())
    assert result.metrics["best_step"] == 0 and result.metrics["steps"] == SHORT["max_steps"]
    assert [row[0] for row in result.metrics["validation_curve"]] == [0, 2, 4]
    assert result.metrics["validation_curve"][0][1] < 1e-6 < result.metrics["validation_curve"][-1][1]
    given, out = modelio.load_model(deep_bert_dir).state_dict(), modelio.load_model(tmp_path / "out").state_dict()
    assert all(torch.equal(v, given[k]) for k, v in out.items())


def test_in_process_a_pipelines_self_distillation_learns_from_the_model_before_its_first_stage(deep_bert_dir, tmp_path):
    # prune -> distill-self: the teacher left empty is the unpruned original (as in the mesh), so
    # the first loss is the pruning's damage, not zero (which the pruned model as its own teacher gives).
    import modelpress

    short = {k: v for k, v in SHORT.items() if k != "checkpoint_every"} | {"max_steps": 1}
    run = modelpress.compress(deep_bert_dir, [
        {"technique": "pruner", "method": "layers", "config": {"layers_keep": 2, "calibration_samples": 4,
                                                                "calibration_sequence_length": 32}},
        {"technique": "distiller", "method": "distill-self", "config": short}], tmp_path / "out")
    first_loss = run.stages[1].result.metrics["loss_curves"]["response"][0]
    assert first_loss > 1e-5, first_loss
    assert run.stages[1].result.metrics["parameters_teacher"] > run.stages[1].result.metrics["parameters"]


def test_a_factorized_vocabulary_keeps_the_teacher_tokenizer_and_loads_in_sentence_transformers(deep_bert_dir,
                                                                                                   tmp_path):
    method = METHODS["distill-response"]
    config = parse_config(method.config_cls, {**SHORT, "student_layers": 2, "vocabulary": "factorized",
                                              "embedding_rank": 8})
    result = method.run(config, deep_bert_dir, tmp_path / "out", ProgressReporter())
    figures = result.metrics
    assert result.architecture == "AlbertModel" and figures["embedding_rank"] == 8 and figures["blocks"] == 2
    assert figures["parameters_ratio"] < 0.5 and figures["reload_max_abs_difference"] < 1e-4
    teacher, student = (modelio.load_tokenizer(f) for f in (deep_bert_dir, tmp_path / "out"))
    assert student.get_vocab() == teacher.get_vocab()
    from sentence_transformers import SentenceTransformer

    embedding = SentenceTransformer(str(tmp_path / "out"), device="cpu").encode(["a word: zyxwvut"])
    assert embedding.shape == (1, 32)


def test_a_causal_lm_keeps_its_table_whole(deep_llama_dir, tmp_path):
    method = METHODS["distill-response"]
    with pytest.raises(ValueError, match="'factorized' is for encoders"):
        method.run(parse_config(method.config_cls, {**SHORT, "vocabulary": "factorized", "embedding_rank": 8}),
                   deep_llama_dir, tmp_path, ProgressReporter())


def test_the_learning_rate_decays_over_whichever_budget_ends_the_run_first():
    from services.distiller.training import LoopState, _learning_rate

    def lr(step: int, tokens: int, **bounds) -> float:
        config = parse_config(ResponseConfig, {"learning_rate": 1e-3, "warmup_steps": 2, **bounds})
        return _learning_rate(config, LoopState(step=step, tokens=tokens))

    assert lr(1, 0, max_tokens=1000) == pytest.approx(5e-4)  # warm-up
    assert lr(3, 0, max_tokens=1000) == pytest.approx(1e-3)
    assert lr(9, 500, max_tokens=1000) == pytest.approx(0.55e-3)  # half the tokens: half-way down the cosine
    assert lr(50, 1000, max_tokens=1000) == pytest.approx(1e-4)  # to a tenth at the end
    assert lr(50, 1000) == pytest.approx(1e-3)  # time alone: the end is not known, the peak is kept
    # Steps net of the warm-up, and the tighter of the two bounds.
    assert lr(12, 100, max_steps=22, max_tokens=1000) == pytest.approx(0.55e-3)
    assert lr(12, 1000, max_steps=22, max_tokens=1000) == pytest.approx(1e-4)


def test_a_token_budget_stops_training_and_the_validation_curve_counts_tokens_seen(deep_llama_dir, tmp_path):
    method = METHODS["distill-response"]
    per_step = SHORT["batch_size"] * SHORT["calibration_sequence_length"]  # causal windows: no padding
    config = parse_config(method.config_cls, {**SHORT, "max_steps": 0, "max_tokens": 3 * per_step,
                                              "student_layers": 2})
    figures = method.run(config, deep_llama_dir, tmp_path, ProgressReporter()).metrics
    assert figures["stopped"] == "max_tokens" and figures["steps"] == 3 and figures["tokens"] == 3 * per_step
    # The curve starts with the input itself, before any token.
    assert [row[2] for row in figures["validation_curve"]] == [0, 2 * per_step, 3 * per_step]
    # Perplexity beside it, of the same validations: a random model's is about its vocabulary (30,522).
    assert [(row[0], row[2]) for row in figures["validation_perplexity_curve"]] == [(0, 0), (2, 2 * per_step),
                                                                                   (3, 3 * per_step)]
    assert all(15_000 < row[1] < 60_000 for row in figures["validation_perplexity_curve"])


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_dot_products(monkeypatch):
    from services.common.measure.machine import Machine
    from services.distiller import training

    for flags, expected in ((["avx2", "avx512_vnni"], "fp32"), (["avx512_vnni", "avx512_bf16"], "bf16"),
                            (["amx_bf16", "amx_int8"], "bf16")):
        monkeypatch.setattr(training, "this_cpu", lambda flags=flags: Machine("cpu", 2, 2, isa_features=flags))
        assert training.training_precision("auto") == expected
    assert training.training_precision("fp32") == "fp32" and training.training_precision("bf16") == "bf16"


def test_a_bf16_run_multiplies_in_bf16_while_training_and_validates_in_fp32(deep_llama_dir, tmp_path):
    method = METHODS["distill-response"]
    config = parse_config(method.config_cls, {**SHORT, "student_layers": 2, "precision": "bf16"})
    dtypes: list[tuple[bool, torch.dtype]] = []
    original = torch.nn.Linear.forward

    def recording(self, x):
        out = original(self, x)
        dtypes.append((torch.is_grad_enabled(), out.dtype))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.Linear, "forward", recording)
        figures = method.run(config, deep_llama_dir, tmp_path, ProgressReporter()).metrics
    assert figures["precision"] == "bf16" and figures["steps"] == 4
    assert {d for grad, d in dtypes if grad} == {torch.bfloat16}  # every training step's matmuls
    assert {d for grad, d in dtypes if not grad} == {torch.float32}  # teacher cache and validation
    assert all(math.isfinite(v) for v in figures["loss_curves"]["loss"])
    reloaded = modelio.load_model(tmp_path)
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())


def test_teacher_proposed_copies_train_a_causal_student_and_an_encoder_is_refused_naming_the_field(
        deep_llama_dir, deep_bert_dir, tmp_path):
    method = METHODS["distill-response"]
    plain = method.run(parse_config(method.config_cls, {**SHORT, "student_layers": 2}), deep_llama_dir,
                       tmp_path / "plain", ProgressReporter()).metrics
    teacher = {"augment_copies": 2, "augment_source": "teacher", "augment_top_k": 4}
    copied = method.run(parse_config(method.config_cls, {**SHORT, "student_layers": 2, **teacher}), deep_llama_dir,
                        tmp_path / "copied", ProgressReporter()).metrics
    assert copied["train_items"] == 3 * plain["train_items"]
    assert copied["validation_items"] == plain["validation_items"]  # validation stays on the text as written
    with pytest.raises(ValueError, match="augment_source"):
        method.run(parse_config(method.config_cls, {**SHORT, **teacher}), deep_bert_dir, tmp_path / "bert",
                   ProgressReporter())


def test_a_resumed_run_trains_on_the_windows_its_cached_targets_were_computed_on(deep_llama_dir, tmp_path,
                                                                                  monkeypatch):
    from services.distiller import engine

    entry = METHODS["distill-response"]
    config = parse_config(ResponseConfig, {**SHORT, "max_steps": 6, "student_layers": 2, "augment_copies": 2,
                                           "augment_source": "teacher", "augment_top_k": 4})
    whole = entry.run(config, deep_llama_dir, tmp_path / "whole", ProgressReporter())
    checkpoints = MemoryCheckpoints(tmp_path, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        entry.run(config, deep_llama_dir, tmp_path / "killed", ProgressReporter(checkpoints=checkpoints))
    # The retry's worker proposes other tokens (another CPU may round the teacher's logits otherwise).
    proposals = engine.next_token_proposals

    def elsewhere(teacher, data, top_k):
        found = proposals(teacher, data, top_k)
        found.ids = found.ids.roll(1, dims=-1)
        return found

    monkeypatch.setattr(engine, "next_token_proposals", elsewhere)
    checkpoints.stop_after = 0
    resumed = entry.run(config, deep_llama_dir, tmp_path / "resumed", ProgressReporter(checkpoints=checkpoints))
    assert resumed.metrics["resumed_from_step"] == 2
    assert resumed.metrics["loss_curves"]["loss"] == pytest.approx(whole.metrics["loss_curves"]["loss"], rel=1e-5)
