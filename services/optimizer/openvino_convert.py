"""PyTorch → OpenVINO IR, and NNCF weight compression of the IR.

Encoders become (input_ids, attention_mask) → last_hidden_state with dynamic batch and sequence.
Causal LMs become a *stateful* graph: (input_ids, attention_mask, position_ids) → logits, the KV
cache held inside the infer request as OpenVINO variables (ReadValue/Assign), so a decode step
moves one token in and one row of logits out instead of every layer's keys and values. The
same graph serves prefill (empty state) and decode; `reset_state()` starts a new sequence.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from services.common.engines.openvino_runtime import disable_telemetry
from services.optimizer.cache_graph import INPUTS as CAUSAL_INPUTS
from services.optimizer.cache_graph import CacheGeometry, LogitsWithCache, sample_inputs, traceable
from services.optimizer.onnx_export import EXPORT_LOCK, HiddenStates
from services.optimizer.onnx_export import INPUT_NAMES as ENCODER_INPUTS

IR_FILE = "openvino_model.xml"


def _name_ports(ports, names: list[str]) -> None:
    for port, name in zip(ports, names):
        port.get_tensor().set_names({name})


def _batch_sized_initial_state(ov_model) -> None:
    """Each cache variable starts as zeros of shape [batch, heads, 0, head_dim], batch read from
    input_ids: without an initializer OpenVINO starts it as [0, heads, 0, dim], which does not
    concatenate with the first step's [batch, heads, n, dim]."""
    import openvino as ov
    import openvino.opset13 as ops

    ids = ov_model.input("input_ids")
    batch = ops.gather(ops.shape_of(ids, "i64"), ops.constant([0], ov.Type.i64), ops.constant(0, ov.Type.i64))
    for op in ov_model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        shape = op.get_output_partial_shape(0)
        dims = [batch] + [ops.constant([d.get_length() if d.is_static else 0], ov.Type.i64) for d in list(shape)[1:]]
        zeros = ops.broadcast(ops.constant(0.0, op.get_output_element_type(0)), ops.concat(dims, 0))
        op.set_arguments([zeros])
    ov_model.validate_nodes_and_infer_types()


def convert(model: nn.Module, kind: str, sample_length: int = 8):
    """The ov.Model of a float transformers model. A causal LM's comes back with explicit
    past/present ports: `make_stateful` turns them into the request's cache."""
    disable_telemetry()
    import openvino as ov

    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.randint(5, max(6, min(vocab, 32000)), (1, sample_length), generator=torch.Generator().manual_seed(0))
    with EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings(), traceable(model):
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        if kind != "causal-lm":
            ov_model = ov.convert_model(HiddenStates(model).eval(),
                                        example_input={"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            _name_ports(ov_model.inputs, ENCODER_INPUTS)
            _name_ports(ov_model.outputs, ["last_hidden_state"])
            return ov_model
        geometry = CacheGeometry.of(model.config)
        ov_model = ov.convert_model(LogitsWithCache(model).eval(),
                                    example_input=sample_inputs(model, sample_length))
    _name_ports(ov_model.inputs, CAUSAL_INPUTS + geometry.names("past_key_values"))
    _name_ports(ov_model.outputs, ["logits"] + geometry.names("present"))
    ov_model.reshape({name: ov.PartialShape([-1, geometry.kv_heads, -1, geometry.head_dim])
                      for name in geometry.names("past_key_values")})
    return ov_model


def make_stateful(ov_model, geometry: CacheGeometry) -> None:
    """Moves the explicit past/present cache ports into variables of the infer request. Done
    after weight compression, whose calibration feeds the explicit ports an empty past."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    apply_make_stateful_transformation(ov_model, dict(zip(geometry.names("past_key_values"),
                                                          geometry.names("present"))))
    _batch_sized_initial_state(ov_model)


def calibration_inputs(windows, kind: str, geometry: CacheGeometry | None) -> list[dict]:
    """NNCF dataset items for the stateless graph: each window a fresh sequence (empty past)."""
    import numpy as np

    items = []
    for window in windows:
        ids = np.asarray(window, dtype=np.int64)[None]
        item = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if kind == "causal-lm":
            item["position_ids"] = np.arange(ids.shape[1], dtype=np.int64)[None]
            empty = np.zeros((1, geometry.kv_heads, 0, geometry.head_dim), np.float32)
            item.update({name: empty for name in geometry.names("past_key_values")})
        items.append(item)
    return items


def save(ov_model, out_dir: Path, float_weights_f16: bool = False) -> Path:
    """float_weights_f16: store float weights as f16 (half the file, and the runtime then holds
    half the bytes); only for IRs that compute in bf16/f16, whose arithmetic already rounds
    further than f16 storage does. An f32-compute IR keeps f32 weights, so its numbers stay the
    float model's."""
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / IR_FILE
    ov.save_model(ov_model, str(path), compress_to_fp16=float_weights_f16)
    return path


def compress_weights(ov_model, *, bits: int, symmetric: bool, group_size: int = 128, ratio: float = 1.0,
                     calibration: list[dict] | None = None) -> tuple[object, dict]:
    """NNCF weight compression; returns the model and what was done. INT4 groups that do not divide
    a layer's input size (SmolLM2's 576 with 128) shrink to one that does instead of failing;
    with calibration inputs INT4 is data-aware (AWQ and scale estimation)."""
    disable_telemetry()
    import nncf

    if bits == 8:
        mode = nncf.CompressWeightsMode.INT8_SYM if symmetric else nncf.CompressWeightsMode.INT8_ASYM
        return nncf.compress_weights(ov_model, mode=mode), {"mode": mode.value, "per_channel": True}
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    kwargs: dict = {"mode": mode, "group_size": group_size, "ratio": ratio,
                    "advanced_parameters": AdvancedCompressionParameters(
                        group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)}
    if calibration:
        kwargs.update(dataset=nncf.Dataset(calibration), awq=True, scale_estimation=True,
                      subset_size=len(calibration))
    compressed = nncf.compress_weights(ov_model, **kwargs)
    return compressed, {"mode": mode.value, "group_size": group_size, "ratio": ratio,
                        "data_aware": bool(calibration), "calibration_samples": len(calibration or [])}
