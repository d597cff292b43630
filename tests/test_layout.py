"""The layout shows the data flow: imports run one way along it, with no cycles, commands import no other
command, and the docs name only files that exist. `python tests/import_graph.py --packages` prints the same."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO
from import_graph import command_modules, cycles, graph, module_cycles, package_edges, wrong_way


def test_no_import_runs_against_the_data_flow():
    assert wrong_way(graph()) == []


def test_there_are_no_import_cycles():
    found = graph()
    assert module_cycles(found) == []
    edges = package_edges(found)
    assert cycles({source: {t for s, t in edges if s == source} for source, _ in edges}) == []


@pytest.mark.parametrize(
    "module, imported",
    [
        ("common.digest", "trainer.stage1.vqvae"),  # the base layer reaching up
        ("data_tools.shard", "export.runtime.sample"),  # a sibling of the same layer
        ("trainer.stage1.evaluate", "trainer.stage2.generate"),  # stage 1 reaching into stage 2
        ("trainer.stage2.train", "export.onnx_export"),  # training reaching into the exporter
    ],
)
def test_the_check_catches_an_import_the_wrong_way(module, imported):
    planted = {module: {imported: False}, imported: {}}
    assert len(wrong_way(planted)) == 1 and wrong_way(planted)[0].startswith(f"{module} -> {imported} (")


def test_the_check_catches_a_cycle():
    assert module_cycles({"a.x": {"a.y": True}, "a.y": {"a.z": False}, "a.z": {"a.x": True}}) == [["a.x", "a.y", "a.z"]]


def test_commands_import_no_command():
    commands = command_modules()
    assert {"data_tools.shard", "trainer.stage1.train", "trainer.stage2.train", "export.onnx_export"} <= commands
    for module, imported in graph().items():
        assert not commands & set(imported), f"{module} imports the command {sorted(commands & set(imported))}"


PATH_IN_TEXT = re.compile(
    r"\b((?:common|trainer|data_tools|export|bench|tests|configs|docs)/[A-Za-z0-9_./-]+\.(?:py|yaml|md|json|sh|png))\b"
)


def tracked(pattern: str) -> list[str]:
    return subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True).stdout.split()


def test_every_path_the_docs_and_the_code_name_exists():
    texts = ["README.md", *tracked("docs/*.md"), *tracked("*.py")]
    missing = sorted(
        f"{text} names {path}"
        for text in texts
        for path in set(PATH_IN_TEXT.findall((REPO / text).read_text()))
        if not (REPO / path).exists()
    )
    assert missing == []


def test_no_merge_leftovers_are_tracked_and_they_are_ignored():
    assert [name for name in tracked("*") if re.search(r"\.(orig|rej)$", name)] == []
    ignored = (REPO / ".gitignore").read_text().split()
    assert "*.orig" in ignored and "*.rej" in ignored


@pytest.mark.parametrize(
    "package",
    [
        "common",
        "common/figures",
        "data_tools",
        "trainer/run",
        "trainer/stage1",
        "trainer/stage2",
        "export",
        "export/runtime",
    ],
)
def test_each_package_docstring_names_all_its_modules(package):
    """The package docstring is where a newcomer looks for what lives where: it must not fall behind."""
    folder = REPO / package
    text = (folder / "__init__.py").read_text()
    modules = [p.stem for p in folder.glob("*.py") if not p.stem.startswith("__")]
    modules += [p.name + "/" for p in folder.iterdir() if (p / "__init__.py").is_file()]
    assert [name for name in modules if not re.search(rf"^\s*{re.escape(name)}\s", text, re.M)] == []
