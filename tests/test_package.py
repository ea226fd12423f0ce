"""The package's shape: data flows one way, so no module imports, directly or through others,
a module that imports it (every import counts, those inside functions too)."""

import ast
import re
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


ROOT = PACKAGE.parent
# The works the report reproduces, as book/references.bib names them: CITATION.cff cites each.
REPRODUCED_WORKS = ("he2016identity", "zagoruyko2016wide", "muellerklein2016reproducing")


def bib_entry(key: str) -> dict:
    """One entry of book/references.bib: its title (braces dropped) and its authors' family names."""
    text = (ROOT / "book" / "references.bib").read_text()
    body = re.search(r"@\w+\{" + key + r",(.*?)\n\}", text, re.S).group(1)
    field = {name: value for name, value in re.findall(r"(\w+)\s*=\s*\{(.*)\},?\n", body)}
    return {"title": field["title"].replace("{", "").replace("}", ""), "year": int(field["year"]),
            "families": [author.split(",")[0].strip() for author in field["author"].split(" and ")]}


def test_citation_cff_parses_and_cites_this_work_and_the_works_it_reproduces():
    import yaml
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["message"] and citation["authors"]
    assert "reproducible report" in citation["title"]
    cited = {reference["title"]: reference for reference in citation["references"]}
    for key in REPRODUCED_WORKS:
        entry = bib_entry(key)
        reference = cited[entry["title"]]
        assert [author["family-names"] for author in reference["authors"]] == entry["families"], key
        assert reference["year"] == entry["year"], key


def test_the_license_file_is_the_license_pyproject_declares():
    declared = re.search(r'^license = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert declared == "MIT"
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in license_text
    import yaml
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["license"] == declared
