"""The shadow's figures: a model compared with itself agrees everywhere with zero KL; with another
model, the figures are the ones computed directly from both models' logits."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from services.serving.shadow import prompt_agreement


def _model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def test_prompt_agreement_is_one_against_itself_and_the_direct_figures_against_another():
    prompt = list(range(3, 40))
    served, other = _model(0), _model(1)
    agreement, kl, positions = prompt_agreement(served, served, prompt)
    assert agreement == 1.0 and abs(kl) < 1e-6 and positions == len(prompt)

    agreement, kl, _ = prompt_agreement(served, other, prompt)
    with torch.no_grad():
        p = served(input_ids=torch.tensor([prompt])).logits[0].log_softmax(-1)
        q = other(input_ids=torch.tensor([prompt])).logits[0].log_softmax(-1)
    assert agreement == float((p.argmax(-1) == q.argmax(-1)).float().mean()) < 1.0
    want = torch.nn.functional.kl_div(p, q, log_target=True, reduction="none").sum(-1).mean()
    assert abs(kl - float(want)) < 1e-5 and kl > 0
