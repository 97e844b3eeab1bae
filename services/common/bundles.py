"""Deployment bundles for the inference servers users already run: a folder holding the model files where
that server expects them, its configuration, and a README with the command that runs it.

    triton    a Triton model repository: `<name>/config.pbtxt` + `<name>/1/<model>` (ONNX Runtime, OpenVINO,
              TensorRT backends; the vLLM backend for safetensors causal LMs)
    kserve    an InferenceService manifest + `model/`, the tree to upload where its storageUri points
    ovms      an OpenVINO Model Server `config.json` + `models/<name>/1/<model>`
    vllm      `serve.sh` (`vllm serve`) + a Kubernetes Deployment and Service, for safetensors causal LMs
    llamacpp  `serve.sh` (`llama-server`) + a Kubernetes Deployment and Service, for GGUF

Which artifact each target takes is one table (TARGETS: format -> kinds, and the writer); anything else is
refused with a BundleError naming the target, the artifact's format and kind, and the targets that take it.
Settings come from the deployment's DeploymentConfig (max_batch_size, max_wait_ms, threads, max_kv_tokens).

Plain Python: no server, no torch; ONNX graphs are read with `onnx` (weights left on disk), OpenVINO IR
from its XML. Kubernetes manifests are written as YAML by a small emitter (block style, every string
JSON-quoted), since PyYAML is not a dependency of the product.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from services.common.contract.deployment_config import DeploymentConfig
from services.common.contract.model_kinds import CAUSAL_LM, ENCODER, kind_of, with_article
from services.common.models.artifact_format import detect_format
from services.common.models.tokenizer_files import TOKENIZER_FILES

ONNX, OPENVINO, TENSORRT, GGUF = "ONNX", "OpenVINO IR", "TensorRT", "GGUF"
COMPRESSED_TENSORS, HF_SAFETENSORS, PACKED = "compressed-tensors", "hf-safetensors", "packed-safetensors"
BOTH = frozenset({CAUSAL_LM, ENCODER})
LM = frozenset({CAUSAL_LM})
ENC = frozenset({ENCODER})

# Images the generated commands and manifests name; a bump is one edit here.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.12-py3"
TRITON_VLLM_IMAGE = "nvcr.io/nvidia/tritonserver:24.12-vllm-python-py3"
OVMS_IMAGE = "openvino/model_server:latest"
VLLM_IMAGE = "vllm/vllm-openai:latest"
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
# Where the Triton container mounts the repository: the vLLM backend's model.json needs an absolute path.
TRITON_MOUNT = "/models"
# The KServe storageUri the user replaces with where they uploaded `model/`.
STORAGE_PLACEHOLDER = "s3://REPLACE-ME"
KUBERNETES_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
VLLM_PORT, LLAMACPP_PORT = 8000, 8080
# Memory asked for beside the weights (runtime, activations, tokenizer), in bytes.
MEMORY_HEADROOM = 1 << 30

ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
              7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
              12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
# OpenVINO IR: Parameter element_type and port precision spellings.
OPENVINO_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "f64": "TYPE_FP64", "i8": "TYPE_INT8",
                  "i16": "TYPE_INT16", "i32": "TYPE_INT32", "i64": "TYPE_INT64", "u8": "TYPE_UINT8",
                  "u16": "TYPE_UINT16", "u32": "TYPE_UINT32", "u64": "TYPE_UINT64", "boolean": "TYPE_BOOL",
                  "fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "fp64": "TYPE_FP64", "bool": "TYPE_BOOL",
                  "string": "TYPE_STRING"}
# Where an HF config states the longest sequence the model was trained for.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class BundleError(ValueError):
    """The target does not serve this artifact, or the bundle cannot be written as asked."""


@dataclass(frozen=True)
class Artifact:
    folder: Path
    format: str
    kind: str | None
    config: dict

    def describe(self) -> str:
        return f"{self.format} ({with_article(self.kind) if self.kind else 'neither a causal LM nor an encoder'})"


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_* name
    dims: tuple[int, ...]  # -1 for a dynamic dimension


@dataclass(frozen=True)
class Target:
    accepts: dict[str, frozenset[str]]  # artifact format -> model kinds
    writer: Callable[..., str]  # writes the bundle, returns the command that runs it
    why_not: dict[tuple[str, str], str]  # (format, kind) -> why it is refused, where the table says too little

    def takes(self, artifact: Artifact) -> bool:
        return artifact.kind in self.accepts.get(artifact.format, ())

    def describe(self) -> str:
        """E.g. "causal LMs or encoders in ONNX or TensorRT, encoders in OpenVINO IR"."""
        by_kinds: dict[frozenset[str], list[str]] = {}
        for fmt, kinds in self.accepts.items():
            by_kinds.setdefault(kinds, []).append(fmt)
        return ", ".join(f"{_either([_PLURAL[k] for k in sorted(kinds)])} in {_either(formats)}"
                         for kinds, formats in by_kinds.items())


_PLURAL = {CAUSAL_LM: "causal LMs", ENCODER: "encoders"}


# ---------------------------------------------------------------------------------------------- public API


def write_bundle(target: str, artifact: Path, out: Path, *, name: str, config: DeploymentConfig,
                 replicas: int = 1) -> dict:
    """Writes `target`'s bundle for the artifact folder into `out` (created; must be empty) and returns
    {target, name, format, kind, files (relative, sorted), run (the command that serves it)}."""
    if target not in TARGETS:
        raise BundleError(f"no bundle target {target!r}: the targets are {', '.join(TARGETS)}")
    if not KUBERNETES_NAME.match(name):
        raise BundleError(f"bundle name {name!r}: lowercase letters, digits and '-', starting with a letter, "
                          "at most 63 characters (it names the model and its Kubernetes objects)")
    if replicas < 1:
        raise BundleError(f"replicas must be at least 1 (got {replicas})")
    found = inspect_artifact(Path(artifact))
    check_fits(target, found)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty: a bundle is written into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    run = TARGETS[target].writer(found, out, name=name, config=config, replicas=replicas)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return {"target": target, "name": name, "format": found.format, "kind": found.kind, "files": files, "run": run}


def inspect_artifact(folder: Path) -> Artifact:
    """The artifact's format (artifact_format.detect_format), kind and config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder")
    try:
        fmt = detect_format(folder)
    except ValueError as exc:  # a safetensors folder without a readable config.json
        raise BundleError(f"{folder.name}: {exc}") from None
    config = _read_json(folder / "config.json")
    kind = kind_of(config) if config else None
    if kind is None:  # an engine's manifest states the kind it exported
        for manifest in ("onnx_model.json", "openvino_model.json", "tensorrt_model.json", "gguf_model.json"):
            stated = _read_json(folder / manifest).get("kind")
            if stated in (CAUSAL_LM, ENCODER):
                kind = stated
                break
    return Artifact(folder, fmt, kind, config)


