"""Speed benchmark: this project's training loop against a plain PyTorch CIFAR pipeline.

On synthetic uint8 data of CIFAR-10's shape, per network, in one process: ``reproresnet``,
the library's own run (`train.build_run`) stepped by its own `train_one_epoch`, with the
device's default speedups; and ``baseline``, what most public CIFAR repositories do (PIL
images through torchvision transforms in a DataLoader with one worker per core, pinned
memory and persistent workers; eager PyTorch at its default precision, which on a GPU that
allows TF32 runs convolutions in TF32, as its rows say; ``.item()`` every step).

Protocol (as airbench times): warm-up steps first, compilation included, timed apart; then
`steps` full-batch steps in `rounds` that alternate the paths, so that a drifting load slows
both alike (the median round is reported, with the spread); then each input pipeline alone;
then `epochs` whole epochs, the last, smaller batch included. Dynamo is reset before each
network, and the graphs it builds and CUDA graph skips are recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import records
from .config import ConfigError, TrainConfig, select_device
from .data import DataSplits, ImageSet, train_batches
from .models import ARCHITECTURES, UnknownArchitectureError, build_model, flops_per_image
from .train import COMPILE_MODES, Speedups, build_run, synchronize, train_one_epoch

BENCH_FORMAT = records.BENCH_FORMAT
TRAIN_IMAGES = 50_000           # one epoch of the recipes: CIFAR-10's training split
DEFAULT_ARCHS = ("preact_resnet110", "preact_resnet164", "wrn_16_4")
# The constants most public CIFAR code bases normalise with (kuangliu/pytorch-cifar).
BASELINE_MEAN, BASELINE_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# A training step costs about 3 forward passes: the forward, then the backward's gradients
# with respect to activations and to weights, each about as many FLOPs as the forward.
TRAINING_FLOPS_PER_FORWARD = 3

# A GPU: enough steps for a stable number. A CPU (2 shared cores in CI): as few as show the
# comparison, on one thread (an OpenMP team waits at every barrier for a descheduled thread).
DEVICE_DEFAULTS = {
    "cuda": {"batch_size": 128, "steps": 200, "warmup_steps": 50, "rounds": 5, "data_batches": 200,
             "epochs": 2, "threads": None},
    "cpu": {"batch_size": 32, "steps": 5, "warmup_steps": 1, "rounds": 5, "data_batches": 100,
            "epochs": 0, "threads": 1},
}


def _option(help: str, default=None):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BenchSettings:
    """Every setting of one benchmark; None: the device's default (DEVICE_DEFAULTS, and the
    speedups `Speedups.for_device` picks). The command line has one flag per field."""
    archs: tuple = _option(f"networks (default: {' '.join(DEFAULT_ARCHS)})", DEFAULT_ARCHS)
    device: str = _option("auto, cpu, cuda or cuda:N", "auto")
    out: str = _option("record path (default: results/bench-<device>/bench.json)")
    batch_size: int = _option("default: 128 on CUDA, 32 on CPU")
    steps: int = _option("timed steps per path (default: 200 on CUDA, 5 on CPU)")
    warmup_steps: int = _option("untimed steps first (default: 50 on CUDA, 1 on CPU)")
    rounds: int = _option("timed steps are split into rounds that alternate the paths (default: 5)")
    data_batches: int = _option("batches for the input-pipeline-only timing (default: 200 on CUDA, 100 on CPU)")
    epochs: int = _option("real epochs of the reproresnet path (default: 2 on CUDA, 0 on CPU)")
    bf16: bool = _option("bf16 autocast on the reproresnet path (default: on for CUDA)")
    channels_last: bool = _option("channels_last on the reproresnet path (default: on for CUDA)")
    compile: bool = _option("torch.compile on the reproresnet path (default: on for CUDA)")
    compile_mode: str = _option(f"one of {COMPILE_MODES}", "default")
    threads: int = _option("torch threads in this process (default: 1 on CPU, torch's on CUDA)")
    num_workers: int = _option("baseline DataLoader workers (default: one per CPU core)")
    baseline: bool = _option("also run the plain PyTorch baseline", True)
    train_images: int = _option("synthetic training set size", TRAIN_IMAGES)
    seed: int = _option("random seed", 0)

    def resolved(self, device: torch.device) -> "BenchSettings":
        """The device's defaults filled in; ConfigError for a setting that cannot work."""
        archs = _check_archs(self.archs)
        defaults = DEVICE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
        filled = {name: defaults[name] if getattr(self, name) is None else getattr(self, name) for name in defaults}
        filled["threads"] = filled["threads"] or torch.get_num_threads()
        workers = (os.cpu_count() or 1) if self.num_workers is None else self.num_workers
        s = dataclasses.replace(self, archs=archs, num_workers=workers, **filled)
        s = dataclasses.replace(s, rounds=min(s.rounds, s.steps))
        for name in ("batch_size", "steps", "rounds", "threads", "train_images", "warmup_steps", "epochs",
                     "num_workers"):
            least = 0 if name in ("warmup_steps", "epochs", "num_workers") else 1
            if getattr(s, name) < least:
                raise ConfigError(f"{name}={getattr(s, name)!r} is not valid: expected an integer >= {least}")
        if s.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode={s.compile_mode!r} is not valid: expected one of {list(COMPILE_MODES)}")
        # Each pipeline is timed within one epoch, after its untimed first batches.
        usable = s.train_images // s.batch_size - max(1, 2 * s.num_workers if s.baseline else 1)
        if usable < 1:
            raise ConfigError(f"train_images={s.train_images} holds too few batches of {s.batch_size} "
                              f"to time the input pipelines; use more images or a smaller batch")
        return dataclasses.replace(s, data_batches=min(s.data_batches, usable))


