"""Tables and figures of the book, computed from the run records under `results/`.

The notebooks only call these functions and show what they return, so everything a
reader sees is tested here. A number reaches the CIFAR-10 column only from a complete
run on the full CIFAR-10 data; every other run is listed apart, labeled for what it is.
Every number computed from run records is a `Linked` cell: the book links it to the page
of each record behind it (`book_pages` writes those pages). Needs pandas and matplotlib,
not torch: the book is built without it.
"""

from __future__ import annotations

import json
import math
import re
import dataclasses
import statistics
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from .. import architectures, records
from ..config import CIFAR10, JPEG_MIRROR, TrainConfig, recorded_key  # noqa: F401 (the notebooks' API)
from ..bench import BENCH_FORMAT, load_benches  # noqa: F401 (the notebooks' API)
from ..bench import thread_ratios as bench_thread_ratios
from ..campaign import checkpoint_kept
from ..records import RunRecord, load_runs  # noqa: F401 (the notebooks' API)
from ..reference import (HE2016, PLAN_TIERS, PLANNED, PLANNED_SEEDS, QUOTED_PRECISION, REFERENCE, SEED_DEVICE,
                        SEED_EPOCHS, SEED_STATISTIC, UNIT_COMPARISONS, WIDE_VS_DEEP, reference)

NOT_RUN, NOT_MEASURED, MISSING = "not run", "not measured", "—"
# Where the record pages are (book/runs/<name>.html), from a page one folder deep (book/, notebooks/).
RECORD_PAGES = "../book/runs/"
# Where each status word of the tables ("stopped", "deadline", "checkpoint not kept", ...) is
# explained, relative to the record pages: the run index, book/runs.md.
STATUS_WORDS = "../runs.html#status-words"


class Linked(str):
    """A table cell's text and the names of the records it was computed from: `html_table`
    links it to their pages, so every number is one click from its record. `parts`: the
    text is several numbers, (text, record) each, joined by ", ", each linked to its own."""

    records: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]

    def __new__(cls, text: str, records=(), parts=()):
        cell = super().__new__(cls, text)
        cell.records, cell.parts = tuple(records), tuple(parts)
        return cell


class Network(str):
    """A network's identifier (`preact_resnet110`) in a table's network column: the tables compute
    with the identifier, and the book shows the network's title (`reference.py`'s, where a source
    names the network) with the identifier one hover away (`html_table`) or one click away
    (the README's Markdown table links it to the architectures page)."""

    @property
    def title(self) -> str:
        return (reference(str(self)) or {}).get("title") or str(self)


def _name(run) -> str:
    return run.name if isinstance(run, RunRecord) else run["name"]


def linked(text: str, runs) -> Linked:
    """`text` computed from `runs` (RunRecords, or benchmark records with a "name")."""
    return Linked(text, [_name(run) for run in runs])


def linked_parts(parts: list[tuple[str, object]]) -> Linked:
    """Several numbers in one cell, each (text, its run), each linked to its own record."""
    named = [(text, _name(run)) for text, run in parts]
    return Linked(", ".join(text for text, _ in named), [name for _, name in named], named)


def record_page(name: str, pages: str = RECORD_PAGES) -> str:
    """The URL of a record's page in the book, relative to a page that sees them at `pages`."""
    return f"{pages}{quote(name)}.html"