def check_fits(target: str, artifact: Artifact) -> None:
    """Raises BundleError unless `target` serves the artifact's format and kind, naming what would work."""
    spec = TARGETS[target]
    if spec.takes(artifact):
        return
    others = [t for t, s in TARGETS.items() if t != target and s.takes(artifact)]
    reason = spec.why_not.get((artifact.format, artifact.kind), "")
    advice = f"use {_either(others)}" if others else "no bundle target serves it" + (
        f"; {FORMAT_ADVICE[artifact.format]}" if artifact.format in FORMAT_ADVICE else
        "" if artifact.kind else "; bundles hold causal LMs and encoders")
    raise BundleError(f"{target} serves {spec.describe()}; this artifact is {artifact.describe()}"
                      f"{': ' + reason if reason else ''}: {advice}")


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


FORMAT_ADVICE = {PACKED: "it is modelpress's own packed INT8 format, which only modelpress serves: compress with "
                         "a method that writes ONNX, OpenVINO IR, GGUF or compressed-tensors for another server"}


# -------------------------------------------------------------------------------------------- model files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _one(folder: Path, patterns: tuple[str, ...], what: str, preferred: str = "") -> Path:
    if preferred and (folder / preferred).is_file():
        return folder / preferred
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise BundleError(f"{folder}: one {what} file expected, found {listed}")
    return found[0]


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    """Every regular file under src (hidden entries and symlinks left out) into dst, same layout."""
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if any(part.startswith(".") for part in relative.parts) or path.is_symlink() or not path.is_file():
            continue
        _copy(path, dst / relative)


def _copy_tokenizer(artifact: Artifact, dst: Path) -> list[str]:
    """The tokenizer files and config.json beside an engine graph, for clients that tokenize."""
    copied = []
    for file_name in (*TOKENIZER_FILES, "config.json"):
        if (artifact.folder / file_name).is_file():
            _copy(artifact.folder / file_name, dst / file_name)
            copied.append(file_name)
    return copied


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _memory(weights: int) -> str:
    return f"{math.ceil((weights + MEMORY_HEADROOM) / (1 << 20))}Mi"


