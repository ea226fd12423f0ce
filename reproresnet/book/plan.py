"""Where the reproduction stands and what is left: the status table and line (the introduction's
and the README's), the plan and its GPU cost, the claims and how they are decided.

DataFrames of values with their records filed (`render.table`), as in `tables`; a cell that is
a sentence (where a network stands, a verdict) is text, linked to the records behind it.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from ..config import CIFAR10, JPEG_MIRROR
from ..records import RunRecord
from ..reference import HE2016, PLAN_TIERS, PLANNED, PLANNED_SEEDS, SEED_STATISTIC, UNIT_COMPARISONS, WIDE_VS_DEEP, \
    reference
from . import runs as chosen
from .render import MISSING, NOT_MEASURED, NOT_RUN, cell, hours, markdown_text, mean_std, one_decimal, table
from .runs import join
from .tables import RESCIENCE


def _standing(runs: list[RunRecord], network: str, label: str):
    """Where the network stands on `label`, a sentence linked to its runs: mean ± std over its
    complete runs, with n of the planned seeds and the epochs, and how far the unfinished ones
    are; or "not run"."""
    mine = chosen.plan_runs(runs, network, label)
    if not mine:
        return cell(NOT_RUN)
    group = chosen.best_group(mine)
    complete = [run for run in group if run.is_result_on(label)]
    parts = [f"{mean_std([run.test_error for run in complete])} ({len(complete)} of {len(PLANNED_SEEDS)} seeds, "
             f"{join(run.record.epochs_done for run in complete)} epochs)"] if complete else []
    rest = [run for run in group if run not in complete]
    return cell("; ".join(parts + ([chosen.unfinished_text(rest)] if rest else [])), group)


def _gpu_hours(runs: list[RunRecord], network: str) -> tuple:
    """GPU-hours the network's runs on CIFAR-10 and its mirror took, and an estimate of those
    its planned runs still need: their missing epochs at its GPU-seconds per epoch
    (`epoch_cost`: measured, or estimated from another network's measured speed)."""
    plans = [chosen.plan_runs(runs, network, label) for label in (CIFAR10, JPEG_MIRROR)]
    mine = [run for plan in plans for run in plan]
    spent = sum(map(chosen.gpu_seconds, mine))
    spent_cell = cell(spent, mine) if spent else None
    if network not in PLANNED:
        return spent_cell, "not planned"
    cost = chosen.epoch_cost(runs, network)
    if cost is None:
        return spent_cell, NOT_MEASURED
    planned = max((run.record.epochs_planned for run in mine), default=chosen.planned_epochs(network))
    done = max((sum(min(run.record.epochs_done, planned) for run in chosen.best_group(group)[:len(PLANNED_SEEDS)]
                    if chosen.continues(run)) for group in plans if group), default=0)
    needed = (len(PLANNED_SEEDS) * planned - done) * cost.seconds
    how = cost.gpus if cost.measured_on is None else f"estimated from {cost.measured_on}; {cost.gpus}"
    return spent_cell, cell(needed, cost.runs, format=lambda seconds: f"≈{hours(seconds)} ({how})", worded=True)


STATUS_PAPER, STATUS_SEED = "paper (%), statistic", f"{RESCIENCE} (%), {SEED_STATISTIC}"
STATUS_MIRROR = "ours, JPEG mirror: not CIFAR-10 (%)"


def status_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Where the reproduction stands, one row per network of the plan and of the seed: the
    paper's error and statistic, the seed's, ours on CIFAR-10 and on the JPEG mirror (mean ±
    std, n of the planned seeds, epochs; or how far the unfinished runs are), and the GPU-hours
    spent and still needed. The introduction shows it first, and the README the same table."""
    rows = []
    for network in chosen.status_networks():
        quoted = reference(network) or {}
        statistic = (quoted.get("paper_statistic") or (MISSING,))[0]
        spent, needed = _gpu_hours(runs, network)
        rows.append({"network": network,
                     STATUS_PAPER: None if quoted.get("paper_error") is None else
                     cell((quoted["paper_error"], statistic), format=_with_statistic, worded=True),
                     STATUS_SEED: quoted.get("seed_error"),
                     f"ours, {CIFAR10} (%)": _standing(runs, network, CIFAR10),
                     STATUS_MIRROR: _standing(runs, network, JPEG_MIRROR),
                     "GPU-hours spent": spent, "GPU-hours to finish (est.)": needed})
    return table(rows, formats={"GPU-hours spent": hours}, quoted=[STATUS_PAPER, STATUS_SEED], status_words=True)


def _with_statistic(error_statistic) -> str:
    return "{:.2f}, {}".format(*error_statistic)


def status_line(runs: list[RunRecord]) -> str:
    """One sentence above the status table: how many planned runs are complete, on CIFAR-10
    and on the JPEG mirror, and how far the unfinished ones are."""
    def complete(label: str) -> int:
        return sum(min(len(PLANNED_SEEDS), sum(run.is_result_on(label) for run in chosen.plan_runs(runs, network, label)))
                   for network in PLANNED)
    plan = len(PLANNED) * len(PLANNED_SEEDS)
    unfinished = [run for network in PLANNED for run in chosen.plan_runs(runs, network, JPEG_MIRROR)
                  if run.status != "complete"]
    return (f"{complete(CIFAR10)} of {plan} planned CIFAR-10 runs are complete ({len(PLANNED)} networks × "
            f"{len(PLANNED_SEEDS)} seeds, in {len(PLAN_TIERS)} tiers). On the JPEG mirror of CIFAR-10, whose numbers "
            "are not CIFAR-10 results: "
            f"{complete(JPEG_MIRROR)} of {plan} complete" +
            (f"; {chosen.unfinished_text(unfinished)}" if unfinished else "") + ".")


PLAN_COLUMNS = ("tier", "network", "runs", "epochs per run", "GPU-seconds per epoch, one run", "GPU-hours, its runs",
                "how the time is known")


def plan_table(runs: list[RunRecord]) -> pd.DataFrame:
    """The plan, one row per network in tier order, and what it costs on a GPU: its runs (the
    planned seeds), epochs per run (its recipe), one run's GPU-seconds per epoch (`epoch_cost`)
    and the GPU-hours of all its runs; a last row sums them where every network is known."""
    rows, total, behind = [], 0.0, {}
    for tier, networks in enumerate(PLAN_TIERS, 1):
        for network in networks:
            epochs, cost = chosen.planned_epochs(network), chosen.epoch_cost(runs, network)
            if cost is None:
                known = (NOT_MEASURED, None, "no GPU run of any network is recorded yet")
                total = math.nan
            else:
                seconds = len(PLANNED_SEEDS) * epochs * cost.seconds
                total += seconds
                behind.update({run.name: run for run in cost.runs})
                known = tuple(cell(value, cost.runs) for value in (cost.seconds, seconds, cost.basis))
            rows.append(dict(zip(PLAN_COLUMNS, (tier, network, len(PLANNED_SEEDS), epochs, *known))))
    if not math.isnan(total):
        rows.append(dict(zip(PLAN_COLUMNS, ("all", "the whole plan", len(PLANNED) * len(PLANNED_SEEDS), None, None,
                                            cell(total, list(behind.values())), "the sum of the rows above"))))
    return table(rows, columns=PLAN_COLUMNS, quoted=["tier", "runs", "epochs per run"],  # the plan's, from the library
                 formats={"epochs per run": lambda epochs: f"{epochs:g}", "GPU-seconds per epoch, one run": one_decimal,
                          "GPU-hours, its runs": hours})


def plan_line() -> str:
    """The plan in one sentence, from `reference.PLAN_TIERS` and the recipes."""
    tiers = "; ".join(f"tier {number}: {', '.join(networks)}" for number, networks in enumerate(PLAN_TIERS, 1))
    epochs = join(f"{chosen.planned_epochs(network):g}" for network in PLANNED)
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


def _absolute_verdict(quoted: float, group: list[RunRecord]):
    errors = [run.test_error for run in group]
    mean, sd = statistics.mean(errors), statistics.stdev(errors)
    low, high = mean - BAND_SDS * sd, mean + BAND_SDS * sd
    inside = low <= quoted <= high
    return cell(f"{'reproduced' if inside else 'not reproduced'}: {quoted:.2f} lies {'in' if inside else 'outside'} "
                f"{low:.2f}–{high:.2f}", group)


def _comparison_verdict(better: list[RunRecord], worse: list[RunRecord], match: bool):
    """`better` is claimed lower than `worse` (`match`: claimed equal to it)."""
    a, b = [run.test_error for run in better], [run.test_error for run in worse]
    difference = statistics.mean(b) - statistics.mean(a)
    margin = BAND_SDS * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if match:
        verdict = "reproduced" if abs(difference) < margin else "not reproduced"
    else:
        verdict = "reproduced" if difference > margin else "refuted" if difference < -margin else "undecided"
    return cell(f"{verdict}: {difference:+.2f} points, {BAND_SDS} standard errors {margin:.2f}", better + worse)


def _claim_row(claim: str, source: str, networks: tuple, runs: list[RunRecord], verdict) -> dict:
    """A claims-table row: its records (all planned seeds of each of its networks), our mean ±
    sd of each, and the verdict `verdict(groups)` once every group is complete."""
    groups = [chosen.tested(runs, network) for network in networks]
    behind = [run for group in groups for run in group]
    tested = (f"{' and '.join(networks)}: {len(PLANNED_SEEDS)} complete CIFAR-10 runs" +
              (" each" if len(networks) > 1 else ""))
    ours = "; ".join(f"{network} {_standing(runs, network, CIFAR10).value}" for network in networks)
    started = [run for network in networks for run in chosen.plan_runs(runs, network, CIFAR10)]
    complete = all(len(group) >= len(PLANNED_SEEDS) for group in groups)
    unplanned = [network for network in networks if network not in PLANNED]
    done = sum(min(len(group), len(PLANNED_SEEDS)) for group in groups)
    waiting = (f"not tested: {', '.join(unplanned)} is not in the plan" if unplanned else
               "not tested yet: no complete run" if not done else
               cell(f"not tested yet ({done} of {len(networks) * len(PLANNED_SEEDS)} complete runs)", behind))
    return {"claim": claim, "source": source, "tested by": cell(tested, behind),
            "ours on CIFAR-10 (%)": cell(ours, started) if started else ours.replace(NOT_RUN, "not run yet"),
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
    for network in chosen.status_networks():
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
    return table(rows, quoted=["claim", "source", "tested by"])  # what the plan says would test it


def budget_summary(runs: list[RunRecord]) -> str:
    """One sentence on what the CIFAR-10 column is computed from, as Markdown (the results
    notebook shows it so): the records' strings in it escaped (`markdown_text`)."""
    counted = [run for run in runs if run.is_cifar10_result]
    if not counted:
        return ("No complete run on the full CIFAR-10 data is recorded yet, so every network shows "
                f"\"{NOT_RUN}\" in the CIFAR-10 column.")
    per_network = ", ".join(f"{markdown_text(arch)} × {n}" for arch, n in
                            pd.Series([run.arch for run in counted]).value_counts(sort=False).items())
    epochs = join(run.record.epochs_done for run in counted)
    return (f"The CIFAR-10 column averages {len(counted)} complete run(s) ({per_network}) of "
            f"{epochs} epochs (recipe {markdown_text(join(chosen.recipe_text(run) for run in counted))}) on "
            f"{markdown_text(join(run.device for run in counted))}.")
