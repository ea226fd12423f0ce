"""The speed tables: seconds per epoch on GPUs against the seed's, and the benchmarks'
numbers, each rounded to what the spread of its timed rounds allows.

DataFrames of values with their records filed (`render.table`), as in `tables`.
"""

from __future__ import annotations

import statistics

import pandas as pd

from .. import architectures
from ..bench import thread_ratios
from ..records import RunRecord
from ..reference import PLANNED, REFERENCE, reference
from . import runs as chosen
from .render import MISSING, NOT_MEASURED, cell, one_decimal, table, to_noise
from .tables import SEED_SECONDS, _seed_seconds


def _bench_rows(benches) -> list[dict]:
    if benches is None:
        return []
    return [{**row, "device": (bench.get("device") or {}).get("name", "unknown device"),
             "device_type": (bench.get("device") or {}).get("type"), "batch_size": bench.get("batch_size"),
             "bench": bench}
            for bench in benches for row in bench.get("rows", [])]


SPEED_COLUMNS = ("network", "parameters: paper; exact", SEED_SECONDS, "our s/epoch", "our images/s", "measured on",
                 "measured by")


def _images_per_second(value) -> str:
    return f"{value:,.0f}"


def speed_table(runs: list[RunRecord], bench=None) -> pd.DataFrame:
    """Parameters (as the papers write them, and exactly) and seconds per epoch on GPUs: the
    seed's on a GTX 980, ours from the speed segments of every GPU training run (unfinished
    runs too, marked "partial") and from GPU benchmarks, each with the GPU, batch, precision and
    the runs that shared the GPU (packed processes, stacked seeds). CPU times are not GPU
    times: they stay in the benchmark table. `bench`: one benchmark record, a list, or None."""
    measured = [row for row in _bench_rows(bench) if row.get("path", "reproresnet") == "reproresnet"
                and row["device_type"] == "cuda" and row.get("seconds_per_epoch") is not None]
    timed = chosen.gpu_segments([run for run in runs if run.full_training_set])
    networks = [*PLANNED, *(row["network"] for row in REFERENCE  # the seed's timed networks too
                             if row["seed_seconds_per_epoch"] is not None and row["network"] not in PLANNED)]
    networks += sorted(({row["arch"] for row in measured} | {run.arch for run, _ in timed}) - set(networks))
    rows = []
    for network in networks:
        quoted = reference(network) or {}
        exact = architectures.row(network)
        params = (quoted.get("paper_params") or MISSING, exact["params"] if exact else None)
        base = dict(zip(SPEED_COLUMNS[:3], (network, cell(params, format=_paper_and_exact, worded=True),
                                            _seed_seconds(quoted))))
        here = [dict(zip(SPEED_COLUMNS[3:], (cell(value, runs_) for value in values)))
                for values, runs_ in _training_speeds([(run, s) for run, s in timed if run.arch == network])]
        here += [dict(zip(SPEED_COLUMNS[3:], (cell(value, [row["bench"]]) for value in (
                     row["seconds_per_epoch"], row["images_per_second"], f"{row['device']}, batch {row['batch_size']}",
                     "benchmark"))))
                 for row in measured if row["arch"] == network]
        rows += [{**base, **measurement} for measurement in here] or \
            [{**base, **dict.fromkeys(SPEED_COLUMNS[3:]), "our s/epoch": NOT_MEASURED}]
    return table(rows, columns=SPEED_COLUMNS, formats={"our s/epoch": one_decimal, "our images/s": _images_per_second},
                 quoted=SPEED_COLUMNS[1:3])


def _paper_and_exact(params) -> str:
    """"1.7M; 1,703,258": the paper's count as it writes it, and ours exactly."""
    paper, exact = params
    return f"{paper}; " + (MISSING if exact is None else f"{exact:,}")


