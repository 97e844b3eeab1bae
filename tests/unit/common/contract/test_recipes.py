"""A built-in recipe declares everything its listing shows; one that lacks a part fails at import."""

import pytest

from modelpress.v1 import common_pb2
from services.common.contract.recipes import (COMPUTES, RECIPES, SCENARIOS, IncompleteRecipe, RecipeStage,
                                              builtin)

STAGE = (RecipeStage(common_pb2.TECHNIQUE_QUANTIZER, "rtn"),)


def test_a_built_in_without_its_listing_parts_is_an_error_not_a_default():
    listing = {"runtimes": ("onnxruntime",), "uses_data": "none", "cost": "seconds"}
    with pytest.raises(TypeError, match="scenario"):
        builtin("w4-toy", "t", STAGE, hardware=("cpu",), compute="fp32", **listing)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="compute"):
        builtin("w4-toy", "t", STAGE, scenario="edge", hardware=("cpu",), **listing)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="runtimes"):
        builtin("w4-toy", "t", STAGE, scenario="edge", hardware=("cpu",), compute="fp32",  # type: ignore[call-arg]
                uses_data="none", cost="seconds")
    with pytest.raises(IncompleteRecipe, match=r"built-in recipe 'w4-toy': scenario: 'datacenter' is not one of "
                                               r"cloud, edge, mobile; hardware: name at least one"):
        builtin("w4-toy", "t", STAGE, scenario="datacenter", hardware=(), compute="fp32", **listing)
    with pytest.raises(IncompleteRecipe, match="compute: 'fp8' is not one of"):
        builtin("w4-toy", "t", STAGE, scenario="edge", hardware=("cpu",), compute="fp8", **listing)
    with pytest.raises(IncompleteRecipe, match="runtimes: name at least one of transformers.*; uses_data: 'lots' "
                                               "is not one of none, calibration, training; cost: 'ages'"):
        builtin("w4-toy", "t", STAGE, scenario="edge", hardware=("cpu",), compute="fp32", runtimes=("tflite",),
                uses_data="lots", cost="ages")
    made = builtin("w4-toy", "t", STAGE, scenario="edge", hardware=("cpu",), compute="fp32", **listing)
    assert (made.scenario, made.hardware, made.compute) == ("edge", ("cpu",), "fp32")
    assert (made.runtimes, made.uses_data, made.cost) == (("onnxruntime",), "none", "seconds")
    listed = made.message()
    assert (list(listed.runtimes), listed.data, listed.cost, listed.compute) == (["onnxruntime"], "none", "seconds",
                                                                                 "fp32")


def test_every_built_in_lists_what_it_declares():
    from services.gateway.strategies import all_strategies

    listed = {s.name: s for s in all_strategies([])}
    assert set(listed) == set(RECIPES)
    for name, recipe in RECIPES.items():
        assert recipe.scenario in SCENARIOS and recipe.hardware and recipe.compute in COMPUTES, name
        strategy = listed[name]
        assert (strategy.target_scenario, tuple(strategy.hardware_compatibility), strategy.compute_precision) == \
            (recipe.scenario, recipe.hardware, recipe.compute), name
