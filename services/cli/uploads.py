"""Folders the CLI uploads (`modelpress upload DIR`, or a local folder given to `compress`/`optimize`),
with their progress on stderr so stdout keeps only results: a bar on a terminal, a line per quarter
elsewhere (logs, CI)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from modelpress import Client
from modelpress.client import local_model_folder, parse_model_ref
from modelpress.v1 import common_pb2

LINE_EVERY = 0.25


def upload_folder(client: Client, folder: Path, console: Console, *,
                  fmt: int = common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS) -> common_pb2.ArtifactRef:
    """Uploads `folder`, showing its progress on `console` (stderr)."""
    if console.is_terminal:
        columns = [TextColumn(f"uploading {folder}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TextColumn("eta"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bars:
            task = bars.add_task("upload", total=None)
            return client.upload(folder, fmt=fmt, progress=lambda sent, total: bars.update(task, completed=sent,
                                                                                           total=total))
    shown = [0.0]

    def line(sent: int, total: int) -> None:
        if total and sent / total >= shown[0] + LINE_EVERY and sent < total:
            shown[0] = sent / total
            console.print(f"uploading {folder}: {sent / total:.0%} of {_megabytes(total)}", markup=False,
                          highlight=False)

    return client.upload(folder, fmt=fmt, progress=line)


def model_argument(client: Client, text: str, console: Console) -> str:
    """The model a job runs on, as the mesh names it: a local folder (no scheme; see
    modelpress.client.local_model_folder) is uploaded first and named by its artifact id, saying so;
    anything else is passed on as written. A relative path that is no folder here is an error here,
    not a puzzle on the mesh."""
    folder = local_model_folder(text)
    if folder is None:
        _check_reference(text)
        return text
    started = time.monotonic()
    console.print(f"{text} is a folder here: uploading it first (path:DIR names a folder the mesh reads itself)",
                  markup=False, highlight=False)
    ref = upload_folder(client, folder, console)
    console.print(f"uploaded {text} as artifact {ref.id} ({_megabytes(ref.size_bytes)} in "
                  f"{time.monotonic() - started:.1f} s); the job runs on artifact:{ref.id}",
                  markup=False, highlight=False)
    return f"artifact:{ref.id}"


def _check_reference(text: str) -> None:
    try:
        parse_model_ref(text)
    except ValueError:
        raise ValueError(f"model: {text!r} is no folder here, nor builtin:NAME, artifact:ID or path:DIR "
                         "(a folder the mesh reads under its allowed roots)") from None


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
