"""The technique services a pipeline's stages run on: the technique enum -> the service's name
(its gRPC target in the settings, its package under services/, its engine registry)."""

from __future__ import annotations

from modelpress.v1 import common_pb2

TECHNIQUE_SERVICES: dict[int, str] = {
    common_pb2.TECHNIQUE_QUANTIZER: "quantizer",
    common_pb2.TECHNIQUE_PRUNER: "pruner",
    common_pb2.TECHNIQUE_DISTILLER: "distiller",
    common_pb2.TECHNIQUE_EVALUATOR: "evaluator",
    common_pb2.TECHNIQUE_OPTIMIZER: "optimizer",
}
# Techniques whose stages are engine methods in services/<name>/engine.py (the evaluator's stage is a
# measurement, not an engine).
ENGINE_TECHNIQUES = tuple(t for t in TECHNIQUE_SERVICES if t != common_pb2.TECHNIQUE_EVALUATOR)


def engine_module(technique: int) -> str:
    """The module whose METHODS registry holds the technique's methods."""
    return f"services.{TECHNIQUE_SERVICES[technique]}.engine"
