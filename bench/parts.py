"""How a bench made of parts runs: each part measured in turn, its rows (and the machine they were
taken on) written as soon as it ends, so a long run that stops keeps what it finished."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from machine_record import machine_record  # bench/ (this folder is on sys.path)


def run_parts(parts: dict[str, Callable], args, results_file: Path, print_tables: Callable[[dict], None],
              prefix: str) -> None:
    """`args.parts` (comma-separated names of `parts`), `args.work` and `args.print` as every bench takes them."""
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.print:
        print_tables(results)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        if part not in parts:
            raise SystemExit(f"--parts: unknown part {part!r}; allowed: {', '.join(parts)}")
        print(f"== {part}", flush=True)
        results[part] = parts[part](args, work) | {"machine": machine_record()}
        results["machine"] = results[part]["machine"]
        results_file.write_text(json.dumps(results, indent=1, default=str))
    print_tables(results)
    print(f"wrote {results_file}")
