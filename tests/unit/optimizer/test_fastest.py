"""`fastest-cpu` resolves per ISA class, and its table agrees with the bench results it rests on."""

import json
from pathlib import Path

import pytest

from services.common.contract.engine_api import ProgressReporter
from services.common.measure.isa import CLASS_NAMES
from services.common.contract import fastest_prior as fastest
from services.optimizer import engine
from services.optimizer.engines import ENGINES
from services.common.contract.recipes import RECIPES

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results" / "optimizer.json"
KIND = {"minilm-l6": "encoder", "smollm2-135m": "causal-lm"}
PHASE = {"encoder": "forward", "causal-lm": "decode"}


def _shapes(rows):
    return sorted({(r["batch"], r["seq"]) for r in rows})


@pytest.mark.parametrize("isa, kind", sorted({key for key in fastest.BEST}))
def test_each_measured_choice_is_the_fastest_quality_kept_row_of_its_class(isa, kind):
    rows = [r for r in json.loads(RESULTS.read_text())["rows"]
            if r["isa_class"] == isa and KIND[r["model"]] == kind and r["phase"] == PHASE[kind] and r["quality_ok"]]
    assert rows, f"bench/results/optimizer.json has no {kind} rows from a {isa} CPU"
    choice = fastest.BEST[(isa, kind)]
    for shape in _shapes(rows):
        at = [r for r in rows if (r["batch"], r["seq"]) == shape]
        best = max(at, key=lambda r: r["speedup"])
        mine = [r for r in at if r["recipe"] == choice.recipe]
        assert mine, f"{choice.recipe} was not run on {isa} at {shape}"
        # Not significantly slower than the fastest: inside its 95 % interval (rows measured before
        # the bench kept intervals: the fastest itself).
        floor = best.get("speedup_ci95", [best["speedup"]])[0]
        assert mine[0]["speedup"] >= floor, (shape, best["recipe"], best["speedup"])


def test_every_class_resolves_and_unmeasured_ones_say_whose_choice_they_borrow():
    for isa in CLASS_NAMES:
        for kind in ("encoder", "causal-lm"):
            choice, note = fastest.resolve(isa, kind)
            assert choice.recipe in RECIPES and choice.method in engine.METHODS
            assert (f"no bench run on {isa}" in note) == ((isa, kind) not in fastest.BEST)
    with pytest.raises(ValueError, match="isa_class"):
        fastest.resolve("sse9", "encoder")


def test_the_choice_never_computes_in_a_precision_its_class_would_emulate():
    from services.common.measure.isa import class_flags, support

    for isa in CLASS_NAMES:
        for kind in ("encoder", "causal-lm"):
            choice, _ = fastest.resolve(isa, kind)
            assert not support(RECIPES[choice.recipe].compute, class_flags(isa)).emulated, (isa, choice)


def test_the_engines_and_the_recipes_agree_on_what_each_precision_computes_in():
    for e in ENGINES.values():
        for precision, recipe in e.methods.items():
            assert RECIPES[recipe].compute == e.compute_of(precision), (e.name, precision)


def test_the_choice_runs_the_recipe_it_names(tiny_bert_dir, tmp_path):
    stage, = RECIPES["openvino-bf16"].stages
    result = engine.METHODS["fastest-cpu"].run(engine.FastestCpuConfig(isa_class="amx"), tiny_bert_dir,
                                               tmp_path / "out", ProgressReporter())
    assert result.compression["resolved"]["recipe"] == "openvino-bf16" and result.compression["precision"] == "bf16"
    assert result.compression["resolved"]["config"] == stage.config
    assert "no bench run on amx" in result.notes[0]
    assert (tmp_path / "out" / "openvino_model.xml").exists()
    assert result.metrics["compute_precision"]["requested"] == "bf16"


def test_the_prior_never_calls_itself_measured_here():
    for isa in CLASS_NAMES:
        for kind in ("encoder", "causal-lm"):
            _, note = fastest.resolve(isa, kind)
            assert "prior" in note and "not measured on this worker" in note, note


def test_a_measured_choice_runs_that_recipe_instead_of_the_prior(tiny_bert_dir, tmp_path):
    prior, _ = fastest.resolve("amx", "encoder")
    assert prior.recipe != "onnx-int8"
    result = engine.METHODS["fastest-cpu"].run(engine.FastestCpuConfig(isa_class="amx", choice="onnx-int8"),
                                               tiny_bert_dir, tmp_path / "out", ProgressReporter())
    resolved = result.compression["resolved"]
    assert (resolved["recipe"], resolved["method"], resolved["given"]) == ("onnx-int8", "onnx-int8", True)
    assert "prior" not in result.notes[0] and "search" in result.notes[0]
    assert list((tmp_path / "out").glob("*.onnx"))


@pytest.mark.parametrize("choice", ["w4a16-gptq", "fastest-cpu", "minilm-edge", "no-such-recipe"])
def test_a_choice_must_be_one_engine_recipe_of_one_stage(choice):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="choice"):
        engine.FastestCpuConfig(choice=choice)
