"""Search: the best pipeline for a model on a CPU under constraints, found by measuring (space.py: what
may be tried; strategy.py: how the budget is spent)."""
