"""Tables and figures of the book, computed from the run records under `results/`.

The notebooks only call these functions and show what they return, so everything a
reader sees is tested here. A number reaches the CIFAR-10 column only from a complete
run on the full CIFAR-10 data; every other run is listed apart, labeled for what it is.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from . import records
from .config import RUNTIME_SETTINGS
from .models import describe_architectures
from .records import BENCH_FORMAT, CIFAR10, RunRecord, load_benches, load_runs  # noqa: F401 (the notebooks' API)
from .reference import REFERENCE, REPRODUCED, SEED_BATCH_SIZE, SEED_DEVICE, reference

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


def _data_text(run: RunRecord) -> str:
    data = run.record["data"]
    val = f" + {data['n_val']:,} val" if data.get("n_val") else ""
    return f"{run.label} ({data.get('n_train', 0):,} train{val}, {data.get('n_test', 0):,} test)"


def _join(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def error_table(runs: list[RunRecord]) -> pd.DataFrame:
    """CIFAR-10 test error (%): the original paper, the seed, and this project.

    "this project" is the mean ± std over seeds of complete full CIFAR-10 runs of one
    setting (runs that differ in more than seed and runtime get a row each). A network
    without such a run shows "not run", or "failed" if its CIFAR-10 runs diverged, or
    "in progress" if one is still running. Networks the sources quote come first.
    """
    cifar = [run for run in runs if run.label == CIFAR10]
    networks = [row["network"] for row in REFERENCE]
    networks += sorted({run.arch for run in cifar if run.is_cifar10_result} - set(networks))
    rows = []
    for network in networks:
        quoted = reference(network) or {}
        base = {"network": network, "original paper": _percent(quoted.get("paper_error")),
                "seed reproduction": _percent(quoted.get("seed_error"))}
        counted = [run for run in cifar if run.arch == network and run.is_cifar10_result]
        failed = sum(run.arch == network and run.status == "diverged" for run in cifar)
        groups: dict[tuple, list[RunRecord]] = {}
        for run in counted:
            groups.setdefault(_setting(run), []).append(run)
        for group in groups.values():
            result = mean_std([run.test_error for run in group])
            rows.append({**base, "this project": result + (f" ({failed} failed)" if failed else ""),
                         "n": len(group), "epochs": _join(run.record["epochs_done"] for run in group),
                         "recipe": _join(_recipe_text(run) for run in group),
                         "data set": _join(_data_text(run) for run in group),
                         "device": _join(run.device for run in group)})
        if not groups:
            running = any(run.arch == network and run.status == "running" for run in cifar)
            result = FAILED if failed else IN_PROGRESS if running else NOT_RUN
            rows.append({**base, "this project": result, "n": 0, "epochs": MISSING, "recipe": MISSING,
                         "data set": MISSING, "device": MISSING})
    return pd.DataFrame(rows, columns=["network", "original paper", "seed reproduction", "this project",
                                       "n", "epochs", "recipe", "data set", "device"])


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
    metrics = run.metrics()
    if metrics is None or "test_error" not in metrics or metrics["test_error"].dropna().empty:
        return MISSING
    last = metrics.dropna(subset=["test_error"]).iloc[-1]
    return f"{last['test_error']:.2f} (epoch {int(last['epoch'])})"


def other_runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every run the error table does not average: smoke tests, synthetic or mirrored data,
    subsets, unfinished and diverged runs. None of these is a CIFAR-10 result."""
    rows = [{"run": run.name, "network": run.arch, "data set": run.label,
             "epochs (done/planned)": f"{run.record['epochs_done']}/{run.record['epochs_planned']}",
             "train images": f"{run.record['data'].get('n_train', 0):,}", "device": run.device,
             "status": run.status, "test error (%)": _last_test_error(run),
             "not in the CIFAR-10 table because": _why_not_counted(run)}
            for run in runs if not run.is_cifar10_result]
    return pd.DataFrame(rows, columns=["run", "network", "data set", "epochs (done/planned)", "train images",
                                       "device", "status", "test error (%)",
                                       "not in the CIFAR-10 table because"])


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
    on a GTX 980 at batch 64, and ours from the benchmark and from full-size training runs.
    `bench`: one benchmark record, a list of them, or None."""
    measured = [row for row in _bench_rows(bench) if row.get("path", "reproresnet") == "reproresnet"]
    timed = [run for run in runs if run.status == "complete" and run.full_training_set
             and (run.record.get("final") or {}).get("seconds_per_epoch") is not None]
    networks = list(REPRODUCED)
    networks += sorted(({row["arch"] for row in measured} | {run.arch for run in timed}) - set(networks))
    params = {row["name"]: row["params"] for row in describe_architectures()}
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
        seed_seconds = quoted.get("seed_seconds_per_epoch")
        exact = f"{params[network]:,}" if network in params else MISSING  # gone from the registry
        rows.append({"network": network, "parameters (paper)": quoted.get("paper_params") or MISSING,
                     "parameters (exact, ours)": exact,
                     f"s/epoch seed ({SEED_DEVICE}, batch {SEED_BATCH_SIZE})":
                         MISSING if seed_seconds is None else f"{seed_seconds:.0f}",
                     "s/epoch here": "; ".join(here) or NOT_MEASURED})
    return pd.DataFrame(rows)


def bench_table(benches) -> pd.DataFrame:
    """Every benchmark row, ours and the baseline's, with the device and batch it ran at."""
    columns = ["arch", "path", "device", "batch_size", "seconds_per_epoch", "images_per_second",
               "data_images_per_second", "warmup_seconds", "peak_memory_mb", "tflops"]
    return pd.DataFrame(_bench_rows(benches)).reindex(columns=columns).round(2)


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
    """The training recipes as the library defines them (`reproresnet.recipes.RECIPES`)."""
    from .recipes import RECIPES
    rows = []
    for recipe in RECIPES.values():
        archs = "every network" if recipe.warmup_archs is None else ", ".join(recipe.warmup_archs)
        warmup = (f"lr {recipe.warmup_lr:g} for {recipe.warmup_length:,} {recipe.unit}s ({archs})"
                  if recipe.warmup_length else "none")
        batch = ", ".join([str(recipe.batch_size)] + [f"{size} for {arch}" for arch, size in recipe.batch_size_for])
        rows.append({"recipe": recipe.name, "length": f"{recipe.length:,} {recipe.unit}s",
                     "batch": batch, "lr": f"{recipe.lr:g}",
                     "decay": f"×{recipe.gamma:g} at {', '.join(f'{m:,}' for m in recipe.milestones)}",
                     "momentum": f"{recipe.momentum:g}{' (Nesterov)' if recipe.nesterov else ''}",
                     "weight decay": f"{recipe.weight_decay:g} on {recipe.weight_decay_on}",
                     "BN batch": recipe.bn_batch or "mini-batch", "data": f"{recipe.normalization}, "
                     f"{recipe.augmentation}, val {recipe.val_size:,}", "warm-up": warmup, "source": recipe.source})
    return pd.DataFrame(rows)


def html_table(table: pd.DataFrame, table_id: str) -> str:
    """The table as HTML with an id the book's checker looks for."""
    return table.to_html(index=False, table_id=table_id, border=0, na_rep=MISSING)


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


def curves_for_network(runs: list[RunRecord], network: str) -> Figure | None:
    """The network's curves: its complete CIFAR-10 runs with the paper's error as reference,
    else its longest other run and that run's repeats, titled as not a CIFAR-10 result and
    without the paper's line; None if the network has no run with metrics."""
    mine = [run for run in runs if run.arch == network and run.metrics() is not None]
    counted = [run for run in mine if run.is_cifar10_result]
    if counted:
        groups: dict[tuple, list[RunRecord]] = {}
        for run in counted:
            groups.setdefault(_setting(run), []).append(run)
        quoted = reference(network) or {}
        return plot_curves(max(groups.values(), key=len), paper_error=quoted.get("paper_error"))
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
