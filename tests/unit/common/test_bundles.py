"""Deployment bundles (services/common/bundles.py), checked offline against the servers' own schemas:
config.pbtxt parsed into Triton's ModelConfig message (tritonclient's model_config.proto), Kubernetes
objects validated by kubernetes-validate (strict, the API's JSON schemas), ONNX graphs and OpenVINO IRs
read back with onnx / openvino, and every (target, format, kind) refusal.

KServe's InferenceService CRD schema is not installed with any test dependency, so the InferenceService
is checked for the fields KServe requires; set MODELPRESS_KSERVE_CRD to a copy of KServe's
config/crd/full/serving.kserve.io_inferenceservices.yaml to validate it against the CRD's schema too."""

from __future__ import annotations

import functools
import importlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from services.common import bundles
from services.common.bundles import BundleError, write_bundle
from services.common.contract.deployment_config import DeploymentConfig
from tests.protocol_clients import tritonclient_grpc_apart

KUBERNETES_VERSION = "1.37"
CONFIG = DeploymentConfig(max_batch_size=8, max_wait_ms=2.5, threads=3, max_kv_tokens=4096)

BERT = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8, "max_position_embeddings": 512}
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2048}
COMPRESSED = {**LLAMA, "quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}}
TOKENIZER = {"tokenizer.json": '{"version":"1.0","model":{"type":"WordPiece"}}',
             "tokenizer_config.json": '{"model_max_length": 512}'}


@pytest.fixture(scope="module")
def model_config_pb2():
    """Triton's own model_config.proto messages, loaded apart from modelpress's `inference.*` contract."""
    tritonclient_grpc_apart()
    return importlib.import_module("tritonclient.grpc.model_config_pb2")


def _parse_pbtxt(path: Path, pb2):
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def _folder(path: Path, config: dict | None, files: dict[str, bytes | str] | None = None) -> Path:
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name, content in {**TOKENIZER, **(files or {})}.items():
        (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _encoder_graph(batch="batch", external: bool = False) -> onnx.ModelProto:
    """input_ids, attention_mask (int64 [batch, seq]) -> last_hidden_state (float [batch, seq, 8])."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, "seq"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [batch, "seq", 8])
    table = numpy_helper.from_array(np.arange(16 * 8, dtype=np.float32).reshape(16, 8), "embeddings")
    nodes = [helper.make_node("Gather", ["embeddings", "input_ids"], ["gathered"]),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mask_f", "axis"], ["mask_3d"]),
             helper.make_node("Mul", ["gathered", "mask_3d"], ["last_hidden_state"])]
    axis = numpy_helper.from_array(np.array([2], dtype=np.int64), "axis")
    graph = helper.make_graph(nodes, "encoder", [ids, mask], [out], initializer=[table, axis])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnx_artifact(path: Path, config: dict | None = BERT, *, batch="batch", external: bool = False) -> Path:
    folder = _folder(path, config, {"onnx_model.json": json.dumps({"engine": "onnxruntime"})})
    model = _encoder_graph(batch)
    if external:
        onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    else:
        onnx.save_model(model, str(folder / "model.onnx"))
    return folder


def openvino_artifact(path: Path, config: dict = BERT) -> Path:
    import openvino as ov
    import openvino.opset13 as ops

    folder = _folder(path, config)
    ids = ops.parameter([-1, -1], np.int64, name="input_ids")
    ids.output(0).get_tensor().set_names({"input_ids"})
    mask = ops.parameter([-1, -1], np.int64, name="attention_mask")
    mask.output(0).get_tensor().set_names({"attention_mask"})
    hidden = ops.unsqueeze(ops.convert(ops.add(ids, mask), "f32"), [2])
    hidden.output(0).get_tensor().set_names({"last_hidden_state"})
    ov.save_model(ov.Model([ops.result(hidden)], [ids, mask], "tiny"), str(folder / "openvino_model.xml"),
                  compress_to_fp16=False)
    return folder


def tensorrt_artifact(path: Path, config: dict = BERT, max_batch: int | None = None) -> Path:
    folder = _folder(path, config, {"model.engine": b"\x00plan-bytes"})
    if max_batch:
        (folder / "modelpress.json").write_text(json.dumps(
            {"metrics": {"tensorrt": {"profile": {"min": [1, 1], "opt": [4, 128], "max": [max_batch, 512]}}}}))
    return folder


def safetensors_artifact(path: Path, config: dict = COMPRESSED) -> Path:
    return _folder(path, config, {"model.safetensors": b"weights", "generation_config.json": "{}"})


def gguf_artifact(path: Path, config: dict | None = LLAMA) -> Path:
    return _folder(path, config, {"model-q8_0.gguf": b"GGUF\x03weights",
                                  "gguf_model.json": json.dumps({"kind": "causal-lm"})})


def packed_artifact(path: Path) -> Path:
    return _folder(path, LLAMA, {"model.safetensors": b"weights", "quantization.json": "{}"})


# ------------------------------------------------------------------------------------------------ triton


def test_triton_onnx_repository_matches_the_graph(tmp_path, model_config_pb2):
    artifact = onnx_artifact(tmp_path / "art")
    result = write_bundle("triton", artifact, tmp_path / "out", name="minilm", config=CONFIG, replicas=2)
    out = tmp_path / "out"
    parsed = _parse_pbtxt(out / "minilm" / "config.pbtxt", model_config_pb2)
    pb = model_config_pb2

    assert parsed.name == "minilm"
    assert parsed.platform == "onnxruntime_onnx" and parsed.backend == "onnxruntime"
    assert parsed.max_batch_size == 8
    # Triton drops the batch dimension from dims when max_batch_size > 0; dynamic dims are -1.
    assert [(i.name, i.data_type, list(i.dims)) for i in parsed.input] == [
        ("input_ids", pb.TYPE_INT64, [-1]), ("attention_mask", pb.TYPE_INT64, [-1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in parsed.output] == [
        ("last_hidden_state", pb.TYPE_FP32, [-1, 8])]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2500
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8]
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert parsed.parameters["intra_op_thread_count"].string_value == "3"

    # The model file is where the ONNX Runtime backend looks, and is the same graph.
    copied = onnx.load(str(out / "minilm" / "1" / "model.onnx"))
    assert [i.name for i in copied.graph.input] == [i.name for i in parsed.input]
    assert (out / "minilm" / "1" / "tokenizer" / "tokenizer.json").read_text() == TOKENIZER["tokenizer.json"]
    assert (out / "minilm" / "1" / "tokenizer" / "config.json").exists()
    assert "tokenizer" in (out / "README.md").read_text() and "tritonserver --model-repository" in result["run"]
    assert result["target"] == "triton" and result["format"] == "ONNX" and result["kind"] == "encoder"
    assert result["files"] == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_triton_fixed_batch_graph_is_served_unbatched_with_full_dims(tmp_path, model_config_pb2):
    artifact = onnx_artifact(tmp_path / "art", batch=1)
    write_bundle("triton", artifact, tmp_path / "out", name="fixed", config=CONFIG)
    parsed = _parse_pbtxt(tmp_path / "out" / "fixed" / "config.pbtxt", model_config_pb2)
    assert parsed.max_batch_size == 0
    assert not parsed.HasField("dynamic_batching")
    assert [list(i.dims) for i in parsed.input] == [[1, -1], [1, -1]]
    assert [list(o.dims) for o in parsed.output] == [[1, -1, 8]]


def test_triton_onnx_with_external_data_is_a_model_onnx_folder(tmp_path, model_config_pb2):
    artifact = onnx_artifact(tmp_path / "art", external=True)
    write_bundle("triton", artifact, tmp_path / "out", name="ext", config=CONFIG)
    folder = tmp_path / "out" / "ext" / "1" / "model.onnx"
    # Triton: a multi-file ONNX model is a folder named model.onnx holding model.onnx and its files.
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx_data"]
    loaded = onnx.load(str(folder / "model.onnx"))  # resolves the external data beside it
    weights = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert weights["embeddings"].shape == (16, 8) and weights["embeddings"][15, 7] == 16 * 8 - 1
    _parse_pbtxt(tmp_path / "out" / "ext" / "config.pbtxt", model_config_pb2)


def test_triton_openvino_repository_matches_the_ir(tmp_path, model_config_pb2):
    import openvino as ov

    artifact = openvino_artifact(tmp_path / "art")
    write_bundle("triton", artifact, tmp_path / "out", name="ovenc", config=CONFIG)
    version = tmp_path / "out" / "ovenc" / "1"
    assert (version / "model.xml").exists() and (version / "model.bin").exists()
    parsed = _parse_pbtxt(tmp_path / "out" / "ovenc" / "config.pbtxt", model_config_pb2)
    pb = model_config_pb2
    assert parsed.backend == "openvino" and parsed.platform == ""
    assert parsed.max_batch_size == 8 and parsed.dynamic_batching.max_queue_delay_microseconds == 2500
    model = ov.Core().read_model(str(version / "model.xml"))
    assert [i.name for i in parsed.input] == [p.get_any_name() for p in model.inputs]
    assert [o.name for o in parsed.output] == [p.get_any_name() for p in model.outputs] == ["last_hidden_state"]
    assert [(i.data_type, list(i.dims)) for i in parsed.input] == [(pb.TYPE_INT64, [-1])] * 2
    assert [(o.data_type, list(o.dims)) for o in parsed.output] == [(pb.TYPE_FP32, [-1, 1])]
    assert parsed.parameters["INFERENCE_NUM_THREADS"].string_value == "3"
    assert [g.kind for g in parsed.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]


def test_triton_tensorrt_plan_on_the_gpu_within_the_engines_batch(tmp_path, model_config_pb2):
    artifact = tensorrt_artifact(tmp_path / "art", max_batch=4)
    write_bundle("triton", artifact, tmp_path / "out", name="trt", config=CONFIG)
    assert (tmp_path / "out" / "trt" / "1" / "model.plan").read_bytes() == b"\x00plan-bytes"
    parsed = _parse_pbtxt(tmp_path / "out" / "trt" / "config.pbtxt", model_config_pb2)
    assert parsed.platform == "tensorrt_plan" and parsed.backend == "tensorrt"
    assert parsed.max_batch_size == 4 and list(parsed.dynamic_batching.preferred_batch_size) == [4]
    assert [g.kind for g in parsed.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]


def test_triton_vllm_backend_for_compressed_tensors(tmp_path, model_config_pb2):
    artifact = safetensors_artifact(tmp_path / "art")
    result = write_bundle("triton", artifact, tmp_path / "out", name="smollm", config=CONFIG, replicas=3)
    model_dir = tmp_path / "out" / "smollm"
    parsed = _parse_pbtxt(model_dir / "config.pbtxt", model_config_pb2)
    assert parsed.backend == "vllm" and parsed.max_batch_size == 0
    assert parsed.model_transaction_policy.decoupled  # the vLLM backend asserts it
    assert not parsed.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_MODEL)]
    assert [i.name for i in parsed.input] == ["text_input"] and [o.name for o in parsed.output] == ["text_output"]
    # vllm_backend reads <model>/<version>/model.json as AsyncEngineArgs.
    engine_args = json.loads((model_dir / "1" / "model.json").read_text())
    assert engine_args == {"model": "/models/smollm/1/weights", "max_num_seqs": 8, "max_model_len": 2048}
    assert (model_dir / "1" / "weights" / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((model_dir / "1" / "weights" / "config.json").read_text()) == COMPRESSED
    assert "-vllm-python-py3" in result["run"] and "/models" in result["run"]


# ------------------------------------------------------------------------------------------------ kserve


def _kserve(out: Path) -> dict:
    text = (out / "inferenceservice.yaml").read_text()
    assert text.startswith("# ") and "storageUri" in text.splitlines()[0]  # says what to replace
    (service,) = list(yaml.safe_load_all(text))
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert service["metadata"]["name"]
    _validate_against_kserve_crd(service)
    return service


def _validate_against_kserve_crd(service: dict) -> None:
    crd_path = os.environ.get("MODELPRESS_KSERVE_CRD")
    if not crd_path:
        return  # KServe's CRD is not available offline: the structure is checked by the callers
    import jsonschema

    schema = _crd_schema(crd_path)
    jsonschema.validate(service, schema)
    # A CRD's structural schema prunes unknown fields instead of refusing them: find them here.
    assert _unknown_fields(service, schema) == []


@functools.cache
def _crd_schema(crd_path: str) -> dict:
    crd = next(d for d in yaml.safe_load_all(Path(crd_path).read_text()) if d and d.get("kind") ==
               "CustomResourceDefinition")
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")["schema"]["openAPIV3Schema"]


def _unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    if isinstance(value, dict) and "properties" in schema:
        unknown = [f"{path}.{k}" for k in value if k not in schema["properties"]]
        return unknown + [u for k, v in value.items() if k in schema["properties"]
                          for u in _unknown_fields(v, schema["properties"][k], f"{path}.{k}")]
    if isinstance(value, list) and "items" in schema:
        return [u for i, v in enumerate(value) for u in _unknown_fields(v, schema["items"], f"{path}[{i}]")]
    return []


def test_kserve_onnx_uses_triton_with_a_model_repository(tmp_path, model_config_pb2):
    artifact = onnx_artifact(tmp_path / "art")
    result = write_bundle("kserve", artifact, tmp_path / "out", name="minilm", config=CONFIG, replicas=2)
    service = _kserve(tmp_path / "out")
    predictor = service["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 2)
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://REPLACE-ME/minilm"
    assert model["resources"]["requests"]["cpu"] == "3"
    # kserve-tritonserver runs --model-store=/mnt/models: model/ is a Triton repository.
    parsed = _parse_pbtxt(tmp_path / "out" / "model" / "minilm" / "config.pbtxt", model_config_pb2)
    assert parsed.backend == "onnxruntime" and [g.count for g in parsed.instance_group] == [1]
    assert sorted(p.name for p in (tmp_path / "out" / "model" / "minilm" / "1").iterdir()) == ["model.onnx"]
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").exists()  # beside the store, not in it
    assert "storageUri" in (tmp_path / "out" / "README.md").read_text()
    assert result["run"] == "kubectl apply -f inferenceservice.yaml"


def test_kserve_openvino_uses_ovms_version_folders(tmp_path):
    write_bundle("kserve", openvino_artifact(tmp_path / "art"), tmp_path / "out", name="ovenc", config=CONFIG)
    model = _kserve(tmp_path / "out")["spec"]["predictor"]["model"]
    assert (model["modelFormat"]["name"], model["runtime"], model["protocolVersion"]) == (
        "openvino", "kserve-openvino", "v2")
    assert sorted(p.name for p in (tmp_path / "out" / "model" / "1").iterdir()) == [
        "openvino_model.bin", "openvino_model.xml"]


def test_kserve_compressed_tensors_uses_the_huggingface_runtime_on_vllm(tmp_path):
    write_bundle("kserve", safetensors_artifact(tmp_path / "art"), tmp_path / "out", name="smollm", config=CONFIG)
    model = _kserve(tmp_path / "out")["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "huggingface" and model["runtime"] == "kserve-huggingfaceserver"
    assert model["args"] == ["--backend=vllm", "--max_model_len=2048", "--max-num-seqs=8"]
    assert model["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


# -------------------------------------------------------------------------------------------------- ovms


def test_ovms_onnx_config_and_layout(tmp_path):
    result = write_bundle("ovms", onnx_artifact(tmp_path / "art"), tmp_path / "out", name="minilm", config=CONFIG,
                          replicas=2)
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    (entry,) = config["model_config_list"]
    model = entry["config"]
    assert model["name"] == "minilm" and model["base_path"] == "models/minilm"  # relative to config.json
    assert model["shape"] == {"input_ids": "(-1,-1)", "attention_mask": "(-1,-1)"}
    assert model["nireq"] == 2
    assert model["plugin_config"] == {"NUM_STREAMS": "2", "INFERENCE_NUM_THREADS": "6"}
    assert "stateful" not in model
    assert (out / model["base_path"] / "1" / "model.onnx").exists()  # OVMS: <base_path>/<version>/<model>
    assert (out / "tokenizer" / "tokenizer_config.json").exists()
    assert "--config_path /workspace/config.json" in result["run"]


def test_ovms_openvino_causal_lm_is_served_stateful(tmp_path):
    write_bundle("ovms", openvino_artifact(tmp_path / "art", LLAMA), tmp_path / "out", name="smollm", config=CONFIG)
    model = json.loads((tmp_path / "out" / "config.json").read_text())["model_config_list"][0]["config"]
    assert model["stateful"] is True and model["max_sequence_number"] == 8 and "shape" not in model
    version = tmp_path / "out" / "models" / "smollm" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["openvino_model.bin", "openvino_model.xml"]
    assert "sequence_id" in (tmp_path / "out" / "README.md").read_text()


# ---------------------------------------------------------------------------------- vllm and llama.cpp


def _kubernetes(out: Path) -> list[dict]:
    import kubernetes_validate

    objects = [o for o in yaml.safe_load_all((out / "kubernetes.yaml").read_text()) if o]
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    return objects


def _serve_command(out: Path) -> list[str]:
    script = (out / "serve.sh").read_text()
    assert script.startswith("#!/bin/sh\n") and os.access(out / "serve.sh", os.X_OK)
    (line,) = [line for line in script.splitlines() if line.startswith("exec ")]
    return shlex.split(line)[1:]


def test_vllm_bundle(tmp_path):
    result = write_bundle("vllm", safetensors_artifact(tmp_path / "art"), tmp_path / "out", name="smollm",
                          config=CONFIG, replicas=2)
    out = tmp_path / "out"
    assert _serve_command(out) == ["vllm", "serve", "$HERE/model", "--served-model-name", "smollm",
                                   "--max-num-seqs", "8", "--max-model-len", "2048", "--host", "0.0.0.0",
                                   "--port", "8000"]
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "tokenizer.json").exists()
    deployment, service = _kubernetes(out)
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("vllm/vllm-openai")
    assert container["command"] == ["vllm", "serve"]
    assert container["args"][:3] == ["/models/smollm", "--served-model-name", "smollm"]
    assert container["args"][container["args"].index("--max-num-seqs") + 1] == "8"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models/smollm"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": 8000}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert result["run"] == "sh serve.sh" and "kubectl apply" in (out / "README.md").read_text()


def test_llamacpp_bundle(tmp_path):
    write_bundle("llamacpp", gguf_artifact(tmp_path / "art"), tmp_path / "out", name="smollm-q8", config=CONFIG)
    out = tmp_path / "out"
    command = _serve_command(out)
    assert command[:3] == ["llama-server", "-m", "$HERE/model/model-q8_0.gguf"]
    def flag(name):
        return command[command.index(name) + 1]

    assert (flag("--alias"), flag("--parallel"), flag("--port"), flag("--threads")) == ("smollm-q8", "8", "8080", "3")
    assert flag("--ctx-size") == "4096"  # the KV budget, shared by the 8 slots
    assert "--cont-batching" in command
    assert (out / "model" / "model-q8_0.gguf").read_bytes() == b"GGUF\x03weights"
    deployment, service = _kubernetes(out)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/ggml-org/llama.cpp:server" and "command" not in container
    assert container["args"][:2] == ["-m", "/models/smollm-q8/model-q8_0.gguf"]
    assert container["args"][2:] == command[3:]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    assert service["spec"]["ports"][0]["port"] == 8080


def test_serve_script_passes_the_exact_arguments_through_the_shell(tmp_path):
    artifact = gguf_artifact(tmp_path / "art")
    odd = "odd name $(touch pwned) 'q'.gguf"
    (artifact / "model-q8_0.gguf").rename(artifact / odd)
    out = tmp_path / "my bundle"
    write_bundle("llamacpp", artifact, out, name="m", config=CONFIG)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "llama-server").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (fake / "llama-server").chmod(0o755)
    ran = subprocess.run(["sh", str(out / "serve.sh")], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    args = ran.stdout.splitlines()
    assert args[:2] == ["-m", str(out / "model" / odd)] and Path(args[1]).is_file()
    assert args[2:4] == ["--alias", "m"] and not (tmp_path / "pwned").exists()


def test_llamacpp_context_stays_within_the_trained_context_per_slot(tmp_path):
    short = {**LLAMA, "max_position_embeddings": 256}
    write_bundle("llamacpp", gguf_artifact(tmp_path / "art", short), tmp_path / "out", name="short", config=CONFIG)
    command = _serve_command(tmp_path / "out")
    assert command[command.index("--ctx-size") + 1] == str(256 * 8)


# ---------------------------------------------------------------------------------------------- refusals

# What each target serves, written out here independently of bundles.TARGETS: the table must agree.
SERVES = {
    "triton": {("ONNX", "encoder"), ("ONNX", "causal-lm"), ("OpenVINO IR", "encoder"), ("TensorRT", "encoder"),
               ("TensorRT", "causal-lm"), ("compressed-tensors", "causal-lm"), ("hf-safetensors", "causal-lm")},
    "kserve": {("ONNX", "encoder"), ("ONNX", "causal-lm"), ("OpenVINO IR", "encoder"), ("TensorRT", "encoder"),
               ("TensorRT", "causal-lm"), ("compressed-tensors", "causal-lm"), ("hf-safetensors", "causal-lm")},
    "ovms": {("ONNX", "encoder"), ("ONNX", "causal-lm"), ("OpenVINO IR", "encoder"), ("OpenVINO IR", "causal-lm")},
    "vllm": {("compressed-tensors", "causal-lm"), ("hf-safetensors", "causal-lm")},
    "llamacpp": {("GGUF", "causal-lm")},
}
VIT = {"model_type": "vit", "architectures": ["ViTModel"]}  # neither a causal LM nor an encoder
ARTIFACTS = {
    ("ONNX", "encoder"): lambda p: onnx_artifact(p, BERT),
    ("ONNX", "causal-lm"): lambda p: onnx_artifact(p, LLAMA),
    ("ONNX", None): lambda p: onnx_artifact(p, VIT),
    ("OpenVINO IR", "encoder"): lambda p: openvino_artifact(p, BERT),
    ("OpenVINO IR", "causal-lm"): lambda p: openvino_artifact(p, LLAMA),
    ("TensorRT", "encoder"): lambda p: tensorrt_artifact(p, BERT),
    ("TensorRT", "causal-lm"): lambda p: tensorrt_artifact(p, LLAMA),
    ("GGUF", "causal-lm"): lambda p: gguf_artifact(p),
    ("compressed-tensors", "causal-lm"): lambda p: safetensors_artifact(p, COMPRESSED),
    ("hf-safetensors", "causal-lm"): lambda p: safetensors_artifact(p, LLAMA),
    ("hf-safetensors", "encoder"): lambda p: safetensors_artifact(p, BERT),
    ("packed-safetensors", "causal-lm"): packed_artifact,
}


def test_the_table_is_what_each_target_serves():
    table = {target: {(fmt, kind) for fmt, kinds in spec.accepts.items() for kind in kinds}
             for target, spec in bundles.TARGETS.items()}
    assert table == SERVES


@pytest.mark.parametrize("target", sorted(SERVES))
@pytest.mark.parametrize("artifact_key", list(ARTIFACTS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_target_refuses_what_it_does_not_serve(tmp_path, target, artifact_key):
    artifact = ARTIFACTS[artifact_key](tmp_path / "art")
    found = bundles.inspect_artifact(artifact)
    assert (found.format, found.kind) == artifact_key  # the fixture is what it claims
    out = tmp_path / "out"
    if artifact_key in SERVES[target]:
        result = write_bundle(target, artifact, out, name="m", config=CONFIG)
        assert result["files"] and (out / "README.md").exists()
        return
    with pytest.raises(BundleError) as refused:
        write_bundle(target, artifact, out, name="m", config=CONFIG)
    message = str(refused.value)
    assert message.startswith(f"{target} serves ")
    fmt, kind = artifact_key
    assert f"this artifact is {fmt} (" in message
    assert (kind or "neither a causal LM nor an encoder") in message
    others = sorted(t for t, served in SERVES.items() if artifact_key in served)
    if others:
        named = message.rsplit(": use ", 1)[1]
        assert sorted(named.replace(" or ", ", ").split(", ")) == others
    else:
        assert "no bundle target serves it" in message
    assert not out.exists()  # nothing written for a refusal


def test_refusal_message_names_what_would_work(tmp_path):
    artifact = onnx_artifact(tmp_path / "art", BERT)
    with pytest.raises(BundleError, match=r"^vllm serves causal LMs in compressed-tensors or hf-safetensors; "
                                          r"this artifact is ONNX \(an encoder\): use triton, kserve or ovms$"):
        write_bundle("vllm", artifact, tmp_path / "out", name="m", config=CONFIG)
    stateful = openvino_artifact(tmp_path / "ov", LLAMA)
    with pytest.raises(BundleError, match="stateful.*: use ovms$"):
        write_bundle("triton", stateful, tmp_path / "out", name="m", config=CONFIG)
    with pytest.raises(BundleError, match="only modelpress serves"):
        write_bundle("vllm", packed_artifact(tmp_path / "packed"), tmp_path / "out", name="m", config=CONFIG)


def test_bad_requests_are_refused(tmp_path):
    artifact = gguf_artifact(tmp_path / "art")
    with pytest.raises(BundleError, match="no bundle target 'tgi'"):
        write_bundle("tgi", artifact, tmp_path / "out", name="m", config=CONFIG)
    for name in ("My_Model", "-x", "a" * 64, ""):
        with pytest.raises(BundleError, match="bundle name"):
            write_bundle("llamacpp", artifact, tmp_path / "out", name=name, config=CONFIG)
    with pytest.raises(BundleError, match="replicas"):
        write_bundle("llamacpp", artifact, tmp_path / "out", name="m", config=CONFIG, replicas=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        write_bundle("llamacpp", artifact, tmp_path / "busy", name="m", config=CONFIG)
    with pytest.raises(BundleError, match="no config.json"):
        write_bundle("vllm", _folder(tmp_path / "bare", None, {"model.safetensors": b"w"}), tmp_path / "out",
                     name="m", config=CONFIG)
    (artifact / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(BundleError, match="one GGUF file expected"):
        write_bundle("llamacpp", artifact, tmp_path / "out2", name="m", config=CONFIG)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    artifact = onnx_artifact(tmp_path / "art")
    model = onnx.load(str(artifact / "model.onnx"))
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("float_data")
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secrets.bin"
    onnx.save_model(model, str(artifact / "model.onnx"))
    with pytest.raises(BundleError, match="only a file beside the graph"):
        write_bundle("triton", artifact, tmp_path / "out", name="m", config=CONFIG)


# -------------------------------------------------------------------------------------------- emitters


def test_yaml_emitter_round_trips_through_a_yaml_parser():
    tricky = {"plain": "value", "colon": "a: b", "yes": "yes", "number": "1", "empty": "", "quote": 'say "hi"',
              "newline": "one\ntwo", "unicode": "naïve ✓", "list": ["--flag", "-1", {"k": [1, 2.5, True, None]}],
              "nested": {"deep": {"deeper": []}, "none": {}}, "label.io/name": "x", "odd key!": 3,
              "lists": [[1, 2], [], [{"a": 1}]]}
    assert yaml.safe_load(bundles.to_yaml(tricky)) == tricky
    docs = bundles.yaml_documents([{"a": 1}, {"b": [2]}], comment="line one\nline two")
    assert docs.startswith("# line one\n# line two\n")
    assert list(yaml.safe_load_all(docs)) == [{"a": 1}, {"b": [2]}]


def test_pbtxt_emitter_writes_what_triton_parses(model_config_pb2):
    text = bundles.pbtxt({"name": 'a "quoted" name', "max_batch_size": 4, "input": [
        {"name": "x", "data_type": bundles.PbEnum("TYPE_FP16"), "dims": [-1, 3]}],
        "model_transaction_policy": {"decoupled": True}})
    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert parsed.name == 'a "quoted" name' and parsed.max_batch_size == 4
    assert parsed.input[0].data_type == model_config_pb2.TYPE_FP16 and list(parsed.input[0].dims) == [-1, 3]
    assert parsed.model_transaction_policy.decoupled
