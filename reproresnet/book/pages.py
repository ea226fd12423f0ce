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
import io
import os
import re
import sys
from pathlib import Path

import pandas as pd
from matplotlib import rc_context

from .. import bench as bench_record
from .. import records
from ..campaign import checkpoint_kept
from .. import rundir
from ..config import CIFAR10
from . import render, runs as chosen
from .figures import run_figure
from .plan import status_line, status_table
from .render import markdown_text
from .speeds import bench_table, thread_rules_table
from .tables import run_summary, speed_segments_table

PAGES = Path("book/runs")
README_START = "<!-- status: written by `make readme` from the records in results/; edits here are replaced -->"
README_END = "<!-- end of status -->"


def _download(label: str, path: Path, page_dir: Path) -> str:
    return f"{{download}}`{label} <{os.path.relpath(Path(path).resolve(), Path(page_dir).resolve())}>`"


def _two_columns(table: pd.DataFrame, names: tuple[str, str], run: str) -> pd.DataFrame:
    """A one-column table indexed by field, as two columns `render.html` shows (it leaves indexes out)."""
    rows = [{names[0]: field, names[1]: render.cell_of(table, field, table.columns[0])} for field in table.index]
    kept = {name: value for name, value in table.attrs.items() if name not in render.CELL_ATTRS}
    return render.table(rows, **{**kept, "run": run})


def run_page(run: records.RunRecord, page_dir: Path, curves: bool) -> str:
    """One run's page: where it stands, its files to download, its summary, curves (if `curves`:
    its figure is `<name>.svg` beside the page), speed and settings."""
    files = [(name, run.run_dir / name) for name in (records.RUN_FILE, records.METRICS_FILE, "train.ipynb")]
    downloads = ", ".join(_download(name, path, page_dir) for name, path in files if path.is_file())
    data = ("" if run.label == CIFAR10 else
            f" It trained on {markdown_text(run.label)}, not on CIFAR-10: its numbers are never CIFAR-10 "
            f"results.")
    given = {key: value for key, value in run.config.items() if value is not None}
    settings = render.table([{"setting": key, "value": str(value)} for key, value in given.items()], run=run.name)
    text = markdown_text  # a record's strings are text, never Markdown or HTML
    parts = [f"# {text(run.name)}", "",
             f"{text(run.arch)}, {chosen.run_status(run)}.{data} The record: {downloads}.", "",
             *([_stop_text(run), ""] if run.status == "stopped" else []),
             render.html(_two_columns(run_summary(run), ("", "this run"), run.name), "run-summary", pages=""), ""]
    if curves:
        parts += [f"![Error and training loss of {text(run.name)} against epoch]({run.name}.svg)", ""]
    parts += ["## Speed", "", "Each process that trained the run, as its record says:", "",
              render.html(speed_segments_table(run), "run-speed", pages=""), "",
              "## Settings", "", "The settings of its `TrainConfig` that the run was given; the others are its "
              "recipe's (`python -m reproresnet recipe NAME --arch ARCH` prints them) or its device's:", "",
              render.html(settings, "run-settings", pages=""), ""]
    return "\n".join(parts)


def _stop_text(run: records.RunRecord) -> str:
    """Why a stopped run stopped, as its record says, and whether it can go on: a record written
    while its checkpoint existed says "resume to continue", which holds only while the checkpoint is kept."""
    said = f"Its record says: “{markdown_text(run.record.message or 'stopped')}”."
    if checkpoint_kept(run.run_dir):
        return f"{said} Its checkpoint is kept: `train --resume` (or the campaign) continues it."
    return (f"{said} Its checkpoint was not kept (checkpoints are never committed under results/, and this run's "
            "is not in the campaign bundle), so it cannot be resumed: finishing it takes a fresh run from "
            "epoch 1, and the GPU-hours to finish count it so.")


def _thread_rules(bench: dict) -> list[str]:
    """A CPU benchmark's comparison of thread rules, if it made one."""
    if not bench.get("thread_rules"):
        return []
    table = thread_rules_table(bench)
    table.attrs["run"] = bench["name"]
    return ["## CPU thread rules", "",
            "The library's path, the rules alternating in rounds, under the load this machine had at the "
            f"time (its 1-minute load average, this benchmark's own threads included; {bench['load_at_start']:.1f} "
            "when it began):", "", render.html(table, "bench-thread-rules", pages=""), ""]


def bench_page(bench: dict, path: Path, page_dir: Path) -> str:
    """One benchmark record's page: its table, rounded to its noise, and the text `bench` printed."""
    table = bench_table([bench])
    table.attrs["run"] = bench["name"]
    device = (bench.get("device") or {}).get("name", "an unknown device")
    printed = bench_record.format_bench(bench)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", printed)), default=0))  # longer than any inside
    baseline = any(row.get("path") == "baseline" for row in bench["rows"])
    against = ",".join([" against a plain PyTorch baseline"] * baseline +
                       [" under several CPU thread rules"] * bool(bench.get("thread_rules")))
    return "\n".join([f"# {markdown_text(bench['name'])}", "",
                      f"A benchmark on {markdown_text(device)}: our training path{against}. The record: "
                      f"{_download('bench.json', path, page_dir)}.",
                      "", render.html(table, "bench-record", pages=""), "", *_thread_rules(bench),
                      "As `python -m reproresnet bench` prints it:", "", f"{fence}text", printed, fence, ""])


