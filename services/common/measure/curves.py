"""Curves kept in a stage's figures: every step went out as progress, the manifest keeps a thinned copy."""

from __future__ import annotations


def thin(values: list[float], points: int) -> list[float]:
    """Every k-th value, k chosen so that at most `points` remain (the first is always kept)."""
    every = max(1, -(-len(values) // points))
    return values[::every]
