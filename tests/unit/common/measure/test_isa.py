"""ISA classes and precision support from machine records of CPUs this workplace hands out."""

import pytest

from services.common.measure.isa import class_flags, isa_class, openvino_precision, support, supports

# /proc/cpuinfo flags of the three machines seen here, as services.common.measure.machine records them.
XEON_AMX = ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
            "amx_tile", "amx_int8", "amx_bf16"]
EPYC_ZEN4 = ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni", "avx512_bf16"]
XEON_VNNI = ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"]  # no AVX512-BF16, no AMX
EPYC_AVX2 = ["sse4_2", "avx", "avx2", "fma", "f16c"]


@pytest.mark.parametrize("flags, name", [(XEON_AMX, "amx"), (EPYC_ZEN4, "avx512-bf16"), (EPYC_AVX2, "avx2"),
                                         (["avx2", "avx_vnni"], "avx2-vnni"), (["sse4_2"], "baseline"),
                                         (["avx2", "avx512f", "avx512_vnni"], "avx512-vnni")])
def test_each_recorded_machine_gets_its_class(flags, name):
    assert isa_class(flags) == name
    assert isa_class(class_flags(name)) == name  # a class's implied flags name the class again


def test_bf16_is_native_on_amx_and_zen4_and_emulated_on_avx2():
    assert support("bf16", XEON_AMX).by == ("amx_bf16", "avx512_bf16")
    assert support("bfloat16", EPYC_ZEN4).accelerated
    avx2 = support("bf16", EPYC_AVX2)
    assert not avx2.accelerated and avx2.emulated and "avx512_bf16" in avx2.note


def test_f16_needs_avx512_fp16_and_int8_without_vnni_is_slow_but_not_emulated():
    assert support("fp16", XEON_AMX).accelerated and support("f16", EPYC_ZEN4).emulated
    int8 = support("int8", EPYC_AVX2)
    assert not int8.accelerated and not int8.emulated and "pmaddubsw" in int8.note
    assert [s.precision for s in supports(EPYC_AVX2) if s.emulated] == ["bf16", "f16"]


def test_unknown_names_are_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="int4"):
        support("int4", XEON_AMX)
    with pytest.raises(ValueError, match="isa_class: 'sse9'.*avx2"):
        class_flags("sse9")


@pytest.mark.parametrize("flags, bf16, f16", [(XEON_AMX, "bf16", "f16"), (EPYC_ZEN4, "bf16", "bf16"),
                                              (XEON_VNNI, "bf16", "bf16"), (EPYC_AVX2, "f32", "f32"),
                                              (["avx2", "avx_vnni", "avx_vnni_int8", "avx_ne_convert"], "bf16", "f16")])
def test_openvino_runs_bf16_on_every_avx512_core_cpu_and_f32_below(flags, bf16, f16):
    # The AVX-512 VNNI Xeon without BF16 runs bf16 emulated: applied, yet not accelerated there.
    assert openvino_precision("bf16", flags) == bf16 and openvino_precision("f16", flags) == f16
    assert openvino_precision("fp32", flags) == "f32"
    if flags is XEON_VNNI:
        assert isa_class(flags) == "avx512-vnni" and support("bf16", flags).emulated
