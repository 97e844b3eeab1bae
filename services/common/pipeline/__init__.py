"""Pipelines as data: recipes (named stage lists), their validation and their gates."""
