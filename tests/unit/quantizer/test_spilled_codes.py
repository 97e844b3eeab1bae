"""Codes kept on disk during the walk and outputs written block by block: the same model as the
in-memory path, byte for byte, with the walk holding one block and not the embedding."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.common.calibration.streaming import StreamingModel
from services.common.datasets.calibration_text import calibration_batches, calibration_text
from services.common.models import modelio
from services.quantizer import ct_format
from services.quantizer.configs import GptqConfig
from services.quantizer.gptq import gptq_block_step
from services.quantizer.sequential import quantize_sequential
from services.quantizer.spilled_codes import CodeSpill
from services.quantizer.targets import weight_targets

CONFIG = GptqConfig(group_size=32, calibration_samples=4, calibration_sequence_length=32)


def _gptq(folder, out, spill=None, on_block=None):
    source = StreamingModel(folder)
    step = gptq_block_step(CONFIG.damping, CONFIG.lazy_batch_columns, CONFIG.act_order)
    if on_block is not None:
        inner = step

        def step(work):  # noqa: F811 -- the same step, looked at first
            on_block(source, work)
            yield from inner(work)

    batches = calibration_batches(modelio.load_tokenizer(folder), CONFIG.calibration_samples,
                                  CONFIG.calibration_sequence_length, calibration_text())
    result = quantize_sequential(source, weight_targets(source.model, CONFIG), batches, step, lambda *_: None,
                                 spill=spill)
    ct_format.write_compressed_tensors(source, result.quantized, out, source.tied_head, result.rewritten, spill)
    return result


def test_spilled_walk_writes_the_same_bytes_and_holds_no_embedding(tiny_llama_dir, tmp_path):
    seen = []

    def on_block(source, work):
        seen.append((source.model.get_input_embeddings().weight.is_meta,
                     sum(not p.is_meta for p in source.model.parameters())))

    in_memory = _gptq(tiny_llama_dir, tmp_path / "memory")
    spill = CodeSpill(tmp_path)
    spilled = _gptq(tiny_llama_dir, tmp_path / "spilled", spill, on_block)

    assert (tmp_path / "memory" / "model.safetensors").read_bytes() == \
        (tmp_path / "spilled" / "model.safetensors").read_bytes()
    block_params = sum(1 for _ in StreamingModel(tiny_llama_dir).model.model.layers[0].parameters())
    # Each block step saw the embedding let go and only that block's parameters in memory.
    assert seen and all(meta and count == block_params for meta, count in seen), seen
    for name, qw in spilled.quantized.items():
        assert torch.equal(qw.codes, in_memory.quantized[name].codes), name
    spill.close()
    assert not list(tmp_path.glob("codes-*"))


def test_spill_maps_codes_from_a_file_and_forget_maps_them_again(tmp_path):
    from services.quantizer.ct_format import QuantizedWeight
    from services.quantizer.qscheme import QuantParams, WeightScheme

    codes = torch.randint(-8, 8, (16, 64), dtype=torch.int8)
    qw = QuantizedWeight(WeightScheme(4, 32, True), QuantParams(torch.ones(16, 2), None), codes.clone())
    spill = CodeSpill(tmp_path)
    spill.keep("layer", qw)
    first = qw.codes
    assert torch.equal(first, codes) and first.untyped_storage().data_ptr() != codes.untyped_storage().data_ptr()
    spill.forget("layer", qw)
    assert qw.codes is not first and torch.equal(qw.codes, codes)
    qw.codes[0, 0] = 7 - int(codes[0, 0])  # copy-on-write: the file keeps the codes
    spill.forget("layer", qw)
    assert torch.equal(qw.codes, codes)
    spill.close()


def test_a_large_output_is_written_in_shards_of_whole_blocks(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ct_format, "SHARD_BYTES", 1)  # every block its own shard
    _gptq(tiny_llama_dir, tmp_path / "sharded", CodeSpill(tmp_path))
    monkeypatch.undo()
    _gptq(tiny_llama_dir, tmp_path / "single")

    index = json.loads((tmp_path / "sharded" / ct_format.INDEX_FILE).read_text())
    files = sorted({*index["weight_map"].values()})
    assert len(files) == 3 and not (tmp_path / "sharded" / "model.safetensors").exists()  # 2 blocks + the rest
    for block in ("model.layers.0.", "model.layers.1."):
        assert len({f for name, f in index["weight_map"].items() if name.startswith(block)}) == 1
    ids = torch.randint(0, 30522, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "single")(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")(input_ids=ids).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize("spilled", [False, True])
def test_the_head_left_to_round_at_the_end_is_read_again(tiny_bpe_llama_dir, tmp_path, spilled):
    """A quantized untied head is rounded after the walk: with the walk's embedding and head let go,
    it is read from the checkpoint again and comes out as the in-memory path's."""
    config = GptqConfig(group_size=32, head_bits=8, calibration_samples=2, calibration_sequence_length=16)
    source = StreamingModel(tiny_bpe_llama_dir)
    targets = weight_targets(source.model, config)
    assert any(t.role == "head" for t in targets)
    batches = calibration_batches(modelio.load_tokenizer(tiny_bpe_llama_dir), 2, 16, calibration_text())
    step = gptq_block_step(config.damping, config.lazy_batch_columns, config.act_order)
    result = quantize_sequential(source, targets, batches, step, lambda *_: None,
                                 spill=CodeSpill(tmp_path) if spilled else None)
    head = next(t.name for t in targets if t.role == "head")
    float_head = modelio.load_model(tiny_bpe_llama_dir).get_submodule(head).weight.detach()
    from services.quantizer.qscheme import dequantize

    error = (dequantize(result.quantized[head].codes, result.quantized[head].params) - float_head).norm()
    assert float(error / float_head.norm()) < 0.02


def test_a_head_tied_to_a_quantized_embedding_reuses_its_codes(tiny_llama_dir, tmp_path):
    """The walk lets go of the embedding and head: a tied head must take the embedding's codes before,
    or the checkpoint names codes for a head transformers re-ties and cannot load."""
    from services.common.contract.engine_api import ProgressReporter
    from services.quantizer.engine import METHODS

    config = GptqConfig(group_size=32, embedding_bits=8, head_bits=8, calibration_samples=2,
                        calibration_sequence_length=16)
    METHODS["gptq"].run(config, tiny_llama_dir, tmp_path / "m", ProgressReporter())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
