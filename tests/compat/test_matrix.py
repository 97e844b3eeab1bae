"""The compatibility matrix: every declared family × every matrix recipe, each cell either working
(the output reloads and agrees with the float model) or refused with FAILED_PRECONDITION naming the
family, never anything else. `make test-compat` runs it all (marker `compat`) and records
bench/results/compat.json for docs/; `make test` runs QUICK, a few families on both sides of the line."""

from __future__ import annotations

import pytest

from services.common.models.families import FAMILIES
from tests.compat import matrix

# A decoder and an encoder every method takes, and one of each that class-name checks used to refuse
# outright (GPT-2's GPT2LMHeadModel, DeBERTa-v2, whose blocks take the attention mask positionally):
# working and refused cells both, in seconds.
QUICK = [("llama", "w4a16-rtn"), ("llama", "prune-mlp"), ("gpt2", "w4a16-rtn"), ("gpt2", "prune-mlp"),
         ("bert", "w4a16-rtn"), ("bert", "prune-mlp"), ("deberta-v2", "w4a16-gptq"), ("deberta-v2", "prune-mlp")]
FULL = [(f, r) for f in FAMILIES for r in matrix.RECIPES if (f, r) not in QUICK]


def _check(family, recipe, family_model, matrix_cells, tmp_path):
    cell = matrix.run_cell(family, recipe, family_model(family), tmp_path / "out")
    matrix_cells.append(cell)
    assert cell.outcome in (matrix.WORKS, matrix.REFUSED, matrix.NOT_APPLICABLE), cell.detail


@pytest.mark.parametrize(("family", "recipe"), QUICK, ids=[f"{f}-{r}" for f, r in QUICK])
def test_quick_cells(family, recipe, family_model, matrix_cells, tmp_path):
    _check(family, recipe, family_model, matrix_cells, tmp_path)


@pytest.mark.compat
@pytest.mark.parametrize(("family", "recipe"), FULL, ids=[f"{f}-{r}" for f, r in FULL])
def test_matrix_cell(family, recipe, family_model, matrix_cells, tmp_path):
    _check(family, recipe, family_model, matrix_cells, tmp_path)
