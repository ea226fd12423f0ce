"""What a benchmark record (`bench.json`) holds: written (`new_record`, `row`, `compiled`,
`ratios`), read (`load_benches`) and printed (`format_bench`) here. `bench.py` measures; the
report and the book read the records without torch.

A record: its provenance (device, versions, git), the settings of the timing (batch, warm-up
and timed steps, `settings`: every BenchSettings value, the speedups and TF32 flags), the
images of one epoch (`epoch_images`), paths that could not run here (`unavailable`), one row
per network and path (`row`; the library's eager path also says what torch.compile built,
`compiled`, and its real epochs), the ratios of each path against the plain baseline
(`ratios`), and `complete` once every network is done (the record is rewritten after each).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .. import records
from ..config import CIFAR_TRAIN_IMAGES

BENCH_FORMAT = "reproresnet-bench/1"
FREE_CORES = "free cores"  # the thread rule `config.cpu_threads` applies by default
# A training step costs about 3 forward passes: the forward, then the backward's gradients
# with respect to activations and to weights, each about as many FLOPs as the forward.
TRAINING_FLOPS_PER_FORWARD = 3


def new_record(*, provenance: dict, batch_size: int, steps: int, warmup_steps: int, settings: dict,
               unavailable: list[dict]) -> dict:
    """A benchmark's record before its first network."""
    return {"format": BENCH_FORMAT, "complete": False, **provenance, "batch_size": batch_size, "steps": steps,
            "warmup_steps": warmup_steps, "epoch_images": CIFAR_TRAIN_IMAGES, "settings": settings,
            "created": records.now(), "rows": [], "ratios": [], "unavailable": unavailable}


def finish(record: dict) -> None:
    record.update(complete=True, finished=records.now())


def row(arch: str, *, path: str, networks: int, engine: str, precision: str, batch_size: int, forward_flops: int,
        round_seconds: list[float], data_rates: list[float], warmup_seconds: float, peak_memory_mb: float | None,
        losses: list[float]) -> dict:
    """One path's numbers on one network: the median of its rounds' seconds per step (images per
    second count every network a step trains), its input pipeline's images per second, its
    warm-up, peak memory and TFLOP/s, and an epoch of the recipes' images at that speed."""
    per_step = statistics.median(round_seconds)
    images_per_second = networks * batch_size / per_step
    return {"arch": arch, "path": path, "networks": networks, "engine": engine, "precision": precision,
            "seconds_per_epoch": networks * CIFAR_TRAIN_IMAGES / images_per_second,
            "images_per_second": images_per_second,
            "data_images_per_second": statistics.median(data_rates),
            "data_images_per_second_range": [min(data_rates), max(data_rates)],
            "warmup_seconds": warmup_seconds, "peak_memory_mb": peak_memory_mb,
            "tflops": TRAINING_FLOPS_PER_FORWARD * forward_flops * images_per_second / 1e12,
            "seconds_per_step": per_step, "seconds_per_step_range": [min(round_seconds), max(round_seconds)],
            "forward_flops_per_image": forward_flops, "loss_finite": math.isfinite(sum(losses))}


def thread_row(arch: str, *, rule: str, batch_size: int, threads: list[int], load_averages: list[float],
               round_seconds: list[float]) -> dict:
    """One CPU thread rule on one network: the threads it chose and the 1-minute load average
    (this benchmark's own threads included) at each round, and the median round's seconds per step."""
    per_step = statistics.median(round_seconds)
    return {"arch": arch, "rule": rule, "threads": threads, "load_averages": load_averages,
            "seconds_per_step": per_step, "seconds_per_step_range": [min(round_seconds), max(round_seconds)],
            "images_per_second": batch_size / per_step, "round_seconds": round_seconds}


def thread_ratios(rows: list[dict]) -> list[dict]:
    """Each thread rule's images per second over the free-core rule's, per network."""
    base = {row["arch"]: row for row in rows if row["rule"] == FREE_CORES}
    return [{"arch": row["arch"], "rule": row["rule"],
             "speedup": row["images_per_second"] / base[row["arch"]]["images_per_second"]}
            for row in rows if row["rule"] != FREE_CORES and row["arch"] in base]


def compiled(row: dict, *, graphs: int, during_timing: int, cudagraph_skips: int, speedups: dict) -> list[str]:
    """Into the library path's `row`: what torch.compile built for the network (graphs, those
    during the timed steps), the CUDA graphs it skipped, the speedups, and a warning for each
    thing that taints the timing; returns the warnings."""
    warnings = [f"torch.compile built {during_timing} graph(s) during the timed steps"] if during_timing else []
    if cudagraph_skips:
        warnings.append(f"CUDA graphs were skipped {cudagraph_skips} time(s): those steps ran without them")
    row.update(graphs=graphs, graphs_during_timing=during_timing, cudagraph_skips=cudagraph_skips,
               speedups=speedups, warnings=warnings)
    return warnings