def _training_speeds(timed: list[tuple[RunRecord, dict]]) -> list[tuple[tuple, list[RunRecord]]]:
    """One network's GPU segments grouped by GPU, batch, precision and sharing: (median s/epoch,
    median images/s, where, by what) and the runs behind them."""
    groups: dict[tuple, list] = {}
    for run, segment in timed:
        key = (segment.gpu or run.device, run.batch_size, segment.precision, *chosen.sharing(segment))
        groups.setdefault(key, []).append((run, segment))
    speeds = []
    for (gpu, batch, precision, pack, stacked), members in groups.items():
        group = list({run.name: run for run, _ in members}.values())
        shared = ", ".join(f"{n} {what}" for n, what in ((pack, "runs packed"), (stacked, "seeds stacked")) if n > 1)
        unfinished = [run for run in group if run.status != "complete"]
        epochs = chosen.join(f"{run.record.epochs_done}/{run.record.epochs_planned}" for run in unfinished)
        by = f"training, {chosen.count(len(group), 'run')}" + (f", partial ({epochs} epochs)" if unfinished else "")
        speeds.append(((statistics.median(s.seconds_per_epoch for _, s in members),
                        statistics.median(s.images_per_second for _, s in members),
                        f"{gpu}, batch {batch}, {precision}" + (f", {shared}" if shared else ""), by), group))
    return speeds


def _relative_noise(row: dict, field: str = "seconds_per_step") -> float | None:
    """A benchmark row's spread of `field` as a fraction: half the range of its timed rounds'
    values (`<field>_range`) over the value."""
    low_high = row.get(f"{field}_range")
    if not low_high or not row.get(field):
        return None
    return (low_high[1] - low_high[0]) / 2 / row[field]


def _rounded(row: dict, field: str, noise: float | None, bench: dict):
    """A benchmark's number, linked to its record, rounded to its noise."""
    return cell(row.get(field), [bench], format=_rounded_to(noise))


def _rounded_to(noise: float | None):
    return lambda value: to_noise(value, noise)


def bench_table(benches) -> pd.DataFrame:
    """Every benchmark row, ours and the baseline's, with the device and batch it ran at, each
    number rounded to what the spread of its timed rounds allows. A stacked path names its
    networks (`stacked-3`: images/s of the three together)."""
    rows = []
    for row in _bench_rows(benches):
        noise, data_noise, bench = _relative_noise(row), _relative_noise(row, "data_images_per_second"), row["bench"]
        rows.append({"network": row["arch"], "path": cell(row["path"], [bench]), "device": cell(row["device"], [bench]),
                     "batch": cell(row["batch_size"], [bench]),
                     "s/epoch": _rounded(row, "seconds_per_epoch", noise, bench),
                     "images/s": _rounded(row, "images_per_second", noise, bench),
                     "data images/s": _rounded(row, "data_images_per_second", data_noise, bench),
                     "peak memory (MB)": cell(row.get("peak_memory_mb"), [bench], format=_images_per_second),
                     "TFLOPS": _rounded(row, "tflops", noise, bench)})
    return table(rows, columns=["network", "path", "device", "batch", "s/epoch", "images/s", "data images/s",
                                "peak memory (MB)", "TFLOPS"])


def thread_rules_table(bench: dict) -> pd.DataFrame:
    """A CPU benchmark's thread rules (`bench --thread-rules`): per network and rule, the threads
    it chose and the load average over its rounds, its images per second and its ratio to the
    free-core rule, each number linked to the benchmark's record."""
    speedups = {(r["arch"], r["rule"]): r["speedup"] for r in thread_ratios(bench.get("thread_rules") or [])}
    rows = []
    for row in bench.get("thread_rules") or []:
        loads, noise = row["load_averages"], _relative_noise(row)
        threads = tuple(sorted(set(row["threads"])))
        rows.append({"network": row["arch"], "thread rule": row["rule"],
                     "CPU threads": cell(threads, [bench], format=_range, worded=len(threads) > 1),
                     "load average (min–max)": cell((min(loads), max(loads)), [bench], worded=True,
                                                    format=lambda low_high: "{:.1f}–{:.1f}".format(*low_high)),
                     "images/s": cell(row["images_per_second"], [bench], format=_rounded_to(noise)),
                     "vs the free-core rule": cell(speedups.get((row["arch"], row["rule"]), 1.0), [bench],
                                                   format=lambda ratio: f"{ratio:.2f}×", worded=True)})
    return table(rows, columns=["network", "thread rule", "CPU threads", "load average (min–max)", "images/s",
                                "vs the free-core rule"])


def _range(threads: tuple) -> str:  # "1–4": a range in words, not one number
    return "–".join(map(str, threads))
