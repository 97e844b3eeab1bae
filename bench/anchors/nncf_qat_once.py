"""One run of NNCF's quantization-aware training with absorbable LoRA adapters (FQ_LORA), the
anchor of modelpress's `w4a16-kd-qat`, in the main venv (NNCF is one of its dependencies).

    python bench/anchors/nncf_qat_once.py SRC WINDOWS DST [--tokens N] [--batch B] [--sequence-length L] [--rank R]

As NNCF's own example trains it: every decoder Linear INT4 (here symmetric, group 64, as the bar
judges; embeddings and head float), fake-quantized as Q(W + B·A) with rank-256 adapters, from NNCF's
data-free round-to-nearest start; the adapters (AdamW, lr 1e-4) and the quantizer scales (lr 1e-5)
trained against the float model's next-token distribution (KL), weight decay 1e-4. Training windows
of L tokens are cut from WINDOWS (the very calibration windows modelpress uses); N tokens in all,
B windows a step. DST gets the float model an in-place strip leaves (every weight on its INT4
grid, adapters absorbed): the evaluator reads it as it reads the others; its size on disk is float.
Prints JSON: wall_s, peak_rss_mb, steps, first_kl, last_kl.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src")
    parser.add_argument("windows")
    parser.add_argument("dst")
    # modelpress's w4a16-kd-qat trains 150 steps of one 512-token window per block (one whole-model pass
    # of 76,800 tokens, summed over the blocks) and 61,440 end-to-end tokens: the same tokens here.
    parser.add_argument("--tokens", type=int, default=138_240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--rank", type=int, default=256, help="LoRA rank (NNCF's default)")
    args = parser.parse_args()

    import nncf
    from nncf import CompressionFormat, CompressWeightsMode
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import AsymmetricLoraQuantizer, SymmetricLoraQuantizer
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    windows = load_file(args.windows)["input_ids"]
    pieces = windows[:, : windows.shape[1] // args.sequence_length * args.sequence_length]
    train = pieces.reshape(-1, args.sequence_length)
    start = time.perf_counter()
    teacher = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32)
    example = {"input_ids": train[:1], "attention_mask": torch.ones_like(train[:1])}
    student = nncf.compress_weights(student, mode=CompressWeightsMode.INT4_SYM, group_size=64,
                                    dataset=nncf.Dataset([example]), backup_mode=nncf.BackupMode.NONE,
                                    compression_format=CompressionFormat.FQ_LORA,
                                    advanced_parameters=nncf.AdvancedCompressionParameters(lora_adapter_rank=args.rank))
    student.requires_grad_(False)
    adapters, scales = [], []
    for quantizer in get_hook_storage(student).modules():
        if isinstance(quantizer, (AsymmetricLoraQuantizer, SymmetricLoraQuantizer)) and quantizer.num_bits == 4:
            quantizer.enable_gradients()
            own = quantizer.get_adapters()
            adapters.extend(own.values())
            scales.extend(p for name, p in quantizer.get_trainable_params().items() if name not in own)
    optimizer = torch.optim.AdamW([{"params": adapters, "lr": 1e-4}, {"params": scales, "lr": 1e-5}],
                                  weight_decay=1e-4)
    student.train()
    steps = max(1, args.tokens // (args.batch * args.sequence_length))
    kls = []
    for _ in range(steps):
        ids = train[torch.randint(len(train), (args.batch,))]
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            target = teacher(**inputs).logits.log_softmax(-1).flatten(0, 1)
        logits = student(**inputs).logits.flatten(0, 1)
        loss = torch.nn.functional.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        kls.append(float(loss))
    # NNCF's own in-place strip imports torchao, which this venv does not carry: the same done here,
    # each weight replaced by what its fake quantizer (adapters absorbed) computes from it.
    stripped = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32)
    with torch.no_grad():
        for name, hook in get_hook_storage(student).named_hooks():
            if isinstance(hook, (AsymmetricLoraQuantizer, SymmetricLoraQuantizer)):
                _, op_name, _ = decode_hook_name(name)
                weight = op_name.replace(":", ".")
                stripped.get_parameter(weight).copy_(hook(student.get_parameter(weight)))
    stripped.save_pretrained(args.dst)
    AutoTokenizer.from_pretrained(args.src).save_pretrained(args.dst)
    print(json.dumps({"wall_s": time.perf_counter() - start,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "steps": steps, "first_kl": kls[0], "last_kl": kls[-1]}))


if __name__ == "__main__":
    main()