def ratios(rows: list[dict]) -> list[dict]:
    """path / baseline, per network and path: step throughput (every network's images) and
    input-pipeline throughput."""
    base = {row["arch"]: row for row in rows if row["path"] == "baseline"}
    return [{"arch": row["arch"], "path": row["path"],
             "step_speedup": row["images_per_second"] / base[row["arch"]]["images_per_second"],
             "data_speedup": row["data_images_per_second"] / base[row["arch"]]["data_images_per_second"]}
            for row in rows if row["path"] != "baseline" and row["arch"] in base]


def load_benches(results_dir) -> tuple[list[dict], list[dict]]:
    """Every `bench-*/bench.json` under `results_dir`: (benchmarks, problems)."""
    benches, problems = [], []
    for path in sorted(Path(results_dir).glob("bench-*/bench.json")):
        try:
            bench = json.loads(path.read_text())
            if not isinstance(bench, dict) or bench.get("format") != BENCH_FORMAT:
                found = bench.get("format") if isinstance(bench, dict) else type(bench).__name__
                raise ValueError(f"format {found!r} is not {BENCH_FORMAT!r}")
            if not isinstance(bench.get("rows"), list):
                raise ValueError("field 'rows' missing")
            if "thread_rules" in bench and not (isinstance(bench["thread_rules"], list) and
                                                isinstance(bench.get("load_at_start"), (int, float))):
                raise ValueError("fields 'thread_rules' (a list) and 'load_at_start' (a number) do not go together")
            if not records.is_safe_name(path.parent.name):  # it names the benchmark's page
                raise ValueError(f"its folder's name {path.parent.name!r} is not valid: expected {records.NAME_RULE}")
        except (OSError, UnicodeDecodeError, ValueError) as error:
            problems.append({"path": str(path), "problem": str(error)})
            continue
        benches.append({**bench, "name": path.parent.name})  # its page in the book: book/runs/<name>
    return benches, problems


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
             f"rounds (median round); epoch = {record.get('epoch_images', CIFAR_TRAIN_IMAGES):,} images",
             f"reproresnet path: {', '.join(used) or 'fp32 eager'}; graph: the same step replayed as a CUDA graph; "
             f"stacked-K: K networks trained as one (its img/s and s/epoch count all K); baseline: {baseline}",
             f"{'arch':<18} {'path':<12} {'s/epoch':>8} {'img/s':>9} {'data img/s':>11} {'warm-up s':>9} "
             f"{'peak MB':>8} {'TFLOP/s':>8} {'graphs':>6}"]
    for row in record["rows"]:
        peak = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        graphs = "-" if row.get("graphs") is None else str(row["graphs"])
        lines.append(f"{row['arch']:<18} {row['path']:<12} {row['seconds_per_epoch']:>8.2f} "
                     f"{row['images_per_second']:>9.0f} {row['data_images_per_second']:>11.0f} "
                     f"{row['warmup_seconds']:>9.1f} {peak:>8} {row['tflops']:>8.3f} {graphs:>6}")
    lines += [f"{'':<18} {item['path']:<12} not available: {item['why']}" for item in record.get("unavailable", [])]
    if record["ratios"]:
        lines += ["", f"{'arch':<18} {'path':<12} {'step speedup':>12} {'data speedup':>12}  (against the baseline)"]
        lines += [f"{r['arch']:<18} {r.get('path', 'reproresnet'):<12} {r['step_speedup']:>11.2f}x "
                  f"{r['data_speedup']:>11.1f}x" for r in record["ratios"]]
    warnings = [f"{row['arch']}: {warning}" for row in record["rows"] for warning in row.get("warnings", [])]
    if warnings:
        lines += ["", "WARNINGS:", *warnings]
    if record.get("thread_rules"):
        lines += ["", f"CPU thread rules (reproresnet path; load average {record.get('load_at_start', 0):.2f} at "
                      "the start; per round: threads, load average, s/step):",
                  f"{'arch':<18} {'rule':<28} {'img/s':>7} {'vs free cores':>13}  rounds"]
        speedups = {(r["arch"], r["rule"]): r["speedup"] for r in thread_ratios(record["thread_rules"])}
        lines += [f"{row['arch']:<18} {row['rule']:<28} {row['images_per_second']:>7.1f} "
                  f"{speedups.get((row['arch'], row['rule']), 1.0):>12.2f}x  " +
                  "  ".join(f"{t}/{load:.1f}/{sec:.3f}" for t, load, sec in
                            zip(row["threads"], row["load_averages"], row["round_seconds"]))
                  for row in record["thread_rules"]]
    epochs = [(row["arch"], row["epochs"]) for row in record["rows"] if row.get("epochs")]
    if epochs:
        lines += ["", "real epochs through train_one_epoch (reproresnet path, last partial batch included):"]
        lines += [f"{arch:<18} " + "  ".join(f"epoch {i} {e['seconds']:.2f} s ({e['compiles']} compiled)"
                                             for i, e in enumerate(rows, 1)) for arch, rows in epochs]
    return "\n".join(lines)
