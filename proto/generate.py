"""Regenerates the Python stubs of the contracts: modelpress's own (modelpress/v1/) and the Open
Inference Protocol's (KServe v2, modelpress/inference/v2/) that the serving service speaks.

Run `python proto/generate.py` after editing a .proto; tests/unit/modelpress/v1/test_proto_stubs.py
fails when the committed stubs differ from what this produces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT


# Folders (under proto/, and under the output root for the stubs) holding the compiled contracts.
PROTO_PACKAGES = ("modelpress/v1", "modelpress/inference/v2")


def proto_files() -> list[Path]:
    return sorted(p for package in PROTO_PACKAGES for p in (PROTO_ROOT / package).glob("*.proto"))


def ensure_init_files(out_dir: Path) -> None:
    """Makes each stub folder (and its parents below the top-level `modelpress` package, which is
    hand-written) an importable package: protoc writes modules, never `__init__.py`."""
    for package in PROTO_PACKAGES:
        parts = Path(package).parts
        for depth in range(2, len(parts) + 1):
            init = out_dir.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.parent.mkdir(parents=True, exist_ok=True)
                init.touch()


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    ensure_init_files(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