def onnx_model_file(folder: Path) -> Path:
    return _one(folder, ("*.onnx",), "ONNX", preferred="model.onnx")


def onnx_io(path: Path) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """The graph's inputs and outputs (initializers excluded) and the external data files its tensors name
    (relative to the graph's folder), read without loading the weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def tensor(value) -> Tensor:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise BundleError(f"{path.name}: {value.name} is not a tensor; Triton serves tensor inputs and outputs")
        data_type = ONNX_TYPES.get(tensor_type.elem_type)
        if data_type is None:
            raise BundleError(f"{path.name}: {value.name} has ONNX element type {tensor_type.elem_type}, which "
                              "Triton has no type for")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
        return Tensor(value.name, data_type, dims)

    inputs = [tensor(v) for v in graph.input if v.name not in initializers]
    outputs = [tensor(v) for v in graph.output]
    return inputs, outputs, sorted(_external_locations(graph, path))


def _external_locations(graph, path: Path) -> set[str]:
    from onnx import TensorProto

    found: set[str] = set()

    def visit_tensor(t) -> None:
        if t.data_location == TensorProto.EXTERNAL:
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            if not location or Path(location).is_absolute() or ".." in Path(location).parts:
                raise BundleError(f"{path.name}: tensor {t.name} keeps its data at {location!r}; only a file "
                                  "beside the graph can travel with it")
            found.add(Path(location).as_posix())

    def visit_graph(g) -> None:
        for t in g.initializer:
            visit_tensor(t)
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    visit_tensor(attribute.t)
                for t in attribute.tensors:
                    visit_tensor(t)
                if attribute.HasField("g"):
                    visit_graph(attribute.g)
                for sub in attribute.graphs:
                    visit_graph(sub)

    visit_graph(graph)
    for location in found:
        if not (path.parent / location).is_file():
            raise BundleError(f"{path.name}: its external data file {location} is missing")
    return found


def openvino_io(xml_path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs (Parameter layers) and outputs (what feeds each Result layer) of an OpenVINO IR, by their
    tensor names, read from the XML."""
    root = ElementTree.parse(xml_path).getroot()
    # The top-level graph only: a Loop or TensorIterator layer holds a body graph of its own.
    layers = {layer.get("id"): layer for layer in root.findall("./layers/layer")}
    feeds = {(edge.get("to-layer"), edge.get("to-port")): (edge.get("from-layer"), edge.get("from-port"))
             for edge in root.findall("./edges/edge")}

    def port(layer, port_id: str | None = None):
        ports = layer.find("output")
        for p in (ports if ports is not None else []):
            if port_id is None or p.get("id") == port_id:
                return p
        raise BundleError(f"{xml_path.name}: layer {layer.get('name')} has no output port {port_id}")

    def dims(p) -> tuple[int, ...]:
        return tuple(int(d.text) if d.text and d.text.strip().lstrip("-").isdigit() and int(d.text) >= 0 else -1
                     for d in p.findall("dim"))

    def data_type(precision: str, where: str) -> str:
        found = OPENVINO_TYPES.get(precision.lower())
        if found is None:
            raise BundleError(f"{xml_path.name}: {where} has element type {precision}, which Triton has no type for")
        return found

    def tensor_name(layer, p) -> str:
        return (p.get("names") or "").split(",")[0].strip() or layer.get("name")

    inputs, outputs = [], []
    for layer in layers.values():
        if layer.get("type") == "Parameter":
            p = port(layer)
            data = layer.find("data")
            precision = (data.get("element_type") if data is not None else None) or p.get("precision", "")
            name = tensor_name(layer, p)
            inputs.append(Tensor(name, data_type(precision, name), dims(p)))
        elif layer.get("type") == "Result":
            in_port = layer.find("input/port")
            source = feeds.get((layer.get("id"), in_port.get("id") if in_port is not None else None))
            if source is None or source[0] not in layers:
                raise BundleError(f"{xml_path.name}: result {layer.get('name')} has no producer")
            producer = layers[source[0]]
            p = port(producer, source[1])
            name = tensor_name(producer, p)
            outputs.append(Tensor(name, data_type(p.get("precision", ""), name), dims(p)))
    return inputs, outputs