def _check_archs(archs) -> tuple:
    names = tuple(name for arch in ([archs] if isinstance(archs, str) else archs)
                  for name in str(arch).split(",") if name)
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown or not names:
        what = f"unknown architecture(s) {', '.join(map(repr, unknown))}" if unknown else "no architecture given"
        raise UnknownArchitectureError(f"{what}; valid: {', '.join(ARCHITECTURES)}")
    return names


def synthetic_train_set(n: int = TRAIN_IMAGES, seed: int = 0) -> ImageSet:
    """n random uint8 images of CIFAR's shape and labels 0..9 (random: zeros can run faster)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.randint(0, 10, (n,), generator=generator))


# ---------------------------------------------------------------- the two paths

class LibraryPath:
    """The library's own run of `arch`, stepped by `train_one_epoch` over full batches."""

    name = "reproresnet"
    data_warmup_batches = 1

    def __init__(self, arch: str, data: ImageSet, device: torch.device, s: BenchSettings):
        self.config = TrainConfig(arch=arch, out=str(Path(s.out).parent), recipe="wrn2016" if arch.startswith("wrn")
                                  else "he2016", batch_size=s.batch_size, seed=s.seed, dataset="synthetic",
                                  device=str(device), bf16=s.bf16, channels_last=s.channels_last, compile=s.compile)
        data = data.to(device)
        splits = DataSplits(data, None, data, [str(c) for c in range(10)], "synthetic", "synthetic")
        self.run = build_run(self.config, splits, device, s.compile_mode)
        self.model, self.full_batches, self.epoch, self.losses = self.run.model, len(data) // s.batch_size, 0, []
        self.precision = "bf16 autocast" if self.run.speedups.bf16 else "fp32"

    def steps(self, count: int) -> float:
        """Seconds for `count` full-batch steps, as `train_one_epoch` times them."""
        seconds = 0.0
        for steps in _split(count, -(-count // self.full_batches)):  # epochs of at most full_batches steps
            row = train_one_epoch(self.run, self.epoch, progress=False, max_steps=steps)
            self.epoch, seconds = self.epoch + 1, seconds + row["seconds"]
            self.losses.append(row["train_loss"])
        return seconds

    def new_epoch(self) -> Iterator:
        run = self.run
        return train_batches(run.splits.train, run.recipe.batch_size, normalizer=run.normalizer,
                             augmentation=run.recipe.augmentation,
                             generator=torch.Generator(run.device).manual_seed(run.config.seed),
                             device=run.device)

    def real_epochs(self, count: int) -> list[dict]:
        """Whole epochs, the last, smaller batch included, with the graphs each compiled."""
        rows = []
        for _ in range(count):
            graphs = _counter("stats", "unique_graphs")
            row = train_one_epoch(self.run, self.epoch, progress=False)
            self.epoch += 1
            rows.append({"seconds": row["seconds"], "images_per_second": row["images_per_second"],
                         "train_loss": row["train_loss"], "compiles": _counter("stats", "unique_graphs") - graphs})
        return rows

    def close(self) -> None:
        pass


class PILImageDataset(Dataset):
    """CIFAR as torchvision's `datasets.CIFAR10` serves it: HWC uint8 rows, a PIL image per item."""

    def __init__(self, data: ImageSet, transform):
        self.images, self.labels = data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class BaselinePath:
    """A plain PyTorch CIFAR training loop, as most public repositories write it."""

    name = "baseline"

    def __init__(self, arch: str, data: ImageSet, device: torch.device, s: BenchSettings):
        from torchvision import transforms
        transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                        transforms.ToTensor(), transforms.Normalize(BASELINE_MEAN, BASELINE_STD)])
        self.loader = DataLoader(PILImageDataset(data, transform), batch_size=s.batch_size, shuffle=True,
                                 num_workers=s.num_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=s.num_workers > 0,
                                 drop_last=True)
        self.device = device
        torch.manual_seed(s.seed)
        self.model = build_model(arch).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.batches = (batch for _ in iter(int, 1) for batch in self.loader)  # epoch after epoch
        self.losses, self.correct = [], 0
        tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
        self.precision = "fp32, TF32 convolutions" if tf32 else "fp32"
        # Untimed before the data pipeline is timed alone: the batches the workers queue at once.
        self.data_warmup_batches = max(1, 2 * s.num_workers)

    def steps(self, count: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(count):
            images, labels = next(self.batches)
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad()
            outputs = self.model(images)
            loss = F.cross_entropy(outputs, labels)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())
            self.correct += outputs.max(1)[1].eq(labels).sum().item()
        synchronize(self.device)
        return time.perf_counter() - start

    def new_epoch(self) -> Iterator:
        return iter(self.loader)

    def close(self) -> None:
        self.batches = self.loader = None  # ends its worker processes


