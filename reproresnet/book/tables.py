"""The results' tables: test error, compute, ablations, the other runs, the run index, one
run's summary and speed, and the library's networks and recipes.

Each is a DataFrame of values, every value of ours filed with the records it was computed from
(`render.table`): `render` turns them into text, HTML and Markdown. A number reaches the
CIFAR-10 column only from a complete run on the full CIFAR-10 data (`runs`); every other run
is listed apart, labeled for what it is.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pandas as pd

from .. import architectures
from ..config import CIFAR10, RECIPE_OWNED, ConfigError, TrainConfig
from ..records import Record, RunRecord
from ..recipes import RECIPES, weight_decay_reach
from ..reference import PLANNED, QUOTED_PRECISION, REFERENCE, SEED_DEVICE, SEED_EPOCHS, SEED_STATISTIC, reference
from . import runs as chosen
from .render import NOT_MEASURED, NOT_RUN, Cell, cell, hours, mean_std, one_decimal, table

# The error table's columns, each naming the statistic its numbers are.
PAPER, PAPER_STATISTIC = "original paper (%)", "paper's statistic"
# The ReScience reproduction the project starts from (`reference.SEED`), in table headings: never
# "seed" there, where a column of random seeds may stand beside it.
RESCIENCE = "ReScience repr."
SEED = f"{RESCIENCE} (%): {SEED_STATISTIC}"
OURS, EACH_SEED, NOTES = "this project (%): mean ± std", "each seed (%)", "notes"
SEED_SECONDS, SEED_HOURS = f"{RESCIENCE} s/epoch ({SEED_DEVICE})", f"{RESCIENCE} hours per run"


def problems_table(problems: list[dict]) -> pd.DataFrame:
    return table(problems, columns=["path", "problem"], source="problems")


def _each_seed(pairs) -> str:
    return ", ".join(f"{error:.2f} (seed {seed})" for error, seed in pairs)


def _seeds_cell(group: list[RunRecord]):
    """Each seed's error, each part linked to its own record, worded with its seed."""
    return cell(tuple((run.test_error, run.config.get("seed", "?")) for run in group), group, worded=True)


# ---------------------------------------------------------------- the error table and its notes

def _length(recipe: dict) -> str:
    return f"{recipe['length']:,} {recipe['unit']}s"


def _warmup(recipe, arch: str) -> str:
    """The recipe's warm-up for `arch`, as `Recipe.for_arch` decides it (the one rule)."""
    resolved = recipe.for_arch(arch)
    return f"{resolved.warmup_lr} for {resolved.warmup_length} {resolved.unit}s" if resolved.warmup_length else "none"


def _recipe_note(run: RunRecord, quoted: dict) -> str | None:
    """How the run's recorded recipe differs from the library's recipe for the paper, or None."""
    name = quoted.get("paper_recipe")
    ours = run.record.recipe or {}
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
        warm = {"warmup_lr", "warmup_length", "warmup_archs", "unit"}
        recorded = dataclasses.replace(RECIPES[name], **{key: value for key, value in ours.items() if key in warm})
        if _warmup(recorded, run.arch) != _warmup(RECIPES[name], run.arch):
            differences.append(f"warm-up {_warmup(recorded, run.arch)} instead of {_warmup(RECIPES[name], run.arch)}")
    if not differences:
        return None
    return (f"{run.arch}, recipe '{run.config.get('recipe')}': " + "; ".join(differences) +
            f" (the paper's recipe here is '{name}': {paper['source']}).")


def _data_note(run: RunRecord, quoted: dict) -> str | None:
    """How the run's data differs from the paper's (all 50,000 training images, per-image
    augmentation, the paper's normalization), or None."""
    data = run.record.data
    differences = []
    if data.n_val:
        differences.append(f"trained on {data.n_train or 0:,} images with {data.n_val:,} held out to choose "
                           f"the reported epoch ({(run.record.final and run.record.final.selected_by) or '?'}); "
                           "the papers train on all 50,000")
    normalization, paper_normalization = data.normalization, quoted.get("paper_normalization")
    if normalization and paper_normalization and normalization != paper_normalization:
        differences.append(f"inputs normalized {normalization} instead of {paper_normalization}")
    if data.augmentation not in (None, "per_image"):
        differences.append(f"crop and flip drawn {data.augmentation.replace('_', ' ')} instead of per image")
    return f"{run.arch}, data: " + "; ".join(differences) + "." if differences else None


def _precision_note(run: RunRecord) -> str:
    return f"{run.arch}, precision: {run.record.precision or 'not recorded'} (the runs' records)."


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
            numbers.append(texts.index(text) + 1)
        row[NOTES] = tuple(dict.fromkeys(numbers)) or None
    return texts


