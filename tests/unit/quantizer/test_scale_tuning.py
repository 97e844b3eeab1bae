"""End-to-end scale tuning: the codes stay, the scales move towards the float model's next-token
distribution, the stage reports the phase and resumes it from its own checkpoint without walking again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common.contract.config import parse_config
from services.common.contract.engine_api import ProgressReporter
from services.common.datasets.calibration_text import calibration_text
from services.common.datasets.training_data import training_data
from services.common.models import modelio
from services.quantizer.configs import GptqConfig, QatConfig, WeightOnlyConfig
from services.quantizer.engine import METHODS
from services.quantizer.qscheme import dequantize
from services.quantizer.rtn import quantize_rtn
from services.quantizer.scale_tuning import (
    NextTokenKL,
    TuningPlan,
    next_token_kl,
    parametrize_quantized,
    tune_scales,
    tuned_weights,
    validation_kl,
)
from services.quantizer.targets import weight_targets
from tests.memory_checkpoints import MemoryCheckpoints

SHORT = {"group_size": 32, "calibration_samples": 4, "calibration_sequence_length": 64, "steps_per_block": 2}
TUNING = {"end_to_end_tokens": 6 * 4 * 64, "end_to_end_batch_windows": 4, "end_to_end_sequence_length": 64,
          "end_to_end_validate_every": 2, "end_to_end_learning_rate": 0.01}


def _rounded(folder: Path):
    model = modelio.load_model(folder, dtype=torch.float32)
    config = WeightOnlyConfig(bits=4, group_size=32, embedding_bits=4, head_bits=4)
    targets = weight_targets(model, config)
    return quantize_rtn(lambda t: t.module.weight.data, targets)


def _tuning_setup(folder: Path, windows: int = 20, validation_share: float = 0.2):
    """(rounded codes, float teacher, student computing with them, its scales, calibration windows)."""
    quantized = _rounded(folder)
    teacher = modelio.load_model(folder, dtype=torch.float32)
    student = modelio.load_model(folder, dtype=torch.float32)
    scales = parametrize_quantized(student, quantized)
    data = training_data(modelio.load_tokenizer(folder), calibration_text(), True, windows, 64, validation_share)
    return quantized, teacher, student, scales, data


def _kl(teacher, student, data) -> NextTokenKL:
    probe = data.batch(data.validation_items[:1])
    return NextTokenKL(teacher, student, {"input_ids": probe["input_ids"][:, :8], "use_cache": False})


def test_scales_at_their_start_compute_the_checkpoint_and_a_tied_head_shares_the_tables(tiny_llama_dir):
    quantized = _rounded(tiny_llama_dir)
    student = modelio.load_model(tiny_llama_dir, dtype=torch.float32)
    scales = parametrize_quantized(student, quantized)
    assert scales["lm_head"] is scales["model.embed_tokens"]
    for name, qw in quantized.items():
        assert torch.equal(student.get_submodule(name).weight, dequantize(qw.codes, qw.params))
    assert [p for p in student.parameters() if p.requires_grad] == [s.log_gain for s in
                                                                    {id(s): s for s in scales.values()}.values()]


def test_tuning_moves_only_the_scales_and_brings_the_model_closer_to_the_float_one(tiny_llama_dir):
    quantized, teacher, student, scales, data = _tuning_setup(tiny_llama_dir, 1000, 0.1)
    before = validation_kl(_kl(teacher, student, data), data, 8)
    state = tune_scales(teacher, student, scales, data, TuningPlan(steps=8, batch_windows=4, learning_rate=0.01,
                                                                   validate_every=4))
    assert state.best_kl == pytest.approx(validation_kl(_kl(teacher, student, data), data, 8), rel=1e-5)  # the best is kept
    assert state.best_kl < 0.95 * before and state.best_step > 0
    tuned = tuned_weights(quantized, scales)
    for name, qw in tuned.items():
        assert qw.codes is quantized[name].codes  # codes as the walk left them
        assert qw.params.scale.shape == quantized[name].params.scale.shape
        assert torch.equal(qw.params.scale, qw.params.scale.half().float())  # what the checkpoint stores
    assert tuned["lm_head"] is tuned["model.embed_tokens"]
    assert any(not torch.equal(tuned[n].params.scale, quantized[n].params.scale) for n in tuned)


class PhaseCheckpoints(MemoryCheckpoints):
    """Records which kind of checkpoint each save is; stops only after the end-to-end phase's save."""

    every_s = 0.0  # the walk saves after every block too

    def entry(self, folder: Path, step: int):
        return ("tuning" if (folder / "tuning.pt").is_file() else "walk", step)

    def stops(self, folder: Path, step: int) -> bool:
        return (folder / "tuning.pt").is_file() and step == self.stop_after


def _scales(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.endswith("weight_scale")}


