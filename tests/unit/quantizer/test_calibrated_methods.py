"""Every calibrated method on a tiny Llama: what it saves reloads through plain transformers
and computes exactly what the in-memory quantized model computed."""

from contextlib import ExitStack

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.common.models import modelio
from services.common.contract.engine_api import ProgressReporter
from services.quantizer import activations as acts
from services.quantizer.autoround import autoround_block_step
from services.quantizer.awq import awq_block_step
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.quantizer.configs import (AutoRoundConfig, AwqConfig, GptqConfig, MixedPrecisionConfig, QatConfig, SmoothQuantConfig,
                                        W8A8Config, WeightOnlyConfig)
from services.quantizer.ct_format import write_compressed_tensors
from services.quantizer.engine import METHODS
from services.quantizer.gptq import gptq_block_step
from services.quantizer.qat import qat_block_step
from services.quantizer.qscheme import dequantize
from services.quantizer.sequential import quantize_sequential
from services.quantizer.smoothquant import w8a8_block_step
from services.common.calibration.streaming import StreamingModel
from services.quantizer.targets import weight_targets

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 64}
INT8 = WeightOnlyConfig(bits=8, group_size=0)


def steps():
    return {
        "gptq": (GptqConfig(group_size=32, **CALIBRATION), None,
                 lambda c: gptq_block_step(c.damping, c.lazy_batch_columns, c.act_order)),
        "gptq-clipped": (GptqConfig(group_size=32, clip_search=True, **CALIBRATION), None,
                         lambda c: gptq_block_step(c.damping, c.lazy_batch_columns, c.act_order, clip=c)),
        "awq": (AwqConfig(group_size=32, **CALIBRATION), None, awq_block_step),
        "awq-mlp-scored": (AwqConfig(group_size=32, loss="module", **CALIBRATION), None, awq_block_step),
        "qat": (QatConfig(group_size=32, steps_per_block=3, **CALIBRATION), None, qat_block_step),
        "qat-learned-scales": (QatConfig(group_size=32, steps_per_block=3, scale_learning_rate=0.01, **CALIBRATION),
                               None, qat_block_step),
        "qat-model-targets": (QatConfig(group_size=32, steps_per_block=3, targets="model", **CALIBRATION), None,
                              qat_block_step),
        "autoround": (AutoRoundConfig(group_size=32, steps_per_block=3, **CALIBRATION), None, autoround_block_step),
        "w8a8-static": (W8A8Config(activations="static", **CALIBRATION), INT8, w8a8_block_step),
        "smoothquant-dynamic": (SmoothQuantConfig(**CALIBRATION), INT8, w8a8_block_step),
        "smoothquant-static-rtn": (SmoothQuantConfig(activations="static", weight_algorithm="rtn", **CALIBRATION),
                                   INT8, w8a8_block_step),
    }


def in_memory_reference(folder, result):
    """The float model with the rewritten float tensors, every quantized weight replaced by
    what its codes mean, and activation quantization simulated where the layer has it."""
    model = modelio.load_model(folder, dtype=torch.float32)
    with torch.no_grad():
        for name, value in result.rewritten.items():
            model.get_parameter(name).copy_(value)
        for name, qw in result.quantized.items():
            model.get_submodule(name).weight.data = dequantize(qw.codes, qw.params)
    hooks = ExitStack()
    for name, qw in result.quantized.items():
        if qw.activations is not None:
            scales = {name: qw.input_scale} if qw.input_scale is not None else None
            hooks.enter_context(acts.simulated({name: model.get_submodule(name)}, qw.activations, scales))
    return model, hooks


