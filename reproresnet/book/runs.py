"""Which runs count, and what they cost: the book's tables and figures choose their runs here.

A number reaches the CIFAR-10 column only from a complete run on the full CIFAR-10 data
(`RunRecord.is_result_on`); the seeds of one experiment (`config.recorded_key`) are averaged
together, never with another setting's. A run's GPU time counts each epoch once, shared among
the runs that shared its GPU. Needs no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from .. import architectures
from ..campaign import checkpoint_kept
from ..config import CIFAR10, JPEG_MIRROR, TrainConfig, recorded_key
from ..records import RunRecord, SpeedSegment
from ..reference import PLANNED, REFERENCE


def join(values) -> str:
    """Distinct values in their first order, joined by ", "."""
    return ", ".join(dict.fromkeys(str(v) for v in values))


def count(n: int, what: str) -> str:
    return f"{'no' if n == 0 else n} {what}{'' if n == 1 else 's'}"


def experiment(run: RunRecord) -> str:
    """The run's experiment (`config.recorded_key`), as a hashable text: seeds of one experiment share it."""
    return json.dumps(recorded_key(run.config), sort_keys=True)


def recipe_text(run: RunRecord) -> str:
    return f"{run.config.get('recipe', '?')}, batch {run.batch_size}"


def table_networks(runs: list[RunRecord], label: str = CIFAR10) -> list[str]:
    """Networks the sources quote, in their order, then any other with a result on `label`."""
    networks = [row["network"] for row in REFERENCE]
    return networks + sorted({run.arch for run in runs if run.is_result_on(label)} - set(networks))


