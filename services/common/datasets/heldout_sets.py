"""Held-out text from sources unrelated to the calibration text, each labelled by topic.

The calibration, validation and held-out splits of corpus.py all come from one source, CPython's language
reference (`pydoc_data.topics`): a model distilled or calibrated on its calibration topics can do well on the
held-out ones because they are the same kind of text. These sets come from elsewhere and are read from what is
installed (pinned in pyproject.toml), never downloaded:

- `stdlib-docs`: the docstrings of standard-library modules (API documentation, not the language reference),
  one topic per module;
- `torch-docs`: the docstrings of torch's public modules (numerical and machine-learning prose), one topic per
  module;
- `package-readmes`: the project descriptions (READMEs) that installed packages carry in their metadata
  (markdown prose: what a project does, how to install and use it), one topic per package.

A topic is (name, text); quality.py takes sentences (k-NN topic accuracy) and token windows (perplexity) from
them as it does from a corpus split.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from functools import cache

STDLIB_MODULES = ("argparse", "asyncio.tasks", "csv", "datetime", "decimal", "email.message", "ftplib", "http.client",
                  "imaplib", "json", "logging", "mailbox", "pathlib", "shutil", "smtplib", "sqlite3", "subprocess",
                  "tarfile", "tempfile", "threading", "unittest.case", "urllib.request", "xml.dom.minidom", "zipfile")
TORCH_MODULES = ("torch.autograd", "torch.distributions", "torch.fft", "torch.nn.functional", "torch.nn.modules.activation",
                 "torch.nn.init", "torch.nn.modules.conv", "torch.nn.modules.loss", "torch.nn.modules.rnn",
                 "torch.optim.adam", "torch.optim.lr_scheduler", "torch.optim.sgd", "torch.sparse", "torch.special",
                 "torch.utils.data.dataloader", "torch.utils.data.sampler")
README_PACKAGES = ("accelerate", "aiohttp", "compressed-tensors", "cryptography", "gguf", "grpcio", "matplotlib",
                   "nats-py", "nncf", "onnx", "onnxruntime", "onnxscript", "openvino", "pydantic", "rich", "transformers")
HELDOUT_SETS = ("stdlib-docs", "torch-docs", "package-readmes")

# reST roles and markup that docstrings carry: :class:`Tensor` reads as Tensor.
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``")
_DIRECTIVE = re.compile(r"^\s*\.\. [a-z-]+::.*$", re.MULTILINE)
# Markdown: links and images keep their text, HTML tags go.
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"<[^>]+>")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _plain_rest(text: str) -> str:
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", _DIRECTIVE.sub("", text)))


def _plain_markdown(text: str) -> str:
    text = _TAG.sub("", _LINK.sub(r"\1", _IMAGE.sub("", _FENCE.sub("", text))))
    # Headings, tables, lists of badges and quotes are not prose.
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(("#", "|", ">", "[!", "=", "-" * 3))]
    return _plain_rest("\n".join(lines))


def _docstrings(module_name: str) -> str:
    """The module's docstring and those of the public classes, functions and methods it defines, in name
    order, so the text is the same on every run of one installed version."""
    module = importlib.import_module(module_name)
    parts = [inspect.getdoc(module) or ""]
    # The public API it declares (torch.fft's functions are C routines of torch._C), else what it defines.
    declared = set(getattr(module, "__all__", ()))
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        defined_here = getattr(member, "__module__", None) == module.__name__
        if not (defined_here or (name in declared and inspect.isroutine(member))):
            continue
        parts.append(inspect.getdoc(member) or "")
        if inspect.isclass(member):
            for attribute, value in sorted(vars(member).items()):
                if not attribute.startswith("_") and inspect.isfunction(value):
                    parts.append(inspect.getdoc(value) or "")
    return "\n\n".join(_plain_rest(p) for p in parts if p)


def _readme(package: str) -> str:
    metadata = importlib.metadata.metadata(package)
    return _plain_markdown(metadata.get_payload() or metadata.get("Description") or "")


@cache
def topics_of(name: str) -> tuple[tuple[str, str], ...]:
    """(topic, text) of one held-out set; a module or package that is not installed is left out."""
    if name == "stdlib-docs":
        return tuple((m, _docstrings(m)) for m in STDLIB_MODULES)
    if name == "torch-docs":
        return tuple((m, _docstrings(m)) for m in TORCH_MODULES)
    if name == "package-readmes":
        found = []
        for package in README_PACKAGES:
            try:
                found.append((package, _readme(package)))
            except importlib.metadata.PackageNotFoundError:
                continue
        return tuple(found)
    raise ValueError(f"held-out set: {name!r} is not one of {', '.join(HELDOUT_SETS)}")