def problems_table(problems: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(problems, columns=["path", "problem"])


# ---------------------------------------------------------------- tables

def _percent(value) -> str:
    return MISSING if value is None else f"{value:.2f}"


def mean_std(values: list[float]) -> str:
    """"6.50 ± 0.71" (sample standard deviation) for several values, "6.50" for one."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _experiment(run: RunRecord) -> str:
    """The run's experiment (`config.recorded_key`), as a hashable text: seeds of one experiment share it."""
    return json.dumps(recorded_key(run.config), sort_keys=True)


def _recipe_text(run: RunRecord) -> str:
    return f"{run.config.get('recipe', '?')}, batch {run.batch_size}"


def _join(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


# The error table's columns, each naming the statistic its numbers are.
PAPER, PAPER_STATISTIC = "original paper (%)", "paper's statistic"
# The ReScience reproduction the project starts from (`reference.SEED`), in table headings: never
# "seed" there, where a column of random seeds may stand beside it.
RESCIENCE = "ReScience repr."
SEED = f"{RESCIENCE} (%): {SEED_STATISTIC}"
OURS, EACH_SEED, NOTES = "this project (%): mean ± std", "each seed (%)", "notes"


def _table_networks(runs: list[RunRecord], label: str = CIFAR10) -> list[str]:
    """Networks the sources quote, in their order, then any other with a result on `label`."""
    networks = [row["network"] for row in REFERENCE]
    return networks + sorted({run.arch for run in runs if run.is_result_on(label)} - set(networks))


def _groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """The runs, one list per setting (the seeds of one experiment), each sorted by seed."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.arch, run.label, _experiment(run)), []).append(run)
    return [sorted(group, key=lambda run: str(run.config.get("seed"))) for group in groups.values()]


def _counted_groups(runs: list[RunRecord], network: str, label: str = CIFAR10) -> list[list[RunRecord]]:
    """The network's complete full runs on `label`, one list per setting."""
    return _groups([run for run in runs if run.arch == network and run.is_result_on(label)])


def _each_seed(group: list[RunRecord]) -> Linked:
    return linked_parts([(f"{run.test_error:.2f} (seed {run.config.get('seed', '?')})", run) for run in group])


def _length(recipe: dict) -> str:
    return f"{recipe['length']:,} {recipe['unit']}s"


def _recipe_note(run: RunRecord, quoted: dict) -> str | None:
    """How the run's recorded recipe differs from the library's recipe for the paper, or None."""
    from ..recipes import RECIPES
    name = quoted.get("paper_recipe")
    ours = run.record.get("recipe") or {}
    if name not in RECIPES or not ours:
        return None
    paper = RECIPES[name].for_arch(run.arch).as_dict()  # resolved for this network, as records store it
    differences = []  # only what the record states is compared
    if {"length", "unit"} <= ours.keys() and (ours["length"], ours["unit"]) != (paper["length"], paper["unit"]):
        differences.append(f"{_length(ours)} instead of {_length(paper)}")
    if {"milestones", "gamma", "unit"} <= ours.keys() and \
            (ours["milestones"], ours["gamma"]) != (paper["milestones"], paper["gamma"]):
        differences.append(f"learning rate ×{ours['gamma']} at {ours['milestones']} {ours['unit']}s "
                           f"instead of ×{paper['gamma']} at {paper['milestones']} {paper['unit']}s")
    for field, label in (("batch_size", "batch"), ("lr", "learning rate"), ("weight_decay", "weight decay"),
                         ("momentum", "momentum"), ("nesterov", "Nesterov")):
        if field in ours and ours[field] != paper.get(field):
            differences.append(f"{label} {ours[field]} instead of {paper.get(field)}")
    if "warmup_length" in ours:
        # warmup_archs None: every network warms up (a resolved recipe has it None, its length set)
        warm = [f"{r['warmup_lr']} for {r['warmup_length']} {r['unit']}s"
                if r.get("warmup_length") and run.arch in (r.get("warmup_archs") or (run.arch,))
                else "none" for r in (ours, paper)]
        if warm[0] != warm[1]:
            differences.append(f"warm-up {warm[0]} instead of {warm[1]}")
    if not differences:
        return None
    return (f"{run.arch}, recipe '{run.config.get('recipe')}': " + "; ".join(differences) +
            f" (the paper's recipe here is '{name}': {paper['source']}).")


def _data_note(run: RunRecord, quoted: dict) -> str | None:
    """How the run's data differs from the paper's (all 50,000 training images, per-image
    augmentation, the paper's normalization), or None."""
    data = run.record["data"]
    differences = []
    if data.get("n_val"):
        differences.append(f"trained on {data.get('n_train', 0):,} images with {data['n_val']:,} held out to choose "
                           f"the reported epoch ({(run.record.get('final') or {}).get('selected_by', '?')}); "
                           "the papers train on all 50,000")
    normalization, paper_normalization = data.get("normalization"), quoted.get("paper_normalization")
    if normalization and paper_normalization and normalization != paper_normalization:
        differences.append(f"inputs normalized {normalization} instead of {paper_normalization}")
    if data.get("augmentation") not in (None, "per_image"):
        differences.append(f"crop and flip drawn {data['augmentation'].replace('_', ' ')} instead of per image")
    return f"{run.arch}, data: " + "; ".join(differences) + "." if differences else None


def _precision_note(run: RunRecord) -> str:
    return f"{run.arch}, precision: {run.record.get('precision', 'not recorded')} (the runs' records)."


def _seed_network_note(quoted: dict) -> str | None:
    """For the paper's network and for the one the seed trained in its place: which is which."""
    paper = next((row for row in REFERENCE if quoted and row.get("seed_network") == quoted["network"]), quoted)
    seed = reference(paper.get("seed_network") or "")
    if seed is None:
        return None
    depth = (architectures.row(seed["network"]) or {}).get("depth", "?")
    return (f"The ReScience reproduction's {seed['seed_error']:.2f} % under the name {paper['title']} came from "
            f"{seed['title']} (2, 4 and 4 units in its three stages: {depth} layers), {seed['paper_params']} "
            f"parameters, not the paper's {paper['title']} of "
            f"{paper['paper_params']} (its own table says {paper['paper_params']}); that network has its own row, "
            f"{seed['title']}.")


def _number_notes(rows: list[dict]) -> list[str]:
    """Replace each row's list of note texts by their numbers; return the texts in order."""
    texts: list[str] = []
    for row in rows:
        numbers = []
        for text in row[NOTES]:
            if text not in texts:
                texts.append(text)
            numbers.append(str(texts.index(text) + 1))
        row[NOTES] = ", ".join(dict.fromkeys(numbers)) or MISSING
    return texts


def error_table(runs: list[RunRecord], label: str = CIFAR10) -> pd.DataFrame:
    """CIFAR-10 test error (%): the original paper, the seed, and this project.

    Each number column names its statistic: the paper's varies by row (its own column says
    which), the seed's is a single run, ours is the mean ± std over seeds of complete full
    CIFAR-10 runs of one experiment (`config.recorded_key`: runs that differ in more than seed
    and runtime get a row each), with `n` and each seed's value, each linked to its record. A network without such
    a run shows "not run", or "failed" if its CIFAR-10 runs diverged, or where its unfinished
    runs stand. Footnotes (`table.attrs["notes"]`, numbered in the notes column) give the
    paper's statistic in full and, from the records, how each row's recipe or data differs
    from the paper's.

    `label` another data set (the JPEG mirror): the same table of that data set's runs, its
    column of ours named for it, for the networks of the plan and any other it holds, without
    the quoted CIFAR-10 numbers (the CIFAR-10 table above it has them, with their notes).
    """
    cifar, quoting = [run for run in runs if run.label == label], label == CIFAR10
    ours = OURS if quoting else f"this project on the {label} (%): mean ± std"
    networks = _table_networks(runs, label) if quoting else \
        list(PLANNED) + sorted({run.arch for run in cifar if run.full_training_set} - set(PLANNED))
    rows = []
    for network in networks:
        quoted = reference(network) or {}
        statistic = quoted.get("paper_statistic")
        base = {"network": Network(network), PAPER: _percent(quoted.get("paper_error")),
                PAPER_STATISTIC: statistic[0] if statistic else MISSING,
                SEED: _percent(quoted.get("seed_error"))}
        quoted_notes = [text for text in (statistic[1] if statistic else None, quoted.get("paper_preprocessing"),
                                          quoted.get("seed_note"), _seed_network_note(quoted)) if text and quoting]
        if quoting and (quoted.get("paper_error") is not None or quoted.get("seed_error") is not None):
            quoted_notes.append(QUOTED_PRECISION)
        failed = [run for run in cifar if run.arch == network and run.status == "diverged"]
        groups = _counted_groups(runs, network, label)
        for group in groups:
            result = mean_std([run.test_error for run in group]) + (f" ({len(failed)} failed)" if failed else "")
            notes = [text for text in (_recipe_note(group[0], quoted), _data_note(group[0], quoted),
                                       _precision_note(group[0])) if text]
            rows.append({**base, ours: linked(result, group + failed), "n": linked(str(len(group)), group),
                         EACH_SEED: _each_seed(group), NOTES: quoted_notes + notes})
        if not groups:
            unfinished = [run for run in _plan_runs(runs, network, label) if run.status != "complete"]
            result = linked(_unfinished_text(unfinished), unfinished) if unfinished else NOT_RUN
            rows.append({**base, ours: result, "n": MISSING, EACH_SEED: MISSING, NOTES: quoted_notes})
    notes = _number_notes(rows)
    columns = ["network", PAPER, PAPER_STATISTIC, SEED] if quoting else ["network"]
    table = pd.DataFrame(rows, columns=columns + [ours, "n", EACH_SEED, NOTES])
    table.attrs.update(notes=notes, quoted=[PAPER, PAPER_STATISTIC, SEED], status_words=True)
    return table


def run_status(run: RunRecord) -> str:
    """Where one run stands, in words: "complete", "stopped at 5/200 (deadline), resumable"
    (or "..., checkpoint not kept"), "running, 7/200", "diverged in epoch 9"."""
    done, planned = run.record["epochs_done"], run.record["epochs_planned"]
    if run.status == "stopped":
        why = "deadline" if "(deadline)" in str(run.record.get("message") or "") else "interrupted"
        return f"stopped at {done}/{planned} ({why}), {'resumable' if checkpoint_kept(run.run_dir) else 'checkpoint not kept'}"
    if run.status == "running":
        return f"running, {done}/{planned}"
    if run.status == "diverged":
        return f"diverged after {done}/{planned}"
    return run.status


def _continues(run: RunRecord) -> bool:
    """Its epochs count towards the plan: complete, or resumable from its kept checkpoint (a run
    whose checkpoint is not kept starts again from epoch 1)."""
    return run.status == "complete" or (run.status in ("stopped", "running") and checkpoint_kept(run.run_dir))


def _unfinished_text(group: list[RunRecord]) -> str:
    """Unfinished runs in a few words: "3 runs stopped at 5/200 (deadline), resumable"."""
    counts = Counter(run_status(run) for run in group)
    return "; ".join(f"{_count(n, 'run')} {status}" for status, n in counts.items())


def _hours(seconds: float) -> str:
    """Hours to one decimal; two significant digits under one hour (0.066, not 0.1)."""
    hours = seconds / 3600
    return f"{hours:.1f}" if hours >= 0.95 or hours == 0 else f"{hours:.2g}"


def _wall_seconds(run: RunRecord) -> float | None:
    """From the run's first start to its last write: evaluation and any pause included."""
    from datetime import datetime
    try:
        return (datetime.fromisoformat(run.record["updated"]) -
                datetime.fromisoformat(run.record["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _segments(run: RunRecord) -> list[dict]:
    """The run's speed segments: one per process that trained it, as its record says."""
    return (run.record.get("speed") or {}).get("segments") or []


def _segment_of(run: RunRecord, epoch: int) -> dict:
    """The speed segment (one process's share of the run) that trained `epoch`, or the run's device."""
    for segment in _segments(run):
        if segment.get("first_epoch", 0) <= epoch <= (segment.get("last_epoch") or segment.get("first_epoch", 0)):
            return segment
    return {"device": (run.record.get("device") or {}).get("type")}


def _sharing(segment: dict) -> tuple[int, int]:
    """(packed processes, seeds stacked in one network) of a segment: 1 each when it ran alone."""
    return segment.get("pack") or 1, segment.get("stacked") or 1


def _share(segment: dict) -> int:
    """Runs that shared the GPU with this one: packed processes, or seeds stacked in one network."""
    pack, stacked = _sharing(segment)
    return pack * stacked


def gpu_seconds(run: RunRecord) -> float:
    """The GPU time the run's training took: each epoch's training seconds divided by the
    runs that shared the GPU while it trained (three packed runs each timing 37 s an epoch
    took 37 GPU-seconds for three epochs, not 111). Epochs on a CPU count nothing."""
    metrics = run.metrics()
    if metrics is None or "seconds" not in metrics:
        return 0.0
    return float(sum(seconds / _share(segment) for epoch, seconds in zip(metrics["epoch"], metrics["seconds"])
                     if (segment := _segment_of(run, int(epoch))).get("device") == "cuda"))


def _gpu_segments(runs: list[RunRecord]) -> list[tuple[RunRecord, dict]]:
    """Every timed GPU segment of `runs` (a process's steady-state seconds per epoch)."""
    return [(run, segment) for run in runs for segment in _segments(run)
            if segment.get("device") == "cuda" and segment.get("seconds_per_epoch")]


SEED_SECONDS, SEED_HOURS = f"{RESCIENCE} s/epoch ({SEED_DEVICE})", f"{RESCIENCE} hours per run"


def _seed_seconds(quoted: dict) -> str:
    """The seed's seconds per epoch with the batch its code trained that network at."""
    seconds = quoted.get("seed_seconds_per_epoch")
    return MISSING if seconds is None else f"{seconds:.0f} (batch {quoted['seed_batch_size']})"


def compute_table(runs: list[RunRecord]) -> pd.DataFrame:
    """What the runs behind the error table cost, one row per row of that table with runs and
    per network of the plan (without runs: "not measured"), next to the seed's times (its
    seconds per epoch on a GTX 980, at its code's batch, × its 200 epochs) on the networks that
    took them.

    Ours: the device, the median seconds per epoch (steady-state epochs, from each run's
    record), the epochs, the median wall time of one run (first start to last write) and the
    GPU-hours of all its runs (`gpu_seconds`: packed or stacked runs share a GPU)."""
    rows = []
    for network in _table_networks(runs):
        quoted = reference(network) or {}
        seconds = quoted.get("seed_seconds_per_epoch")
        groups = _counted_groups(runs, network)
        if seconds is None and not groups and network not in PLANNED:  # a planned network always has its row
            continue
        seed = {"network": Network(network), SEED_SECONDS: _seed_seconds(quoted),
                SEED_HOURS: MISSING if seconds is None else _hours(seconds * SEED_EPOCHS)}
        for group in groups or [[]]:
            walls = [wall for wall in map(_wall_seconds, group) if wall is not None]
            per_epoch = [run.record["final"]["seconds_per_epoch"] for run in group
                         if (run.record.get("final") or {}).get("seconds_per_epoch") is not None]
            def cell(text: str) -> Linked:  # every cell with a number: one without runs says so instead
                return linked(text, group)
            rows.append({**seed, "our device": cell(_join(run.device for run in group)) if group else NOT_RUN,
                         "our s/epoch (median)": cell(f"{statistics.median(per_epoch):.1f}") if per_epoch
                         else MISSING if group else NOT_MEASURED,
                         "epochs": cell(_join(run.record["epochs_done"] for run in group)) if group else MISSING,
                         "wall time per run (h, median)": cell(_hours(statistics.median(walls))) if walls else MISSING,
                         "GPU-hours, all runs": cell(_hours(sum(map(gpu_seconds, group)))) if group else MISSING,
                         "runs": cell(str(len(group))) if group else MISSING})
    table = pd.DataFrame(rows)
    table.attrs["quoted"] = [SEED_SECONDS, SEED_HOURS]
    return table


def _last_test_error(run: RunRecord) -> str:
    if run.test_error is not None:
        return _percent(run.test_error)
    last = run.last_test_error()
    return MISSING if last is None else f"{last[1]:.2f} (epoch {last[0]})"


def other_runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every run the error table does not average: smoke tests, synthetic or mirrored data,
    subsets, unfinished and diverged runs. None of these is a CIFAR-10 result, and its data
    or its status says why. Each row is one run: every cell links to its page."""
    columns = ["run", "data", "budget", "status", "test error (%)"]
    rows = [{column: linked(text, [run]) for column, text in zip(columns, (
                run.name, f"{run.label}, {run.record['data'].get('n_train', 0):,} training images"
                          + ("" if run.config.get("limit_test") is None else
                             f", {run.record['data'].get('n_test', 0):,} test images"),
                f"batch {run.batch_size}, {run.device}, {run.record.get('precision', 'precision not recorded')}",
                run_status(run), _last_test_error(run)))}
            for run in runs if not run.is_cifar10_result]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["status_words"] = True
    return table


def run_index_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every run record, one a row, as the run index lists them: the run (linked to its page),
    its network, data, epochs done of planned, status and last test error."""
    columns = ["run", "network", "data", "epochs done / planned", "status", "test error (%)"]
    rows = [{"run": linked(run.name, [run]), "network": Network(run.arch),
             "data": linked(f"{run.label}, {run.record['data'].get('n_train', 0):,} training images", [run]),
             "epochs done / planned": linked(f"{run.record['epochs_done']}/{run.record['epochs_planned']}", [run]),
             "status": linked(run_status(run), [run]), "test error (%)": linked(_last_test_error(run), [run])}
            for run in sorted(runs, key=lambda run: run.name)]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["status_words"] = True
    return table


def _options_text(run: RunRecord) -> str:
    """The settings in which a run departs from its recipe and its network's defaults, e.g. an
    ablation's `shortcut=input_projection`; "recipe defaults" when it departs in none."""
    from ..config import RECIPE_OWNED
    from ..recipes import RECIPES
    preset = RECIPES[run.config["recipe"]].for_arch(run.arch).as_dict() if run.config.get("recipe") in RECIPES else {}
    network = architectures.row(run.arch) or {}  # its default options
    own = {key: preset.get(key) if preset.get(key) is not None else network.get(key) for key in RECIPE_OWNED}
    chosen = {key: run.config[key] for key in RECIPE_OWNED  # epochs and batch: the recipe column says them
              if key not in ("epochs", "batch_size") and run.config.get(key) not in (None, own[key])}
    return ", ".join(f"{key}={value}" for key, value in chosen.items()) or "recipe defaults"


def ablation_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Complete runs on the whole of a real data set (CIFAR-10, CIFAR-100, the JPEG mirror),
    one row per network, data set, recipe and chosen settings: an option's value against the
    recipe's own, as mean ± std (sample std) over seeds, with n and each seed's value."""
    complete = [run for run in runs if is_real_data(run) and run.is_result_on(run.label)]
    rows = [{"network": Network(group[0].arch), "data set": group[0].label, "recipe": _recipe_text(group[0]),
             "epochs": linked(_join(run.record["epochs_done"] for run in group), group),
             "settings": _options_text(group[0]),
             "test error (%): mean ± std": linked(mean_std([run.test_error for run in group]), group),
             "n": linked(str(len(group)), group), EACH_SEED: _each_seed(group)}
            for group in _groups(complete)]
    columns = ["network", "data set", "recipe", "epochs", "settings", "test error (%): mean ± std", "n", EACH_SEED]
    return pd.DataFrame(rows, columns=columns).sort_values(["network", "data set", "settings"], ignore_index=True)


def _bench_rows(benches) -> list[dict]:
    if benches is None:
        return []
    if isinstance(benches, dict):
        benches = [benches]
    return [{**row, "device": (bench.get("device") or {}).get("name", "unknown device"),
             "device_type": (bench.get("device") or {}).get("type"), "batch_size": bench.get("batch_size"),
             "bench": bench}
            for bench in benches for row in bench.get("rows", [])]


SPEED_COLUMNS = ("network", "parameters: paper; exact", SEED_SECONDS, "our s/epoch", "our images/s", "measured on",
                 "measured by")


def speed_table(runs: list[RunRecord], bench=None) -> pd.DataFrame:
    """Parameters (as the papers write them, and exactly) and seconds per epoch on GPUs: the
    seed's on a GTX 980, ours from the speed segments of every GPU training run (unfinished
    runs too, marked "partial") and from GPU benchmarks, each with the GPU, batch, precision and
    the runs that shared the GPU (packed processes, stacked seeds). CPU times are not GPU
    times: they stay in the benchmark table. `bench`: one benchmark record, a list, or None."""
    measured = [row for row in _bench_rows(bench) if row.get("path", "reproresnet") == "reproresnet"
                and row["device_type"] == "cuda" and row.get("seconds_per_epoch") is not None]
    timed = _gpu_segments([run for run in runs if run.full_training_set])
    networks = [*PLANNED, *(row["network"] for row in REFERENCE  # the seed's timed networks too
                             if row["seed_seconds_per_epoch"] is not None and row["network"] not in PLANNED)]
    networks += sorted(({row["arch"] for row in measured} | {run.arch for run, _ in timed}) - set(networks))
    rows = []
    for network in networks:
        quoted = reference(network) or {}
        exact = architectures.row(network)
        params = f"{quoted.get('paper_params') or MISSING}; " + (f"{exact['params']:,}" if exact else MISSING)
        base = dict(zip(SPEED_COLUMNS[:3], (Network(network), params, _seed_seconds(quoted))))
        here = [dict(zip(SPEED_COLUMNS[3:], (linked(text, runs_) for text in texts)))
                for texts, runs_ in _training_speeds([(run, s) for run, s in timed if run.arch == network])]
        here += [dict(zip(SPEED_COLUMNS[3:], (linked(text, [row["bench"]]) for text in (
                     f"{row['seconds_per_epoch']:.1f}", f"{row['images_per_second']:,.0f}",
                     f"{row['device']}, batch {row['batch_size']}", "benchmark"))))
                 for row in measured if row["arch"] == network]
        rows += [{**base, **measurement} for measurement in here] or \
            [{**base, **dict.fromkeys(SPEED_COLUMNS[3:], MISSING), "our s/epoch": NOT_MEASURED}]
    table = pd.DataFrame(rows, columns=SPEED_COLUMNS)
    table.attrs["quoted"] = SPEED_COLUMNS[1:3]
    return table


def _training_speeds(timed: list[tuple[RunRecord, dict]]) -> list[tuple[tuple[str, ...], list[RunRecord]]]:
    """One network's GPU segments grouped by GPU, batch, precision and sharing: (median s/epoch,
    median images/s, where, by what) and the runs behind them."""
    groups: dict[tuple, list] = {}
    for run, segment in timed:
        key = (segment.get("gpu") or run.device, run.batch_size, segment.get("precision"), *_sharing(segment))
        groups.setdefault(key, []).append((run, segment))
    speeds = []
    for (gpu, batch, precision, pack, stacked), members in groups.items():
        group = list({run.name: run for run, _ in members}.values())
        shared = ", ".join(f"{n} {what}" for n, what in ((pack, "runs packed"), (stacked, "seeds stacked")) if n > 1)
        unfinished = [run for run in group if run.status != "complete"]
        epochs = _join(f"{run.record['epochs_done']}/{run.record['epochs_planned']}" for run in unfinished)
        by = f"training, {_count(len(group), 'run')}" + (f", partial ({epochs} epochs)" if unfinished else "")
        speeds.append(((f"{statistics.median(s['seconds_per_epoch'] for _, s in members):.1f}",
                        f"{statistics.median(s['images_per_second'] for _, s in members):,.0f}",
                        f"{gpu}, batch {batch}, {precision}" + (f", {shared}" if shared else ""), by), group))
    return speeds


def _relative_noise(row: dict, field: str = "seconds_per_step") -> float | None:
    """A benchmark row's spread of `field` as a fraction: half the range of its timed rounds'
    values (`<field>_range`) over the value."""
    low_high = row.get(f"{field}_range")
    if not low_high or not row.get(field):
        return None
    return (low_high[1] - low_high[0]) / 2 / row[field]


def to_noise(value, relative: float | None) -> str:
    """`value` rounded to the digit its relative noise leaves meaningful: 1448.9 at ±3.7 % is
    "1,450", 0.0524 at ±3.7 % is "0.052"; one decimal when the noise is unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if not relative or not value:
        return f"{value:,.1f}"
    digits = -math.floor(math.log10(abs(value) * relative))
    return f"{round(value, digits):,.{max(digits, 0)}f}"


def bench_table(benches) -> pd.DataFrame:
    """Every benchmark row, ours and the baseline's, with the device and batch it ran at, each
    number rounded to what the spread of its timed rounds allows. A stacked path names its
    networks (`stacked-3`: images/s of the three together)."""
    columns = {"arch": "network", "path": "path", "device": "device", "batch_size": "batch",
               "seconds_per_epoch": "s/epoch", "images_per_second": "images/s",
               "data_images_per_second": "data images/s", "peak_memory_mb": "peak memory (MB)", "tflops": "TFLOPS"}
    rows = []
    for row in _bench_rows(benches):
        noise, data_noise = _relative_noise(row), _relative_noise(row, "data_images_per_second")
        texts = {"arch": Network(row["arch"]), "path": row["path"], "device": row["device"],
                 "batch_size": row["batch_size"],
                 "seconds_per_epoch": to_noise(row.get("seconds_per_epoch"), noise),
                 "images_per_second": to_noise(row.get("images_per_second"), noise),
                 "data_images_per_second": to_noise(row.get("data_images_per_second"), data_noise),
                 "peak_memory_mb": MISSING if row.get("peak_memory_mb") is None else f"{row['peak_memory_mb']:,.0f}",
                 "tflops": to_noise(row.get("tflops"), noise)}
        rows.append({columns[key]: text if isinstance(text, Network) else linked(str(text), [row["bench"]])
                     for key, text in texts.items()})
    return pd.DataFrame(rows, columns=list(columns.values()))


def thread_rules_table(bench: dict) -> pd.DataFrame:
    """A CPU benchmark's thread rules (`bench --thread-rules`): per network and rule, the threads
    it chose and the load average over its rounds, its images per second and its ratio to the
    free-core rule, each number linked to the benchmark's record."""
    speedups = {(r["arch"], r["rule"]): r["speedup"] for r in bench_thread_ratios(bench.get("thread_rules") or [])}
    rows = []
    for row in bench.get("thread_rules") or []:
        loads, noise = row["load_averages"], _relative_noise(row)
        texts = {"CPU threads": "–".join(dict.fromkeys(str(n) for n in sorted(row["threads"]))),
                 "load average (min–max)": f"{min(loads):.1f}–{max(loads):.1f}",
                 "images/s": to_noise(row["images_per_second"], noise),
                 "vs the free-core rule": f"{speedups.get((row['arch'], row['rule']), 1.0):.2f}×"}
        rows.append({"network": Network(row["arch"]), "thread rule": row["rule"],
                     **{key: linked(text, [bench]) for key, text in texts.items()}})
    return pd.DataFrame(rows, columns=["network", "thread rule", "CPU threads", "load average (min–max)", "images/s",
                                       "vs the free-core rule"])


def architecture_table() -> pd.DataFrame:
    """Every registered network (`reproresnet/architectures.csv`, checked against the registry
    by the tests): family and block, depth, width, exact parameters, forward GFLOPs per 32x32
    image and its default options."""
    rows = [{"name": row["name"], "family, block": f"{row['family']}, {row['block']}", "depth": row["depth"],
             "width": row["width"], "parameters": f"{row['params']:,}", "GFLOPs/image": f"{row['gflops']:.3f}",
             "default options": ", ".join(f"{option.replace('_', ' ')} {row[option]}" for option in
                                          architectures.OPTIONS if row[option] is not None)}
            for row in architectures.rows()]
    table = pd.DataFrame(rows)
    table.attrs["source"] = "library"
    return table


def recipe_table() -> pd.DataFrame:
    """The training recipes as the library defines them (`reproresnet.recipes.RECIPES`): one
    column per recipe, one row per setting (narrow enough for the article), and each recipe's
    source as a numbered note."""
    from ..recipes import RECIPES, weight_decay_reach
    at_lr_change = {"pytorch": "kept", "lasagne": "kept in lr units (Lasagne)", "reset": "reset"}
    columns = {}
    for recipe in RECIPES.values():
        archs = "every network" if recipe.warmup_archs is None else ", ".join(recipe.warmup_archs)
        network = ", ".join(f"{name} {getattr(recipe, name)}" for name in architectures.OPTIONS
                            if getattr(recipe, name) is not None)
        columns[recipe.name] = {
            "length": f"{recipe.length:,} {recipe.unit}s",
            "batch": ", ".join([str(recipe.batch_size)] + [f"{size} for {arch}" for arch, size in recipe.batch_size_for]),
            "lr": f"{recipe.lr:g}", "decay": f"×{recipe.gamma:g} at {', '.join(f'{m:,}' for m in recipe.milestones)}",
            "momentum": f"{recipe.momentum:g}{' (Nesterov)' if recipe.nesterov else ''}, "
                        f"{at_lr_change[recipe.momentum_form]} at an lr change",
            "weight decay": f"{recipe.weight_decay:g} on {weight_decay_reach(recipe.weight_decay_on, spared=False)}",
            "warm-up": f"lr {recipe.warmup_lr:g} for {recipe.warmup_length:,} {recipe.unit}s ({archs})"
                       if recipe.warmup_length else "none",
            "BN batch": str(recipe.bn_batch or "mini-batch"), "normalization": recipe.normalization,
            "augmentation": f"{recipe.augmentation}, {recipe.padding} padding",
            "validation images": f"{recipe.val_size:,}",
            "network options": network or "the network's", "source": f"note {len(columns) + 1}"}
    table = pd.DataFrame(columns).rename_axis("setting").reset_index()
    table.attrs.update(notes=[f"{recipe.name}: {recipe.source}" for recipe in RECIPES.values()], source="library")
    return table


# "6.37", "-1.5", "≈5.7M", "3/3", "50,000", "6.50 ± 0.71"; and note numbers "3, 4".
_NUMBER = re.compile(r"[≈-]?\d[\d,./]*M?( ± \d[\d.]*)?|\d+(, \d+)+")
_NO_VALUE = {MISSING, NOT_RUN, NOT_MEASURED, ""}


def _cell_text(value) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _number_columns(table: pd.DataFrame) -> set:
    """Columns whose cells are all numbers (or say there is none): the book right-aligns them."""
    numbers = set()
    for column in table.columns:
        cells = [_cell_text(value) for value in table[column]]
        if all(_NUMBER.fullmatch(cell) or cell in _NO_VALUE for cell in cells):
            numbers.add(column)
    return numbers


# Columns of network and run names: a name never breaks inside (preact_resnet110, not preact_ resnet110).
NAME_COLUMNS = ("network", "name", "run")


def _record_link(html: str, names, pages: str) -> str:
    title = escape(f"record{'s' if len(names) > 1 else ''}: {', '.join(names)}")
    return f'<a class="record-link" href="{record_page(names[0], pages)}" title="{title}">{html}</a>'


def html_table(table: pd.DataFrame, table_id: str, pages: str = RECORD_PAGES) -> str:
    """The table as HTML with an id the book's checker looks for.

    Number columns carry the class `num` (right-aligned by `_static/tables.css`). A `Linked`
    cell links to the page of its (first) record, found at `pages`. Cells of the columns in
    `table.attrs["quoted"]` (numbers quoted from the papers, the seed or the library's table,
    not computed from a run) carry the class `quoted`. The numbers of the notes column link
    to the footnotes (`table.attrs["notes"]`) that follow the table as a numbered list.
    `table.attrs["source"]` ("records" unless said, else "library" or "problems") and
    `table.attrs["run"]` (the run a run page's own table describes) become data attributes:
    the browser test holds every number of a "records" table to a link or one of these."""
    numbers, quoted = _number_columns(table), set(table.attrs.get("quoted", ()))

    def cell(tag: str, column, value) -> str:
        text = escape(_cell_text(value))
        if tag == "td" and isinstance(value, Linked) and value.parts:
            text = ", ".join(_record_link(escape(part), [name], pages) for part, name in value.parts)
        elif tag == "td" and isinstance(value, Linked) and value.records:
            text = _record_link(text, value.records, pages)
        elif tag == "td" and isinstance(value, Network) and value.title != value:
            text = f'<span class="network" title="{text}">{escape(value.title)}</span>'
        elif tag == "td" and column == NOTES and value != MISSING:
            text = ", ".join(f'<a class="note-ref" href="#{table_id}-note-{n}">{n}</a>' for n in str(value).split(", "))
        elif column not in NAME_COLUMNS:  # a setting or a path may wrap after "_" and "/"; names never break
            text = text.replace("_", "_<wbr>") if tag == "th" or column not in numbers else text
            text = text.replace("/", "/<wbr>") if " " not in text else text
        classes = ["num" if column in numbers else "text"] + (["quoted"] if tag == "td" and column in quoted else [])
        return f'<{tag} class="{" ".join(classes)}">{text}</{tag}>'
    head = "".join(cell("th", column, column) for column in table.columns)
    body = "".join("<tr>" + "".join(cell("td", column, value) for column, value in zip(table.columns, row)) +
                   "</tr>" for row in table.itertuples(index=False))
    notes = "".join(f'<li id="{table_id}-note-{n}">{escape(note)}</li>'
                    for n, note in enumerate(table.attrs.get("notes", []), 1))
    run = f' data-run="{escape(table.attrs["run"])}"' if "run" in table.attrs else ""
    words = (f'<p class="table-notes status-words">What each status word (complete, stopped, deadline, resumable, '
             f'checkpoint not kept, ...) means: <a href="{pages}{STATUS_WORDS}">status words</a>.</p>'
             if table.attrs.get("status_words") else "")
    return (f'<div class="table-scroll"><table id="{table_id}" class="report-table" '
            f'data-source="{table.attrs.get("source", "records")}"{run}>'
            f'<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>' +
            (f'<ol class="table-notes">{notes}</ol>' if notes else "") + words)


# Characters left as they are in Markdown text: inline (line breaks become spaces), and with "[",
# "]" and "<" escaped, none of them starts a link, role, directive, math, substitution, emphasis or tag.
_MARKDOWN_PLAIN = frozenset(string.ascii_letters + string.digits + " ,;./-()%")


def markdown_text(value) -> str:
    """`value` as literal text in a MyST Markdown line: '<', '>' and '&' as HTML entities (no tag
    or entity of a record's reaches a page), every other ASCII punctuation backslash-escaped
    (CommonMark allows it for each: no `{role}`, `[x](url)`, `$math$`, `{{ substitution }}`,
    fence or emphasis), line breaks and other control characters as spaces (a value never
    starts a block of its own)."""
    text = str(value)

    def char(index: int, c: str) -> str:
        if c in _MARKDOWN_PLAIN or c == "_" and _inside_word(text, index):  # a_b is never emphasis
            return c
        if c in "<>&":
            return escape(c)
        if c in string.punctuation:
            return "\\" + c
        return " " if unicodedata.category(c).startswith(("C", "Z")) else c
    return "".join(char(index, c) for index, c in enumerate(text))


def _inside_word(text: str, index: int) -> bool:
    return 0 < index < len(text) - 1 and text[index - 1].isalnum() and text[index + 1].isalnum()


def _count(n: int, what: str) -> str:
    return f"{'no' if n == 0 else n} {what}{'' if n == 1 else 's'}"


def status_networks() -> list[str]:
    """The networks of the plan, then the networks the seed trained in their place."""
    return list(PLANNED) + [row["network"] for row in REFERENCE
                            if row.get("seed_error") is not None and row["network"] not in PLANNED]


def _plan_runs(runs: list[RunRecord], network: str, label: str) -> list[RunRecord]:
    """The network's runs on the whole of `label`: the runs the plan counts, finished or not."""
    return [run for run in runs if run.arch == network and run.label == label and run.full_training_set
            and run.config.get("limit_test") is None]


def _best_group(runs: list[RunRecord]) -> list[RunRecord]:
    """Of the runs' settings, the one furthest along: most complete runs, then most epochs."""
    return max(_groups(runs), key=lambda group: (sum(run.status == "complete" for run in group),
                                                 sum(run.record["epochs_done"] for run in group)))


def _standing(runs: list[RunRecord], network: str, label: str) -> str:
    """Where the network stands on `label`: mean ± std over its complete runs, with n of the
    planned seeds and the epochs, and how far the unfinished ones are; or "not run"."""
    mine = _plan_runs(runs, network, label)
    if not mine:
        return NOT_RUN
    group = _best_group(mine)
    complete = [run for run in group if run.is_result_on(label)]
    parts = [f"{mean_std([run.test_error for run in complete])} ({len(complete)} of {len(PLANNED_SEEDS)} seeds, "
             f"{_join(run.record['epochs_done'] for run in complete)} epochs)"] if complete else []
    rest = [run for run in group if run not in complete]
    return linked("; ".join(parts + ([_unfinished_text(rest)] if rest else [])), group)


def _gpu_hours(runs: list[RunRecord], network: str) -> tuple[str, str]:
    """GPU-hours the network's runs on CIFAR-10 and its mirror took, and an estimate of those
    its planned runs still need: their missing epochs at its GPU-seconds per epoch
    (`epoch_cost`: measured, or estimated from another network's measured speed)."""
    plans = [_plan_runs(runs, network, label) for label in (CIFAR10, JPEG_MIRROR)]
    mine = [run for plan in plans for run in plan]
    spent = sum(map(gpu_seconds, mine))
    spent_cell = linked(_hours(spent), mine) if spent else MISSING
    if network not in PLANNED:
        return spent_cell, "not planned"
    cost = epoch_cost(runs, network)
    if cost is None:
        return spent_cell, NOT_MEASURED
    planned = max((run.record["epochs_planned"] for run in mine), default=planned_epochs(network))
    done = max((sum(min(run.record["epochs_done"], planned) for run in _best_group(group)[:len(PLANNED_SEEDS)]
                    if _continues(run)) for group in plans if group), default=0)
    needed = (len(PLANNED_SEEDS) * planned - done) * cost.seconds
    how = cost.gpus if cost.measured_on is None else f"estimated from {cost.measured_on}; {cost.gpus}"
    return spent_cell, linked(f"≈{_hours(needed)} ({how})", cost.runs)


STATUS_PAPER, STATUS_SEED = "paper (%), statistic", f"{RESCIENCE} (%), {SEED_STATISTIC}"
STATUS_MIRROR = "ours, JPEG mirror: not CIFAR-10 (%)"


def status_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Where the reproduction stands, one row per network of the plan and of the seed: the
    paper's error and statistic, the seed's, ours on CIFAR-10 and on the JPEG mirror (mean ±
    std, n of the planned seeds, epochs; or how far the unfinished runs are), and the GPU-hours
    spent and still needed. The introduction shows it first, and the README the same table."""
    rows = []
    for network in status_networks():
        quoted = reference(network) or {}
        statistic = (quoted.get("paper_statistic") or (MISSING,))[0]
        spent, needed = _gpu_hours(runs, network)
        rows.append({"network": Network(network),
                     STATUS_PAPER: MISSING if quoted.get("paper_error") is None else
                     f"{quoted['paper_error']:.2f}, {statistic}",
                     STATUS_SEED: _percent(quoted.get("seed_error")),
                     f"ours, {CIFAR10} (%)": _standing(runs, network, CIFAR10),
                     STATUS_MIRROR: _standing(runs, network, JPEG_MIRROR),
                     "GPU-hours spent": spent, "GPU-hours to finish (est.)": needed})
    table = pd.DataFrame(rows)
    table.attrs.update(quoted=[STATUS_PAPER, STATUS_SEED], status_words=True)
    return table


def status_line(runs: list[RunRecord]) -> str:
    """One sentence above the status table: how many planned runs are complete, on CIFAR-10
    and on the JPEG mirror, and how far the unfinished ones are."""
    def complete(label: str) -> int:
        return sum(min(len(PLANNED_SEEDS), sum(run.is_result_on(label) for run in _plan_runs(runs, network, label)))
                   for network in PLANNED)
    plan = len(PLANNED) * len(PLANNED_SEEDS)
    unfinished = [run for network in PLANNED for run in _plan_runs(runs, network, JPEG_MIRROR)
                  if run.status != "complete"]
    return (f"{complete(CIFAR10)} of {plan} planned CIFAR-10 runs are complete ({len(PLANNED)} networks × "
            f"{len(PLANNED_SEEDS)} seeds, in {len(PLAN_TIERS)} tiers). On the JPEG mirror of CIFAR-10, whose numbers "
            "are not CIFAR-10 results: "
            f"{complete(JPEG_MIRROR)} of {plan} complete" +
            (f"; {_unfinished_text(unfinished)}" if unfinished else "") + ".")


# ---------------------------------------------------------------- the plan and what it costs


def planned_epochs(network: str) -> float:
    """Epochs of one planned run of `network`: its default recipe's length (what `make reproduce`
    and the campaign train), in epochs."""
    described = TrainConfig(arch=network).describe()
    return described["iterations"] / described["iterations_per_epoch"]


@dataclass(frozen=True)
class EpochCost:
    """GPU-seconds one run of a network takes per epoch, the records it rests on, the GPUs and
    precision they ran at, and, for an estimate, the network measured and the GFLOPs ratio."""
    seconds: float
    runs: tuple
    gpus: str
    precision: str
    measured_on: str | None = None  # None: measured on the network itself
    ratio: float = 1.0

    @property
    def basis(self) -> str:
        where = f"{self.gpus}, {self.precision}"
        if self.measured_on is None:
            return f"measured ({where})"
        return f"estimated: {self.measured_on}'s {self.seconds / self.ratio:.1f} s × {self.ratio:.2f} (GFLOPs ratio; {where})"


def _measured_cost(runs: list[RunRecord], network: str) -> EpochCost | None:
    """The median GPU-seconds per epoch of the network's full runs (CIFAR-10 or its mirror: the
    same images and network, the same time), each segment's divided by the runs sharing its GPU."""
    timed = _gpu_segments([run for label in (CIFAR10, JPEG_MIRROR) for run in _plan_runs(runs, network, label)])
    if not timed:
        return None
    return EpochCost(statistics.median(segment["seconds_per_epoch"] / _share(segment) for _, segment in timed),
                     tuple({run.name: run for run, _ in timed}.values()),
                     _join(segment.get("gpu") or run.device for run, segment in timed),
                     _join(segment.get("precision") for _, segment in timed))


def epoch_cost(runs: list[RunRecord], network: str) -> EpochCost | None:
    """One run's GPU-seconds per epoch of `network`: measured on its own runs, else estimated
    from the measured network nearest to it in forward GFLOPs per image, scaled by their ratio
    (the bottleneck networks' many thin layers may run slower than their FLOPs say); None while
    no network of the records is measured on a GPU."""
    own = _measured_cost(runs, network)
    if own is not None:
        return own
    gflops = {row["name"]: row["gflops"] for row in architectures.rows()}
    measured = {name: cost for name in sorted({run.arch for run in runs} & set(gflops))
                if (cost := _measured_cost(runs, name)) is not None}
    if not measured or network not in gflops:
        return None
    nearest = min(measured, key=lambda name: (abs(math.log(gflops[name] / gflops[network])), name))
    ratio = gflops[network] / gflops[nearest]
    return dataclasses.replace(measured[nearest], seconds=measured[nearest].seconds * ratio, measured_on=nearest,
                               ratio=ratio)


PLAN_COLUMNS = ("tier", "network", "runs", "epochs per run", "GPU-seconds per epoch, one run", "GPU-hours, its runs",
                "how the time is known")


def plan_table(runs: list[RunRecord]) -> pd.DataFrame:
    """The plan, one row per network in tier order, and what it costs on a GPU: its runs (the
    planned seeds), epochs per run (its recipe), one run's GPU-seconds per epoch (`epoch_cost`)
    and the GPU-hours of all its runs; a last row sums them where every network is known."""
    rows, total, behind = [], 0.0, {}
    for tier, networks in enumerate(PLAN_TIERS, 1):
        for network in networks:
            epochs, cost = planned_epochs(network), epoch_cost(runs, network)
            if cost is None:
                known = (NOT_MEASURED, MISSING, "no GPU run of any network is recorded yet")
                total = math.nan
            else:
                hours = len(PLANNED_SEEDS) * epochs * cost.seconds
                total += hours
                behind.update({run.name: run for run in cost.runs})
                known = tuple(linked(text, cost.runs) for text in (f"{cost.seconds:.1f}", _hours(hours), cost.basis))
            rows.append(dict(zip(PLAN_COLUMNS, (str(tier), Network(network), str(len(PLANNED_SEEDS)), f"{epochs:g}",
                                                *known))))
    if not math.isnan(total):
        rows.append(dict(zip(PLAN_COLUMNS, ("all", "the whole plan", str(len(PLANNED) * len(PLANNED_SEEDS)),
                                            MISSING, MISSING, linked(_hours(total), list(behind.values())),
                                            "the sum of the rows above"))))
    table = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    table.attrs["quoted"] = ["tier", "runs", "epochs per run"]  # the plan's, from the library
    return table


def plan_line() -> str:
    """The plan in one sentence, from `reference.PLAN_TIERS` and the recipes."""
    tiers = "; ".join(f"tier {number}: {', '.join(networks)}" for number, networks in enumerate(PLAN_TIERS, 1))
    epochs = _join(f"{planned_epochs(network):g}" for network in PLANNED)
    return (f"{len(PLANNED)} networks × {len(PLANNED_SEEDS)} seeds ({', '.join(map(str, PLANNED_SEEDS))}) = "
            f"{len(PLANNED) * len(PLANNED_SEEDS)} runs of {epochs} epochs on CIFAR-10, in {len(PLAN_TIERS)} tiers "
            f"({tiers}); each tier starts once every run of the tiers before it has finished.")


# ---------------------------------------------------------------- the claims and how they are decided

# How far from our mean a quoted number may lie and still be reproduced: 2 sample standard
# deviations of the planned seeds. The rule, in the words the summary shows:
BAND_SDS = 2
CLAIM_RULE = (f"A claim is tested once every network it names has all {len(PLANNED_SEEDS)} planned random seeds "
              f"complete on the full CIFAR-10 data (until then: not tested yet). A quoted error is reproduced when "
              f"it lies within our mean ± {BAND_SDS} sample standard deviations over those seeds: were the seeds' "
              f"errors normal with that spread, the band would hold about 95 % of single runs, so a single run "
              f"(the ReScience reproduction's) or a median of 5 (the papers') that falls outside it differs from "
              f"ours by more than the seed-to-seed spread we measure. A comparison of two networks is reproduced "
              f"when our two means differ in the stated direction by more than {BAND_SDS} standard errors of their "
              f"difference (√(s₁²/n₁ + s₂²/n₂)), refuted when they differ the other way by that much, and undecided "
              f"in between; a claim that two networks match is reproduced when our means differ by less than that "
              f"(with {len(PLANNED_SEEDS)} seeds, only a difference larger than the seeds' spread can show).")


def _tested(runs: list[RunRecord], network: str) -> list[RunRecord]:
    """The network's complete full CIFAR-10 runs of one setting, the most numerous."""
    return max(_counted_groups(runs, network), key=len, default=[])


def _absolute_verdict(quoted: float, group: list[RunRecord]) -> Linked:
    errors = [run.test_error for run in group]
    mean, sd = statistics.mean(errors), statistics.stdev(errors)
    low, high = mean - BAND_SDS * sd, mean + BAND_SDS * sd
    inside = low <= quoted <= high
    return linked(f"{'reproduced' if inside else 'not reproduced'}: {quoted:.2f} lies {'in' if inside else 'outside'} "
                  f"{low:.2f}–{high:.2f}", group)


def _comparison_verdict(better: list[RunRecord], worse: list[RunRecord], match: bool) -> Linked:
    """`better` is claimed lower than `worse` (`match`: claimed equal to it)."""
    a, b = [run.test_error for run in better], [run.test_error for run in worse]
    difference = statistics.mean(b) - statistics.mean(a)
    margin = BAND_SDS * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if match:
        verdict = "reproduced" if abs(difference) < margin else "not reproduced"
    else:
        verdict = "reproduced" if difference > margin else "refuted" if difference < -margin else "undecided"
    return linked(f"{verdict}: {difference:+.2f} points, {BAND_SDS} standard errors {margin:.2f}", better + worse)


def _claim_row(claim: str, source: str, networks: tuple, runs: list[RunRecord], verdict) -> dict:
    """A claims-table row: its records (all planned seeds of each of its networks), our mean ±
    sd of each, and the verdict `verdict(groups)` once every group is complete."""
    groups = [_tested(runs, network) for network in networks]
    behind = [run for group in groups for run in group]
    tested = (f"{' and '.join(networks)}: {len(PLANNED_SEEDS)} complete CIFAR-10 runs" +
              (" each" if len(networks) > 1 else ""))
    ours = "; ".join(f"{network} {_standing(runs, network, CIFAR10)}" for network in networks)
    started = [run for network in networks for run in _plan_runs(runs, network, CIFAR10)]
    complete = all(len(group) >= len(PLANNED_SEEDS) for group in groups)
    unplanned = [network for network in networks if network not in PLANNED]
    done = sum(min(len(group), len(PLANNED_SEEDS)) for group in groups)
    waiting = (f"not tested: {', '.join(unplanned)} is not in the plan" if unplanned else
               "not tested yet: no complete run" if not done else
               linked(f"not tested yet ({done} of {len(networks) * len(PLANNED_SEEDS)} complete runs)", behind))
    return {"claim": claim, "source": source, "tested by": linked(tested, behind) if behind else tested,
            "ours on CIFAR-10 (%)": linked(ours, started) if started else ours.replace(NOT_RUN, "not run yet"),
            "verdict": verdict(groups) if complete else waiting}


def _comparisons() -> list[tuple[str, str, str, bool]]:
    """(network claimed lower or equal, the other, source, whether the claim is a match)."""
    return [(pre, original, HE2016, False) for pre, original in UNIT_COMPARISONS] + \
        [(*WIDE_VS_DEEP, "the ReScience reproduction's table, quoting both papers", True)]


def claims_table(runs: list[RunRecord]) -> pd.DataFrame:
    """The claims this reproduction tests, one a row, in the form of the ML Reproducibility
    Challenge's summary, each decided by `CLAIM_RULE`: each paper's and the seed's test error for
    the networks of the plan and of the seed, quoted with its statistic, then the comparisons
    (pre-activation against original units, from both tiers of the plan; wide-shallow against
    deep-thin), each with the records that test it and our numbers so far."""
    rows = []
    for network in status_networks():
        quoted = reference(network) or {}
        for field, claim, source in (
                ("paper_error", f"{quoted.get('title')} reaches {quoted.get('paper_error') or 0:.2f} % test error on "
                                f"CIFAR-10 ({(quoted.get('paper_statistic') or ('',))[0]})", quoted.get("paper_source")),
                ("seed_error", f"The ReScience reproduction reports {quoted.get('seed_error') or 0:.2f} % for {quoted.get('title')} "
                               f"({SEED_STATISTIC})", "Muellerklein 2016, ReScience")):
            if quoted.get(field) is not None:
                rows.append(_claim_row(claim, source, (network,), runs,
                                       lambda groups, value=quoted[field]: _absolute_verdict(value, groups[0])))
    for lower, other, source, match in _comparisons():
        first, second = reference(lower), reference(other)
        claim = (f"{first['title']} ({first['paper_error']:.2f} %) " + ("matches" if match else "has lower error than")
                 + f" {second['title']} ({second['paper_error']:.2f} %)")
        rows.append(_claim_row(claim, source, (lower, other), runs,
                               lambda groups, match=match: _comparison_verdict(groups[0], groups[1], match)))
    table = pd.DataFrame(rows)
    table.attrs["quoted"] = ["claim", "source", "tested by"]  # what the plan says would test it
    return table


def budget_summary(runs: list[RunRecord]) -> str:
    """One sentence on what the CIFAR-10 column is computed from, as Markdown (the results
    notebook shows it so): the records' strings in it escaped (`markdown_text`)."""
    counted = [run for run in runs if run.is_cifar10_result]
    if not counted:
        return ("No complete run on the full CIFAR-10 data is recorded yet, so every network shows "
                f"\"{NOT_RUN}\" in the CIFAR-10 column.")
    per_network = ", ".join(f"{markdown_text(arch)} × {n}" for arch, n in
                            pd.Series([run.arch for run in counted]).value_counts(sort=False).items())
    epochs = _join(run.record["epochs_done"] for run in counted)
    return (f"The CIFAR-10 column averages {len(counted)} complete run(s) ({per_network}) of "
            f"{epochs} epochs (recipe {markdown_text(_join(_recipe_text(run) for run in counted))}) on "
            f"{markdown_text(_join(run.device for run in counted))}.")


# ---------------------------------------------------------------- figures

def _curve_sources(source) -> list[tuple[str, pd.DataFrame, dict | None]]:
    items = source if isinstance(source, (list, tuple)) else [source]
    curves = []
    for item in items:
        if isinstance(item, pd.DataFrame):
            curves.append(("", item, None))
            continue
        run = item if isinstance(item, RunRecord) else RunRecord(Path(item), records.read_run(item))
        metrics = run.metrics()
        if metrics is None:
            raise ValueError(f"{run.run_dir / records.METRICS_FILE}: no metrics to plot")
        curves.append((f"seed {run.config.get('seed', '?')}", metrics, run.record))
    return curves


def _budget_title(record: dict, note: str = "") -> str:
    """The network, data set and budget of a run, in two lines; `note` ends the first."""
    data = record["data"]
    name = Network(record["arch"])
    name = name if name.title == name else f"{name.title} ({name})"
    return (f"{name} on {data.get('label', '?')}: {record['epochs_done']} of {record['epochs_planned']} "
            f"epochs{note}\n{data.get('n_train', 0):,} training images, batch "
            f"{(record.get('recipe') or {}).get('batch_size', '?')}, {(record.get('device') or {}).get('name', '?')}")


def lr_drops(record: dict) -> list[float]:
    """The epochs at which the run's learning rate drops: its schedule's milestones."""
    schedule = record.get("schedule") or {}
    per_epoch = schedule.get("iterations_per_epoch")
    return [milestone / per_epoch for milestone in schedule.get("milestones", [])] if per_epoch else []


def _log_ticks(axes, values) -> None:
    """Plain numbers on a log axis ("0.5", "1", "2", never "9e-01"), denser on a short range."""
    low, high = float(min(values)), float(max(values))
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    subs = (1.0, 1.5, 2, 3, 4, 5, 6, 7, 8, 9) if decades < 0.6 else (1.0, 2.0, 3.0, 5.0, 7.0) if decades < 1.5 \
        else (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
    axes.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())


def _mean_curve(curves, column: str) -> pd.Series | None:
    """The mean over seeds at the epochs every seed has; None for fewer than two seeds."""
    series = [metrics.set_index("epoch")[column] for _, metrics, _ in curves if column in metrics]
    return pd.concat(series, axis=1).dropna().mean(axis=1) if len(series) > 1 else None


# Figures are drawn at about the book's text width (7.2 in = 690 CSS px), so a 9 pt label stays
# 9 pt on the page; labels and legends are never smaller.
FIGURE_WIDTH, LABEL_SIZE = 7.2, 9
# Reference lines closer than this fraction of the error axis are one line to the eye: labelled once.
COINCIDE = 0.015


def source_name(quoted: dict) -> str:
    """The paper a quoted number comes from, in short: "He et al. 2016", "Zagoruyko & Komodakis 2016"."""
    return (quoted.get("paper_source") or "paper").split(",")[0].split(" (")[0]


def _reference_lines(axes, references: list[tuple[float, str, str, str]], top: float, grey: str, where: str) -> None:
    """The quoted errors as horizontal lines, (value, name, style, gid) each; lines that coincide at
    this axis's scale (`COINCIDE` of `top`) share one style and one label: "He et al. 2016 6.37 / ReScience 6.38"."""
    groups: list[list[tuple]] = []
    for line in sorted(references):
        if groups and line[0] - groups[-1][-1][0] < COINCIDE * top:
            groups[-1].append(line)
        else:
            groups.append([line])
    for group in groups:
        label = " / ".join(f"{name} {value:.2f}" for value, name, _, _ in group) + f" %{where}"
        for index, (value, _, style, gid) in enumerate(group):
            axes.axhline(value, linestyle=group[0][2], color=grey, linewidth=1.2,
                         label=label if index == 0 else None, gid=gid)


def plot_curves(source, paper_error: float | None = None, title: str | None = None, seed_error: float | None = None,
                context: bool = False, paper_name: str = "paper") -> Figure:
    """Test and training error, and the training loss on a log axis, against epoch, as
    fb.resnet.torch's convergence plots show them.

    `source`: a run directory, a RunRecord, a metrics DataFrame, or a list of these (the seeds
    of one network): each seed a thin line, their mean a thick one. The x axis spans the epochs
    done, and says "5 of 200" where the recipe is longer; it marks the learning-rate drops
    reached. `paper_error` (from `paper_name`) and `seed_error` (the ReScience reproduction's)
    are reference lines, labelled once where they coincide; `context` greys them and says they
    are CIFAR-10 numbers (for runs on other data, which must not be held to them). The title
    names the network, data set and budget of the first run; the legend sits below the plots.
    """
    curves = _curve_sources(source)
    figure = Figure(figsize=(FIGURE_WIDTH, 3.9), layout="constrained", facecolor="white")  # white: dark theme
    error_axes, loss_axes = figure.subplots(1, 2)
    several = len(curves) > 1
    for column, axes, color, style, what in (("test_error", error_axes, "C0", "-", "test error"),
                                             ("train_error", error_axes, "C1", "--", "training error"),
                                             ("train_loss", loss_axes, "C0", "-", "training loss")):
        for index, (name, metrics, _) in enumerate(curves):
            if column in metrics:
                label = (f"{what}, each seed" if several else what) if index == 0 else None
                axes.plot(metrics["epoch"], metrics[column], color=color, linestyle=style,
                          linewidth=0.8 if several else 1.8, alpha=0.6 if several else 1.0, label=label,
                          marker="o" if len(metrics) < 20 and not several else None, markersize=3)
        mean = _mean_curve(curves, column)
        if mean is not None:
            axes.plot(mean.index, mean.values, color=color, linestyle=style, linewidth=2.4,
                      label=f"{what}, mean of {len(curves)}", gid=f"mean_{column}")
    errors = [value for _, metrics, _ in curves for column in ("test_error", "train_error") if column in metrics
              for value in metrics[column].dropna()]
    references = [(value, name, style, f"{gid}_error") for value, name, style, gid in (
        (paper_error, paper_name, "--", "paper"), (seed_error, RESCIENCE, ":", "seed")) if value is not None]
    _reference_lines(error_axes, references, max(errors + [value for value, *_ in references] + [1.0]),
                     "0.55" if context else "black", ", CIFAR-10" if context else "")
    records_ = [record for _, _, record in curves if record is not None]
    done = max(int(metrics["epoch"].max()) for _, metrics, _ in curves)
    planned = max([record["epochs_planned"] for record in records_] + [done])
    drops = sorted({drop for record in records_ for drop in lr_drops(record) if drop <= done})
    for axes in (error_axes, loss_axes):
        for index, drop in enumerate(drops):
            axes.axvline(drop, color="0.6", linewidth=0.8, linestyle="-.", gid="lr_drop",
                         label="learning-rate drop" if index == 0 and axes is error_axes else None)
        axes.set_xlim(0, done)
        axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.set_xlabel("epoch" if done == planned else f"epoch ({done} of {planned} done)")
    error_axes.set(ylabel="error (%)", ylim=(0, None))
    loss_axes.set(ylabel="training loss (cross-entropy)", yscale="log")
    _log_ticks(loss_axes, [value for _, metrics, _ in curves for value in metrics["train_loss"] if value > 0])
    figure.legend(*error_axes.get_legend_handles_labels(), loc="outside lower center", ncols=2,
                  fontsize=LABEL_SIZE, frameon=False)
    figure.suptitle(title if title is not None else _budget_title(records_[0]) if records_ else "",
                    fontsize="medium", parse_math=False)  # a record's "$" is a dollar, not mathtext
    return figure


def is_real_data(run: RunRecord) -> bool:
    """Trained on real images (CIFAR, the JPEG mirror, an image folder), not the synthetic stand-in."""
    return run.record["data"].get("dataset") != "synthetic" and run.label != "synthetic"


def _references(run: RunRecord) -> dict:
    """The paper's and the seed's errors to draw beside a run: none for the synthetic stand-in,
    greyed as CIFAR-10 context for any other data than CIFAR-10."""
    if not is_real_data(run):
        return {}
    quoted = reference(run.arch) or {}
    return {"paper_error": quoted.get("paper_error"), "seed_error": quoted.get("seed_error"),
            "paper_name": source_name(quoted), "context": run.label != CIFAR10}


def curves_for_network(runs: list[RunRecord], network: str) -> Figure | None:
    """The network's curves: its complete CIFAR-10 runs with the paper's and the seed's errors
    as reference lines, else its longest other run on real data and that run's repeats,
    titled as not a CIFAR-10 result with those lines greyed as context; None if the network
    has no real-data run with metrics (synthetic smoke runs are never plotted: they say
    nothing about the network)."""
    mine = [run for run in runs if run.arch == network and is_real_data(run) and run.metrics() is not None]
    counted = [run for run in mine if run.is_cifar10_result]
    if counted:
        group = max(_groups(counted), key=len)
        return plot_curves(group, **_references(group[0]))
    if not mine:
        return None
    # The longest run and its repeats with the same setting: one data set and budget per figure.
    anchor = max(mine, key=lambda run: run.record["epochs_done"])
    same = [run for run in mine if run.label == anchor.label and _experiment(run) == _experiment(anchor)]
    return plot_curves(same, title=_budget_title(anchor.record, " (not a CIFAR-10 result)"),
                       **_references(anchor))


def run_figure(run) -> Figure:
    """One run's curves (a run directory or its RunRecord), with the paper's and the seed's
    errors as `_references` draws them."""
    run = run if isinstance(run, RunRecord) else RunRecord(Path(run), records.read_run(run))
    return plot_curves(run, **_references(run))


def _marker_kind(network: str) -> tuple[str, dict]:
    """How a paper's number is marked: He et al.'s pre-activation networks filled squares, their
    original networks hollow ones, the wide-network paper's diamonds."""
    family = (architectures.row(network) or {}).get("family")
    if family == "original":
        return "He et al. 2016, original units", dict(marker="s", color="black", markerfacecolor="white")
    if family == "wide":
        return "Zagoruyko & Komodakis (as ReScience quotes it)", dict(marker="D", color="black")
    return "He et al. 2016, pre-activation", dict(marker="s", color="black")


def _label(axes, text: str, point: tuple[float, float], left: bool, color: str = "black") -> None:
    """`text` beside the marker at `point`: on its left (a paper's, with the network's title) or right."""
    axes.annotate(text, point, textcoords="offset points", xytext=(-7, 0) if left else (7, 0),
                  ha="right" if left else "left", va="center", fontsize=LABEL_SIZE, color=color)


def plot_error_vs_size(runs: list[RunRecord]) -> Figure:
    """Test error against parameters and against depth, as He et al. and Zagoruyko &
    Komodakis plot it: the papers' and the ReScience reproduction's numbers as markers of their
    own, and each complete run of ours a dot (CIFAR-10 filled, the JPEG mirror hollow and grey:
    not CIFAR-10).

    Where several networks share a size (ResNet-110 and ResNet-164, pre-activation or not, all
    about 1.7M parameters), the papers' markers sit just left of it and the ReScience
    reproduction's just right. Each marker is labelled with its value at `LABEL_SIZE`: a paper's
    on its left with the network's title, the ReScience reproduction's on its right (or, for a
    network no paper reports, on its left with the title)."""
    figure = Figure(figsize=(FIGURE_WIDTH, 7.2), layout="constrained", facecolor="white")
    by_params, by_depth = figure.subplots(2, 1)  # one above the other: each the book's width, for its labels
    ours = [run for run in runs if run.label in (CIFAR10, JPEG_MIRROR) and run.is_result_on(run.label)]
    tables = {name: row for name in {row["network"] for row in REFERENCE} | {run.arch for run in ours}
              if (row := architectures.row(name))}  # each network's row of the table, if registered
    quoted = [row for row in REFERENCE if row["network"] in tables]
    for axes, size in ((by_params, "params"), (by_depth, "depth")):
        def column(network: str):  # networks of one size share a column: 1.7M once, not thrice
            return round(tables[network][size], -5 if size == "params" else 0)
        crowded = {key for key, n in Counter(column(row["network"]) for row in quoted).items() if n > 1}
        kinds: dict[str, list] = {}
        for row in quoted:
            network, x = row["network"], tables[row["network"]][size]
            both = row.get("paper_error") is not None and row.get("seed_error") is not None
            shift = 1.04 if column(network) in crowded else 1.0  # the papers' just left, ReScience's just right
            if row.get("paper_error") is not None:
                kind, style = _marker_kind(network)
                kinds.setdefault(kind, [style, []])[1].append((x / shift, row["paper_error"]))
                _label(axes, f"{Network(network).title} {row['paper_error']:.2f}", (x / shift, row["paper_error"]),
                       left=True)
            if row.get("seed_error") is not None:
                kinds.setdefault(f"{RESCIENCE} (single run)", [dict(marker="^", color="C3"), []])[1].append(
                    (x * shift, row["seed_error"]))
                text = f"{row['seed_error']:.2f}" if both else f"{Network(network).title} {row['seed_error']:.2f}"
                _label(axes, text, (x * shift, row["seed_error"]), left=not both, color="C3")
        for kind, (style, points) in kinds.items():
            gid = "seed_error" if kind.startswith(RESCIENCE) else "paper_error"
            axes.plot([x for x, _ in points], [y for _, y in points], linestyle="none", markersize=6, label=kind,
                      gid=gid, **style)
        for data, style in ((CIFAR10, dict(color="C0")), (JPEG_MIRROR, dict(markerfacecolor="none", color="0.5"))):
            mine = [run for run in ours if run.label == data and run.arch in tables]
            if mine:
                axes.plot([tables[run.arch][size] for run in mine], [run.test_error for run in mine],
                          marker="o", linestyle="none", label=f"ours, {data}" + ("" if data == CIFAR10 else
                                                                                 ": not CIFAR-10"),
                          gid=f"ours {data}", **style)
        axes.set_xscale("log")
        ticks = {column(row["network"]): tables[row["network"]][size] for row in quoted}
        axes.xaxis.set_major_locator(ticker.FixedLocator(sorted(ticks.values())))
        axes.xaxis.set_minor_locator(ticker.NullLocator())
        axes.margins(x=0.6, y=0.12)  # room for the labels left of the first column
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=LABEL_SIZE)
    by_params.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value / 1e6:.1f}M"))
    by_depth.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    by_params.set(xlabel="parameters", ylabel="test error (%)")
    by_depth.set(xlabel="depth (layers)")
    handles = {label: handle for axes in (by_params, by_depth)
               for handle, label in zip(*axes.get_legend_handles_labels())}  # each kind once
    figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2, fontsize=LABEL_SIZE,
                  frameon=False)
    figure.suptitle(f"Test error on CIFAR-10 against size: the papers, the {RESCIENCE}" + (
        f", and {_count(len(ours), 'complete run')} of ours" if ours else "; no complete run of ours yet"),
        fontsize="medium")
    return figure


