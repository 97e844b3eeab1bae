"""Where the CLI writes and how it shows a figure: results and events on stdout, errors and hints
on stderr; ids whole; a figure that was not measured as "n/a"."""

from __future__ import annotations

import errno
import io
import json
import os
import sys

from google.protobuf.message import Message
from rich.console import Console
from rich.table import Column

from modelpress.results import message_document

# Off a terminal rich lays tables out in 80 columns and cuts cells with "…"; a pipe, a file or a CI
# log gets each table at its natural width instead, so an id copied from it is whole.
PIPE_WIDTH = 1000
NOT_MEASURED = "n/a"
# Exit status of a command whose reader went away (128 + SIGPIPE, as a shell reports it).
EXIT_CLOSED_PIPE = 141


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _width(stream) -> int | None:
    """rich's own width on a terminal; off one, wide enough that no line is wrapped or cell cut."""
    try:
        return None if stream.isatty() else PIPE_WIDTH
    except (AttributeError, ValueError):  # a replaced or closed stream
        return PIPE_WIDTH


class _Stdout(Console):
    def on_broken_pipe(self) -> None:
        # rich would exit 1 here; the CLI's main() ends every closed pipe the same way (141, quietly).
        raise BrokenPipeError(errno.EPIPE, "stdout closed by its reader")


out = _Stdout(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))


def figure(value: float | int | None, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """`value` / `scale` formatted, or "n/a" when it was not measured: None (the result schema's
    word for it) or 0 (a proto3 figure that was never set; no size, latency, count or quality
    measured on a model is zero)."""
    if value is None or value == 0:
        return NOT_MEASURED
    return fmt.format(value / scale)


def json_text(value: Message | list[Message], indent: int | None = 2) -> str:
    """Every `--json` output under one set of rules (modelpress.results): proto field names, enum
    names as strings, int64 as numbers, a figure that was not measured as null."""
    document = [message_document(m) for m in value] if isinstance(value, list) else message_document(value)
    return json.dumps(document, indent=indent)


def id_column(header: str) -> Column:
    """A table column holding ids: never cut with "…" (on a narrow terminal it folds instead)."""
    return Column(header, overflow="fold", min_width=12)


def closed_pipe() -> int:
    """The reader of stdout went away (`modelpress jobs list | head -1`): point stdout at /dev/null
    so the interpreter's last flush cannot raise again, and end quietly."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # not a file (a test's capture)
        return EXIT_CLOSED_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
    return EXIT_CLOSED_PIPE