@pytest.mark.parametrize("which", list(steps()))
def test_saved_model_reloads_and_matches_the_in_memory_quantized_model(which, tiny_llama_dir, tmp_path):
    config, targets_config, make_step = steps()[which]
    source = StreamingModel(tiny_llama_dir)
    targets = weight_targets(source.model, targets_config or config)
    batches = calibration_batches(modelio.load_tokenizer(tiny_llama_dir), config.calibration_samples,
                                  config.calibration_sequence_length, calibration_text())
    kwargs = {"sample_every": 4} if which.startswith(("smoothquant", "awq", "qat", "autoround")) else {}
    if which.startswith(("qat", "autoround")):
        kwargs["float_targets"] = config.targets
    result = quantize_sequential(source, targets, batches, make_step(config), lambda *_: None, **kwargs)
    write_compressed_tensors(source, result.quantized, tmp_path / "m", source.tied_head, result.rewritten)
    if which == "qat-learned-scales":
        # The grid trained: its scales are no longer AWQ's (the plain QAT run's, same seed and windows).
        again = StreamingModel(tiny_llama_dir)
        fixed = quantize_sequential(again, weight_targets(again.model, config), batches,
                                    make_step(config.model_copy(update={"scale_learning_rate": 0.0})),
                                    lambda *_: None, **kwargs)
        name = "model.layers.0.mlp.down_proj"
        assert not torch.equal(result.quantized[name].params.scale, fixed.quantized[name].params.scale)

    if which.startswith(("smoothquant", "awq", "qat", "autoround")):
        # Scales were folded into norms: the saved norms differ from the float model's.
        assert any("layernorm" in name for name in result.rewritten)
    ids = torch.randint(0, 30522, (2, 24), generator=torch.Generator().manual_seed(1))
    reference, hooks = in_memory_reference(tiny_llama_dir, result)
    with torch.no_grad(), hooks:
        expected = reference(input_ids=ids).logits
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
        plain = modelio.load_model(tiny_llama_dir)(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())
    assert not torch.allclose(got, plain, atol=1e-5)
    # Quantized, yet still the same model: logits stay close to the float ones.
    assert float((got - plain).norm() / plain.norm()) < 0.5


@pytest.mark.parametrize("method,config", [
    ("awq", AwqConfig(**CALIBRATION)),
    ("qat", QatConfig(steps_per_block=2, **CALIBRATION)),
    ("autoround", AutoRoundConfig(steps_per_block=2, **CALIBRATION)),
    ("mixed-precision", MixedPrecisionConfig(average_bits=4.6, **CALIBRATION)),
    ("w8a8", W8A8Config(**CALIBRATION)),
    ("smoothquant", SmoothQuantConfig(**CALIBRATION)),
])
def test_every_calibrated_method_reports_each_layer_and_saves_compressed_tensors(method, config, tiny_llama_dir,
                                                                               tmp_path):
    seen = []
    result = METHODS[method].run(config, tiny_llama_dir, tmp_path / "m", ProgressReporter(sink=seen.append))
    layers = [p for p in seen if p.metrics.get("layer") and "block" in p.metrics]
    assert len(layers) == 14  # every Linear of the two blocks, one event each
    assert result.metrics["calibration_tokens"] == 4 * 64
    quant = modelio.read_config(tmp_path / "m")["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    has_activations = any(g.get("input_activations") for g in quant["config_groups"].values())
    assert has_activations == (method in ("w8a8", "smoothquant"))


def test_qat_cancel_takes_effect_inside_a_block_training_loop(tiny_llama_dir, tmp_path):
    from services.common.contract.engine_api import StageCancelled

    reporter = ProgressReporter()
    seen = []

    def sink(progress):
        seen.append(progress)
        if len(seen) == 1:
            reporter.cancelled.set()  # at the first event (the model read): block 0 has not trained yet

    reporter.sink = sink
    config = QatConfig(steps_per_block=1000, **CALIBRATION)
    with pytest.raises(StageCancelled) as info:
        METHODS["qat"].run(config, tiny_llama_dir, tmp_path / "m", reporter)
    assert not any(p.metrics.get("method") == "qat" for p in seen)  # no layer of block 0 finished
    # Raised from inside the training loop, not at the next per-layer report.
    assert "finetune_block" in {entry.name for entry in info.traceback}
