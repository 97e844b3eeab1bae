"""OpenVINO compiled models as every modelpress process opens them: threads fixed, the latency
hint, and the inference and KV-cache precisions pinned — left alone, OpenVINO runs bf16 on CPUs
that have avx512_bf16 and may keep a fused stateful KV cache in u8 (its CPU default), so a
figure measured there would not be the FP32 graph's."""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("f32", "bf16", "f16")


def disable_telemetry() -> None:
    """OpenVINO's converter and NNCF send usage telemetry by default (no consent file means
    consent when no dialog is shown). modelpress runs offline, and the sender forks a process from
    a worker thread, which aborted a test process here (Fatal Python error). Sending is made a
    no-op in this process; nothing on disk is changed."""
    try:
        from openvino_telemetry.utils.sender import TelemetrySender
    except ImportError:
        return
    TelemetrySender.send = lambda self, backend, message: None


def compile_config(threads: int = 2, precision: str = "f32") -> dict:
    if precision not in PRECISIONS:
        raise ValueError(f"inference precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    # KV_CACHE_PRECISION only acts where the plugin fuses the stateful cache into its own SDPA
    # kernel; measured here, modelpress's SmolLM2 graph gave bit-identical logits with u8 and f32,
    # so it is pinned for exactness and not offered as an option.
    return {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": "f32", "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


def compile_model(model, threads: int = 2, precision: str = "f32"):
    """model: an ov.Model or the path of an IR .xml."""
    disable_telemetry()
    import openvino as ov

    core = ov.Core()
    source = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
    return core.compile_model(source, "CPU", compile_config(threads, precision))


def applied_precision(compiled, key: str = "INFERENCE_PRECISION_HINT") -> str:
    """What the plugin actually runs, read back rather than assumed ("f32", "bf16", "u8" ...)."""
    value = compiled.get_property(key)
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def read_model(path: Path):
    disable_telemetry()
    import openvino as ov

    return ov.Core().read_model(str(path))


def weight_counts(ov_model) -> dict[str, int]:
    """Weights stored in the graph's constants, by element type (f32, u8, u4 ...). Scales and
    zero-points — shaped [..., 1] beside their weight — and 1-D constants are not weights."""
    counts: dict[str, int] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = op.get_output_partial_shape(0)
        if shape.rank.get_length() < 2 or shape[shape.rank.get_length() - 1].get_length() == 1:
            continue
        numel = 1
        for dim in shape:
            numel *= dim.get_length()
        kind = op.get_output_element_type(0).get_type_name()
        counts[kind] = counts.get(kind, 0) + numel
    return counts
