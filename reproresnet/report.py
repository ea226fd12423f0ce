"""Tables and figures of the book, computed from the run records under `results/`.

The notebooks only call these functions and show what they return, so everything a
reader sees is tested here. A number reaches the CIFAR-10 column only from a complete
run on the full CIFAR-10 data; every other run is listed apart, labeled for what it is.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from html import escape
from pathlib import Path

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from . import records
from .config import RUNTIME_SETTINGS
from .models import ARCHITECTURES, default_parameter_count
from .records import BENCH_FORMAT, CIFAR10, RunRecord, load_benches, load_runs  # noqa: F401 (the notebooks' API)
from .reference import (QUOTED_PRECISION, REFERENCE, REPRODUCED, SEED_DEVICE, SEED_EPOCHS, SEED_STATISTIC,
                        reference)

NOT_RUN, FAILED, IN_PROGRESS, NOT_MEASURED, MISSING = "not run", "failed", "in progress", "not measured", "—"
# Seeds of one experiment differ in the seed and may differ in where and how fast they ran.
_RUNTIME_FIELDS = {*RUNTIME_SETTINGS, "seed"}


def problems_table(problems: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(problems, columns=["path", "problem"])


def format_bench(record: dict) -> str:
    """A benchmark record as the plain-text table `reproresnet bench` prints."""
    settings = record.get("settings", {})
    speedups = settings.get("speedups", {})
    used = [name for name in ("bf16", "channels_last", "compile", "fused_optimizer") if speedups.get(name)]
    if speedups.get("compile"):
        used[used.index("compile")] = f"compile ({settings.get('compile_mode', 'default')})"
    precision = next((row.get("precision", "fp32") for row in record["rows"] if row["path"] == "baseline"), "fp32")
    baseline = f"{precision} eager, DataLoader with {settings.get('num_workers', '?')} workers"
    lines = [f"{record['device']['name']} ({record['device']['type']}), batch {record['batch_size']}, "
             f"{record['warmup_steps']} warm-up + {record['steps']} timed steps in {settings.get('rounds', '?')} "
             f"rounds (median round); epoch = {record.get('epoch_images', 50_000):,} images",
             f"reproresnet path: {', '.join(used) or 'fp32 eager'}; baseline: {baseline}",
             f"{'arch':<18} {'path':<12} {'s/epoch':>8} {'img/s':>9} {'data img/s':>11} {'warm-up s':>9} "
             f"{'peak MB':>8} {'TFLOP/s':>8} {'graphs':>6}"]
    for row in record["rows"]:
        peak = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        graphs = "-" if row.get("graphs") is None else str(row["graphs"])
        lines.append(f"{row['arch']:<18} {row['path']:<12} {row['seconds_per_epoch']:>8.2f} "
                     f"{row['images_per_second']:>9.0f} {row['data_images_per_second']:>11.0f} "
                     f"{row['warmup_seconds']:>9.1f} {peak:>8} {row['tflops']:>8.3f} {graphs:>6}")
    if record["ratios"]:
        lines += ["", f"{'arch':<18} {'step speedup':>12} {'data speedup':>12}"]
        lines += [f"{r['arch']:<18} {r['step_speedup']:>11.2f}x {r['data_speedup']:>11.1f}x"
                  for r in record["ratios"]]
    warnings = [f"{row['arch']}: {warning}" for row in record["rows"] for warning in row.get("warnings", [])]
    if warnings:
        lines += ["", "WARNINGS:", *warnings]
    epochs = [(row["arch"], row["epochs"]) for row in record["rows"] if row.get("epochs")]
    if epochs:
        lines += ["", "real epochs through train_one_epoch (reproresnet path, last partial batch included):"]
        lines += [f"{arch:<18} " + "  ".join(f"epoch {i} {e['seconds']:.2f} s ({e['compiles']} compiled)"
                                             for i, e in enumerate(rows, 1)) for arch, rows in epochs]
    return "\n".join(lines)


# ---------------------------------------------------------------- tables

def _percent(value) -> str:
    return MISSING if value is None else f"{value:.2f}"


def mean_std(values: list[float]) -> str:
    """"6.50 ± 0.71" (sample standard deviation) for several values, "6.50" for one."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _setting(run: RunRecord) -> tuple:
    """What makes two runs the same experiment: everything but the seed and the runtime."""
    return tuple(sorted((k, json.dumps(v)) for k, v in run.config.items() if k not in _RUNTIME_FIELDS))