def _mean_std_failed(failed: int):
    return lambda errors: f"{mean_std(errors)} ({failed} failed)"


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
    networks = chosen.table_networks(runs, label) if quoting else \
        list(PLANNED) + sorted({run.arch for run in cifar if run.full_training_set} - set(PLANNED))
    rows = []
    for network in networks:
        quoted = reference(network) or {}
        statistic = quoted.get("paper_statistic")
        base = {"network": network, PAPER: quoted.get("paper_error"),
                PAPER_STATISTIC: statistic[0] if statistic else None, SEED: quoted.get("seed_error")}
        quoted_notes = [text for text in (statistic[1] if statistic else None, quoted.get("paper_preprocessing"),
                                          quoted.get("seed_note"), _seed_network_note(quoted)) if text and quoting]
        if quoting and (quoted.get("paper_error") is not None or quoted.get("seed_error") is not None):
            quoted_notes.append(QUOTED_PRECISION)
        failed = [run for run in cifar if run.arch == network and run.status == "diverged"]
        groups = chosen.counted_groups(runs, network, label)
        for group in groups:
            notes = [text for text in (_recipe_note(group[0], quoted), _data_note(group[0], quoted),
                                       _precision_note(group[0])) if text]
            errors = tuple(run.test_error for run in group)
            rows.append({**base, ours: cell(errors, group + failed, format=_mean_std_failed(len(failed)), worded=True)
                         if failed else cell(errors, group),
                         "n": cell(len(group), group), EACH_SEED: _seeds_cell(group), NOTES: quoted_notes + notes})
        if not groups:
            unfinished = [run for run in chosen.plan_runs(runs, network, label) if run.status != "complete"]
            result = cell(chosen.unfinished_text(unfinished), unfinished) if unfinished else NOT_RUN
            rows.append({**base, ours: result, "n": None, EACH_SEED: None, NOTES: quoted_notes})
    notes = _number_notes(rows)
    columns = ["network", PAPER, PAPER_STATISTIC, SEED] if quoting else ["network"]
    return table(rows, columns=columns + [ours, "n", EACH_SEED, NOTES], formats={ours: mean_std, EACH_SEED: _each_seed},
                 notes=notes, quoted=[PAPER, PAPER_STATISTIC, SEED], parts=[EACH_SEED], status_words=True)


# ---------------------------------------------------------------- what the runs cost

def _seed_seconds(quoted: dict):
    """The seed's seconds per epoch with the batch its code trained that network at."""
    seconds = quoted.get("seed_seconds_per_epoch")
    return None if seconds is None else cell(seconds, format=lambda s: f"{s:.0f} (batch {quoted['seed_batch_size']})",
                                             worded=True)


def compute_table(runs: list[RunRecord]) -> pd.DataFrame:
    """What the runs behind the error table cost, one row per row of that table with runs and
    per network of the plan (without runs: "not measured"), next to the seed's times (its
    seconds per epoch on a GTX 980, at its code's batch, × its 200 epochs) on the networks that
    took them.

    Ours: the device, the median seconds per epoch (steady-state epochs, from each run's
    record), the epochs, the median wall time of one run (first start to last write) and the
    GPU-hours of all its runs (`runs.gpu_seconds`: packed or stacked runs share a GPU)."""
    rows = []
    for network in chosen.table_networks(runs):
        quoted = reference(network) or {}
        seconds = quoted.get("seed_seconds_per_epoch")
        groups = chosen.counted_groups(runs, network)
        if seconds is None and not groups and network not in PLANNED:  # a planned network always has its row
            continue
        seed = {"network": network, SEED_SECONDS: _seed_seconds(quoted),
                SEED_HOURS: None if seconds is None else seconds * SEED_EPOCHS}
        for group in groups or [[]]:
            walls = [wall for wall in map(chosen.wall_seconds, group) if wall is not None]
            per_epoch = [run.record.final.seconds_per_epoch for run in group
                         if run.record.final and run.record.final.seconds_per_epoch is not None]

            def of_group(value):  # every cell with a number: one without runs says so instead
                return cell(value, group) if group else None
            rows.append({**seed, "our device": of_group(chosen.join(run.device for run in group)) or NOT_RUN,
                         "our s/epoch (median)": cell(statistics.median(per_epoch), group) if per_epoch
                         else None if group else NOT_MEASURED,
                         "epochs": of_group(tuple(dict.fromkeys(run.record.epochs_done for run in group))),
                         "wall time per run (h, median)": cell(statistics.median(walls), group) if walls else None,
                         "GPU-hours, all runs": of_group(sum(map(chosen.gpu_seconds, group))),
                         "runs": of_group(len(group))})
    return table(rows, formats={SEED_HOURS: hours, "our s/epoch (median)": one_decimal,
                                "wall time per run (h, median)": hours, "GPU-hours, all runs": hours},
                 quoted=[SEED_SECONDS, SEED_HOURS])