def run_summary(record) -> pd.DataFrame:
    """One run at a glance, as a one-column table: a RunRecord, or the record `train` returns."""
    run = record if isinstance(record, RunRecord) else RunRecord(Path(record["config"].get("out") or "."), record)
    record = run.record
    final = record.get("final") or {}
    data = record["data"]
    gpu = gpu_seconds(run)
    rows = {"network": Network(record["arch"]), "data set": data.get("label"),
            "train / val / test images": f"{data.get('n_train', 0):,} / {data.get('n_val', 0):,} / "
                                         f"{data.get('n_test', 0):,}",
            "recipe": f"{record['config'].get('recipe')}, batch {(record.get('recipe') or {}).get('batch_size')}",
            "epochs done / planned": f"{record['epochs_done']} / {record['epochs_planned']}",
            "status": run_status(run), "device": (record.get("device") or {}).get("name"),
            "precision": record.get("precision", MISSING), "parameters": f"{record.get('params', 0):,}",
            "test error (%)": _last_test_error(run), "selected by": final.get("selected_by", MISSING),
            "seconds per epoch": _seconds_per_epoch(run),
            "GPU-hours": _hours(gpu) if gpu else MISSING,
            "code (git commit)": _commit(record), "torch": (record.get("versions") or {}).get("torch", MISSING)}
    table = pd.DataFrame({"": list(rows.values())}, index=list(rows))
    table.attrs.update(run=run.name, status_words=True)
    return table