def groups(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """The runs, one list per setting (the seeds of one experiment), each sorted by seed."""
    by_setting: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        by_setting.setdefault((run.arch, run.label, experiment(run)), []).append(run)
    return [sorted(group, key=lambda run: str(run.config.get("seed"))) for group in by_setting.values()]


def counted_groups(runs: list[RunRecord], network: str, label: str = CIFAR10) -> list[list[RunRecord]]:
    """The network's complete full runs on `label`, one list per setting."""
    return groups([run for run in runs if run.arch == network and run.is_result_on(label)])


def status_networks() -> list[str]:
    """The networks of the plan, then the networks the seed trained in their place."""
    return list(PLANNED) + [row["network"] for row in REFERENCE
                            if row.get("seed_error") is not None and row["network"] not in PLANNED]


def plan_runs(runs: list[RunRecord], network: str, label: str) -> list[RunRecord]:
    """The network's runs on the whole of `label`: the runs the plan counts, finished or not."""
    return [run for run in runs if run.arch == network and run.label == label and run.full_training_set
            and run.config.get("limit_test") is None]


def best_group(runs: list[RunRecord]) -> list[RunRecord]:
    """Of the runs' settings, the one furthest along: most complete runs, then most epochs."""
    return max(groups(runs), key=lambda group: (sum(run.status == "complete" for run in group),
                                                 sum(run.record.epochs_done for run in group)))


def tested(runs: list[RunRecord], network: str) -> list[RunRecord]:
    """The network's complete full CIFAR-10 runs of one setting, the most numerous."""
    return max(counted_groups(runs, network), key=len, default=[])


def is_real_data(run: RunRecord) -> bool:
    """Trained on real images (CIFAR, the JPEG mirror, an image folder), not the synthetic stand-in."""
    return run.record.data.dataset != "synthetic" and run.label != "synthetic"


# ---------------------------------------------------------------- where a run stands

def run_status(run: RunRecord) -> str:
    """Where one run stands, in words: "complete", "stopped at 5/200 (deadline), resumable"
    (or "..., checkpoint not kept"), "running, 7/200", "diverged in epoch 9"."""
    done, planned = run.record.epochs_done, run.record.epochs_planned
    if run.status == "stopped":
        why = "deadline" if "(deadline)" in str(run.record.message or "") else "interrupted"
        kept = "resumable" if checkpoint_kept(run.run_dir) else "checkpoint not kept"
        return f"stopped at {done}/{planned} ({why}), {kept}"
    if run.status == "running":
        return f"running, {done}/{planned}"
    if run.status == "diverged":
        return f"diverged after {done}/{planned}"
    return run.status


def continues(run: RunRecord) -> bool:
    """Its epochs count towards the plan: complete, or resumable from its kept checkpoint (a run
    whose checkpoint is not kept starts again from epoch 1)."""
    return run.status == "complete" or (run.status in ("stopped", "running") and checkpoint_kept(run.run_dir))


def unfinished_text(group: list[RunRecord]) -> str:
    """Unfinished runs in a few words: "3 runs stopped at 5/200 (deadline), resumable"."""
    counts = Counter(run_status(run) for run in group)
    return "; ".join(f"{count(n, 'run')} {status}" for status, n in counts.items())


# ---------------------------------------------------------------- what a run cost

def wall_seconds(run: RunRecord) -> float | None:
    """From the run's first start to its last write: evaluation and any pause included."""
    try:
        return (datetime.fromisoformat(run.record.updated) -
                datetime.fromisoformat(run.record.started)).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def segments(run: RunRecord) -> list[SpeedSegment]:
    """The run's speed segments: one per process that trained it, as its record says."""
    return run.record.speed


def segment_of(run: RunRecord, epoch: int) -> SpeedSegment:
    """The speed segment (one process's share of the run) that trained `epoch`, or the run's device."""
    for segment in segments(run):
        if segment.first_epoch <= epoch <= (segment.last_epoch or segment.first_epoch):
            return segment
    return SpeedSegment(0, device=run.record.device and run.record.device.type)


def sharing(segment: SpeedSegment) -> tuple[int, int]:
    """(packed processes, seeds stacked in one network) of a segment: 1 each when it ran alone."""
    return segment.pack or 1, segment.stacked or 1


def share(segment: SpeedSegment) -> int:
    """Runs that shared the GPU with this one: packed processes, or seeds stacked in one network."""
    pack, stacked = sharing(segment)
    return pack * stacked


def gpu_seconds(run: RunRecord) -> float:
    """The GPU time the run's training took: each epoch's training seconds divided by the
    runs that shared the GPU while it trained (three packed runs each timing 37 s an epoch
    took 37 GPU-seconds for three epochs, not 111). Epochs on a CPU count nothing."""
    metrics = run.metrics()
    if metrics is None or "seconds" not in metrics:
        return 0.0
    return float(sum(seconds / share(segment) for epoch, seconds in zip(metrics["epoch"], metrics["seconds"])
                     if (segment := segment_of(run, int(epoch))).device == "cuda"))


def gpu_segments(runs: list[RunRecord]) -> list[tuple[RunRecord, SpeedSegment]]:
    """Every timed GPU segment of `runs` (a process's steady-state seconds per epoch)."""
    return [(run, segment) for run in runs for segment in segments(run)
            if segment.device == "cuda" and segment.seconds_per_epoch]


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


def measured_cost(runs: list[RunRecord], network: str) -> EpochCost | None:
    """The median GPU-seconds per epoch of the network's full runs (CIFAR-10 or its mirror: the
    same images and network, the same time), each segment's divided by the runs sharing its GPU."""
    timed = gpu_segments([run for label in (CIFAR10, JPEG_MIRROR) for run in plan_runs(runs, network, label)])
    if not timed:
        return None
    return EpochCost(statistics.median(segment.seconds_per_epoch / share(segment) for _, segment in timed),
                     tuple({run.name: run for run, _ in timed}.values()),
                     join(segment.gpu or run.device for run, segment in timed),
                     join(segment.precision for _, segment in timed))


def epoch_cost(runs: list[RunRecord], network: str) -> EpochCost | None:
    """One run's GPU-seconds per epoch of `network`: measured on its own runs, else estimated
    from the measured network nearest to it in forward GFLOPs per image, scaled by their ratio
    (the bottleneck networks' many thin layers may run slower than their FLOPs say); None while
    no network of the records is measured on a GPU."""
    own = measured_cost(runs, network)
    if own is not None:
        return own
    gflops = {row["name"]: row["gflops"] for row in architectures.rows()}
    measured = {name: cost for name in sorted({run.arch for run in runs} & set(gflops))
                if (cost := measured_cost(runs, name)) is not None}
    if not measured or network not in gflops:
        return None
    nearest = min(measured, key=lambda name: (abs(math.log(gflops[name] / gflops[network])), name))
    ratio = gflops[network] / gflops[nearest]
    return dataclasses.replace(measured[nearest], seconds=measured[nearest].seconds * ratio, measured_on=nearest,
                               ratio=ratio)
