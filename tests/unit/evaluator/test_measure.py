import json
import math

import numpy as np
import pytest
import torch

from modelpress.v1 import common_pb2
from services.common.datasets import corpus
from services.common.models import modelio
from services.evaluator import latency, measure, quality
from modelpress.results import compression_result, result_fields
from services.quantizer.configs import Int8WeightOnlyConfig
from services.quantizer.int8 import quantize_int8_weight_only


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
def test_percentile_matches_numpy(q):
    values = sorted(np.random.default_rng(0).exponential(size=37).tolist())
    assert latency.percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_packed_parameters_count_as_their_logical_size(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    before = measure.count_parameters(model)
    assert before == sum(p.numel() for p in model.parameters())  # tied head counted once
    quantize_int8_weight_only(model, Int8WeightOnlyConfig(), lambda *a: None)
    assert measure.count_parameters(model) == before


def test_perplexity_is_exp_of_mean_token_nll(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    windows = quality.text_windows(modelio.load_tokenizer(tiny_llama_dir), 2, length=64)
    figures = quality.causal_lm_quality(model, windows)
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert figures.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert figures.tokens == 2 * 63
    assert 0 <= figures.top1_accuracy <= 1


def test_the_three_splits_are_disjoint_and_cover_every_topic():
    held = {name for name, _ in corpus.heldout_topics()}
    valid = {name for name, _ in corpus.validation_topics()}
    calib = {name for name, _ in corpus.calibration_topics()}
    assert held and valid and calib and not held & calib and not valid & calib and not valid & held
    assert held | valid | calib == {name for name, _ in corpus._topics()}
    assert corpus.text_of("validation") == corpus.validation_text() and corpus.text_of("heldout") == corpus.heldout_text()
    with pytest.raises(ValueError, match="split"):
        corpus.topics_of("calibration")  # quality is never scored on what was calibrated on


def test_validation_windows_and_sentences_come_from_the_validation_topics(tiny_llama_dir):
    tokenizer = modelio.load_tokenizer(tiny_llama_dir)
    held, valid = (quality.text_windows(tokenizer, 2, length=64, split=s) for s in ("heldout", "validation"))
    assert held.shape == valid.shape == (2, 64) and not torch.equal(held, valid)
    _, labels = quality.topic_sentences(100, split="validation")
    assert labels and set(labels) <= {name for name, _ in corpus.validation_topics()}


def test_latency_figures_are_ordered(tiny_llama_dir):
    figures = latency.measure_forward(modelio.load_model(tiny_llama_dir), batch_size=2, sequence_length=8,
                                      iterations=12, warmup=1, causal=True)
    assert 0 < figures.min_ms <= figures.p50_ms <= figures.p95_ms <= figures.p99_ms <= figures.max_ms
    assert (figures.batch_size, figures.sequence_length, figures.phase) == (2, 8, "prefill")
    # 12 passes asked; more (up to 36) while the p50's interval is too wide to read.
    assert 12 <= figures.iterations <= 36 and len(figures.samples_ms) == figures.iterations
    assert figures.stdev_ms >= 0 and figures.p50_ci95_low_ms <= figures.p50_ms <= figures.p50_ci95_high_ms
    assert figures.unreliable == bool(figures.unreliable_reason)
    assert figures.tokens_per_s == pytest.approx(16 / (figures.p50_ms / 1000))
    assert figures.samples_per_s == pytest.approx(2 / (figures.p50_ms / 1000))


def test_summary_statistics_of_known_samples():
    figures = latency.summarize([4.0, 1.0, 3.0, 2.0, 10.0], batch_size=4, sequence_length=32, phase="forward",
                                warmup=0, tokens_per_pass=128)
    assert (figures.min_ms, figures.p50_ms, figures.max_ms, figures.mean_ms) == (1.0, 3.0, 10.0, 4.0)
    assert figures.stdev_ms == pytest.approx(float(np.std([4, 1, 3, 2, 10], ddof=1)))
    assert figures.samples_ms == [4.0, 1.0, 3.0, 2.0, 10.0]  # measurement order kept
    assert figures.tokens_per_s == pytest.approx(128 / 0.003)


def test_decode_times_one_token_per_pass_through_the_cache(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    calls = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    figures = latency.measure_decode(model, batch_size=2, prompt_length=16, tokens=5, warmup=1)
    hook.remove()
    assert calls[0] == (2, 16) and all(shape == (2, 1) for shape in calls[1:]) and len(calls) == 1 + 1 + 5
    assert figures.phase == "decode" and figures.iterations == 5
    assert figures.tokens_per_s == pytest.approx(figures.samples_per_s)  # one token per sequence per pass


def test_interleaved_rounds_give_each_model_one_turn_per_round_in_the_order_drawn_for_it(tiny_llama_dir):
    models = [modelio.load_model(tiny_llama_dir) for _ in range(3)]
    order = []
    for i, model in enumerate(models):
        model.register_forward_pre_hook(lambda _m, _a, i=i: order.append(i))
    figures = latency.interleaved_forward(models, batch_size=1, sequence_length=8, rounds=3, warmup=0, causal=True)
    turns = [i for r in range(3) for i in latency.round_order(r, 3)]
    assert order == [i for i in turns for _ in range(1 + latency.HANDOVER_PASSES)]
    assert [f.iterations for f in figures] == [3, 3, 3]


def test_flops_match_the_matmul_count_of_a_linear_stack():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.up = torch.nn.Linear(16, 64)
            self.down = torch.nn.Linear(64, 16)

        def forward(self, input_ids, attention_mask=None):
            return self.down(self.up(self.embed(input_ids)))

    ids = torch.zeros(3, 10, dtype=torch.long)
    # 2 FLOPs per multiply-add, 30 tokens, 16x64 and 64x16 weights.
    assert measure.count_flops(Toy(), ids) == 2 * 30 * (16 * 64 + 64 * 16)


def test_flops_scale_with_the_input(tiny_llama_dir):
    model = modelio.load_model(tiny_llama_dir)
    one = measure.count_flops(model, torch.zeros(1, 16, dtype=torch.long))
    two = measure.count_flops(model, torch.zeros(2, 16, dtype=torch.long))
    assert one > 0 and two == 2 * one


def test_stored_parameter_bytes_read_from_safetensors_headers(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(10, 4, dtype=torch.float16), "b": torch.zeros(7, dtype=torch.int8)},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "tokenizer.json").write_text("{}" * 1000)
    assert measure.stored_parameter_bytes(tmp_path) == 10 * 4 * 2 + 7


def test_topic_sentences_are_labelled_and_balanced():
    sentences, labels = quality.topic_sentences(500)
    held_topics = {name for name, _ in corpus.heldout_topics()}
    assert len(sentences) == len(labels) and set(labels) <= held_topics and len(set(labels)) >= 8
    assert max(labels.count(t) for t in set(labels)) <= 40
    text = corpus.heldout_text()
    assert all(s[:25] in text.replace("\n", " ") for s in sentences[:20])


def test_knn_accuracy_and_reference_agreement():
    labels = ["a"] * 6 + ["b"] * 6
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    noise = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    embeddings = torch.nn.functional.normalize(centres[[0] * 6 + [1] * 6] + noise, dim=-1)
    same = quality.encoder_quality(embeddings, labels, reference=embeddings, k=3)
    assert same.knn_topic_accuracy == 1.0
    assert same.mean_reference_cosine == pytest.approx(1.0) and same.neighbour_agreement == 1.0
    shuffled = quality.encoder_quality(embeddings[torch.randperm(12, generator=torch.Generator().manual_seed(1))],
                                       labels, reference=embeddings, k=3)
    assert shuffled.mean_reference_cosine < 0.9 and shuffled.knn_topic_accuracy < 1.0
    with pytest.raises(ValueError, match="reference embeddings"):
        quality.encoder_quality(embeddings, labels, reference=embeddings[:5])


def test_compression_result_ratios():
    original = common_pb2.ModelMetrics(size_on_disk_bytes=400, parameters=100, peak_rss_mb=800, perplexity=10.0,
                                       top1_accuracy=0.5, latency=common_pb2.LatencyStats(p50_ms=20))
    compressed = common_pb2.ModelMetrics(size_on_disk_bytes=100, parameters=100, peak_rss_mb=600, perplexity=10.5,
                                         top1_accuracy=0.45, latency=common_pb2.LatencyStats(p50_ms=40))
    result = compression_result("j-1", original, compressed, "a-1")
    assert result.compression_ratio == 4.0
    assert result.latency_improvement == 0.5  # slower shows as < 1, never hidden
    assert result.memory_reduction == pytest.approx(0.25)
    assert result.perplexity_increase == pytest.approx(0.05)
    assert result.accuracy_loss == pytest.approx(0.1)
    fields = result_fields(result, "rtn")
    # The proto's names, units in them, as the client sees them.
    assert fields["original_model_size_bytes"] == 400 and fields["compressed_latency_ms"] == 40
    assert fields["compressed_artifact_id"] == "a-1" and fields["headline"]["text"].startswith("rtn: size 25.0%")


def test_encoder_accuracy_in_the_result_is_topic_knn_accuracy():
    def encoder(knn):
        return common_pb2.ModelMetrics(kind="encoder", size_on_disk_bytes=10,
                                       encoder=common_pb2.EncoderQuality(knn_topic_accuracy=knn))

    result = compression_result("j-2", encoder(0.8), encoder(0.76), "a-2")
    assert (result.original_accuracy, result.compressed_accuracy) == (0.8, 0.76)
    assert result.accuracy_loss == pytest.approx(0.05)


def test_the_quality_split_flows_from_the_spec_to_the_probe():
    from services.evaluator.servicer import spec_to_config

    config = spec_to_config(common_pb2.EvaluationSpec(quality_split="validation"))
    assert config.quality_split == "validation" and config.plan([]).quality_split == "validation"
    assert spec_to_config(common_pb2.EvaluationSpec()).plan([]).quality_split == "heldout"


def test_same_tokenization_counts_the_sentences_a_trimmed_vocabulary_splits_otherwise(tiny_bert_dir, tmp_path):
    from services.distiller.vocabulary import kept_token_ids, rewrite_tokenizer

    teacher = modelio.load_tokenizer(tiny_bert_dir)
    trained_on = ["the cat sat on the mat", "a dog ran in the park"]
    tokenizer_json = json.loads((tiny_bert_dir / "tokenizer.json").read_text())
    rewrite_tokenizer(tiny_bert_dir, tmp_path, kept_token_ids(teacher, tokenizer_json, trained_on))
    trimmed = modelio.load_tokenizer(tmp_path)
    assert quality.same_tokenization(trimmed, teacher, trained_on) == 1.0
    assert quality.same_tokenization(trimmed, teacher, trained_on + ["quantization calibrates kernels"]) == 2 / 3
    assert quality.same_tokenization(teacher, teacher, ["quantization calibrates kernels"]) == 1.0
