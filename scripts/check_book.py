"""Check that the built book's results page holds what the report promises.

    python scripts/check_book.py _build/html

Exits 1 with one line per problem unless the results page (notebooks/results.html) has
the CIFAR-10 error table, the compute table, the parameters/speed table, and at least one training-curve
figure: an <img> of a PNG that exists in the build. A missing figure usually means that
results/ holds no run record with metrics yet.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

RESULTS_PAGE = "notebooks/results.html"
TABLES = {  # table id -> a header the table must have (report.OURS for the error table)
    "error-table": "this project (%): mean ± std",
    "compute-table": "ReScience repr. s/epoch (GTX 980)",
    "speed-table": "parameters: paper; exact",
}
CURVES_CLASS = "tag_training-curves"  # myst-nb turns the cell tag "training-curves" into this class
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageParser(HTMLParser):
    """Collects tables (by id: headers, body rows) and images (src, inside the curves cell?)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str]] = []  # (tag, class) of open elements
        self.tables: dict[str, dict] = {}
        self.images: list[tuple[str, bool]] = []
        self._table: dict | None = None
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            inside_curves = any(CURVES_CLASS in classes.split() for _, classes in self.stack)
            self.images.append((attrs.get("src") or "", inside_curves))
        if tag == "table" and attrs.get("id"):
            self._table = self.tables[attrs["id"]] = {"headers": [], "rows": 0}
        if self._table is not None:
            if tag == "th":
                self._in_th = True
                self._table["headers"].append("")
            elif tag == "tr" and any(t == "tbody" for t, _ in self.stack):
                self._table["rows"] += 1
        if tag not in VOID:
            self.stack.append((tag, attrs.get("class") or ""))

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False
        if tag == "table":
            self._table = None
        for index in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed elements
            if self.stack[index][0] == tag:
                del self.stack[index:]
                break

    def handle_data(self, data):
        if self._table is not None and self._in_th:
            self._table["headers"][-1] += data


def check(build_dir: Path) -> list[str]:
    page = build_dir / RESULTS_PAGE
    if not page.is_file():
        return [f"{page} not found: build the book first (jupyter-book build . -W --keep-going)"]
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    problems = []
    for table_id, header in TABLES.items():
        table = parser.tables.get(table_id)
        if table is None:
            problems.append(f"{page}: no table with id {table_id!r}")
        elif header not in [h.strip() for h in table["headers"]]:
            problems.append(f"{page}: table {table_id!r} has no column {header!r} "
                            f"(columns: {[h.strip() for h in table['headers']]})")
        elif table["rows"] == 0:
            problems.append(f"{page}: table {table_id!r} has no rows")
    figures = [src for src, inside in parser.images if inside and src.lower().endswith((".svg", ".png"))]
    present = [src for src in figures if (page.parent / src).resolve().is_file()]
    if not figures:
        problems.append(f"{page}: no training-curve figure (no <img> of an SVG or PNG in the cell tagged "
                        f"'training-curves'); does results/ hold a run record with metrics.csv?")
    elif not present:
        problems.append(f"{page}: training-curve image(s) {figures} not found on disk")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    problems = check(Path(argv[0]))
    for problem in problems:
        print(f"check_book: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_book: {Path(argv[0]) / RESULTS_PAGE}: error, compute and speed tables and training curves present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