def test_the_qat_stage_tunes_its_scales_end_to_end_and_resumes_the_phase_without_walking_again(tiny_llama_dir,
                                                                                                tmp_path):
    entry = METHODS["qat"]
    compact = {**SHORT, "embedding_bits": 4, "head_bits": 4}
    walked = entry.run(parse_config(QatConfig, compact), tiny_llama_dir, tmp_path / "walked", ProgressReporter())
    config = parse_config(QatConfig, {**compact, **TUNING})
    whole = entry.run(config, tiny_llama_dir, tmp_path / "whole", ProgressReporter())
    figures = whole.metrics["end_to_end"]
    assert figures["steps"] == 6 and figures["tokens"] == 6 * 4 * 64
    assert figures["validation_kl_best"] < figures["validation_kl_before"]
    assert [t for t, _ in figures["validation_kl"]] == [0, 512, 1024, 1536]
    packed = {k: v for k, v in load_file(str(tmp_path / "whole" / "model.safetensors")).items()
              if k.endswith("weight_packed")}
    assert packed and all(torch.equal(v, load_file(str(tmp_path / "walked" / "model.safetensors"))[k])
                          for k, v in packed.items())  # the same codes: only the scales moved
    assert any(not torch.equal(v, _scales(tmp_path / "walked")[k]) for k, v in _scales(tmp_path / "whole").items())
    assert whole.metrics["stored_bits_per_weight"] == walked.metrics["stored_bits_per_weight"]

    checkpoints = PhaseCheckpoints(tmp_path / "store", stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        entry.run(config, tiny_llama_dir, tmp_path / "killed", ProgressReporter(checkpoints=checkpoints))
    assert ("tuning", 2) in checkpoints.saves and any(kind == "walk" for kind, _ in checkpoints.saves)
    checkpoints.saves.clear()
    events = []
    resumed = entry.run(config, tiny_llama_dir, tmp_path / "resumed",
                        ProgressReporter(sink=events.append, checkpoints=checkpoints))
    assert not any(p.metrics.get("layer") for p in events)  # no block walked again
    assert checkpoints.saves == [("tuning", 4), ("tuning", 6)]
    assert resumed.metrics["end_to_end"]["resumed_from_step"] == 2
    curve = [kl for _, kl in resumed.metrics["end_to_end"]["validation_kl"]]
    assert curve == pytest.approx([kl for _, kl in figures["validation_kl"]], rel=1e-5)
    ends = _scales(tmp_path / "resumed"), _scales(tmp_path / "whole")
    assert all(torch.equal(v, ends[1][k]) for k, v in ends[0].items())


def test_gptq_tunes_its_scales_end_to_end_over_its_own_codes(tiny_llama_dir, tmp_path):
    gptq = {"group_size": 32, "calibration_samples": 4, "calibration_sequence_length": 64, "clip_search": True}
    METHODS["gptq"].run(parse_config(GptqConfig, gptq), tiny_llama_dir, tmp_path / "rounded", ProgressReporter())
    tuned = METHODS["gptq"].run(parse_config(GptqConfig, {**gptq, **TUNING}), tiny_llama_dir, tmp_path / "tuned",
                                ProgressReporter())
    figures = tuned.metrics["end_to_end"]
    assert figures["steps"] == 6 and figures["validation_kl_best"] < figures["validation_kl_before"]
    rounded, kept = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("rounded", "tuned"))
    packed = [k for k in rounded if k.endswith("weight_packed")]
    assert packed and all(torch.equal(rounded[k], kept[k]) for k in packed)  # GPTQ's codes, other scales
    assert any(not torch.equal(v, _scales(tmp_path / "rounded")[k]) for k, v in _scales(tmp_path / "tuned").items())


def test_an_encoder_is_refused_naming_the_field_before_any_block_is_walked(tiny_bert_dir, tmp_path):
    events = []
    with pytest.raises(ValueError, match="end_to_end_tokens"):
        METHODS["qat"].run(parse_config(QatConfig, {**SHORT, **TUNING}), tiny_bert_dir, tmp_path / "out",
                           ProgressReporter(sink=events.append))
    assert not any(p.metrics.get("layer") for p in events)


def test_validation_never_switches_on_the_process_wide_weight_cache(tiny_llama_dir):
    # parametrize.cached() is one switch for the whole process: a stage training in another thread of the
    # worker would then read weights cached without their graph ("does not require grad").
    from torch.nn.utils import parametrize

    _, teacher, student, _, data = _tuning_setup(tiny_llama_dir)
    seen = []
    kl = _kl(teacher, student, data)
    student.get_output_embeddings().register_forward_pre_hook(lambda *_: seen.append(parametrize._cache_enabled))
    validation_kl(kl, data, 8)
    assert seen and not any(seen)


def test_the_kl_in_token_chunks_is_the_kl_of_the_whole_logits_and_has_its_gradients(tiny_llama_dir):
    _, teacher, student, scales, data = _tuning_setup(tiny_llama_dir)
    inputs = {"input_ids": data.batch(data.train_items[:3])["input_ids"], "use_cache": False}
    chunked = NextTokenKL(teacher, student, inputs, chunk_tokens=50)  # 192 tokens: 4 chunks, the last one short
    assert chunked.chunked
    value = chunked.backward(inputs)
    grads = [s.log_gain.grad.clone() for s in scales.values()]
    for s in scales.values():
        s.log_gain.grad = None
    with torch.no_grad():
        target = teacher(**inputs).logits
    whole = next_token_kl(target, student(**inputs).logits)
    whole.backward()
    assert value == pytest.approx(float(whole), rel=1e-5) and chunked.value(inputs) == pytest.approx(value, rel=1e-5)
    for grad, s in zip(grads, scales.values()):
        assert torch.allclose(grad, s.log_gain.grad, rtol=1e-4, atol=1e-9)


def test_a_model_that_transforms_its_logits_after_the_head_is_not_chunked(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0)
    teacher, student = Gemma2ForCausalLM(config).eval(), Gemma2ForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(0, 256, (2, 12)), "use_cache": False}
    kl = NextTokenKL(teacher, student, inputs)
    assert not kl.chunked  # its logits are capped after the head: chunks of head outputs would differ
    with torch.no_grad():
        expected = next_token_kl(teacher(**inputs).logits, student(**inputs).logits)
    assert kl.value(inputs) == pytest.approx(float(expected), rel=1e-6)
