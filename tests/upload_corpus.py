"""Hostile and broken uploads, as the bytes a client could send: each with the format it claims
and the words the refusal must contain."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

from modelpress.v1 import common_pb2

HF = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS
DATASET = common_pb2.ARTIFACT_FORMAT_DATASET_JSONL


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def model_entries(folder: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_file(p.relative_to(folder).as_posix(), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def corpus(model_folder: Path) -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, declared format, a phrase of the expected refusal)."""
    good = model_entries(model_folder)
    config = [e for e in good if e[0].name == "config.json"]
    weights = next(data for info, data in good if info.name.endswith(".safetensors"))
    tensor = {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}
    return {
        "not-a-tar": (b"this is not a tar archive at all" * 64, HF, "not a tar"),
        "truncated-tar": (_tar(good)[:-20_000], HF, "damaged"),
        "dot-dot": (_tar([*good, _file("../escape.txt", b"x")]), HF, "leaves the folder"),
        "absolute": (_tar([*good, _file("/etc/cron.d/x", b"x")]), HF, "leaves the folder"),
        "symlink": (_tar([*good, _link("tokenizer.model", "/etc/passwd", tarfile.SYMTYPE)]), HF, "symlink"),
        "hardlink": (_tar([*good, _link("copy.json", "/etc/shadow", tarfile.LNKTYPE)]), HF, "hard link"),
        "truncated-safetensors": (_tar([*config, _file("model.safetensors", weights[: len(weights) // 2])]), HF,
                                  "truncated"),
        "header-claims-4TiB": (_tar([*config, _file("model.safetensors", struct.pack("<Q", 4 << 40) + b"{}")]), HF,
                               "header claims"),
        "lying-shape": (_tar([*config, _file("model.safetensors", safetensors_bytes(
            {"w": {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 64]}}, b"\0" * 64))]), HF, "offsets span"),
        "pickle-only": (_tar([*config, _file("pytorch_model.bin", b"\x80\x04K\x01.")]), HF, "never pickles"),
        "no-config": (_tar([_file("model.safetensors", safetensors_bytes(tensor, b"\0" * 64))]), HF, "config.json"),
        "dataset-not-json": (_tar([_file("train.jsonl", b'{"text": "fine"}\nnot json\n')]), DATASET, "line 2"),
        "dataset-no-text": (_tar([_file("train.jsonl", b'{"prompt": "x"}\n')]), DATASET, "\"text\""),
    }