def _seconds_per_epoch(run: RunRecord) -> str:
    """The run's training seconds per epoch: its final record's, else (unfinished) the median of
    its speed segments' steady-state epochs, which the speed table lists one by one."""
    final = (run.record.get("final") or {}).get("seconds_per_epoch")
    if final is not None:
        return f"{final:.1f}"
    timed = [s["seconds_per_epoch"] for s in _segments(run) if s.get("seconds_per_epoch") is not None]
    return f"{statistics.median(timed):.1f} (so far; the speed table below)" if timed else MISSING


def _commit(record: dict) -> str:
    git = record.get("git") or {}
    if not git.get("commit"):
        return MISSING
    return git["commit"][:12] + (", with uncommitted changes" if git.get("dirty") else "")


def speed_segments_table(run: RunRecord) -> pd.DataFrame:
    """How each process that trained the run ran: device, runs sharing it, threads, precision,
    compile mode, and its steady-state seconds per epoch and images per second."""
    columns = ["epochs", "device", "sharing the device", "CPU threads", "precision, compile", "s/epoch",
               "images/s", "first epoch (s)"]
    rows = [[f"{s.get('first_epoch')}-{s.get('last_epoch') or s.get('first_epoch')}",
             s.get("gpu") or s.get("device") or MISSING,
             ", ".join(f"{n} {what}" for n, what in zip(_sharing(s), ("packed", "stacked")) if n > 1) or "alone",
             str(s.get("threads") or MISSING), f"{s.get('precision')}, {s.get('compile_mode') or 'eager'}",
             MISSING if s.get("seconds_per_epoch") is None else f"{s['seconds_per_epoch']:.1f}",
             MISSING if s.get("images_per_second") is None else f"{s['images_per_second']:,.0f}",
             MISSING if s.get("first_epoch_seconds") is None else f"{s['first_epoch_seconds']:.1f}"]
            for s in _segments(run)]
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["run"] = run.name
    return table
