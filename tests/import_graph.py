"""Which modules each module of the project imports: the package layout's import graph, from the source.

    python tests/import_graph.py            # one line per module: project modules, then third-party ones
    python tests/import_graph.py --packages # edges between packages only, with counts, then cycles and
                                            # imports that run against the data flow (both should be none)

Reads the files with `ast` (nothing is imported or run), so it works on any checkout. Imports inside
functions (lazy ones) count too, marked `~`: they are edges all the same. The runtime boundary test
(tests/test_runtime_boundary.py) uses `imports_of` to check every torch-free module.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "data_tools", "trainer", "export")
# The data flow's layers, bottom first. A module may import from its own package (the longest name below
# that contains it) or from a lower layer, never from a higher one or a sibling of its own layer.
LAYERS = (
    ("common",),  # formats and helpers, torch-free
    ("data_tools", "export.runtime"),  # scans -> shards | exported models -> samples (both torch-free)
    ("trainer.run",),  # what both training stages share
    ("trainer.stage1",),  # the VQ-VAE
    ("trainer.stage2",),  # codes and the prior
    ("trainer",),  # `python -m trainer`: the command table
    ("export",),  # the ONNX exporter and `python -m export`'s command table
)
COMMAND_TABLES = ("data_tools/__main__.py", "trainer/__main__.py", "export/__main__.py")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """{dotted name: file} of every module in the project's packages."""
    return {module_name(path, root): path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path) -> dict[str, bool]:
    """{imported module: imported at module level} for one file; `from a import b` records a.b when
    a.b is a project module, else a."""
    tree = ast.parse(path.read_text(), str(path))
    found: dict[str, bool] = {}

    def visit(node: ast.AST, at_top: bool) -> None:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            found[name] = found.get(name, False) or at_top
        inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, at_top and not inside_function)

    visit(tree, True)
    return found


def resolve(name: str, modules: dict[str, Path]) -> str:
    """The project module a dotted import name refers to, or its top-level package (third party)."""
    while name and name not in modules:
        if "." not in name:
            return name
        name = name.rsplit(".", 1)[0]
    return name


def graph(root: Path = REPO) -> dict[str, dict[str, bool]]:
    """{module: {imported project module or third-party package: at module level}}."""
    modules = project_modules(root)
    result = {}
    for name, path in modules.items():
        edges: dict[str, bool] = {}
        for imported, at_top in imports_of(path).items():
            target = resolve(imported, modules)
            if target != name and target not in sys.stdlib_module_names and target != "__future__":
                edges[target] = edges.get(target, False) or at_top
        result[name] = edges
    return result


def package_of(module: str) -> str:
    """The layer package a module belongs to: the longest name in LAYERS that contains it."""
    names = [name for layer in LAYERS for name in layer if module == name or module.startswith(name + ".")]
    return max(names, key=len)


def layer_of(package: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if package in layer)


def wrong_way(found: dict[str, dict[str, bool]]) -> list[str]:
    """Every import that runs against the data flow: up a layer, or across to a sibling package."""
    problems = []
    for module, imported in found.items():
        source = package_of(module)
        for target in (name for name in imported if name in found):
            package = package_of(target)
            if package != source and layer_of(package) >= layer_of(source):
                problems.append(f"{module} -> {target} ({source} may not import {package})")
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def module_cycles(found: dict[str, dict[str, bool]]) -> list[list[str]]:
    return cycles({module: {name for name in imported if name in found} for module, imported in found.items()})


def package_edges(found: dict[str, dict[str, bool]]) -> Counter:
    """{(package, package): number of imports} between different layer packages."""
    edges = Counter()
    for module, imported in found.items():
        for target in (name for name in imported if name in found):
            if package_of(module) != package_of(target):
                edges[package_of(module), package_of(target)] += 1
    return edges


def command_modules(root: Path = REPO) -> set[str]:
    """The modules the command tables (`COMMANDS` in each __main__.py) run, read from the source."""
    found = set()
    for table in COMMAND_TABLES:
        for node in ast.walk(ast.parse((root / table).read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMMANDS" for t in node.targets):
                found |= {value.elts[0].value for value in node.value.values}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", action="store_true", help="only the edges between packages, with counts")
    parser.add_argument("--root", type=Path, default=REPO, help="checkout to read (default: this one)")
    args = parser.parse_args(argv)
    found = graph(args.root)
    if args.packages:
        edges = package_edges(found)
        for (source, target), count in sorted(edges.items(), key=lambda e: (layer_of(e[0][0]), e[0])):
            print(f"{source} -> {target}: {count}")
        package_cycles = cycles({source: {t for s, t in edges if s == source} for source, _ in edges})
        print(f"package cycles: {package_cycles or 'none'}")
        print(f"module cycles: {module_cycles(found) or 'none'}")
        print("imports against the data flow:", *(wrong_way(found) or ["none"]), sep="\n  ")
        return 0
    for module, imported in found.items():
        ours = sorted(name + ("" if top else "~") for name, top in imported.items() if name in found)
        theirs = sorted(name + ("" if top else "~") for name, top in imported.items() if name not in found)
        print(f"{module}: {', '.join(ours) or '-'} | {', '.join(theirs) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
