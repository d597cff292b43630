"""The torch-free runtime (export/runtime/) and the base layer under it (common/) are a package boundary: none of
their modules may import torch, accelerate, webdataset or a module of the training side, whether at the top or
lazily, so that a CPU box with only the base install can sample and reconstruct. Checked for every module, two
ways: by reading the source (catches lazy imports that a run would not reach) and by importing each one in a
fresh interpreter (catches what a third-party package pulls in)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from import_graph import graph, project_modules

TORCH_FREE = ("common", "export.runtime")
FORBIDDEN = ("torch", "accelerate", "webdataset", "torchmetrics", "safetensors", "wandb", "trainer", "data_tools")
RUNTIME_MODULES = sorted(
    name for name in project_modules() if any(name == p or name.startswith(p + ".") for p in TORCH_FREE)
)


def test_the_runtime_has_its_modules():
    expected = (
        "common.sampling_rule",
        "common.sample_files",
        "common.figures.style",
        "common.shard_format",
        "export.runtime.model_dir",
        "export.runtime.onnx_models",
        "export.runtime.sample",
        "export.runtime.reconstruct",
    )
    assert set(expected) <= set(RUNTIME_MODULES)


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_runtime_source_imports_only_the_runtime(module):
    imported = graph()[module]
    for name in imported:
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{module} imports {name}"
        if top == "export":
            assert name.startswith("export.runtime"), f"{module} imports {name}, outside the runtime"


CHECK = f"""
import importlib, json, sys
found = {{}}
for module in sys.argv[1:]:
    importlib.import_module(module)
    found[module] = sorted(name for name in sys.modules if name.split(".")[0] in {FORBIDDEN!r})
print(json.dumps(found))
"""


def test_importing_each_runtime_module_loads_no_torch_side_module():
    result = subprocess.run(
        [sys.executable, "-c", CHECK, *RUNTIME_MODULES], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert list(found) == RUNTIME_MODULES
    for module, loaded in found.items():  # modules accumulate, so the first one listed is the culprit
        assert loaded == [], f"importing {module} loaded {', '.join(loaded)}"


def test_the_check_catches_a_torch_import(tmp_path):
    """The source check is not vacuous: a runtime module that imports torch lazily is caught."""
    package = tmp_path / "export" / "runtime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("def f():\n    import torch\n    from trainer.stage2.load import load_vqvae\n")
    assert set(graph(tmp_path)["export.runtime.bad"]) == {"torch", "trainer"}
