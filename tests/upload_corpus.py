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


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A member of another type than a plain file, with bytes (tarfile reads a contiguous one as regular)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, b"{}"


def gnu_sparse_member(name: str, real_size: int, data: bytes) -> bytes:
    """One GNU sparse member ('S'), as GNU `tar --sparse` writes it: `data` stored, then a hole up to
    `real_size` that an unpacker fills with zeros. tarfile reads these but cannot write them."""
    header = bytearray(512)
    header[0:len(name)] = name.encode()
    for start, value in ((100, 0o644), (108, 0), (116, 0), (124, len(data)), (136, 0)):
        width = 8 if start < 124 else 12
        header[start:start + width] = tarfile.itn(value, width, tarfile.GNU_FORMAT)
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[257:265] = tarfile.GNU_MAGIC
    header[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # the one stored run: offset 0 ...
    header[398:410] = tarfile.itn(len(data), 12, tarfile.GNU_FORMAT)  # ... of len(data) bytes
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # the size it unpacks to
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % 512)


def sparse_weights(rows: int = 600 << 12) -> bytes:
    """A model.safetensors of one F32 [rows, 64] tensor (600 MiB by default) of which only the header is stored."""
    header = {"model.embed_tokens.weight": {"dtype": "F32", "shape": [rows, 64], "data_offsets": [0, rows * 256]}}
    prefix = safetensors_bytes(header, b"")
    return gnu_sparse_member("model.safetensors", len(prefix) + rows * 256, prefix)


def model_entries(folder: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_file(p.relative_to(folder).as_posix(), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# What `pickle.dumps(..., protocol=0)` writes for a call: no 0x80 protocol byte to give it away.
PROTOCOL_0_PICKLE = b"cposix\nsystem\n(Vtrue\ntR."


def corpus(model_folder: Path) -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, declared format, a phrase of the expected refusal)."""
    good = model_entries(model_folder)
    config = [e for e in good if e[0].name == "config.json"]
    rest = [e for e in good if e[0].name != "config.json"]
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
        "gnu-sparse": (sparse_weights() + _tar(config), HF, "'model.safetensors': is a sparse file"),
        "contiguous-file": (_tar([*good, _special("weights.bin", tarfile.CONTTYPE)]), HF, "not a regular file"),
        "fifo": (_tar([*good, _special("pipe", tarfile.FIFOTYPE)]), HF, "not a regular file"),
        "long-component": (_tar([*good, _file("x" * 300 + "/a.json", b"{}")]), HF, "past the 255"),
        "deep-config": (_tar([_file("config.json", b"[" * 100_000 + b"]" * 100_000), *rest]), HF,
                        "config.json: JSON nested"),
        "deeper-than-bound-config": (_tar([_file("config.json", b'{"a":' * 40 + b"1" + b"}" * 40), *rest]), HF,
                                     "nested 40 levels deep"),
        "deep-safetensors-header": (_tar([*config, _file("model.safetensors", struct.pack("<Q", 200_000)
                                                          + b"[" * 100_000 + b"]" * 100_000)]), HF,
                                    "header: JSON nested"),
        "pickle-beside-xml": (_tar([*good, _file("pytorch_model.bin", PROTOCOL_0_PICKLE),
                                    _file("pytorch_model.xml", b"<net/>")]), HF, "pytorch_model.bin: a pickle"),
        "dataset-not-json": (_tar([_file("train.jsonl", b'{"text": "fine"}\nnot json\n')]), DATASET, "line 2"),
        "dataset-no-text": (_tar([_file("train.jsonl", b'{"prompt": "x"}\n')]), DATASET, "\"text\""),
    }
