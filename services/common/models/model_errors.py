"""Why a model folder cannot be loaded, as types the stage runner maps to gRPC statuses (all
FAILED_PRECONDITION: the request is fine, the model it names is not)."""

from __future__ import annotations


class UnsafeModelError(ValueError):
    """The folder holds pickled weights."""


class UnsupportedModelError(ValueError):
    """The folder is not a model modelpress can load (no config, unknown architecture ...)."""


class IncompleteCheckpoint(UnsupportedModelError):
    """The weights do not cover the model's parameters (or give them the wrong shapes): loading would
    initialise the rest at random, and every figure measured after would describe a random model."""
