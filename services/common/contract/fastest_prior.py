"""`fastest-cpu`'s prior: the engine precision the bench measured fastest, at kept quality, on CPUs of an
ISA class — what the stage runs when no search measured this worker's class (the gateway's search,
services/gateway/search/fastest.py, passes the measured choice as the stage's `choice`, and screens the
prior first).

Fastest means the encoder forward pass, and for causal LMs per-token decode (a generated reply
is mostly decode steps). Each measured entry is the fastest quality-kept row of
bench/results/optimizer.json for its class (tests/unit/optimizer/test_fastest.py holds the table to the
file); a class the bench has not run on borrows the nearest measured class's, and says it is unmeasured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.measure.isa import CLASS_NAMES


@dataclass(frozen=True)
class Choice:
    recipe: str  # the recipe a client would name for the same thing
    method: str
    config: dict = field(default_factory=dict)


BEST: dict[tuple[str, str], Choice] = {
    # Its speed ties openvino-int8-bf16's within the interval, at a higher cosine.
    ("avx512-bf16", "encoder"): Choice("openvino-bf16", "openvino", {"inference_precision": "bf16"}),
    # Its decode beats every bf16 path's on this class too (their prefill is faster).
    ("avx512-bf16", "causal-lm"): Choice("onnx-int8", "onnx-int8"),
    ("avx2", "encoder"): Choice("onnx-int8", "onnx-int8"),
    ("avx2", "causal-lm"): Choice("onnx-int8", "onnx-int8"),
}
# Where a class has no bench rows: an AMX CPU also has AVX512-BF16, so it borrows that class's
# choice until the bench runs on one; a CPU without bf16 instructions borrows the AVX2 machine's.
NEAREST_MEASURED = {"amx": "avx512-bf16", "avx512-vnni": "avx2", "avx2-vnni": "avx2", "baseline": "avx2"}


def resolve(isa: str, kind: str) -> tuple[Choice, str]:
    """The choice for a CPU of class `isa` and a model of `kind`, and a note that says why."""
    if isa not in CLASS_NAMES:
        raise ValueError(f"isa_class: {isa!r} is not one of {', '.join(CLASS_NAMES)}")
    measured = isa if (isa, kind) in BEST else NEAREST_MEASURED.get(isa, "")
    if (measured, kind) not in BEST:
        raise ValueError(f"fastest-cpu has no choice for a {kind} on {isa}")
    choice = BEST[(measured, kind)]
    why = "decode" if kind == "causal-lm" else "forward pass"
    note = (f"fastest-cpu ran its prior {choice.recipe} for a {kind} on an {isa} CPU, not measured on this worker: "
            f"the bench's fastest {why} at kept quality on ")
    note += (f"{isa} (bench/results/optimizer.json)" if measured == isa
             else f"{measured}, borrowed (no bench run on {isa})")
    return choice, note
