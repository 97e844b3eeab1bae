"""One llm-compressor run, in the anchors' own venv (it pins an older transformers).

    .venv-anchors/bin/python bench/anchors/llmcompressor_once.py METHOD SRC WINDOWS DST

METHOD: gptq, awq, autoround, smoothquant-w8a8 (quantization), or {sparsegpt|wanda}-{50|2of4} (pruning:
half of every decoder Linear's weights, unstructured or 2:4; lm_head kept, as modelpress does).

WINDOWS is a safetensors file holding `input_ids` [samples, length]: the very windows
modelpress calibrates on, so both tools see the same tokens. Prints JSON: wall_s,
peak_rss_mb. Only imports llm-compressor, compressed-tensors, transformers and torch.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def group64_w4a16():
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=64))}


# AutoRound's tuning as modelpress's `autoround` defaults run it (steps_per_block, batch_windows; the step
# size is 1 / iterations in both), so the two differ in their code, not in their budget.
AUTOROUND_ITERATIONS = 100
AUTOROUND_BATCH = 2


def recipe(method: str):
    from llmcompressor.modifiers.autoround import AutoRoundModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    if method == "gptq":
        return [GPTQModifier(config_groups=group64_w4a16(), ignore=["lm_head"], dampening_frac=0.01)]
    if method == "awq":
        return [AWQModifier(duo_scaling=True), QuantizationModifier(config_groups=group64_w4a16(), ignore=["lm_head"])]
    if method == "autoround":
        # torch.compile off: on a CPU it compiles every block anew and adds minutes, not speed.
        return [AutoRoundModifier(config_groups=group64_w4a16(), ignore=["lm_head"], iters=AUTOROUND_ITERATIONS,
                                  batch_size=AUTOROUND_BATCH, enable_torch_compile=False)]
    if method == "smoothquant-w8a8":
        return [SmoothQuantModifier(smoothing_strength=0.5),
                GPTQModifier(scheme="W8A8", targets=["Linear"], ignore=["lm_head"], dampening_frac=0.01)]
    if method in PRUNING_METHODS:
        return [pruning_modifier(method)]
    raise SystemExit(f"unknown method {method}")


PRUNING_METHODS = ("sparsegpt-50", "sparsegpt-2of4", "wanda-50", "wanda-2of4")


def pruning_modifier(method: str):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    algorithm, shape = method.split("-")
    structure = "2:4" if shape == "2of4" else "0:0"
    if algorithm == "sparsegpt":
        return SparseGPTModifier(sparsity=0.5, mask_structure=structure, ignore=["lm_head"], dampening_frac=0.01,
                                 block_size=128)
    return WandaPruningModifier(sparsity=0.5, mask_structure=structure, ignore=["lm_head"])


def main() -> None:
    method, src, windows_path, dst = sys.argv[1:5]
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.accelerator.is_available():
        # llm-compressor's AWQ pins cached activations for host-to-device copies;
        # pinning needs an accelerator, and on CPU there is nothing to copy.
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    ids = load_file(windows_path)["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    oneshot(model=model, dataset=dataset, recipe=recipe(method), max_seq_length=ids.shape[1],
            num_calibration_samples=ids.shape[0])
    # Pruned weights are saved dense (compressed-tensors 0.15 has no sparse compressor left).
    model.save_pretrained(dst, save_compressed=method not in PRUNING_METHODS)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    json.dump({"wall_s": time.perf_counter() - start,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, sys.stdout)


if __name__ == "__main__":
    main()