def _recipe_text(run: RunRecord) -> str:
    return f"{run.config.get('recipe', '?')}, batch {run.batch_size}"


def _join(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


# The error table's columns, each naming the statistic its numbers are.
PAPER, PAPER_STATISTIC = "original paper (%)", "paper's statistic"
SEED = f"seed (%): {SEED_STATISTIC}"
OURS, EACH_SEED, NOTES = "this project (%): mean ± std", "each seed (%)", "notes"
JPEG_MIRROR = "CIFAR-10 (JPEG mirror)"


def _table_networks(runs: list[RunRecord], label: str = CIFAR10) -> list[str]:
    """Networks the sources quote, in their order, then any other with a result on `label`."""
    networks = [row["network"] for row in REFERENCE]
    return networks + sorted({run.arch for run in runs if run.is_result_on(label)} - set(networks))


def _groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """The runs, one list per setting (the seeds of one experiment), each sorted by seed."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.arch, run.label, _setting(run)), []).append(run)
    return [sorted(group, key=lambda run: str(run.config.get("seed"))) for group in groups.values()]


def _counted_groups(runs: list[RunRecord], network: str, label: str = CIFAR10) -> list[list[RunRecord]]:
    """The network's complete full runs on `label`, one list per setting."""
    return _groups([run for run in runs if run.arch == network and run.is_result_on(label)])


def _each_seed(group: list[RunRecord]) -> str:
    return ", ".join(f"{run.test_error:.2f} (seed {run.config.get('seed', '?')})" for run in group)


def _length(recipe: dict) -> str:
    return f"{recipe['length']:,} {recipe['unit']}s"


def _recipe_note(run: RunRecord, quoted: dict) -> str | None:
    """How the run's recorded recipe differs from the library's recipe for the paper, or None."""
    from .recipes import RECIPES
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
    return (f"The seed's {seed['seed_error']:.2f} % under the name {paper['title']} came from {seed['title']}, "
            f"{seed['paper_params']} parameters, not the paper's {paper['title']} of {paper['paper_params']} "
            f"(the seed's own table says {paper['paper_params']}); that network has its own row, {seed['network']}.")


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

    `label` another data set (the JPEG mirror): the same table of that data set's runs, its
    column of ours named for it; the paper's and the seed's CIFAR-10 numbers are then context.

    Each number column names its statistic: the paper's varies by row (its own column says
    which), the seed's is a single run, ours is the mean ± std over seeds of complete full
    CIFAR-10 runs of one setting (runs that differ in more than seed and runtime get a row
    each), with `n` and each seed's value. A network without such a run shows "not run", or
    "failed" if its CIFAR-10 runs diverged, or "in progress" if one is still running.
    Footnotes (`table.attrs["notes"]`, numbered in the notes column) give the paper's
    statistic in full and, from the records, how each row's recipe or data differs from the paper's.
    """
    cifar = [run for run in runs if run.label == label]
    ours = OURS if label == CIFAR10 else f"this project on the {label} (%): mean ± std"
    rows = []
    for network in _table_networks(runs, label):
        quoted = reference(network) or {}
        statistic = quoted.get("paper_statistic")
        base = {"network": network, PAPER: _percent(quoted.get("paper_error")),
                PAPER_STATISTIC: statistic[0] if statistic else MISSING,
                SEED: _percent(quoted.get("seed_error"))}
        quoted_notes = [text for text in (statistic[1] if statistic else None, quoted.get("paper_preprocessing"),
                                          quoted.get("seed_note"), _seed_network_note(quoted)) if text]
        if quoted.get("paper_error") is not None or quoted.get("seed_error") is not None:
            quoted_notes.append(QUOTED_PRECISION)
        failed = sum(run.arch == network and run.status == "diverged" for run in cifar)
        groups = _counted_groups(runs, network, label)
        for group in groups:
            result = mean_std([run.test_error for run in group])
            notes = [text for text in (_recipe_note(group[0], quoted), _data_note(group[0], quoted),
                                       _precision_note(group[0])) if text]
            rows.append({**base, ours: result + (f" ({failed} failed)" if failed else ""), "n": len(group),
                         EACH_SEED: _each_seed(group), NOTES: quoted_notes + notes})
        if not groups:
            running = any(run.arch == network and run.status == "running" for run in cifar)
            result = FAILED if failed else IN_PROGRESS if running else NOT_RUN
            rows.append({**base, ours: result, "n": 0, EACH_SEED: MISSING, NOTES: quoted_notes})
    notes = _number_notes(rows)
    table = pd.DataFrame(rows, columns=["network", PAPER, PAPER_STATISTIC, SEED, ours, "n", EACH_SEED, NOTES])
    table.attrs["notes"] = notes
    return table


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}"


def _wall_seconds(run: RunRecord) -> float | None:
    """From the run's first start to its last write: evaluation and any pause included."""
    from datetime import datetime
    try:
        return (datetime.fromisoformat(run.record["updated"]) -
                datetime.fromisoformat(run.record["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _training_seconds(run: RunRecord) -> float:
    """The run's training steps, summed over its epochs (evaluation excluded)."""
    metrics = run.metrics()
    if metrics is not None and "seconds" in metrics:
        return float(metrics["seconds"].sum())
    return ((run.record.get("final") or {}).get("seconds_per_epoch") or 0.0) * run.record["epochs_done"]


SEED_SECONDS = f"seed s/epoch ({SEED_DEVICE})"


def _seed_seconds(quoted: dict) -> str:
    """The seed's seconds per epoch with the batch its code trained that network at."""
    seconds = quoted.get("seed_seconds_per_epoch")
    return MISSING if seconds is None else f"{seconds:.0f} (batch {quoted['seed_batch_size']})"


def compute_table(runs: list[RunRecord]) -> pd.DataFrame:
    """What the runs behind the error table cost, one row per row of that table with runs,
    next to the seed's times (its seconds per epoch on a GTX 980, at its code's batch, × its 200
    epochs) on the networks that took them.

    Ours: the device, the median seconds per epoch (steady-state epochs, from each run's
    record), the epochs, the median wall time of one run (first start to last write) and the
    GPU-hours of all its runs (their training steps, one device each)."""
    rows = []
    for network in _table_networks(runs):
        quoted = reference(network) or {}
        seconds = quoted.get("seed_seconds_per_epoch")
        groups = _counted_groups(runs, network)
        if seconds is None and not groups:
            continue
        seed = {"network": network, SEED_SECONDS: _seed_seconds(quoted),
                "seed hours per run": MISSING if seconds is None else _hours(seconds * SEED_EPOCHS)}
        for group in groups or [[]]:
            walls = [wall for wall in map(_wall_seconds, group) if wall is not None]
            per_epoch = [run.record["final"]["seconds_per_epoch"] for run in group
                         if (run.record.get("final") or {}).get("seconds_per_epoch") is not None]
            rows.append({**seed, "our device": _join(run.device for run in group) or NOT_RUN,
                         "our s/epoch (median)": f"{statistics.median(per_epoch):.1f}" if per_epoch else MISSING,
                         "epochs": _join(run.record["epochs_done"] for run in group) or MISSING,
                         "wall time per run (h, median)": _hours(statistics.median(walls)) if walls else MISSING,
                         "GPU-hours, all runs": _hours(sum(map(_training_seconds, group))) if group else MISSING,
                         "runs": len(group)})
    return pd.DataFrame(rows)


def _why_not_counted(run: RunRecord) -> str:
    reasons = []
    if run.label != CIFAR10:
        reasons.append(f"{run.label}, not CIFAR-10")
    elif not run.full_training_set or run.config.get("limit_test") is not None:
        reasons.append("a subset of CIFAR-10")
    if run.status == "diverged":
        reasons.append("diverged")
    elif run.status != "complete":
        reasons.append("not finished")
    return "; ".join(reasons) or "no final test error"


def _last_test_error(run: RunRecord) -> str:
    if run.test_error is not None:
        return _percent(run.test_error)
    last = run.last_test_error()
    return MISSING if last is None else f"{last[1]:.2f} (epoch {last[0]})"


def other_runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every run the error table does not average: smoke tests, synthetic or mirrored data,
    subsets, unfinished and diverged runs. None of these is a CIFAR-10 result."""
    rows = [{"run": run.name, "network": run.arch, "data set": run.label,
             "epochs (done/planned)": f"{run.record['epochs_done']}/{run.record['epochs_planned']}",
             "train images": f"{run.record['data'].get('n_train', 0):,}",
             "device, batch, precision": f"{run.device}, batch {run.batch_size}, "
                                         f"{run.record.get('precision', 'precision not recorded')}",
             "status": run.status, "test error (%)": _last_test_error(run),
             "not in the CIFAR-10 table because": _why_not_counted(run)}
            for run in runs if not run.is_cifar10_result]
    return pd.DataFrame(rows, columns=["run", "network", "data set", "epochs (done/planned)", "train images",
                                       "device, batch, precision", "status", "test error (%)",
                                       "not in the CIFAR-10 table because"])


def _options_text(run: RunRecord) -> str:
    """The settings in which a run departs from its recipe and its network's defaults, e.g. an
    ablation's `shortcut=input_projection`; "recipe defaults" when it departs in none."""
    from .config import RECIPE_OWNED
    from .models import default_options
    from .recipes import RECIPES
    preset = RECIPES[run.config["recipe"]].for_arch(run.arch).as_dict() if run.config.get("recipe") in RECIPES else {}
    spec = ARCHITECTURES.get(run.arch)
    network = default_options(spec.family, spec.block) if spec else {}
    own = {key: preset.get(key) if preset.get(key) is not None else network.get(key) for key in RECIPE_OWNED}
    chosen = {key: run.config[key] for key in RECIPE_OWNED  # epochs and batch: the recipe column says them
              if key not in ("epochs", "batch_size") and run.config.get(key) not in (None, own[key])}
    return ", ".join(f"{key}={value}" for key, value in chosen.items()) or "recipe defaults"


def ablation_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Complete runs on the whole of a real data set (CIFAR-10, CIFAR-100, the JPEG mirror),
    one row per network, data set, recipe and chosen settings: an option's value against the
    recipe's own, as mean ± std (sample std) over seeds, with n and each seed's value."""
    complete = [run for run in runs if is_real_data(run) and run.is_result_on(run.label)]
    rows = [{"network": group[0].arch, "data set": group[0].label, "recipe": _recipe_text(group[0]),
             "epochs": _join(run.record["epochs_done"] for run in group), "settings": _options_text(group[0]),
             "test error (%): mean ± std": mean_std([run.test_error for run in group]), "n": len(group),
             EACH_SEED: _each_seed(group)}
            for group in _groups(complete)]
    columns = ["network", "data set", "recipe", "epochs", "settings", "test error (%): mean ± std", "n", EACH_SEED]
    return pd.DataFrame(rows, columns=columns).sort_values(["network", "data set", "settings"], ignore_index=True)


def _bench_rows(benches) -> list[dict]:
    if benches is None:
        return []
    if isinstance(benches, dict):
        benches = [benches]
    return [{**row, "device": (bench.get("device") or {}).get("name", "unknown device"),
             "batch_size": bench.get("batch_size")}
            for bench in benches for row in bench.get("rows", [])]


def speed_table(runs: list[RunRecord], bench=None) -> pd.DataFrame:
    """Parameters (as the papers write them, and exactly) and seconds per epoch: the seed's
    on a GTX 980 at the batch its code used for each network, and ours from the benchmark and
    from full-size training runs.
    `bench`: one benchmark record, a list of them, or None."""
    measured = [row for row in _bench_rows(bench) if row.get("path", "reproresnet") == "reproresnet"]
    timed = [run for run in runs if run.status == "complete" and run.full_training_set
             and (run.record.get("final") or {}).get("seconds_per_epoch") is not None]
    networks = [*REPRODUCED, *(row["network"] for row in REFERENCE  # the seed's timed networks too
                                if row["seed_seconds_per_epoch"] is not None and row["network"] not in REPRODUCED)]
    networks += sorted(({row["arch"] for row in measured} | {run.arch for run in timed}) - set(networks))
    rows = []
    for network in networks:
        quoted = reference(network) or {}
        here = [f"{row['seconds_per_epoch']:.1f} (benchmark, {row['device']}, batch {row['batch_size']})"
                for row in measured if row["arch"] == network and row.get("seconds_per_epoch") is not None]
        groups: dict[tuple, list[float]] = {}
        for run in timed:
            if run.arch == network:
                groups.setdefault((run.device, run.batch_size), []).append(
                    run.record["final"]["seconds_per_epoch"])
        for (device, batch), seconds in groups.items():
            many = f", median of {len(seconds)}" if len(seconds) > 1 else ""
            here.append(f"{statistics.median(seconds):.1f} (training, {device}, batch {batch}{many})")
        # MISSING: a network gone from the registry
        exact = f"{default_parameter_count(network):,}" if network in ARCHITECTURES else MISSING
        rows.append({"network": network, "parameters (paper)": quoted.get("paper_params") or MISSING,
                     "parameters (exact, ours)": exact,
                     SEED_SECONDS: _seed_seconds(quoted),
                     "s/epoch here": "; ".join(here) or NOT_MEASURED})
    return pd.DataFrame(rows)


def bench_table(benches) -> pd.DataFrame:
    """Every benchmark row, ours and the baseline's, with the device and batch it ran at."""
    columns = {"arch": "network", "path": "path", "device": "device", "batch_size": "batch",
               "seconds_per_epoch": "s/epoch", "images_per_second": "images/s",
               "data_images_per_second": "data images/s", "peak_memory_mb": "peak memory (MB)", "tflops": "TFLOPS"}
    return pd.DataFrame(_bench_rows(benches)).reindex(columns=list(columns)).round(1).rename(columns=columns)


def architecture_table(flops_max_depth: int = 999) -> pd.DataFrame:
    """Every registered network: family, block, depth, width, exact parameters and forward
    GFLOPs per 32x32 image. FLOPs are counted on the meta device (no arithmetic is done);
    networks deeper than `flops_max_depth` are left out of that column to keep it quick."""
    import torch

    from .models import build_model, describe_architectures, flops_per_image
    table = pd.DataFrame(describe_architectures())
    meta = torch.device("meta")

    def gflops(row) -> float | None:
        if row["depth"] > flops_max_depth:
            return None
        with meta:
            model = build_model(row["name"])
        return flops_per_image(model, meta) / 1e9
    table["GFLOPs/image"] = [gflops(row) for _, row in table.iterrows()]
    return table


def recipe_table() -> pd.DataFrame:
    """The training recipes as the library defines them (`reproresnet.recipes.RECIPES`): one
    column per recipe, one row per setting (narrow enough for the article), and each recipe's
    source as a numbered note."""
    from .recipes import NETWORK_OPTIONS, RECIPES
    at_lr_change = {"pytorch": "kept", "lasagne": "kept in lr units (Lasagne)", "reset": "reset"}
    columns = {}
    for recipe in RECIPES.values():
        archs = "every network" if recipe.warmup_archs is None else ", ".join(recipe.warmup_archs)
        network = ", ".join(f"{name} {getattr(recipe, name)}" for name in NETWORK_OPTIONS
                            if name != "bn_batch" and getattr(recipe, name) is not None)
        columns[recipe.name] = {
            "length": f"{recipe.length:,} {recipe.unit}s",
            "batch": ", ".join([str(recipe.batch_size)] + [f"{size} for {arch}" for arch, size in recipe.batch_size_for]),
            "lr": f"{recipe.lr:g}", "decay": f"×{recipe.gamma:g} at {', '.join(f'{m:,}' for m in recipe.milestones)}",
            "momentum": f"{recipe.momentum:g}{' (Nesterov)' if recipe.nesterov else ''}, "
                        f"{at_lr_change[recipe.momentum_form]} at an lr change",
            "weight decay": f"{recipe.weight_decay:g} on {recipe.weight_decay_on}",
            "warm-up": f"lr {recipe.warmup_lr:g} for {recipe.warmup_length:,} {recipe.unit}s ({archs})"
                       if recipe.warmup_length else "none",
            "BN batch": str(recipe.bn_batch or "mini-batch"), "normalization": recipe.normalization,
            "augmentation": f"{recipe.augmentation}, {recipe.padding} padding",
            "validation images": f"{recipe.val_size:,}",
            "network options": network or "the network's", "source": f"note {len(columns) + 1}"}
    table = pd.DataFrame(columns).rename_axis("setting").reset_index()
    table.attrs["notes"] = [f"{recipe.name}: {recipe.source}" for recipe in RECIPES.values()]
    return table


# "6.37", "-1.5", "≈5.7M", "3/3", "50,000", "6.50 ± 0.71"; and note numbers "3, 4".
_NUMBER = re.compile(r"[≈-]?\d[\d,./]*M?( ± \d[\d.]*)?|\d+(, \d+)+")
_NO_VALUE = {MISSING, NOT_RUN, FAILED, IN_PROGRESS, NOT_MEASURED, ""}


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


def html_table(table: pd.DataFrame, table_id: str) -> str:
    """The table as HTML with an id the book's checker looks for: number columns carry the
    class `num` (right-aligned by `_static/tables.css`), and the table's footnotes
    (`table.attrs["notes"]`) follow it as a numbered list."""
    numbers = _number_columns(table)

    def cell(tag: str, column, value) -> str:
        text = escape(_cell_text(value))
        if column not in numbers:  # identifiers may wrap after "_" and "/", never inside a word
            text = text.replace("_", "_<wbr>").replace("/", "/<wbr>")
        return f'<{tag} class="{"num" if column in numbers else "text"}">{text}</{tag}>'
    head = "".join(cell("th", column, column) for column in table.columns)
    body = "".join("<tr>" + "".join(cell("td", column, value) for column, value in zip(table.columns, row)) +
                   "</tr>" for row in table.itertuples(index=False))
    notes = "".join(f"<li>{escape(note)}</li>" for note in table.attrs.get("notes", []))
    return (f'<table id="{table_id}" class="report-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f'</table>' + (f'<ol class="table-notes">{notes}</ol>' if notes else ""))


def _runs_text(runs: list[RunRecord]) -> str:
    """"preact_resnet20 (3 epochs on 5,000 training images)" for each run, joined."""
    return "; ".join(f"{run.arch} ({run.record['epochs_done']} epochs on "
                     f"{run.record['data'].get('n_train', 0):,} training images)" for run in runs)


def _count(n: int, what: str) -> str:
    return f"{'no' if n == 0 else n} {what}{'' if n == 1 else 's'}"


def status_summary(runs: list[RunRecord]) -> str:
    """What the records hold now, in a few sentences for the book's introduction: complete
    runs on the full CIFAR-10 data, complete runs on the JPEG mirror (never CIFAR-10
    results), every other run, and the networks still without a CIFAR-10 result."""
    counted = [run for run in runs if run.is_cifar10_result]
    mirror = [run for run in runs if run.label == JPEG_MIRROR and run.status == "complete"]
    others = len(runs) - len(counted) - len(mirror)
    missing = [network for network in REPRODUCED if not any(run.arch == network for run in counted)]
    sentences = [f"The run records hold {_count(len(counted), 'complete run')} on the full CIFAR-10 data"
                 + (f": {_runs_text(counted)}" if counted else "") + ".",
                 f"On the JPEG mirror of CIFAR-10, a lossy copy whose numbers are never CIFAR-10 results, they "
                 f"hold {_count(len(mirror), 'complete run')}" + (f": {_runs_text(mirror)}" if mirror else "") + "."]
    if others:
        sentences.append(f"{_count(others, 'other run')} (other data, subsets, unfinished or diverged) "
                         f"{'is' if others == 1 else 'are'} listed on the results page apart from the CIFAR-10 table.")
    unfinished = Counter((run.arch, run.record["epochs_done"], run.record["epochs_planned"], run.label, run.device)
                         for run in runs if run.status == "running")
    if unfinished:
        sentences.append("Unfinished: " + "; ".join(
            f"{arch} × {n} ({done} of {planned} epochs on {label}, {device})"
            for (arch, done, planned, label, device), n in unfinished.items()) + ".")
    sentences.append(f"Still without a complete CIFAR-10 run: {', '.join(missing)}." if missing else
                     f"Each of {', '.join(REPRODUCED)} has at least one complete CIFAR-10 run.")
    return " ".join(sentences)


def budget_summary(runs: list[RunRecord]) -> str:
    """One sentence on what the CIFAR-10 column is computed from."""
    counted = [run for run in runs if run.is_cifar10_result]
    if not counted:
        return ("No complete run on the full CIFAR-10 data is recorded yet, so every network shows "
                f"\"{NOT_RUN}\" in the CIFAR-10 column.")
    per_network = ", ".join(f"{arch} × {n}" for arch, n in
                            pd.Series([run.arch for run in counted]).value_counts(sort=False).items())
    epochs = _join(run.record["epochs_done"] for run in counted)
    return (f"The CIFAR-10 column averages {len(counted)} complete run(s) ({per_network}) of "
            f"{epochs} epochs (recipe {_join(_recipe_text(run) for run in counted)}) on "
            f"{_join(run.device for run in counted)}.")


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


def _budget_title(record: dict) -> str:
    data = record["data"]
    return (f"{record['arch']} on {data.get('label', '?')}: {record['epochs_done']}/{record['epochs_planned']} "
            f"epochs, {data.get('n_train', 0):,} training images, batch "
            f"{(record.get('recipe') or {}).get('batch_size', '?')}, {(record.get('device') or {}).get('name', '?')}")


def plot_curves(source, paper_error: float | None = None, title: str | None = None) -> Figure:
    """Training loss and test error against epoch, as the seed plots them.

    `source`: a run directory, a RunRecord, a metrics DataFrame, or a list of these (one
    line each, e.g. the seeds of one network). `paper_error` (%) is drawn as a dashed
    reference line. The title names the network, data set and budget of the first run.
    """
    curves = _curve_sources(source)
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    loss_axes, error_axes = figure.subplots(1, 2)
    for name, metrics, _ in curves:
        loss_axes.plot(metrics["epoch"], metrics["train_loss"], label=name or None)
        error_axes.plot(metrics["epoch"], metrics["test_error"], label=name or None)
    if paper_error is not None:
        error_axes.axhline(paper_error, linestyle="--", color="black", linewidth=1,
                           label=f"paper ({paper_error:.2f} %)", gid="paper_error")
    loss_axes.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log")
    # Plain numbers on the log axis ("0.5", not "5×10⁻¹"); minor ticks labeled on short ranges only.
    loss_axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    loss_axes.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))
    error_axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    loss_axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    error_axes.set(xlabel="epoch", ylabel="test error (%)")
    for axes in (loss_axes, error_axes):
        axes.grid(alpha=0.3)
    if paper_error is not None or any(name for name, _, _ in curves):
        error_axes.legend(fontsize="small")
    records_ = [record for _, _, record in curves if record is not None]
    figure.suptitle(title if title is not None else _budget_title(records_[0]) if records_ else "",
                    fontsize="medium")
    return figure


def is_real_data(run: RunRecord) -> bool:
    """Trained on real images (CIFAR, the JPEG mirror, an image folder), not the synthetic stand-in."""
    return run.record["data"].get("dataset") != "synthetic" and run.label != "synthetic"


def curves_for_network(runs: list[RunRecord], network: str) -> Figure | None:
    """The network's curves: its complete CIFAR-10 runs with the paper's error as reference,
    else its longest other run on real data and that run's repeats, titled as not a CIFAR-10
    result and without the paper's line; None if the network has no real-data run with
    metrics (synthetic smoke runs are never plotted: they say nothing about the network)."""
    mine = [run for run in runs if run.arch == network and is_real_data(run) and run.metrics() is not None]
    counted = [run for run in mine if run.is_cifar10_result]
    if counted:
        quoted = reference(network) or {}
        return plot_curves(max(_groups(counted), key=len), paper_error=quoted.get("paper_error"))
    if not mine:
        return None
    # The longest run and its repeats with the same setting: one data set and budget per figure.
    anchor = max(mine, key=lambda run: run.record["epochs_done"])
    same = [run for run in mine if run.label == anchor.label and _setting(run) == _setting(anchor)]
    return plot_curves(same, title=f"{_budget_title(anchor.record)} (not a CIFAR-10 result)")


def run_figure(run_dir) -> Figure:
    """One run's curves; the paper's error is drawn only for a CIFAR-10 result."""
    run = RunRecord(Path(run_dir), records.read_run(run_dir))
    quoted = reference(run.arch) or {}
    return plot_curves(run, paper_error=quoted.get("paper_error") if run.is_cifar10_result else None)


def run_summary(record: dict) -> pd.DataFrame:
    """One run at a glance, as a one-column table."""
    final = record.get("final") or {}
    data = record["data"]
    rows = {"network": record["arch"], "data set": data.get("label"),
            "train / val / test images": f"{data.get('n_train', 0):,} / {data.get('n_val', 0):,} / "
                                         f"{data.get('n_test', 0):,}",
            "recipe": f"{record['config'].get('recipe')}, batch {(record.get('recipe') or {}).get('batch_size')}",
            "epochs done / planned": f"{record['epochs_done']} / {record['epochs_planned']}",
            "status": record["status"], "device": (record.get("device") or {}).get("name"),
            "parameters": f"{record.get('params', 0):,}",
            "test error (%)": _percent(final.get("test_error")),
            "selected by": final.get("selected_by", MISSING),
            "seconds per epoch": MISSING if final.get("seconds_per_epoch") is None
            else f"{final['seconds_per_epoch']:.1f}"}
    return pd.DataFrame({"": list(rows.values())}, index=list(rows))