def max_model_len(artifact: Artifact, config: DeploymentConfig) -> int:
    """The longest sequence a server admits: the model's trained context, within the KV budget."""
    trained = next((artifact.config[k] for k in POSITION_KEYS
                    if isinstance(artifact.config.get(k), int) and artifact.config[k] > 0), None)
    return min(trained, config.max_kv_tokens) if trained else config.max_kv_tokens


# ---------------------------------------------------------------------------------------- text emitters


@dataclass(frozen=True)
class PbEnum:
    """A protobuf enum value in text format (written bare, e.g. TYPE_FP32)."""

    name: str


def _pbtxt_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, PbEnum):
        return value.name
    return json.dumps(str(value))


def pbtxt(fields: dict, indent: int = 0) -> str:
    """Protobuf text format of nested dicts / lists of dicts / scalars; a dict value is a message, a list
    a repeated field, a PbEnum a bare enum name."""
    pad = "  " * indent
    lines = []
    for key, value in fields.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = ",\n".join(f"{pad}  {{\n{pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_pbtxt_value(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_pbtxt_value(value)}")
    return "".join(line + "\n" for line in lines)


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for JSON-like data: every string double-quoted as JSON writes it (a JSON string is
    a YAML double-quoted scalar), so no value is read back as another type."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return f"{pad}{{}}\n"
        out = []
        for key, item in value.items():
            head = f"{pad}{_yaml_key(str(key))}:"
            if isinstance(item, (dict, list)) and item:
                out.append(f"{head}\n{to_yaml(item, indent + 1)}")
            else:
                out.append(f"{head} {_yaml_scalar(item)}\n")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return f"{pad}[]\n"
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = to_yaml(item, indent + 1)
                out.append(f"{pad}- {nested.lstrip()}")
            else:
                out.append(f"{pad}- {_yaml_scalar(item)}\n")
        return "".join(out)
    return f"{pad}{_yaml_scalar(value)}\n"


# Plain words YAML 1.1 readers take for booleans or null.
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "~"}


def _yaml_key(key: str) -> str:
    bare = re.fullmatch(r"[A-Za-z_][-A-Za-z0-9_./]*", key) and key.lower() not in _YAML_WORDS
    return key if bare else json.dumps(key)


def _yaml_scalar(value) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(value)


def yaml_documents(objects: list[dict], comment: str = "") -> str:
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + "---\n".join(to_yaml(o) for o in objects)


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if executable:
        path.chmod(0o755)


def _readme(out: Path, lines: list[str]) -> None:
    _write(out / "README.md", "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- triton


def _batched(inputs: list[Tensor], outputs: list[Tensor]) -> bool:
    """Triton batches a model (max_batch_size > 0) whose every input and output leads with a dynamic dim."""
    return all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))


def _tensors(tensors: list[Tensor], batched: bool) -> list[dict]:
    return [{"name": t.name, "data_type": PbEnum(t.data_type), "dims": list(t.dims[1:] if batched else t.dims)}
            for t in tensors]


def _dynamic_batching(config: DeploymentConfig, batch: int | None = None) -> dict:
    return {"preferred_batch_size": [batch or config.max_batch_size],
            "max_queue_delay_microseconds": round(config.max_wait_ms * 1000)}


def _parameters(values: dict[str, object]) -> list[dict]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]


