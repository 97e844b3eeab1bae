"""Encoders served: text in, tokens through the artifact's engine, pooled embeddings out.

The tokenizer is the folder's own `tokenizer.json` read by the `tokenizers` library, and the ONNX
and OpenVINO runners import no torch, so a replica serving engine artifacts stays a small process;
HF / compressed-tensors folders run through PyTorch (imported only by that runner). Pooling is what
the folder's sentence-transformers modules declare (`1_Pooling/config.json`, a Normalize module),
so a served embedding is the one `SentenceTransformer(folder)` gives; a bare encoder is mean-pooled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from services.common.models.artifact_format import detect_format


class ServingError(ValueError):
    """A request this deployment cannot serve as asked (INVALID_ARGUMENT / HTTP 400), naming why."""


class HiddenStates(Protocol):
    """Token-level outputs [batch, tokens, hidden] (float32) of a right-padded batch."""

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # "mean", "cls", "max" or "mean_sqrt_len"
    normalize: bool = False

    @staticmethod
    def of(folder: Path) -> Pooling:
        folder = Path(folder)
        modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").exists() else []
        normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
        pooling_dir = next((m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling")
        config_path = folder / pooling_dir / "config.json"
        if not config_path.exists():
            return Pooling(normalize=normalize)
        config = json.loads(config_path.read_text())
        for mode in ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "mean_tokens"):
            if config.get(f"pooling_mode_{mode}"):
                name = {"cls_token": "cls", "max_tokens": "max", "mean_sqrt_len_tokens": "mean_sqrt_len",
                        "mean_tokens": "mean"}[mode]
                return Pooling(mode=name, normalize=normalize)
        return Pooling(normalize=normalize)

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[batch, tokens, hidden] and its mask → [batch, hidden] float32."""
        weights = mask[..., None].astype(np.float32)
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "max":
            pooled = np.where(weights > 0, hidden, -np.inf).max(axis=1)
        else:
            counts = np.clip(weights.sum(axis=1), 1e-9, None)
            pooled = (hidden * weights).sum(axis=1) / (np.sqrt(counts) if self.mode == "mean_sqrt_len" else counts)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32)


class TextTokenizer:
    """The folder's fast tokenizer (tokenizer.json), special tokens added as the model was trained."""

    def __init__(self, folder: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.exists():
            raise ServingError(f"{Path(folder).name}: no tokenizer.json, so text inputs cannot be served "
                               "(send input_ids instead)")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_tokens = max_tokens
        config = _read_json(Path(folder) / "tokenizer_config.json")
        pad = config.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        self.pad_id = (self.tokenizer.token_to_id(pad) if pad else None) or 0

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_tokens:
            raise ServingError(f"text of {len(ids)} tokens is longer than this deployment's max_input_tokens "
                               f"({self.max_tokens})")
        return ids


def onnx_hidden_states(folder: Path, threads: int) -> HiddenStates:
    from services.common.engines.onnx_session import open_session

    session = open_session(Path(folder) / "model.onnx", threads=threads)
    names = {i.name for i in session.get_inputs()}

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    return run


def openvino_hidden_states(folder: Path, threads: int) -> HiddenStates:
    from services.common.engines.openvino_runtime import compile_model

    manifest = _read_json(Path(folder) / "openvino_model.json")
    compiled = compile_model(Path(folder) / "openvino_model.xml", threads,
                             manifest.get("inference_precision", "f32"))
    names = {name for port in compiled.inputs for name in port.get_names()}

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        request = compiled.create_infer_request()
        return np.asarray(request.infer({k: v for k, v in feeds.items() if k in names})[compiled.outputs[0]])
    return run


def torch_hidden_states(folder: Path, threads: int) -> HiddenStates:
    import torch

    from services.common.models import modelio

    torch.set_num_threads(threads)
    model = modelio.load_model(folder).eval()

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return out.last_hidden_state.float().numpy()
    return run


RUNNERS = {"ONNX": onnx_hidden_states, "OpenVINO IR": openvino_hidden_states,
           "compressed-tensors": torch_hidden_states, "hf-safetensors": torch_hidden_states}


def encoder_runner(folder: Path, threads: int) -> tuple[str, HiddenStates]:
    """(format, runner) for an encoder folder; ServingError naming the format where none serves it."""
    fmt = detect_format(folder)
    if fmt not in RUNNERS:
        raise ServingError(f"{Path(folder).name}: {fmt} encoders are not served (serve its ONNX, OpenVINO or "
                           "safetensors artifact)")
    return fmt, RUNNERS[fmt](folder, threads)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
