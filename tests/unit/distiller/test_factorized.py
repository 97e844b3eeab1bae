"""A factorized token table (ALBERT's layout) built from a BERT-style encoder: the blocks are the input's, the
table starts on the input's principal directions, the result reloads in stock transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, LlamaConfig, LlamaModel

from services.common.models.modelio import UnsupportedModelError
from services.distiller.factorized import factorize


@pytest.fixture(scope="module")
def bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=500, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=64)).eval()


def _pooled(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1)


def test_every_block_is_the_input_s_weight_for_weight(bert):
    # Fed the same hidden states after the embeddings, both stacks compute the same thing.
    student = factorize(bert, 8)
    table_out = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1))
    hidden = student.encoder.embedding_hidden_mapping_in(table_out)
    student.embeddings.register_forward_hook(lambda *_: table_out)
    handle = bert.embeddings.register_forward_hook(lambda *_: hidden)
    ids = torch.zeros(2, 10, dtype=torch.long)
    try:
        assert torch.allclose(_pooled(student, ids), _pooled(bert, ids), atol=1e-5)
    finally:
        handle.remove()


def test_a_higher_rank_starts_closer_to_the_input(bert):
    ids = torch.randint(0, 500, (8, 20), generator=torch.Generator().manual_seed(1))
    reference = _pooled(bert, ids)
    closeness = [float(torch.nn.functional.cosine_similarity(_pooled(factorize(bert, r), ids), reference).mean())
                 for r in (4, 16, 31)]
    assert closeness == sorted(closeness) and closeness[-1] > 0.9


def test_the_table_shrinks_to_rank_and_the_model_reloads_as_albert(bert, tmp_path):
    student = factorize(bert, 8)
    table = student.get_input_embeddings().weight
    assert tuple(table.shape) == (500, 8) and student.config.num_hidden_layers == 3
    saved = sum(p.numel() for p in bert.parameters()) - sum(p.numel() for p in student.parameters())
    # The table: 500 x 32 -> 500 x 8, positions and segments 64 x 32 -> 64 x 8 and 2 x 32 -> 2 x 8, the norm 64 -> 16,
    # plus the 8 -> 32 projection.
    assert saved == (500 + 64 + 2) * (32 - 8) + 2 * (32 - 8) - (8 * 32 + 32)
    student.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(2))
    assert type(again).__name__ == "AlbertModel" and torch.allclose(_pooled(again, ids), _pooled(student, ids), atol=1e-5)


def test_what_it_cannot_factorize_is_refused_by_name(bert):
    with pytest.raises(UnsupportedModelError, match="LlamaModel"):
        factorize(LlamaModel(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)), 8)
    with pytest.raises(ValueError, match="embedding_rank: 32"):
        factorize(bert, 32)