def triton_repository(artifact: Artifact, repo: Path, *, name: str, config: DeploymentConfig,
                      instances: int, tokenizer: bool = True) -> list[str]:
    """`repo/<name>/config.pbtxt` and `repo/<name>/1/...` for the artifact (with its tokenizer files in
    `1/tokenizer/` unless told not to); returns README lines on what it serves and how a client calls it."""
    model_dir, version = repo / name, repo / name / "1"
    fields: dict = {"name": name}
    notes: list[str] = []
    if artifact.format in (ONNX, OPENVINO):
        if artifact.format == ONNX:
            graph = onnx_model_file(artifact.folder)
            inputs, outputs, external = onnx_io(graph)
            # Triton: a multi-file ONNX model is a folder named model.onnx holding model.onnx.
            target = version / "model.onnx" / "model.onnx" if external else version / "model.onnx"
            _copy(graph, target)
            for location in external:
                _copy(graph.parent / location, target.parent / location)
            engine = {"platform": "onnxruntime_onnx", "backend": "onnxruntime"}
            threads, what = {"intra_op_thread_count": config.threads}, "ONNX Runtime backend"
        else:
            xml = artifact.folder / "openvino_model.xml"
            inputs, outputs = openvino_io(xml)
            _copy(xml, version / "model.xml")  # the OpenVINO backend's default file names
            _copy(xml.with_suffix(".bin"), version / "model.bin")
            engine = {"backend": "openvino"}
            threads, what = {"INFERENCE_NUM_THREADS": config.threads}, "OpenVINO backend (model.xml / model.bin)"
        batched = _batched(inputs, outputs)
        fields.update(engine, max_batch_size=config.max_batch_size if batched else 0,
                      input=_tensors(inputs, batched), output=_tensors(outputs, batched))
        if batched:
            fields["dynamic_batching"] = _dynamic_batching(config)
        fields["instance_group"] = [{"count": instances, "kind": PbEnum("KIND_CPU")}]
        fields["parameters"] = _parameters(threads)
        notes.append(f"{what}; " + (f"dynamic batching up to {config.max_batch_size}." if batched
                                    else "no batching (the graph has a fixed leading dimension)."))
    elif artifact.format == TENSORRT:
        plan = _one(artifact.folder, ("*.plan", "*.engine"), "TensorRT engine")
        _copy(plan, version / "model.plan")
        # Inputs, outputs and the engine's batch range are read from the plan by Triton's auto-complete
        # (the plan is specific to the GPU and TensorRT version that built it).
        batch = min(config.max_batch_size, _tensorrt_max_batch(artifact.folder) or config.max_batch_size)
        fields.update(platform="tensorrt_plan", backend="tensorrt", max_batch_size=batch,
                      dynamic_batching=_dynamic_batching(config, batch),
                      instance_group=[{"count": instances, "kind": PbEnum("KIND_GPU")}])
        notes.append("TensorRT backend (model.plan; inputs and outputs auto-completed from the plan; needs "
                     "the GPU and TensorRT version that built it).")
    else:  # safetensors causal LM: Triton's vLLM backend
        weights = version / "weights"
        _copy_tree(artifact.folder, weights)
        engine_args = {"model": f"{TRITON_MOUNT}/{name}/1/weights", "max_num_seqs": config.max_batch_size,
                       "max_model_len": max_model_len(artifact, config)}
        _write(version / "model.json", json.dumps(engine_args, indent=2) + "\n")
        # vLLM batches (continuously) on its own: Triton's batching stays off, the transaction policy
        # decoupled, one engine per model (KIND_MODEL: the engine places itself on the GPU).
        fields.update(backend="vllm", max_batch_size=0, model_transaction_policy={"decoupled": True},
                      input=[{"name": "text_input", "data_type": PbEnum("TYPE_STRING"), "dims": [1]}],
                      output=[{"name": "text_output", "data_type": PbEnum("TYPE_STRING"), "dims": [-1]}],
                      instance_group=[{"count": 1, "kind": PbEnum("KIND_MODEL")}])
        notes.append(f"vLLM backend ({name}/1/model.json: engine args; weights in {name}/1/weights), one engine "
                     f"per server. Generate: POST /v2/models/{name}/generate "
                     '{"text_input": ..., "parameters": {...}}.')
        _write(model_dir / "config.pbtxt", pbtxt(fields))
        return notes
    if tokenizer and _copy_tokenizer(artifact, version / "tokenizer"):
        notes.append(f"Clients tokenize with {name}/1/tokenizer/ (transformers.AutoTokenizer.from_pretrained) "
                     "and send the ids as the inputs config.pbtxt names.")
    _write(model_dir / "config.pbtxt", pbtxt(fields))
    return notes


def _tensorrt_max_batch(folder: Path) -> int | None:
    """The engine's largest batch, where modelpress's manifest of the build recorded its profile."""
    metrics = _read_json(folder / "modelpress.json").get("metrics") or {}
    profile = (metrics.get("tensorrt") or {}).get("profile") if isinstance(metrics, dict) else None
    high = (profile or {}).get("max") if isinstance(profile, dict) else None
    return high[0] if isinstance(high, list) and high and isinstance(high[0], int) and high[0] > 0 else None


