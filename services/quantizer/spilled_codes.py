"""Finished layers' integer codes kept in files, not in memory, while the block walk goes on.

A layer's codes are as large as its weight in int8, so holding every finished layer's codes grows
with depth: an 8 B model's are 7 GB, more than the block the walk holds. Each layer's codes are
written to a file as soon as the layer is done, and its QuantizedWeight keeps a tensor mapped from
that file instead: pages nobody touches are not resident, so the walk's memory stays one block's.
Whoever reads the codes (the writer packing them) calls `forget` after, which maps them afresh:
the pages that reading made resident are let go with the old mapping.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from services.quantizer.ct_format import QuantizedWeight


class CodeSpill:
    """A private folder of code files, removed with `close` (or when the object is collected)."""

    def __init__(self, parent: Path | None = None) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="codes-", dir=parent)
        self._files: dict[str, tuple[Path, torch.Size, torch.dtype]] = {}

    def keep(self, name: str, qw: QuantizedWeight) -> QuantizedWeight:
        """Writes `qw`'s codes to a file and points `qw` at a mapping of it (the same object, returned)."""
        codes = qw.codes.detach().contiguous().cpu()
        path = Path(self._folder.name) / f"{len(self._files):06d}.codes"
        codes.numpy().tofile(path)
        self._files[name] = (path, codes.shape, codes.dtype)
        qw.codes = self._mapped(name)
        return qw

    def forget(self, name: str, qw: QuantizedWeight) -> None:
        """Maps `name`'s codes afresh, so the pages a reader touched are no longer held."""
        if name in self._files:
            qw.codes = self._mapped(name)

    def _mapped(self, name: str) -> torch.Tensor:
        path, shape, dtype = self._files[name]
        # Copy-on-write (shared=False): a consumer writing into the codes never changes the file.
        return torch.from_file(str(path), shared=False, size=shape.numel(), dtype=dtype).view(shape)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def close(self) -> None:
        self._files.clear()
        self._folder.cleanup()
