"""Which modules each module of the project imports: the package layout's import graph, from the source.

    python tests/import_graph.py            # one line per module: project modules, then third-party ones
    python tests/import_graph.py --packages # edges between packages only, with counts

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
PACKAGES = ("data_tools", "trainer", "export")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", action="store_true", help="only the edges between packages, with counts")
    parser.add_argument("--root", type=Path, default=REPO, help="checkout to read (default: this one)")
    args = parser.parse_args(argv)
    found = graph(args.root)
    if args.packages:
        edges = Counter()
        for module, imported in found.items():
            for target in imported:
                if target in found:
                    edges[
                        (
                            module.rsplit(".", 1)[0] if "." in module else module,
                            target.rsplit(".", 1)[0] if "." in target else target,
                        )
                    ] += 1
        for (source, target), count in sorted(edges.items()):
            if source != target:
                print(f"{source} -> {target}: {count}")
        return 0
    for module, imported in found.items():
        ours = sorted(name + ("" if top else "~") for name, top in imported.items() if name in found)
        theirs = sorted(name + ("" if top else "~") for name, top in imported.items() if name not in found)
        print(f"{module}: {', '.join(ours) or '-'} | {', '.join(theirs) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
