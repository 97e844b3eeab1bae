"""The matrix's tiny models, built once per session, and its results file (written when
MODELPRESS_COMPAT_RESULTS names one: `make test-compat` points it at bench/results/compat.json)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.compat import matrix, tiny_models


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat-models")
    built: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            # A neutral folder name: a refusal must name the family itself, not echo the path.
            built[model_type] = tiny_models.build(model_type, root / model_type / "model", root / "tokenizers")
        return built[model_type]

    return get


@pytest.fixture(scope="session")
def mesh_cells():
    """The cells of test_mesh_families (recipes run as jobs through a mesh), recorded beside the matrix's."""
    return []


@pytest.fixture(scope="session")
def matrix_cells(mesh_cells):
    cells: list[matrix.Cell] = []
    yield cells
    target = os.environ.get("MODELPRESS_COMPAT_RESULTS")
    if target and cells:
        from services.common.models.families import FAMILIES

        matrix.write_results(cells, Path(target), [f for f in FAMILIES if any(c.family == f for c in cells)],
                             mesh=mesh_cells)
