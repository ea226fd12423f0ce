"""The package's shape: data flows one way, so no module imports, directly or through others,
a module that imports it (every import counts, those inside functions too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reproresnet"


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reproresnet"):
                parts = node.module.split(".")
                found.update(parts[1:2] or [alias.name for alias in node.names])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("reproresnet."))
        graph[path.stem] = found & modules - {path.stem}
    return graph


def test_no_import_cycle():
    graph = imports()
    assert {"train", "records", "bench", "bench_baseline"} <= set(graph) and graph["train"]  # the package was read

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for module in graph[todo.pop()] - seen:
                seen.add(module)
                todo.append(module)
        return seen

    cycles = sorted(module for module in graph if module in reaches(module))
    assert cycles == [], f"modules on an import cycle: {cycles}"
