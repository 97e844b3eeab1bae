"""Which arithmetic a CPU's instruction set accelerates, from the ISA flags of a machine record.

A precision is *accelerated* where the CPU has dot-product instructions for it; elsewhere an
engine either emulates it (converts to FP32 around every multiply, slower than plain FP32) or
runs something else (OpenVINO's CPU plugin maps an f16 hint to bf16 on a CPU with AVX512-BF16
but no AVX512-FP16; what a plugin applies is read back, never assumed). INT8 dot products need
VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8); without it u8*s8 products go through AVX2's
saturating pmaddubsw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Ordered from most to least capable: the first class whose flags are all present names a machine.
ISA_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("amx", ("amx_bf16", "amx_int8")),
    ("avx512-bf16", ("avx512_bf16",)),
    ("avx512-vnni", ("avx512_vnni",)),
    ("avx2-vnni", ("avx_vnni",)),
    ("avx2", ("avx2",)),
    ("baseline", ()),
)
CLASS_NAMES = tuple(name for name, _ in ISA_CLASSES)

# Compute precision -> the flags any one of which makes it native on a CPU.
NATIVE_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "bf16": ("amx_bf16", "avx512_bf16"),
    "f16": ("amx_fp16", "avx512_fp16"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni"),
}
COMPUTE_PRECISIONS = tuple(NATIVE_FLAGS)
ALIASES = {"f32": "fp32", "fp16": "f16", "float16": "f16", "bfloat16": "bf16", "float32": "fp32"}


def isa_class(features: Iterable[str]) -> str:
    flags = set(features)
    for name, needed in ISA_CLASSES:
        if all(f in flags for f in needed):
            return name
    return "baseline"


def canonical(precision: str) -> str:
    precision = ALIASES.get(precision, precision)
    if precision not in NATIVE_FLAGS:
        raise ValueError(f"compute precision {precision!r} is not one of {', '.join(COMPUTE_PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class Support:
    precision: str
    accelerated: bool
    emulated: bool  # slower than fp32 here, not merely without its fastest instructions
    by: tuple[str, ...]  # the flags present that make it native
    note: str

    def as_dict(self) -> dict:
        return {"precision": self.precision, "accelerated": self.accelerated, "emulated": self.emulated,
                "by": list(self.by), "note": self.note}


def support(precision: str, features: Iterable[str]) -> Support:
    precision = canonical(precision)
    flags = set(features)
    native = NATIVE_FLAGS[precision]
    if not native:
        return Support(precision, True, False, (), "every CPU computes fp32")
    present = tuple(f for f in native if f in flags)
    if present:
        return Support(precision, True, False, present, f"{precision} dot products in hardware ({', '.join(present)})")
    if precision == "int8":
        return Support(precision, False, False, (), "no VNNI (none of amx_int8, avx512_vnni, avx_vnni): int8 "
                                                    "products go through AVX2's saturating pmaddubsw and gain less")
    return Support(precision, False, True, (), f"emulated: this CPU has none of {', '.join(native)}; engines "
                                               f"convert {precision} to fp32 around each product or run fp32 instead")


def supports(features: Iterable[str]) -> list[Support]:
    flags = list(features)
    return [support(p, flags) for p in COMPUTE_PRECISIONS]


def class_flags(name: str) -> tuple[str, ...]:
    """The flags a CPU of this class has at least: its own and every less capable class's. Used
    where only the class is known (a client asking for another machine than the mesh's)."""
    if name not in CLASS_NAMES:
        raise ValueError(f"isa_class: {name!r} is not one of {', '.join(CLASS_NAMES)}")
    position = CLASS_NAMES.index(name)
    return tuple(flag for _, needed in ISA_CLASSES[position:] for flag in needed)


# OpenVINO's CPU plugin decides what an inference-precision hint becomes from oneDNN's ISA levels
# (intel_cpu's precision_support.cpp): bf16 runs on any `avx512_core` CPU (AVX-512 F, BW, VL, DQ)
# or `avx2_vnni_2` CPU, with the products emulated where AVX512-BF16 is absent; f16 runs only with
# AVX512-FP16 or avx2_vnni_2. So a Xeon with AVX-512 VNNI but no AVX512-BF16 really runs bf16,
# slower than f32 (found when the suite expected f32 there). The engine reads back what it applied;
# this says what to expect, so a test or a note holds on every class.
_AVX512_CORE = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
_AVX2_VNNI_2 = ("avx_vnni", "avx_vnni_int8", "avx_ne_convert")


def openvino_precision(requested: str, features: Iterable[str]) -> str:
    """The inference precision OpenVINO's CPU plugin applies for a hint on a CPU with these flags."""
    precision = canonical(requested)
    flags = set(features)
    runs_bf16 = all(f in flags for f in _AVX512_CORE) or all(f in flags for f in _AVX2_VNNI_2)
    runs_f16 = "avx512_fp16" in flags or all(f in flags for f in _AVX2_VNNI_2)
    if precision == "f16" and runs_f16:
        return "f16"
    if precision in ("bf16", "f16") and runs_bf16:
        return "bf16"  # an f16 hint the CPU cannot run becomes bf16 where bf16 runs
    return "f32"