# ---------------------------------------------------------------- timing

def _counter(group: str, name: str) -> int:
    """A torch.compile counter of this process (graphs built, CUDA graph skips)."""
    from torch._dynamo.utils import counters
    return int(counters[group][name])


def _time_data(path, windows: list[int], device: torch.device) -> list[float]:
    """Images per second of the input pipeline alone, delivered on `device`, per window of
    batches in one fresh epoch; the first `data_warmup_batches` are untimed."""
    epoch = path.new_epoch()
    for _ in range(path.data_warmup_batches):
        next(epoch)
    rates = []
    for batches in windows:
        synchronize(device)
        start, seen = time.perf_counter(), 0
        for _ in range(batches):
            images, labels = next(epoch)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            seen += len(labels)
        synchronize(device)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def benchmark(settings: BenchSettings, log: Callable[[str], None] | None = None) -> dict:
    """Benchmark `settings.archs` and write the record to `settings.out`; returns the record.
    The record is rewritten after each network, so a run cut short keeps what it measured."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    device = select_device(str(settings.device))
    out = Path(settings.out or Path("results") / f"bench-{device_slug(device)}" / "bench.json")
    s = dataclasses.replace(settings, out=str(out)).resolved(device)
    speedups = Speedups.for_device(s, device)  # as build_run picks them from the same three switches
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": BENCH_FORMAT, "complete": False, **records.provenance(device),
              "batch_size": s.batch_size, "steps": s.steps, "warmup_steps": s.warmup_steps,
              "epoch_images": TRAIN_IMAGES,
              "settings": {**dataclasses.asdict(s), "speedups": dataclasses.asdict(speedups),
                           "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                                    "matmul": torch.backends.cuda.matmul.allow_tf32},
                           "cpu_count": os.cpu_count()},
              "created": records.now(), "rows": [], "ratios": []}
    records.write_json(out, record)
    log(f"benchmark on {record['device']['name']} ({device}): batch {s.batch_size}, {s.warmup_steps} warm-up + "
        f"{s.steps} timed steps in {s.rounds} rounds; speedups {dataclasses.asdict(speedups)}; record: {out}")
    data = synthetic_train_set(s.train_images, s.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        for arch in s.archs:
            record["rows"] += _bench_arch(arch, data, device, s, log)
            record["ratios"] = ratios(record["rows"])
            records.write_json(out, record)
    finally:
        torch.set_num_threads(threads)
    record.update(complete=True, finished=records.now())
    records.write_json(out, record)
    return record


def _bench_arch(arch: str, data: ImageSet, device: torch.device, s: BenchSettings, log) -> list[dict]:
    # torch.compile stops after 8 versions of one function, a count every ResNet.forward shares.
    torch._dynamo.reset()
    graphs, skips = _counter("stats", "unique_graphs"), _counter("inductor", "cudagraph_skips")
    cuda = device.type == "cuda"
    builders = [LibraryPath] + ([BaselinePath] if s.baseline else [])
    paths, measured = [], {}
    try:
        for build in builders:  # built and warmed up one at a time: each path's peak memory is its own
            held = torch.cuda.memory_allocated(device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            path = build(arch, data, device, s)
            paths.append(path)
            seconds = path.steps(s.warmup_steps)
            peak = (torch.cuda.max_memory_allocated(device) - held) / 2**20 if cuda else None
            measured[path.name] = {"warmup_seconds": seconds, "peak_memory_mb": peak, "round_seconds": []}
            log(f"{arch}: {path.name} warmed up in {seconds:.1f} s")
        forward_flops = flops_per_image(paths[0].model, device)
        timing_graphs = _counter("stats", "unique_graphs")
        for index, count in enumerate(_split(s.steps, s.rounds)):
            for path in paths if index % 2 == 0 else paths[::-1]:  # no path always goes first
                measured[path.name]["round_seconds"].append(path.steps(count) / count)
        timing_graphs = _counter("stats", "unique_graphs") - timing_graphs
        # The pipelines one after the other: a worker pool keeps working after its window ends.
        windows = _split(s.data_batches, min(s.rounds, s.data_batches))
        for path in paths[::-1]:
            measured[path.name]["data_rates"] = _time_data(path, windows, device)
            path.close()
        rows = [_row(arch, path, measured[path.name], s, forward_flops) for path in paths]
        warnings = [f"torch.compile built {timing_graphs} graph(s) during the timed steps"] if timing_graphs else []
        skipped = _counter("inductor", "cudagraph_skips") - skips
        if skipped:
            warnings.append(f"CUDA graphs were skipped {skipped} time(s): those steps ran without them")
        rows[0].update(graphs=_counter("stats", "unique_graphs") - graphs, graphs_during_timing=timing_graphs,
                       cudagraph_skips=skipped, speedups=dataclasses.asdict(paths[0].run.speedups),
                       warnings=warnings)
        log("; ".join(f"{arch}: {row['path']} {row['seconds_per_epoch']:.1f} s/epoch" for row in rows))
        for warning in warnings:
            log(f"{arch}: WARNING: {warning}")
        if s.epochs:
            rows[0]["epochs"] = paths[0].real_epochs(s.epochs)
            for number, epoch in enumerate(rows[0]["epochs"], 1):
                log(f"{arch}: reproresnet epoch {number}: {epoch['seconds']:.2f} s "
                    f"({epoch['compiles']} graph(s) compiled)")
        return rows
    finally:
        for path in paths:
            path.close()
        if cuda:
            torch.cuda.empty_cache()


def _row(arch: str, path, measured: dict, s: BenchSettings, forward_flops: int) -> dict:
    per_step = statistics.median(measured["round_seconds"])
    images_per_second = s.batch_size / per_step
    rounds, rates = measured["round_seconds"], measured["data_rates"]
    return {"arch": arch, "path": path.name, "precision": path.precision,
            "seconds_per_epoch": TRAIN_IMAGES / images_per_second, "images_per_second": images_per_second,
            "data_images_per_second": statistics.median(rates),
            "data_images_per_second_range": [min(rates), max(rates)],
            "warmup_seconds": measured["warmup_seconds"], "peak_memory_mb": measured["peak_memory_mb"],
            "tflops": TRAINING_FLOPS_PER_FORWARD * forward_flops * images_per_second / 1e12,
            "seconds_per_step": per_step, "seconds_per_step_range": [min(rounds), max(rounds)],
            "forward_flops_per_image": forward_flops, "loss_finite": math.isfinite(sum(path.losses))}


def ratios(rows: list[dict]) -> list[dict]:
    """ours / baseline, per network: step throughput and input-pipeline throughput."""
    by_key = {(row["arch"], row["path"]): row for row in rows}
    result = []
    for arch in dict.fromkeys(row["arch"] for row in rows):
        ours, base = by_key.get((arch, "reproresnet")), by_key.get((arch, "baseline"))
        if ours and base:
            result.append({"arch": arch,
                           "step_speedup": ours["images_per_second"] / base["images_per_second"],
                           "data_speedup": ours["data_images_per_second"] / base["data_images_per_second"]})
    return result


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """One flag per BenchSettings field (`--batch-size` for batch_size), and --quiet."""
    parser = argparse.ArgumentParser(prog="reproresnet bench", description=__doc__.split("\n\n")[0])
    for setting in dataclasses.fields(BenchSettings):
        flag, kind = "--" + setting.name.replace("_", "-"), setting.type
        options = {"help": setting.metadata["help"], "default": setting.default}
        if kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif kind == "tuple":
            options.update(nargs="+", metavar="NAME")
        else:
            options["type"] = int if kind == "int" else str
        parser.add_argument(flag, **options)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    quiet = args.pop("quiet")
    try:
        record = benchmark(BenchSettings(**args), log=(lambda line: None) if quiet else None)
    except (ConfigError, UnknownArchitectureError) as error:
        print(f"reproresnet bench: error: {error}", file=sys.stderr)
        return 2
    from .report import format_bench
    print(format_bench(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
