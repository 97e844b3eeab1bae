"""The search space comes from the recipe registry and the services' methods: CPU-serving finishes,
optionally behind structured pruning recovered by self-distillation, each chain checked as CreateJob
checks it; a compute the CPU emulates, a kind the methods do not take and what the caller rules out
are left out with why."""

from __future__ import annotations

from modelpress.v1 import common_pb2
from services.gateway.search.space import Restrictions, search_space
from tests.unit.gateway.test_ranking import AMX, AVX2, _described_methods

Q, O, P, D = (common_pb2.TECHNIQUE_QUANTIZER, common_pb2.TECHNIQUE_OPTIMIZER, common_pb2.TECHNIQUE_PRUNER,
              common_pb2.TECHNIQUE_DISTILLER)


def test_the_space_holds_engine_finishes_and_pruned_compositions_never_an_emulated_compute():
    space = search_space("causal-lm", AVX2, _described_methods())
    names = {c.name for c in space.candidates}
    assert {"onnx-int8", "openvino-int8", "smoothquant-onnx-int8", "prune-25% → onnx-int8",
            "prune-50% → openvino-int8"} <= names
    assert not any("bf16" in n or "fp16" in n for n in names)  # emulated on AVX2
    assert "bf16" in space.left_out and "emulated" in space.left_out["bf16"]
    assert not {"int8-weight-only", "w4a16-gptq", "gguf-q4", "fastest-cpu"} & names  # not faster on a CPU / auto
    assert not any("minilm-edge" in n for n in names)  # a built-in composition: the fronts make those
    composed = next(c for c in space.candidates if c.name == "prune-50% → onnx-int8")
    assert [(s.technique, s.method) for s in composed.stages] == [(P, "structured"), (D, "distill-self"),
                                                                  (O, "onnx-int8")]
    assert composed.uses_data == "training" and composed.cost == "tens of minutes"
    # Cheapest first, so a short budget screens the quick finishes before any composition.
    costs = [c.cost for c in space.candidates]
    assert costs.index("tens of minutes") > costs.index("seconds") and costs[0] != "tens of minutes"
    amx = {c.name for c in search_space("causal-lm", AMX, _described_methods()).candidates}
    assert {"bf16", "openvino-bf16"} <= amx


def test_restrictions_and_the_model_kind_narrow_the_space_naming_why():
    methods = _described_methods()
    quick = search_space("causal-lm", AVX2, methods, Restrictions(training=False))
    assert quick.candidates and all(c.uses_data != "training" and not c.front for c in quick.candidates)
    assert "trains" in quick.left_out["prune-25% → onnx-int8"]
    only_engines = search_space("causal-lm", AVX2, methods, Restrictions(techniques=frozenset({O})))
    assert {c.name for c in only_engines.candidates} >= {"onnx-int8", "openvino"}
    assert "smoothquant-onnx-int8" not in {c.name for c in only_engines.candidates}
    assert "TECHNIQUE_QUANTIZER" in only_engines.left_out["smoothquant-onnx-int8"]
    no_data = search_space("causal-lm", AVX2, methods, Restrictions(calibration=False))
    assert all(c.uses_data == "none" for c in no_data.candidates)
    # An encoder space holds no recipe whose methods take causal LMs only.
    encoder = search_space("encoder", AVX2, methods)
    assert "onnx-int8" in {c.name for c in encoder.candidates}


def test_the_callers_order_of_finishes_is_the_screens_order_within_a_cost():
    methods = _described_methods()
    names = ("openvino-int8", "onnx", "onnx-int8")
    space = search_space("causal-lm", AVX2, methods, Restrictions(finishes=names, training=False))
    assert [c.name for c in space.candidates] == list(names)
