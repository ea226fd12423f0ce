"""The book's figures: training curves of a run or of a network's seeds, and test error
against size beside the papers' and the ReScience reproduction's numbers. Needs matplotlib,
not torch.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from .. import architectures, records
from ..config import CIFAR10, JPEG_MIRROR
from ..records import RunRecord
from ..reference import REFERENCE, reference
from . import runs as chosen
from .render import title as network_title
from .runs import count, is_real_data
from .tables import RESCIENCE


def _curve_sources(source) -> list[tuple[str, pd.DataFrame, dict | None]]:
    items = source if isinstance(source, (list, tuple)) else [source]
    curves = []
    for item in items:
        if isinstance(item, pd.DataFrame):
            curves.append(("", item, None))
            continue
        run = item if isinstance(item, RunRecord) else RunRecord.read(item)
        metrics = run.metrics()
        if metrics is None:
            raise ValueError(f"{run.run_dir / records.METRICS_FILE}: no metrics to plot")
        curves.append((f"seed {run.config.get('seed', '?')}", metrics, run.record))
    return curves


def _budget_title(record: records.Record, note: str = "") -> str:
    """The network, data set and budget of a run, in two lines; `note` ends the first."""
    data = record.data
    name = record.arch
    name = name if network_title(name) == name else f"{network_title(name)} ({name})"
    return (f"{name} on {data.label or '?'}: {record.epochs_done} of {record.epochs_planned} "
            f"epochs{note}\n{data.n_train or 0:,} training images, batch "
            f"{(record.recipe or {}).get('batch_size', '?')}, {(record.device and record.device.name) or '?'}")


def lr_drops(record: records.Record) -> list[float]:
    """The epochs at which the run's learning rate drops: its schedule's milestones."""
    schedule = record.schedule or {}
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
    planned = max([record.epochs_planned for record in records_] + [done])
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
        group = max(chosen.groups(counted), key=len)
        return plot_curves(group, **_references(group[0]))
    if not mine:
        return None
    # The longest run and its repeats with the same setting: one data set and budget per figure.
    anchor = max(mine, key=lambda run: run.record.epochs_done)
    same = [run for run in mine if run.label == anchor.label and chosen.experiment(run) == chosen.experiment(anchor)]
    return plot_curves(same, title=_budget_title(anchor.record, " (not a CIFAR-10 result)"),
                       **_references(anchor))


def run_figure(run) -> Figure:
    """One run's curves (a run directory or its RunRecord), with the paper's and the seed's
    errors as `_references` draws them."""
    run = run if isinstance(run, RunRecord) else RunRecord.read(run)
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
                _label(axes, f"{network_title(network)} {row['paper_error']:.2f}", (x / shift, row["paper_error"]),
                       left=True)
            if row.get("seed_error") is not None:
                kinds.setdefault(f"{RESCIENCE} (single run)", [dict(marker="^", color="C3"), []])[1].append(
                    (x * shift, row["seed_error"]))
                text = f"{row['seed_error']:.2f}" if both else f"{network_title(network)} {row['seed_error']:.2f}"
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
        f", and {count(len(ours), 'complete run')} of ours" if ours else "; no complete run of ours yet"),
        fontsize="medium")
    return figure

