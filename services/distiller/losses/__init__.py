"""Distillation losses, one module per family: response (logits, pooled embeddings), feature
(hidden states through projections), attention (distributions, self-attention relations)."""