def write_triton(artifact: Artifact, out: Path, *, name: str, config: DeploymentConfig, replicas: int) -> str:
    notes = triton_repository(artifact, out, name=name, config=config, instances=replicas)
    vllm = artifact.format in (COMPRESSED_TENSORS, HF_SAFETENSORS)
    image = TRITON_VLLM_IMAGE if vllm else TRITON_IMAGE
    gpus = "--gpus all " if vllm or artifact.format == TENSORRT else ""
    run = (f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -v \"$PWD\":{TRITON_MOUNT} {image} "
           f"tritonserver --model-repository={TRITON_MOUNT}")
    _readme(out, [f"# {name}: Triton Inference Server model repository", "",
                  *notes, "", f"Run from this folder: `{run}`"])
    return run


# ---------------------------------------------------------------------------------------------- kserve


def write_kserve(artifact: Artifact, out: Path, *, name: str, config: DeploymentConfig, replicas: int) -> str:
    """An InferenceService (serving.kserve.io/v1beta1) and `model/`, the tree its storageUri serves."""
    store = out / "model"
    model: dict = {}
    resources = {"requests": {"cpu": str(config.threads), "memory": _memory(_weights_bytes(artifact.folder))}}
    if artifact.format in (ONNX, TENSORRT):
        # kserve-tritonserver runs `tritonserver --model-store=/mnt/models`: the store is a Triton repository.
        triton_repository(artifact, store, name=name, config=config, instances=1, tokenizer=False)
        model = {"modelFormat": {"name": "onnx" if artifact.format == ONNX else "tensorrt"},
                 "runtime": "kserve-tritonserver", "protocolVersion": "v2"}
        if artifact.format == TENSORRT:
            resources["limits"] = {"nvidia.com/gpu": "1"}
        how = "Triton (kserve-tritonserver), Open Inference Protocol v2"
    elif artifact.format == OPENVINO:
        # kserve-openvino runs OVMS with --model_path=/mnt/models: version folders at the top.
        _copy(artifact.folder / "openvino_model.xml", store / "1" / "openvino_model.xml")
        _copy(artifact.folder / "openvino_model.bin", store / "1" / "openvino_model.bin")
        model = {"modelFormat": {"name": "openvino"}, "runtime": "kserve-openvino", "protocolVersion": "v2"}
        how = "OpenVINO Model Server (kserve-openvino), Open Inference Protocol v2"
    else:  # safetensors causal LM: the Hugging Face runtime on its vLLM backend, OpenAI-compatible API
        _copy_tree(artifact.folder, store)
        model = {"modelFormat": {"name": "huggingface"}, "runtime": "kserve-huggingfaceserver",
                 "args": ["--backend=vllm", f"--max_model_len={max_model_len(artifact, config)}",
                          f"--max-num-seqs={config.max_batch_size}"]}
        resources["limits"] = {"nvidia.com/gpu": "1"}
        how = "the Hugging Face runtime on vLLM (kserve-huggingfaceserver), OpenAI-compatible /openai/v1/"
    model.update(storageUri=f"{STORAGE_PLACEHOLDER}/{name}", resources=resources)
    if artifact.format in (ONNX, TENSORRT, OPENVINO):
        _copy_tokenizer(artifact, out / "tokenizer")
    service = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
               "metadata": {"name": name},
               "spec": {"predictor": {"minReplicas": replicas, "maxReplicas": replicas, "model": model}}}
    uri = f"{STORAGE_PLACEHOLDER}/{name}"
    _write(out / "inferenceservice.yaml", yaml_documents(
        [service], f"Upload model/ to your storage and replace storageUri ({uri}) with its URI."))
    run = "kubectl apply -f inferenceservice.yaml"
    _readme(out, [f"# {name}: KServe InferenceService", "",
                  (f"Serves with {how}. Upload `model/` to your storage (S3, GCS, a PVC ...) and set "
                   f"`storageUri` in inferenceservice.yaml to it (now the placeholder `{uri}`)."),
                  *(["Clients tokenize with `tokenizer/` (transformers.AutoTokenizer.from_pretrained)."]
                    if (out / "tokenizer").is_dir() else []),
                  "", f"Then: `{run}`"])
    return run


# ------------------------------------------------------------------------------------------------ ovms


