"""The package's shape: data flows one way, so no module imports, directly or through others,
a module that imports it (every import counts, those inside functions too); the science core (the
package's own modules) imports none of the sub-packages around it, and each sub-package imports
the core, its own modules and the others' faces (their __init__), never their insides."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reproresnet"
SUBPACKAGES = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))


def module_name(path: Path) -> str:
    """reproresnet/campaign/slot.py -> 'campaign.slot'; a package's __init__ is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (dotted, e.g. 'campaign.slot')."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}

    def deepest(dotted: str) -> set[str]:  # 'bench.record.load' -> {'bench.record'}; {} if none
        parts = dotted.split(".")
        return next(({".".join(parts[:n])} for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), set())

    graph = {}
    for path in paths:
        name = module_name(path)
        # The package a relative import starts from: the module's own (a package's __init__: itself).
        package = [] if name == "__init__" else name.split(".")[:None if path.name == "__init__.py" else -1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("reproresnet")):
                if node.level:
                    stem = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    stem = node.module.partition(".")[2]
                for alias in node.names:
                    found |= deepest(f"{stem}.{alias.name}".strip(".")) or deepest(stem)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("reproresnet."):
                        found |= deepest(alias.name.partition(".")[2])
        graph[name] = found - {name}
    return graph


def test_no_import_cycle():
    graph = imports()
    assert {"train", "records", "bench.measure", "bench.baseline", "campaign.slot"} <= set(graph)  # the package was read
    assert "train" in graph["bench.measure"] and "bench.record" in graph["bench"]

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for module in graph[todo.pop()] - seen:
                seen.add(module)
                todo.append(module)
        return seen

    cycles = sorted(module for module in graph if module in reaches(module))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_the_core_stands_alone_and_the_machinery_meets_only_at_faces():
    graph = imports()
    assert {"campaign", "bench", "book", "launch"} <= set(SUBPACKAGES)
    core = {name for name in graph if "." not in name and name not in SUBPACKAGES and name not in {"cli", "__main__"}}
    assert {"train", "models", "records", "rundir", "engine"} <= core
    wrong = []
    for name, imported in graph.items():
        home = name.split(".")[0] if name.split(".")[0] in SUBPACKAGES else None
        for target in imported:
            target_home = target.split(".")[0] if target.split(".")[0] in SUBPACKAGES else None
            if name in core and target not in core:
                wrong.append(f"the core's {name} imports {target}")
            elif home and target_home and target_home != home and target != target_home:
                wrong.append(f"{name} imports {target}, inside another sub-package (import its face, {target_home})")
            elif name not in {"cli", "__main__"} and target == "cli":
                wrong.append(f"{name} imports the command line, which sits on top")
    assert wrong == []


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