# ---------------------------------------------------------------- every run, one a row

def last_test_error(run: RunRecord):
    """The run's test error; an unfinished run's last one, worded with its epoch; else None."""
    if run.test_error is not None:
        return run.test_error
    last = run.last_test_error()
    return None if last is None else cell(last[1], format=lambda error: f"{error:.2f} (epoch {last[0]})", worded=True)


def _with_runs(value, runs):
    """`value` (a value, or a `cell` with its own format) computed from `runs`."""
    return cell(value.value, runs, value.format, value.worded) if isinstance(value, Cell) else cell(value, runs)


def _data_text(run: RunRecord, test_images: bool = False) -> str:
    data = run.record.data
    return f"{run.label}, {data.n_train or 0:,} training images" + \
        (f", {data.n_test or 0:,} test images" if test_images else "")


def other_runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every run the error table does not average: smoke tests, synthetic or mirrored data,
    subsets, unfinished and diverged runs. None of these is a CIFAR-10 result, and its data
    or its status says why. Each row is one run: every cell links to its page."""
    columns = ["run", "data", "budget", "status", "test error (%)"]
    rows = [{column: _with_runs(value, [run]) for column, value in zip(columns, (
                run.name, _data_text(run, run.config.get("limit_test") is not None),
                f"batch {run.batch_size}, {run.device}, {run.record.precision or 'precision not recorded'}",
                chosen.run_status(run), last_test_error(run)))}
            for run in runs if not run.is_cifar10_result]
    return table(rows, columns=columns, status_words=True)


def run_index_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every run record, one a row, as the run index lists them: the run (linked to its page),
    its network, data, epochs done of planned, status and last test error."""
    columns = ["run", "network", "data", "epochs done / planned", "status", "test error (%)"]
    rows = [{"run": cell(run.name, [run]), "network": run.arch, "data": cell(_data_text(run), [run]),
             "epochs done / planned": cell((run.record.epochs_done, run.record.epochs_planned), [run]),
             "status": cell(chosen.run_status(run), [run]), "test error (%)": _with_runs(last_test_error(run), [run])}
            for run in sorted(runs, key=lambda run: run.name)]
    return table(rows, columns=columns, formats={"epochs done / planned": _done_of}, status_words=True)


def _done_of(done_planned) -> str:
    return "{}/{}".format(*done_planned)


def _departures(run: RunRecord) -> str:
    """The settings in which a run departs from its recipe and its network's defaults, as
    `TrainConfig.effective` resolves both, e.g. an ablation's `shortcut=input_projection`;
    "recipe defaults" when it departs in none (epochs and batch: the recipe column says them)."""
    try:
        config = TrainConfig.from_dict(run.config)
        ours, defaults = config.effective(), TrainConfig(arch=config.arch, recipe=config.recipe).effective()
    except ConfigError:
        return "settings not readable by this version"
    departed = [key for key in RECIPE_OWNED if key not in ("epochs", "batch_size") and ours[key] != defaults[key]]
    return ", ".join(f"{key}={ours[key]}" for key in departed) or "recipe defaults"