def write_ovms(artifact: Artifact, out: Path, *, name: str, config: DeploymentConfig, replicas: int) -> str:
    version = out / "models" / name / "1"
    if artifact.format == OPENVINO:
        xml = artifact.folder / "openvino_model.xml"
        inputs, _ = openvino_io(xml)
        _copy(xml, version / "openvino_model.xml")
        _copy(xml.with_suffix(".bin"), version / "openvino_model.bin")
    else:
        graph = onnx_model_file(artifact.folder)
        inputs, _, external = onnx_io(graph)
        _copy(graph, version / "model.onnx")
        for location in external:
            _copy(graph.parent / location, version / location)
    # `replicas` parallel streams, `threads` each; one infer request per stream.
    model_config: dict = {"name": name, "base_path": f"models/{name}", "nireq": replicas,
                          "plugin_config": {"NUM_STREAMS": str(replicas),
                                            "INFERENCE_NUM_THREADS": str(config.threads * replicas)}}
    stateful = artifact.format == OPENVINO and artifact.kind == CAUSAL_LM
    if stateful:
        # modelpress's OpenVINO causal LMs keep the KV cache in the request's state (a stateful model):
        # OVMS holds one state per sequence the client names.
        model_config.update(stateful=True, max_sequence_number=config.max_batch_size, idle_sequence_cleanup=True)
    else:  # the graph's own shapes, -1 where a dimension is dynamic (served natively, no reload)
        model_config["shape"] = {t.name: f"({','.join(str(d) for d in t.dims)})" for t in inputs}
    _write(out / "config.json", json.dumps({"model_config_list": [{"config": model_config}]}, indent=2) + "\n")
    tokenizer = _copy_tokenizer(artifact, out / "tokenizer")
    run = (f"docker run --rm -p 9000:9000 -p 8000:8000 -v \"$PWD\":/workspace:ro {OVMS_IMAGE} "
           "--config_path /workspace/config.json --port 9000 --rest_port 8000")
    _readme(out, [f"# {name}: OpenVINO Model Server configuration", "",
                  f"config.json serves models/{name}/1 ({artifact.format}); gRPC on 9000, REST (KServe v2) on 8000.",
                  *(["Stateful model: each request names its sequence (sequence_id, sequence_control_input)."]
                    if stateful else []),
                  *(["Clients tokenize with `tokenizer/` (transformers.AutoTokenizer.from_pretrained)."]
                    if tokenizer else []),
                  "", f"Run from this folder: `{run}`"])
    return run


# -------------------------------------------------------------------------------- vllm and llama.cpp


def _kubernetes(name: str, *, image: str, command: list[str] | None, args: list[str], port: int,
                replicas: int, resources: dict, mount: str, shared_memory: bool) -> list[dict]:
    """A Deployment (the server, its weights from the PersistentVolumeClaim `<name>-model`, probes on
    /health) and a Service in front of it."""
    labels = {"app.kubernetes.io/name": name}
    probe = {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10, "timeoutSeconds": 5}
    container: dict = {"name": "server", "image": image}
    if command:
        container["command"] = command
    container.update(
        args=args, ports=[{"name": "http", "containerPort": port}], resources=resources,
        # Loading the weights may take minutes: liveness and readiness start once /health answers.
        startupProbe={**probe, "failureThreshold": 90}, readinessProbe={**probe, "failureThreshold": 3},
        livenessProbe={**probe, "failureThreshold": 6},
        volumeMounts=[{"name": "model", "mountPath": mount, "readOnly": True}])
    volumes: list[dict] = [{"name": "model", "persistentVolumeClaim": {"claimName": f"{name}-model",
                                                                      "readOnly": True}}]
    if shared_memory:
        container["volumeMounts"].append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                  "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"containers": [container], "volumes": volumes}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": port}]}}
    return [deployment, service]


def _serve_script(comment: str, program: list[str], model: str, flags: list[str]) -> str:
    """A POSIX sh script running `program <the script's folder>/<model> <flags>`."""
    return ("#!/bin/sh\n" f"# {comment}\n" 'HERE="$(cd "$(dirname "$0")" && pwd)"\n'
            f'exec {shlex.join(program)} "$HERE"/{shlex.quote(model)} {shlex.join(flags)}\n')


