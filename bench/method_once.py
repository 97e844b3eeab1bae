"""Runs one engine method in this (fresh) process and prints wall time, peak RSS and figures.

    python bench/method_once.py SERVICE METHOD CONFIG_JSON SRC_DIR DST_DIR

SERVICE is the engine package (quantizer, pruner); its registry `METHODS` names the method.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from pathlib import Path

from services.common.contract.config import parse_config
from services.common.contract.engine_api import ProgressReporter


def main() -> None:
    service, method, config_json, src, dst = sys.argv[1:6]
    chosen = importlib.import_module(f"services.{service}.engine").METHODS[method]
    config = parse_config(chosen.config_cls, json.loads(config_json))
    start = time.perf_counter()
    result = chosen.run(config, Path(src), Path(dst), ProgressReporter())
    json.dump({
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": result.metrics,
        "compression": result.compression,
    }, sys.stdout, default=str)


if __name__ == "__main__":
    main()