def ablation_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Complete runs on the whole of a real data set (CIFAR-10, CIFAR-100, the JPEG mirror),
    one row per network, data set, recipe and chosen settings: an option's value against the
    recipe's own, as mean ± std (sample std) over seeds, with n and each seed's value."""
    complete = [run for run in runs if chosen.is_real_data(run) and run.is_result_on(run.label)]
    rows = [{"network": group[0].arch, "data set": group[0].label, "recipe": chosen.recipe_text(group[0]),
             "epochs": cell(tuple(dict.fromkeys(run.record.epochs_done for run in group)), group),
             "settings": _departures(group[0]),
             "test error (%): mean ± std": cell(tuple(run.test_error for run in group), group),
             "n": cell(len(group), group), EACH_SEED: _seeds_cell(group)}
            for group in chosen.groups(complete)]
    rows.sort(key=lambda row: (row["network"], row["data set"], row["settings"]))
    columns = ["network", "data set", "recipe", "epochs", "settings", "test error (%): mean ± std", "n", EACH_SEED]
    return table(rows, columns=columns, formats={"test error (%): mean ± std": mean_std, EACH_SEED: _each_seed},
                 parts=[EACH_SEED])


# ---------------------------------------------------------------- one run

def run_summary(record) -> pd.DataFrame:
    """One run at a glance, as a one-column table: a RunRecord, or the record `train` returns."""
    run = record if isinstance(record, RunRecord) else RunRecord(Path(record.config.get("out") or "."), record)
    record = run.record
    data = record.data
    gpu = chosen.gpu_seconds(run)
    rows = {"network": cell(record.arch, network=True), "data set": data.label,
            "train / val / test images": cell((data.n_train or 0, data.n_val or 0, data.n_test or 0),
                                              format=lambda counts: " / ".join(f"{n:,}" for n in counts), worded=True),
            "recipe": f"{record.config.get('recipe')}, batch {(record.recipe or {}).get('batch_size')}",
            "epochs done / planned": cell((record.epochs_done, record.epochs_planned),
                                          format=lambda done: "{} / {}".format(*done), worded=True),
            "status": chosen.run_status(run), "device": record.device and record.device.name,
            "precision": record.precision, "parameters": record.params or 0,
            "test error (%)": last_test_error(run), "selected by": record.final and record.final.selected_by,
            "seconds per epoch": _seconds_per_epoch(run),
            "GPU-hours": cell(gpu, format=hours) if gpu else None,
            "code (git commit)": _commit(record), "torch": (record.versions or {}).get("torch")}
    return table([{"": value} for value in rows.values()], index=list(rows), run=run.name, status_words=True)


def _seconds_per_epoch(run: RunRecord):
    """The run's training seconds per epoch: its final record's, else (unfinished) the median of
    its speed segments' steady-state epochs, which the speed table lists one by one."""
    final = run.record.final and run.record.final.seconds_per_epoch
    if final is not None:
        return cell(final, format=one_decimal)
    timed = [s.seconds_per_epoch for s in chosen.segments(run) if s.seconds_per_epoch is not None]
    return cell(statistics.median(timed), format=lambda s: f"{s:.1f} (so far; the speed table below)",
                worded=True) if timed else None


def _commit(record: Record) -> str | None:
    git = record.git or {}
    if not git.get("commit"):
        return None
    return git["commit"][:12] + (", with uncommitted changes" if git.get("dirty") else "")


def speed_segments_table(run: RunRecord) -> pd.DataFrame:
    """How each process that trained the run ran: device, runs sharing it, threads, precision,
    compile mode, and its steady-state seconds per epoch and images per second."""
    columns = ["epochs", "device", "sharing the device", "CPU threads", "precision, compile", "s/epoch",
               "images/s", "first epoch (s)"]
    rows = [dict(zip(columns, (
                f"{s.first_epoch}-{s.last_epoch or s.first_epoch}",
                s.gpu or s.device,
                ", ".join(f"{n} {what}" for n, what in zip(chosen.sharing(s), ("packed", "stacked")) if n > 1)
                or "alone",
                s.threads or None, f"{s.precision}, {s.compile_mode or 'eager'}",
                s.seconds_per_epoch, s.images_per_second, s.first_epoch_seconds)))
            for s in chosen.segments(run)]
    return table(rows, columns=columns, formats={"s/epoch": one_decimal, "images/s": lambda n: f"{n:,.0f}",
                                                 "first epoch (s)": one_decimal}, run=run.name)


# ---------------------------------------------------------------- the library's networks and recipes

def architecture_table() -> pd.DataFrame:
    """Every registered network (`reproresnet/architectures.csv`, checked against the registry
    by the tests): family and block, depth, width, exact parameters, forward GFLOPs per 32x32
    image and its default options."""
    rows = [{"name": row["name"], "family, block": f"{row['family']}, {row['block']}", "depth": row["depth"],
             "width": row["width"], "parameters": row["params"], "GFLOPs/image": row["gflops"],
             "default options": ", ".join(f"{option.replace('_', ' ')} {row[option]}" for option in
                                          architectures.OPTIONS if row[option] is not None)}
            for row in architectures.rows()]
    return table(rows, formats={"depth": str, "width": str, "GFLOPs/image": lambda gflops: f"{gflops:.3f}"},
                 source="library")


def recipe_table() -> pd.DataFrame:
    """The training recipes as the library defines them (`reproresnet.recipes.RECIPES`): one
    column per recipe, one row per setting (narrow enough for the article), and each recipe's
    source as a numbered note."""
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
    settings = pd.DataFrame(columns).rename_axis("setting").reset_index()
    return table(settings.to_dict("records"), columns=list(settings.columns),
                 notes=[f"{recipe.name}: {recipe.source}" for recipe in RECIPES.values()], source="library")
