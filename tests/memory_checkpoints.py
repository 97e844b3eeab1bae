"""A stage's checkpoint store in a folder, which can kill the run right after a chosen save (the tests of
resumes: distiller training, the quantizer's end-to-end phase)."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.common.contract.engine_api import Checkpoints


class MemoryCheckpoints(Checkpoints):
    """Keeps the last checkpoint in a folder and can stop the run after a given save."""

    def __init__(self, root: Path, stop_after: int = 0) -> None:
        self.root, self.stop_after, self.saves = root, stop_after, []

    def latest(self, into: Path):
        if not (self.root / "last").exists():
            return None
        shutil.copytree(self.root / "last", into)
        return into

    def entry(self, folder: Path, step: int):
        """What `saves` records of one save."""
        return step

    def stops(self, folder: Path, step: int) -> bool:
        return step == self.stop_after

    def save(self, folder: Path, step: int) -> None:
        shutil.rmtree(self.root / "last", ignore_errors=True)
        shutil.copytree(folder, self.root / "last")
        self.saves.append(self.entry(folder, step))
        if self.stops(folder, step):
            raise KeyboardInterrupt  # the replica dies right after its checkpoint is stored
