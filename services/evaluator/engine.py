"""Evaluation of a model folder: size on disk here, the rest in a fresh probe process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydantic import Field

from services.common import packaging
from services.common.configspec import MethodConfig


class EvaluationConfig(MethodConfig):
    batch_size: int = Field(1, ge=1, le=256, description="Batch size of the timed forward passes")
    sequence_length: int = Field(128, ge=1, le=8192, description="Tokens per sequence of the timed passes")
    latency_iterations: int = Field(10, ge=1, le=1000, description="Timed passes after 3 warm-up passes")
    quality_windows: int = Field(8, ge=0, le=32, description="Held-out 512-token windows for perplexity (0: skip)")
    threads: int = Field(2, ge=1, le=256, description="torch intra-op threads")


class ProbeFailed(RuntimeError):
    pass


def evaluate_folder(folder: Path, config: EvaluationConfig, timeout_s: float = 1800) -> dict:
    """All figures for one model folder, as a flat dict matching ModelMetrics' fields."""
    cmd = [
        sys.executable, "-m", "services.evaluator.probe",
        "--model", str(folder),
        "--batch-size", str(config.batch_size),
        "--sequence-length", str(config.sequence_length),
        "--iterations", str(config.latency_iterations),
        "--quality-windows", str(config.quality_windows),
        "--threads", str(config.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeFailed(f"measuring {folder.name} failed: {last}")
    figures = json.loads(proc.stdout)
    figures["size_on_disk_bytes"] = packaging.folder_size_bytes(folder)
    return figures
