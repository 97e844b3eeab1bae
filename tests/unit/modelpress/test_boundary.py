"""Dependencies point one way: `services` imports `modelpress`, never the reverse."""

import ast
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[3] / "modelpress"

# Imports the whole client package with `services` made unimportable, then calls modelpress.compress.
BLOCKED = r"""
import importlib, pkgutil, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "services" or name.startswith("services."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Block())
import modelpress
for module in pkgutil.walk_packages(modelpress.__path__, "modelpress."):
    importlib.import_module(module.name)
try:
    modelpress.compress("somewhere", "int8-compact", "out")
except modelpress.FailedPrecondition as exc:
    print("refused:", exc.details())
"""


def test_no_module_of_the_client_package_imports_services():
    found = []
    for path in sorted(CLIENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(CLIENT.parent)}:{node.lineno} {n}" for n in names
                      if n == "services" or n.startswith("services.")]
    assert not found, found


def test_the_client_imports_without_services_and_refuses_in_process_runs_clearly():
    run = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120,
                         cwd=CLIENT.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused:" in run.stdout and "server install" in run.stdout
