"""Which files of a model folder are pickles: loading one (torch.load, pickle.load) runs whatever code it
carries, so modelpress refuses them wherever they are.

The rule is per file: a file with a pickle suffix is a pickle unless its own bytes prove it is something
else. One such case exists: an OpenVINO IR's weights (`X.bin`), raw constant data that the IR `X.xml`
indexes. It is recognised by the pair's content, not by the .xml's presence: the .xml must be an IR
(a <net> document) whose constants span exactly the .bin's bytes, and the .bin must not start like a
pickle (protocol byte 0x80) or a torch.save zip ("PK"). Any other file beside an .xml is still a pickle.
"""

from __future__ import annotations

import re
from pathlib import Path

# Files that are unpickled on load: loading one runs whatever code it carries.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
# An IR's <data .../> of a Const layer names its span of the .bin: offset="N" size="M", in any order.
_DATA_TAG = re.compile(rb"<data\b[^>]*>")
_OFFSET = re.compile(rb'\boffset="(\d+)"')
_SIZE = re.compile(rb'\bsize="(\d+)"')
_IR_ROOT = re.compile(rb'^\s*(<\?xml[^>]*\?>\s*)?<net\b')
# The .xml of a large model is megabytes; a far larger one is not an IR this check reads.
MAX_IR_XML_BYTES = 256 * 1024 * 1024


def starts_like_a_pickle(head: bytes) -> bool:
    """Protocol 2+ pickles start with 0x80; torch.save's zip format with "PK"."""
    return head[:1] == b"\x80" or head[:2] == b"PK"


def ir_span(xml: bytes) -> int | None:
    """The bytes of weights an OpenVINO IR indexes (the end of its last constant); None if `xml` is
    not an IR."""
    if not _IR_ROOT.match(xml[:4096]):
        return None
    end = 0
    for tag in _DATA_TAG.finditer(xml):
        offset, size = _OFFSET.search(tag.group()), _SIZE.search(tag.group())
        if offset and size:
            end = max(end, int(offset.group(1)) + int(size.group(1)))
    return end


def is_openvino_weights(bin_size: int, bin_head: bytes, xml: bytes | None) -> bool:
    """Whether a .bin of `bin_size` bytes starting with `bin_head` is the raw weights of the IR `xml`
    (its same-stem .xml's bytes; None when there is none)."""
    if xml is None or starts_like_a_pickle(bin_head):
        return False
    return ir_span(xml) == bin_size


def _is_openvino_weights_file(path: Path) -> bool:
    xml_path = path.with_suffix(".xml")
    if path.suffix.lower() != ".bin" or not xml_path.is_file() or xml_path.stat().st_size > MAX_IR_XML_BYTES:
        return False
    with path.open("rb") as handle:
        head = handle.read(2)
    return is_openvino_weights(path.stat().st_size, head, xml_path.read_bytes())


def pickled_files(folder: Path) -> list[str]:
    """Paths (relative to `folder`) of every pickle under it, sorted."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES and not _is_openvino_weights_file(p))
