"""The shared calibration core walks blocks for any technique: a step that is not quantization
(a Wanda-style |W|·|x| mask, zeroing weights in place) gets each block's input statistics, its
per-layer results come back as they are, and the next block is fed the outputs of the block as
the step left it."""

import torch

from services.common.calibration.blocks import (
    InputStatsCollector,
    capture_first_block_inputs,
    named_blocks,
    run_block,
)
from services.common.calibration.sequential import run_blocks
from services.common.calibration.streaming import StreamingModel
from services.common.models import modelio


def _prune_half(work):
    for name, layer in work.layers.items():
        salience = work.stats[name].abs_mean
        score = layer.weight.abs() * salience[None]
        mask = score >= score.median(dim=1, keepdim=True).values
        layer.weight.mul_(mask)
        yield name, (mask, salience.clone()), {"kept": float(mask.float().mean())}


def _salience_entering(model, ids, layer: str, down_weight=None):
    """|x| per input channel entering `layer` of block 1, block 0 run with `down_weight` if given."""
    blocks = named_blocks(model)
    with torch.no_grad():
        if down_weight is not None:
            model.get_parameter(f"{blocks[0][0]}.mlp.down_proj.weight").copy_(down_weight)
        hidden = run_block(blocks[0][1], capture_first_block_inputs(model, ids))
        inputs = capture_first_block_inputs(model, ids)
        inputs.hidden = hidden
        collector = InputStatsCollector({layer: model.get_submodule(layer)})
        try:
            run_block(blocks[1][1], inputs)
        finally:
            collector.close()
    return collector.stats[layer].abs_mean


def test_a_pruning_step_runs_on_the_core_and_the_next_block_sees_the_pruned_one(tiny_llama_dir):
    source = StreamingModel(tiny_llama_dir)
    blocks = named_blocks(source.model)
    source.load(exclude=[name for name, _ in blocks])
    ids = torch.randint(5, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    down, q_proj = f"{blocks[0][0]}.mlp.down_proj", f"{blocks[1][0]}.self_attn.q_proj"
    seen = []
    result = run_blocks(source, blocks, capture_first_block_inputs(source.model, ids), {down: "prune", q_proj: "prune"},
                        _prune_half, lambda name, value, figures: seen.append(figures))
    assert set(result.results) == {down, q_proj} and [f["block"] for f in seen] == [0, 1]
    assert all(0.45 < f["kept"] < 0.6 for f in seen)
    assert not result.rewritten  # the chosen layers' own changes travel in their results

    float_model = modelio.load_model(tiny_llama_dir, dtype=torch.float32).eval()
    mask, _ = result.results[down]
    pruned = float_model.get_parameter(f"{down}.weight").detach() * mask
    got = result.results[q_proj][1]
    assert torch.allclose(got, _salience_entering(float_model, ids, q_proj, pruned), atol=1e-6)
    assert not torch.allclose(got, _salience_entering(modelio.load_model(tiny_llama_dir, dtype=torch.float32).eval(),
                                                      ids, q_proj), atol=1e-6)


def test_an_embedding_kept_as_stored_gives_the_first_block_the_fp32_inputs_at_half_the_memory(tiny_llama_dir, tmp_path):
    """A bf16 checkpoint's embedding read as stored (no FP32 copy of the vocabulary) computes the same
    first-block inputs, in FP32, as the FP32 upcast does."""
    modelio.load_model(tiny_llama_dir, dtype=torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    ids = torch.randint(5, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    captured = {}
    for as_stored in (False, True):
        source = StreamingModel(tmp_path)
        source.load(exclude=[name for name, _ in named_blocks(source.model)], embedding_as_stored=as_stored)
        weight = source.model.get_input_embeddings().weight
        assert weight.dtype == (torch.bfloat16 if as_stored else torch.float32)
        captured[as_stored] = capture_first_block_inputs(source.model, ids)
    for fp32, stored in zip(captured[False].hidden, captured[True].hidden):
        assert stored.dtype == torch.float32 and torch.equal(fp32, stored)
    cos, _ = captured[True].kwargs["position_embeddings"]
    assert cos.dtype == torch.float32 and torch.equal(cos, captured[False].kwargs["position_embeddings"][0])


def test_rewritten_weights_are_kept_in_the_checkpoints_dtype_until_written(tiny_llama_dir, tmp_path):
    """A rewrite walk holds every rewritten weight until the writer runs: in a bf16 checkpoint's own dtype
    (what the writer stores anyway), not as FP32 copies twice that size."""
    from services.common.calibration.sequential import rewrite_sequential

    modelio.load_model(tiny_llama_dir, dtype=torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    source = StreamingModel(tmp_path)
    targets = {n: "zero" for n, m in source.model.named_modules() if n.endswith("mlp.down_proj")}

    def halve(work):
        for name, layer in work.layers.items():
            layer.weight.mul_(0.5)
            yield name, layer.weight.detach().clone(), {}

    ids = torch.randint(5, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    changed = rewrite_sequential(source, targets, ids, halve, lambda *_: None)
    stored = modelio.load_model(tmp_path, dtype=torch.bfloat16)
    for name in targets:
        assert changed[f"{name}.weight"].dtype == torch.bfloat16
        assert torch.equal(changed[f"{name}.weight"], stored.get_parameter(f"{name}.weight") * 0.5)


def test_model_targets_are_the_float_models_hidden_states_and_block_targets_the_float_block_on_the_walked_inputs(
        tiny_llama_dir):
    ids = torch.randint(5, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    float_model = modelio.load_model(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        states = float_model(ids, output_hidden_states=True).hidden_states  # embeddings, then each block's output
    seen = {}
    for targets in ("block", "model"):
        source = StreamingModel(tiny_llama_dir)
        blocks = named_blocks(source.model)
        source.load(exclude=[name for name, _ in blocks])

        def step(work, targets=targets):
            seen[targets, work.index] = torch.cat(work.float_outputs)
            yield from _prune_half(work)

        chosen = {f"{name}.mlp.down_proj": "prune" for name, _ in blocks}
        run_blocks(source, blocks, capture_first_block_inputs(source.model, ids), chosen, step, lambda *_: None,
                   float_targets=targets)
    # Block 0 sees the float model's inputs either way; after a pruned block 0 only "model" keeps to the float model.
    assert torch.allclose(seen["block", 0], seen["model", 0]) and torch.allclose(seen["model", 0], states[1], atol=1e-5)
    # The last block's output in hidden_states is after the final norm: compare block 1 of a 2-block model by hand.
    last_input = states[1]
    with torch.no_grad():
        expected = run_block(named_blocks(float_model)[1][1],
                             _with_hidden(capture_first_block_inputs(float_model, ids), last_input))[0]
    assert torch.allclose(seen["model", 1], expected, atol=1e-5)
    assert not torch.allclose(seen["block", 1], expected, atol=1e-3)


def _with_hidden(inputs, hidden):
    inputs.hidden = [hidden]
    return inputs