def write_vllm(artifact: Artifact, out: Path, *, name: str, config: DeploymentConfig, replicas: int) -> str:
    _copy_tree(artifact.folder, out / "model")
    flags = ["--served-model-name", name, "--max-num-seqs", str(config.max_batch_size),
             "--max-model-len", str(max_model_len(artifact, config))]
    _write(out / "serve.sh", _serve_script("vLLM's OpenAI-compatible server on the weights in model/.",
                                           ["vllm", "serve"], "model",
                                           [*flags, "--host", "0.0.0.0", "--port", str(VLLM_PORT)]),
           executable=True)
    mount = f"/models/{name}"
    objects = _kubernetes(name, image=VLLM_IMAGE, command=["vllm", "serve"],
                          args=[mount, *flags, "--host", "0.0.0.0", "--port", str(VLLM_PORT)], port=VLLM_PORT,
                          replicas=replicas, mount=mount, shared_memory=True,
                          resources={"requests": {"cpu": str(config.threads),
                                                  "memory": _memory(_weights_bytes(out / "model"))},
                                     "limits": {"nvidia.com/gpu": "1"}})
    _write(out / "kubernetes.yaml", yaml_documents(
        objects, f"The weights (model/) are read from the PersistentVolumeClaim {name}-model."))
    _readme(out, [f"# {name}: vLLM server ({artifact.format})", "",
                  f"Local: `sh serve.sh` (OpenAI-compatible API on :{VLLM_PORT}, model name `{name}`).",
                  (f"Kubernetes: copy `model/` into a PersistentVolumeClaim named `{name}-model`, then "
                   "`kubectl apply -f kubernetes.yaml`.")])
    return "sh serve.sh"


def write_llamacpp(artifact: Artifact, out: Path, *, name: str, config: DeploymentConfig, replicas: int) -> str:
    gguf = _one(artifact.folder, ("*.gguf",), "GGUF")
    _copy(gguf, out / "model" / gguf.name)
    parallel = config.max_batch_size
    # --ctx-size is the KV cache of all slots together (each slot gets ctx / parallel): the deployment's
    # KV budget, no more than the trained context per slot.
    ctx = min(config.max_kv_tokens, max_model_len(artifact, config) * parallel)
    flags = ["--alias", name, "--parallel", str(parallel), "--ctx-size", str(ctx), "--cont-batching",
             "--threads", str(config.threads), "--host", "0.0.0.0", "--port", str(LLAMACPP_PORT)]
    _write(out / "serve.sh", _serve_script("llama.cpp's OpenAI-compatible server on the GGUF in model/.",
                                           ["llama-server", "-m"], f"model/{gguf.name}", flags),
           executable=True)
    mount = f"/models/{name}"
    # The image's entrypoint is llama-server: the container takes its arguments only.
    objects = _kubernetes(name, image=LLAMACPP_IMAGE, command=None, args=["-m", f"{mount}/{gguf.name}", *flags],
                          port=LLAMACPP_PORT, replicas=replicas, mount=mount, shared_memory=False,
                          resources={"requests": {"cpu": str(config.threads),
                                                  "memory": _memory(gguf.stat().st_size)}})
    _write(out / "kubernetes.yaml", yaml_documents(
        objects, f"The GGUF (model/{gguf.name}) is read from the PersistentVolumeClaim {name}-model."))
    _readme(out, [f"# {name}: llama.cpp server (GGUF)", "",
                  (f"Local: `sh serve.sh` (OpenAI-compatible API on :{LLAMACPP_PORT}, model name `{name}`, "
                   f"{parallel} parallel slots)."),
                  (f"Kubernetes: copy `model/` into a PersistentVolumeClaim named `{name}-model`, then "
                   "`kubectl apply -f kubernetes.yaml`.")])
    return "sh serve.sh"


# ----------------------------------------------------------------------------------------------- table

_STATEFUL = ("modelpress's OpenVINO causal LMs are stateful (the KV cache lives in the request), which "
             "this server's OpenVINO runtime does not drive")

TARGETS: dict[str, Target] = {
    "triton": Target({ONNX: BOTH, OPENVINO: ENC, TENSORRT: BOTH, COMPRESSED_TENSORS: LM, HF_SAFETENSORS: LM},
                     write_triton, {(OPENVINO, CAUSAL_LM): _STATEFUL}),
    "kserve": Target({ONNX: BOTH, OPENVINO: ENC, TENSORRT: BOTH, COMPRESSED_TENSORS: LM, HF_SAFETENSORS: LM},
                     write_kserve, {(OPENVINO, CAUSAL_LM): _STATEFUL}),
    "ovms": Target({OPENVINO: BOTH, ONNX: BOTH}, write_ovms, {}),
    "vllm": Target({COMPRESSED_TENSORS: LM, HF_SAFETENSORS: LM}, write_vllm, {}),
    "llamacpp": Target({GGUF: LM}, write_llamacpp, {}),
}