def write_pages(results_dir: Path, page_dir: Path = PAGES, runs: list[records.RunRecord] | None = None) -> list[Path]:
    """Replace the pages in `page_dir` with one per record under `results_dir` (`runs`: its runs,
    if already loaded); returns them. Every page is made before any is written, and the old
    ones are removed only once the new ones are there: a record that cannot be shown (ValueError,
    naming its file) leaves the pages as they were."""
    if runs is None:
        runs, _ = records.load_runs(results_dir)
    benches, _ = bench_record.load_benches(results_dir)
    pages: dict[Path, bytes] = {}
    named: dict[str, Path] = {}

    def unique(name: str, folder: Path) -> str:  # one page each: none replaces another's
        if named.setdefault(name, folder) != folder:
            raise ValueError(f"{named[name]} and {folder} hold records of one name {name!r}: rename one "
                             f"(its folder and the record's 'name')")
        return name
    for run in runs:
        figure = _figure(run)
        if figure is not None:
            pages[page_path(page_dir, unique(run.name, run.run_dir), ".svg")] = figure
        pages[page_path(page_dir, unique(run.name, run.run_dir), ".md")] = \
            run_page(run, page_dir, figure is not None).encode()
    for bench in benches:
        path = Path(results_dir) / bench["name"] / "bench.json"
        pages[page_path(page_dir, unique(bench["name"], path.parent), ".md")] = bench_page(bench, path, page_dir).encode()
    page_dir.mkdir(parents=True, exist_ok=True)
    for path, content in pages.items():
        rundir.write_bytes(path, content)
    for old in page_dir.iterdir():
        if old.suffix in (".md", ".svg") and old not in pages:
            old.unlink()
    return [path for path in pages if path.suffix == ".md"]


def page_path(page_dir: Path, name: str, suffix: str) -> Path:
    """`page_dir/<name><suffix>`; ValueError unless that is a file directly in `page_dir`: a name
    read from a record never chooses where a page is written."""
    if name in ("", ".", "..") or any(char in name for char in "/\\\0"):
        raise ValueError(f"a record named {name!r} would put its page outside {page_dir}: refused")
    return Path(page_dir) / f"{name}{suffix}"


def _figure(run: records.RunRecord) -> bytes | None:
    """The run's curves as SVG, or None if it has no metrics; ValueError naming a metrics.csv
    that cannot be plotted."""
    if run.metrics() is None:
        return None
    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": run.name}):  # the same record, the same file
        run_figure(run).savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def readme_status(results_dir: Path, runs: list[records.RunRecord] | None = None) -> str:
    """What the README shows between its markers: the status line and table, from the records
    (`runs`: those under `results_dir`, if already loaded)."""
    if runs is None:
        runs, _ = records.load_runs(results_dir)
    table = render.markdown(status_table(runs), lambda name: f"{Path(results_dir).name}/{name}/")
    return (f"{status_line(runs)}\n\n{table}\n\nEach number links to the run record it comes from; "
            "the status words (deadline, checkpoint not kept, ...) are explained in "
            "[book/runs.md](book/runs.md#status-words).")


def readme_text(readme: Path) -> str:
    """The README's text; ValueError unless it has a status section to rewrite."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no status section (the lines {README_START!r} and {README_END!r})")
    return text


def update_readme(readme: Path, results_dir: Path, runs: list[records.RunRecord] | None = None) -> bool:
    """Rewrite the README's status section from the records (`runs`: those under `results_dir`,
    if already loaded); True if it changed."""
    text = readme_text(readme)
    head, _, rest = text.partition(README_START)
    tail = rest.partition(README_END)[2]
    new = f"{head}{README_START}\n{readme_status(results_dir, runs)}\n{README_END}{tail}"
    if new != text:
        rundir.write_bytes(readme, new.encode())
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproresnet pages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path(os.environ.get("REPRORESNET_RESULTS", "results")),
                        help="the records (default: $REPRORESNET_RESULTS or results)")
    parser.add_argument("--out", type=Path, default=PAGES, help=f"where the pages go (default: {PAGES})")
    parser.add_argument("--readme", type=Path, metavar="README.md", help="also rewrite this README's status table")
    args = parser.parse_args(argv)
    try:
        if args.readme:
            readme_text(args.readme)  # refused before any page is written
        runs, problems = records.load_runs(args.results)
        for problem in problems:  # the results page lists them too
            print(f"reproresnet pages: no page for {problem['path']}: {problem['problem']}", file=sys.stderr)
        pages = write_pages(args.results, args.out, runs)
        print(f"{len(pages)} record page(s) in {args.out}", file=sys.stderr)
        if args.readme:
            changed = update_readme(args.readme, args.results, runs)
            print(f"{args.readme}: status table {'updated' if changed else 'already current'}", file=sys.stderr)
    except rundir.DiskFull as full:
        return _error(full.with_advice("free some space and run pages again"))
    except OSError as error:  # a read-only file system, a file where a folder should be, no README
        return _error(rundir.refused_by_os(error, "check that --results can be read and --out (and --readme) "
                                                  "written, then run pages again"))
    except ValueError as error:
        return _error(error)
    return 0


def _error(error) -> int:
    print(f"reproresnet pages: error: {error}", file=sys.stderr)
    return 2
