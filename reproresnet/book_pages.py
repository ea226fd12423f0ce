"""The book's generated pages: one page per record under `results/` (each run and each
benchmark) in `book/runs/`, and the status table of README.md.

`make book` runs `python -m reproresnet pages --readme README.md` before Jupyter Book
builds, so a record's page, its figure and its files to download come from the records as
they are now, and the README's table cannot go stale (a test compares it with the records).
Needs pandas and matplotlib, not torch.

    python -m reproresnet pages                       # book/runs/ from $REPRORESNET_RESULTS or results/
    python -m reproresnet pages --readme README.md    # and README.md's status table
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
from matplotlib import rc_context

from . import bench_record, records, report, rundir
from .config import CIFAR10

PAGES = Path("book/runs")
README_START = "<!-- status: written by `make readme` from the records in results/; edits here are replaced -->"
README_END = "<!-- end of status -->"


def _download(label: str, path: Path, page_dir: Path) -> str:
    return f"{{download}}`{label} <{os.path.relpath(Path(path).resolve(), Path(page_dir).resolve())}>`"


def _two_columns(table: pd.DataFrame, names: tuple[str, str], run: str) -> pd.DataFrame:
    """A one-column table indexed by field, as two columns html_table shows (it leaves indexes out)."""
    rows = pd.DataFrame({names[0]: list(table.index), names[1]: list(table.iloc[:, 0])})
    rows.attrs["run"] = run
    return rows


def run_page(run: records.RunRecord, page_dir: Path, curves: bool) -> str:
    """One run's page: where it stands, its files to download, its summary, curves (if `curves`:
    its figure is `<name>.svg` beside the page), speed and settings."""
    files = [(name, run.run_dir / name) for name in (records.RUN_FILE, records.METRICS_FILE, "train.ipynb")]
    downloads = ", ".join(_download(name, path, page_dir) for name, path in files if path.is_file())
    data = ("" if run.label == CIFAR10 else
            f" It trained on {run.label}, not on CIFAR-10: its numbers are never CIFAR-10 results.")
    given = {key: value for key, value in run.config.items() if value is not None}
    settings = _two_columns(pd.DataFrame({"": [str(value) for value in given.values()]}, index=list(given)),
                            ("setting", "value"), run.name)
    parts = [f"# {run.name}", "",
             f"{run.arch}, {report.run_status(run)}.{data} The record: {downloads}.", "",
             report.html_table(_two_columns(report.run_summary(run), ("", "this run"), run.name), "run-summary",
                               pages=""), ""]
    if curves:
        parts += [f"![Error and training loss of {run.name} against epoch]({run.name}.svg)", ""]
    parts += ["## Speed", "", "Each process that trained the run, as its record says:", "",
              report.html_table(report.speed_segments_table(run), "run-speed", pages=""), "",
              "## Settings", "", "The settings of its `TrainConfig` that the run was given; the others are its "
              "recipe's (`python -m reproresnet recipe NAME --arch ARCH` prints them) or its device's:", "",
              report.html_table(settings, "run-settings", pages=""), ""]
    return "\n".join(parts)


def bench_page(bench: dict, path: Path, page_dir: Path) -> str:
    """One benchmark record's page: its table, rounded to its noise, and the text `bench` printed."""
    table = report.bench_table([bench])
    table.attrs["run"] = bench["name"]
    return "\n".join([f"# {bench['name']}", "",
                      f"A benchmark on {(bench.get('device') or {}).get('name', 'an unknown device')}: our training "
                      f"path against a plain PyTorch baseline. The record: {_download('bench.json', path, page_dir)}.",
                      "", report.html_table(table, "bench-record", pages=""), "",
                      "As `python -m reproresnet bench` prints it:", "", "```text", bench_record.format_bench(bench), "```",
                      ""])


def write_pages(results_dir: Path, page_dir: Path = PAGES, runs: list[records.RunRecord] | None = None) -> list[Path]:
    """Replace the pages in `page_dir` with one per record under `results_dir` (`runs`: its runs,
    if already loaded); returns them."""
    page_dir.mkdir(parents=True, exist_ok=True)
    for old in page_dir.iterdir():
        if old.suffix in (".md", ".svg"):
            old.unlink()
    if runs is None:
        runs, _ = records.load_runs(results_dir)
    benches, _ = bench_record.load_benches(results_dir)
    written = []
    for run in runs:
        curves = run.metrics() is not None
        if curves:
            with rc_context({"svg.hashsalt": run.name}):  # the same record, the same file
                report.run_figure(run).savefig(page_dir / f"{run.name}.svg", format="svg", metadata={"Date": None})
        written.append(_write(page_dir / f"{run.name}.md", run_page(run, page_dir, curves)))
    for bench in benches:
        path = Path(results_dir) / bench["name"] / "bench.json"
        written.append(_write(page_dir / f"{bench['name']}.md", bench_page(bench, path, page_dir)))
    return written


def _write(path: Path, text: str) -> Path:
    rundir.write_atomic(path, lambda file: file.write(text.encode()))
    return path


def markdown_table(table: pd.DataFrame, link) -> str:
    """A pipe table for GitHub's Markdown; each `Linked` cell links to `link(record name)`."""
    def cell(value) -> str:
        text = str(value).replace("|", "\\|")
        return f"[{text}]({link(value.records[0])})" if isinstance(value, report.Linked) and value.records else text
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def readme_status(results_dir: Path, runs: list[records.RunRecord] | None = None) -> str:
    """What the README shows between its markers: the status line and table, from the records
    (`runs`: those under `results_dir`, if already loaded)."""
    if runs is None:
        runs, _ = records.load_runs(results_dir)
    table = markdown_table(report.status_table(runs), lambda name: f"{Path(results_dir).name}/{name}/")
    return f"{report.status_line(runs)}\n\n{table}\n\nEach number links to the run record it comes from."


def update_readme(readme: Path, results_dir: Path, runs: list[records.RunRecord] | None = None) -> bool:
    """Rewrite the README's status section from the records (`runs`: those under `results_dir`,
    if already loaded); True if it changed."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no status section (the lines {README_START!r} and {README_END!r})")
    head, _, rest = text.partition(README_START)
    tail = rest.partition(README_END)[2]
    new = f"{head}{README_START}\n{readme_status(results_dir, runs)}\n{README_END}{tail}"
    if new != text:
        _write(readme, new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproresnet pages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(os.environ.get("REPRORESNET_RESULTS", "results")),
                        help="the records (default: $REPRORESNET_RESULTS or results)")
    parser.add_argument("--out", type=Path, default=PAGES, help=f"where the pages go (default: {PAGES})")
    parser.add_argument("--readme", type=Path, metavar="README.md", help="also rewrite this README's status table")
    args = parser.parse_args(argv)
    runs, _ = records.load_runs(args.results)
    try:
        pages = write_pages(args.results, args.out, runs)
    except rundir.DiskFull as full:
        return _error(full.with_advice("free some space and run pages again"))
    except OSError as error:  # a read-only file system, a file where the folder should be
        return _error(rundir.refused_by_os(error, "choose a writable --out, or run pages again once it is writable"))
    print(f"{len(pages)} record page(s) in {args.out}", file=sys.stderr)
    if args.readme:
        try:
            changed = update_readme(args.readme, args.results, runs)
        except (OSError, ValueError, rundir.DiskFull) as error:
            return _error(error)
        print(f"{args.readme}: status table {'updated' if changed else 'already current'}", file=sys.stderr)
    return 0


def _error(error) -> int:
    print(f"reproresnet pages: error: {error}", file=sys.stderr)
    return 2
