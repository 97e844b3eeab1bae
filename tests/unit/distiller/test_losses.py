"""Loss families are objects in registries: each config field allows exactly the registered names,
and a name nobody registered is refused naming the field."""

import typing

import pytest
import torch

from services.distiller.configs import ResponseConfig
from services.distiller.losses.response import DIVERGENCES, EMBEDDING_LOSSES, embedding_loss, logit_divergence


def test_the_configs_allowed_losses_are_the_registered_ones():
    for field, registry in (("divergence", DIVERGENCES), ("embedding_loss", EMBEDDING_LOSSES)):
        assert typing.get_args(ResponseConfig.model_fields[field].annotation) == registry.names()
    assert DIVERGENCES.names() == ("forward-kl", "reverse-kl", "jsd")
    assert EMBEDDING_LOSSES.names() == ("mse+cosine", "mse", "cosine")


def test_the_sum_of_both_embedding_terms_is_the_sum_of_each():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 16), torch.randn(4, 16)
    both = embedding_loss(student, teacher, "mse+cosine")
    assert torch.allclose(both, embedding_loss(student, teacher, "mse") + embedding_loss(student, teacher, "cosine"))


def test_an_unregistered_loss_is_refused_naming_its_field():
    logits = torch.randn(1, 3, 8)
    top = logits.topk(4, dim=-1)
    with pytest.raises(ValueError, match="^divergence: unknown divergence 'tvd'; allowed: forward-kl, reverse-kl, jsd"):
        logit_divergence(logits, top.values, top.indices, 1.0, "tvd")
    with pytest.raises(ValueError, match="^embedding_loss: unknown embedding loss 'l1'"):
        embedding_loss(torch.zeros(2, 4), torch.ones(2, 4), "l1")
