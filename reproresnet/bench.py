"""Speed benchmark: this project's training path against a plain PyTorch CIFAR pipeline.

For each network, on synthetic uint8 data of CIFAR-10's shape (content does not matter for
speed), two paths train in the same process on the same device:

* ``reproresnet``: the data set resident on the device as uint8; normalisation and
  augmentation on the device (`train_batches`); the device's default speedups
  (`Speedups.for_device`: bf16 autocast, channels_last, torch.compile and fused SGD on CUDA,
  fp32 eager on CPU); the library's `train_step`; loss and errors summed on the device, no
  host sync inside the timed loop.
* ``baseline``: what most public CIFAR repositories do: a Dataset that returns PIL images,
  torchvision transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize) in a shuffling DataLoader with worker processes, fp32 eager, plain SGD, and
  ``.item()`` on the loss and the correct count every step.

Protocol (as airbench times): warm-up steps first, compilation included, timed and reported
apart; then `steps` timed steps split into `rounds` that alternate between the two paths,
so that a machine whose load drifts (a shared CPU) slows both alike; the median round is
reported with the spread. The input pipelines alone are timed in windows too, one pipeline
after the other. Steps use full batches only (the compiled graph is specialised
to the batch size); `epochs` real epochs through the library's `train_one_epoch` then show
the cost of the last, smaller batch: the first epoch compiles it once, later ones must not.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from . import records
from .config import DEVICES, ConfigError, TrainConfig, select_device
from .data import DataSplits, ImageSet, Normalizer, train_batches
from .models import ARCHITECTURES, UnknownArchitectureError, build_model
from .recipes import get_recipe, make_schedule
from .train import (COMPILE_MODES, Run, Speedups, compile_model, flops_per_image, make_optimizer,
                    synchronize, train_one_epoch, train_step)

BENCH_FORMAT = records.BENCH_FORMAT
TRAIN_IMAGES = 50_000           # one epoch of the recipes: CIFAR-10's training split
DEFAULT_ARCHS = ("preact_resnet110", "preact_resnet164", "wrn_16_4")
# The constants most public CIFAR code bases normalise with (kuangliu/pytorch-cifar).
BASELINE_MEAN, BASELINE_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# A training step costs about 3 forward passes: the forward, then the backward's gradients
# with respect to activations and to weights, each about as many FLOPs as the forward.
TRAINING_FLOPS_PER_FORWARD = 3

# Per device type: enough steps for a stable number on a GPU; on a CPU (2 shared cores in
# CI) as few as show the comparison, at batch 32 so that the 164-layer net stays in minutes.
# threads: torch's intra-op threads in this process (None: torch's default). One on a CPU: on a
# shared machine an OpenMP team waits at every barrier for a descheduled thread, which was seen
# here to slow small ops tenfold and more, and both paths' models then run on one thread alike.
DEVICE_DEFAULTS = {
    "cuda": {"batch_size": 128, "steps": 200, "warmup_steps": 50, "rounds": 5, "data_batches": 200,
             "epochs": 2, "threads": None},
    "cpu": {"batch_size": 32, "steps": 5, "warmup_steps": 1, "rounds": 5, "data_batches": 100,
            "epochs": 0, "threads": 1},
}


# ---------------------------------------------------------------- data

def synthetic_train_set(n: int = TRAIN_IMAGES, seed: int = 0) -> ImageSet:
    """n random uint8 images of CIFAR's shape and labels 0..9, from a seeded generator.

    Random pixels rather than zeros: zeros can run faster than real data would.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return ImageSet(images, labels)


class PILImageDataset(Dataset):
    """CIFAR as torchvision's `datasets.CIFAR10` serves it: HWC uint8 rows, a PIL image per item."""

    def __init__(self, images_hwc, labels: list[int], transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def baseline_transform():
    from torchvision import transforms
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(BASELINE_MEAN, BASELINE_STD),
    ])


def baseline_loader(data: ImageSet, batch_size: int, device: torch.device, num_workers: int) -> DataLoader:
    dataset = PILImageDataset(data.images.permute(0, 2, 3, 1).contiguous().numpy(),
                              data.labels.tolist(), baseline_transform())
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


def _full_batches(new_epoch: Callable[[], Iterator], batch_size: int) -> Iterator:
    """Batches of exactly `batch_size`, epoch after epoch (each epoch's smaller last batch is skipped)."""
    while True:
        for images, labels in new_epoch():
            if len(labels) == batch_size:
                yield images, labels


# ---------------------------------------------------------------- the two paths

def _recipe_for(arch: str):
    return get_recipe("wrn2016" if arch.startswith("wrn") else "he2016")


class ReproresnetPath:
    """The library's own training path, step for step as `train_one_epoch` runs it."""

    name = "reproresnet"

    def __init__(self, arch: str, data: ImageSet, device: torch.device, batch_size: int,
                 speedups: Speedups, compile_mode: str, dynamic_shapes: bool, seed: int):
        self.arch, self.device, self.batch_size, self.speedups = arch, device, batch_size, speedups
        self.data = data.to(device)  # resident on the device as uint8
        self.normalizer = Normalizer.fit(self.data.images, "per_pixel_mean").to(device)
        torch.manual_seed(seed)
        self.model = build_model(arch).to(device)
        if speedups.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.recipe = _recipe_for(arch).replace(batch_size=batch_size)
        self.optimizer = make_optimizer(self.model, self.recipe, speedups)
        self.step_model = compile_model(self.model, compile_mode, dynamic_shapes) if speedups.compile else self.model
        self.generator = torch.Generator(device).manual_seed(seed)
        self.loss_sum = torch.zeros((), device=device)
        self.errors = torch.zeros((), device=device, dtype=torch.long)
        self.batches = _full_batches(self.new_epoch, batch_size)
        self.data_warmup_batches = 1
        self.seed = seed

    def new_epoch(self) -> Iterator:
        return train_batches(self.data, self.batch_size, normalizer=self.normalizer, augmentation="per_image",
                             generator=self.generator, device=self.device)

    def step(self) -> None:
        images, labels = next(self.batches)
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.lr  # a Python float each step, as train_one_epoch sets it
        if self.speedups.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss, errors = train_step(self.step_model, self.optimizer, images, labels, self.speedups)
        self.loss_sum += loss
        self.errors += errors

    def loss_is_finite(self) -> bool:
        return math.isfinite(self.loss_sum.item())

    def run_epochs(self, epochs: int) -> list[dict]:
        """Real epochs through `train_one_epoch`, the last, smaller batch included."""
        config = TrainConfig(arch=self.arch, out="bench", recipe=self.recipe.name, batch_size=self.batch_size,
                             seed=self.seed, device=str(self.device), bf16=self.speedups.bf16,
                             channels_last=self.speedups.channels_last, compile=self.speedups.compile)
        schedule = make_schedule(self.recipe, self.arch, len(self.data))
        splits = DataSplits(self.data, None, self.data, [str(c) for c in range(10)], "synthetic", "synthetic")
        run = Run(config, self.recipe, schedule, splits, self.normalizer, self.model, self.step_model,
                  self.optimizer, self.speedups, self.device)
        results = []
        for epoch in range(epochs):
            compiles = _compile_count()
            row = train_one_epoch(run, epoch, progress=False)
            results.append({"seconds": row["seconds"], "images_per_second": row["images_per_second"],
                            "train_loss": row["train_loss"], "compiles": _compiles_since(compiles)})
        return results

    def close(self) -> None:
        self.batches.close()


class BaselinePath:
    """A plain PyTorch CIFAR training loop, as most public repositories write it."""

    name = "baseline"

    def __init__(self, arch: str, data: ImageSet, device: torch.device, batch_size: int, num_workers: int,
                 seed: int):
        self.device, self.batch_size = device, batch_size
        self.loader = baseline_loader(data, batch_size, device, num_workers)
        torch.manual_seed(seed)
        self.model = build_model(arch).to(device)
        recipe = _recipe_for(arch)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                         nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        self.batches = _full_batches(lambda: iter(self.loader), batch_size)
        self.train_loss, self.correct = 0.0, 0
        # Untimed before the data pipeline is timed alone: the workers' start and the batches
        # they have already queued (prefetch_factor, 2 by default, per worker).
        self.data_warmup_batches = max(1, 2 * num_workers)

    def new_epoch(self) -> Iterator:
        return iter(self.loader)

    def step(self) -> None:
        images, labels = next(self.batches)
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad()
        outputs = self.model(images)
        loss = F.cross_entropy(outputs, labels)
        loss.backward()
        self.optimizer.step()
        self.train_loss += loss.item()
        _, predicted = outputs.max(1)
        self.correct += predicted.eq(labels).sum().item()

    def loss_is_finite(self) -> bool:
        return math.isfinite(self.train_loss)

    def close(self) -> None:
        self.batches.close()  # drops the loader's iterator, which ends its worker processes


# ---------------------------------------------------------------- timing

def _compile_count() -> int | None:
    """Graphs torch.compile has built in this process (None if this torch does not count them)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: absent in some torch versions
        return None


def _compiles_since(before: int | None) -> int | None:
    after = _compile_count()
    return None if before is None or after is None else after - before


def _time_steps(path, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        path.step()
    synchronize(device)
    return time.perf_counter() - start


def _time_data(path, windows: list[int], device: torch.device) -> list[float]:
    """Images per second of the input pipeline alone, delivered on `device`, per window of
    batches, the windows one after another in one fresh epoch; the first
    `data_warmup_batches` are untimed (a worker pool's start and the batches it queues at once)."""
    epoch = path.new_epoch()
    try:
        for _ in range(path.data_warmup_batches):
            next(epoch)
        rates = []
        for batches in windows:
            synchronize(device)
            start = time.perf_counter()
            images_seen = 0
            for _ in range(batches):
                images, labels = next(epoch)
                images = images.to(device, non_blocking=True)  # the baseline's loop copies each batch
                labels = labels.to(device, non_blocking=True)
                images_seen += len(labels)
            synchronize(device)
            rates.append(images_seen / (time.perf_counter() - start))
        return rates
    finally:
        del epoch  # a loader's iterator ends its worker processes


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


# ---------------------------------------------------------------- the benchmark

@dataclasses.dataclass(frozen=True)
class BenchSettings:
    batch_size: int
    steps: int
    warmup_steps: int
    rounds: int
    data_batches: int
    epochs: int
    compile_mode: str
    dynamic_shapes: bool
    cudnn_benchmark: bool
    threads: int
    num_workers: int
    baseline: bool
    train_images: int
    seed: int


def check_archs(archs) -> list[str]:
    """The names as a list; UnknownArchitectureError (a ValueError) for any that is not registered."""
    if isinstance(archs, str):
        archs = [archs]
    names = [name for arch in archs for name in str(arch).split(",") if name]
    if not names:
        raise UnknownArchitectureError(f"no architecture given; valid: {', '.join(ARCHITECTURES)}")
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown:
        raise UnknownArchitectureError(f"unknown architecture(s) {', '.join(map(repr, unknown))}; "
                                       f"valid: {', '.join(ARCHITECTURES)}")
    return names


def benchmark(archs=DEFAULT_ARCHS, device="auto", batch_size: int | None = None, steps: int | None = None,
              warmup_steps: int | None = None, out=None, *, rounds: int | None = None,
              data_batches: int | None = None, epochs: int | None = None, compile: bool | None = None,
              compile_mode: str = "default", dynamic_shapes: bool = False, bf16: bool | None = None,
              channels_last: bool | None = None, fused_optimizer: bool | None = None,
              cudnn_benchmark: bool = True, threads: int | None = None, num_workers: int | None = None,
              baseline: bool = True,
              train_images: int = TRAIN_IMAGES, seed: int = 0, log: Callable[[str], None] | None = None) -> dict:
    """Benchmark `archs` on `device` and write the record to `out`; returns the record.

    None means the device's default (DEVICE_DEFAULTS; the speedups from `Speedups.for_device`).
    The record is rewritten after each network, so a run cut short keeps what it measured.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    archs = check_archs(archs)
    device = select_device(str(device))
    defaults = DEVICE_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    pick = lambda value, name: defaults[name] if value is None else value  # noqa: E731
    settings = BenchSettings(
        batch_size=pick(batch_size, "batch_size"), steps=pick(steps, "steps"),
        warmup_steps=pick(warmup_steps, "warmup_steps"), rounds=0, data_batches=0,
        epochs=pick(epochs, "epochs"),
        compile_mode=compile_mode, dynamic_shapes=dynamic_shapes,
        cudnn_benchmark=cudnn_benchmark and device.type == "cuda",
        threads=pick(threads, "threads") or torch.get_num_threads(),
        num_workers=min(4, os.cpu_count() or 1) if num_workers is None else num_workers,
        baseline=baseline, train_images=train_images, seed=seed)
    settings = dataclasses.replace(
        settings, rounds=min(pick(rounds, "rounds"), settings.steps),
        data_batches=pick(data_batches, "data_batches"))
    # Each pipeline is timed within one epoch, after its untimed first batches.
    discarded = max(1, 2 * settings.num_workers) if baseline else 1
    settings = dataclasses.replace(settings, data_batches=min(
        settings.data_batches, settings.train_images // settings.batch_size - discarded))
    _check_settings(settings, compile_mode)
    speedups = Speedups.for_device(TrainConfig(bf16=bf16, channels_last=channels_last, compile=compile), device)
    if fused_optimizer is not None:
        speedups = dataclasses.replace(speedups, fused_optimizer=fused_optimizer)

    out = Path(out) if out is not None else Path("results") / f"bench-{device_slug(device)}" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": BENCH_FORMAT,
        "complete": False,
        "device": describe_device(device),
        "batch_size": settings.batch_size,
        "steps": settings.steps,
        "warmup_steps": settings.warmup_steps,
        "settings": {**dataclasses.asdict(settings), "speedups": dataclasses.asdict(speedups),
                     "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                              "matmul": torch.backends.cuda.matmul.allow_tf32},
                     "cpu_count": os.cpu_count()},
        "versions": records.library_versions(),
        "git": records.git_state(),
        "created": records.now(),
        "rows": [],
        "ratios": [],
    }
    records.write_json(out, record)
    log(f"benchmark on {record['device']['name']} ({device}): batch {settings.batch_size}, "
        f"{settings.warmup_steps} warm-up + {settings.steps} timed steps in {settings.rounds} rounds; "
        f"speedups {dataclasses.asdict(speedups)}; record: {out}")

    data = synthetic_train_set(settings.train_images, seed)
    previous = torch.backends.cudnn.benchmark, torch.get_num_threads()
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    torch.set_num_threads(settings.threads)
    try:
        for arch in archs:
            def save(rows: list[dict]) -> None:
                done = [row for row in record["rows"] if row["arch"] != arch]
                record["rows"] = done + rows
                record["ratios"] = ratios(record["rows"])
                records.write_json(out, record)
            _bench_arch(arch, data, device, settings, speedups, save, log)
    finally:
        torch.backends.cudnn.benchmark = previous[0]
        torch.set_num_threads(previous[1])
    record["complete"] = True
    record["finished"] = records.now()
    records.write_json(out, record)
    return record


def _check_settings(settings: BenchSettings, compile_mode: str) -> None:
    for name in ("batch_size", "steps", "rounds", "threads"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}={getattr(settings, name)!r} is not valid: expected a positive integer")
    for name in ("warmup_steps", "epochs", "num_workers"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name}={getattr(settings, name)!r} is not valid: expected 0 or more")
    if settings.data_batches < 1:
        raise ConfigError(f"train_images={settings.train_images} holds too few batches of {settings.batch_size} "
                          f"to time the input pipelines; use more images or a smaller batch")
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode={compile_mode!r} is not valid: expected one of {list(COMPILE_MODES)}")


def _bench_arch(arch: str, data: ImageSet, device: torch.device, settings: BenchSettings, speedups: Speedups,
                save: Callable[[list[dict]], None], log: Callable[[str], None]) -> None:
    cuda = device.type == "cuda"
    builders = [lambda: ReproresnetPath(arch, data, device, settings.batch_size, speedups, settings.compile_mode,
                                        settings.dynamic_shapes, settings.seed)]
    if settings.baseline:
        builders.append(lambda: BaselinePath(arch, data, device, settings.batch_size, settings.num_workers,
                                             settings.seed))
    paths, measured = [], {}
    try:
        # Build and warm up (compilation included) one path at a time, so that each path's peak
        # memory is its own: the peak since it was built, less what was held before.
        for build in builders:
            held = torch.cuda.memory_allocated(device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            path = build()
            paths.append(path)
            seconds = _time_steps(path, settings.warmup_steps, device)
            peak = (torch.cuda.max_memory_allocated(device) - held) / 2**20 if cuda else None
            measured[path.name] = {"warmup_seconds": seconds, "peak_memory_mb": peak, "round_seconds": []}
            log(f"{arch}: {path.name} warmed up in {seconds:.1f} s")
        ours = paths[0]
        forward_flops = flops_per_image(ours.model, device)

        compiles = _compile_count()
        for round_index, count in enumerate(_split(settings.steps, settings.rounds)):
            order = paths if round_index % 2 == 0 else paths[::-1]  # no path always goes first
            for path in order:
                measured[path.name]["round_seconds"].append(_time_steps(path, count, device) / count)
        compiles_during_timing = _compiles_since(compiles)

        # The pipelines one after the other, not alternating: a worker pool keeps working after
        # its window ends, which on a small CPU would slow the other path's window. The baseline
        # goes first and its workers are ended before the reproresnet path's windows.
        windows = _split(settings.data_batches, min(settings.rounds, settings.data_batches))
        for path in paths[::-1]:
            measured[path.name]["data_rates"] = _time_data(path, windows, device)

        rows = [_row(arch, path, measured[path.name], settings, forward_flops) for path in paths]
        rows[0].update(compiles_during_timing=compiles_during_timing)
        save(rows)
        for row in rows:
            log(f"{arch}: {row['path']} {row['seconds_per_step'] * 1e3:.1f} ms/step, "
                f"{row['seconds_per_epoch']:.1f} s/epoch")
        if compiles_during_timing:
            log(f"{arch}: WARNING: torch.compile built {compiles_during_timing} graph(s) during the timed steps")

        if settings.epochs:
            for path in paths[1:]:
                path.close()  # its workers would compete for the CPU
            rows[0]["epochs"] = ours.run_epochs(settings.epochs)
            save(rows)
            for number, epoch in enumerate(rows[0]["epochs"], 1):
                log(f"{arch}: reproresnet epoch {number}: {epoch['seconds']:.2f} s "
                    f"({epoch['compiles']} graph(s) compiled)")
    finally:
        for path in paths:
            path.close()
        paths.clear()
        if cuda:
            torch.cuda.empty_cache()


def _row(arch: str, path, measured: dict, settings: BenchSettings, forward_flops: int) -> dict:
    per_step = statistics.median(measured["round_seconds"])
    images_per_second = settings.batch_size / per_step
    return {
        "arch": arch,
        "path": path.name,
        "seconds_per_epoch": TRAIN_IMAGES / images_per_second,
        "images_per_second": images_per_second,
        "data_images_per_second": statistics.median(measured["data_rates"]),
        "data_images_per_second_range": [min(measured["data_rates"]), max(measured["data_rates"])],
        "warmup_seconds": measured["warmup_seconds"],
        "peak_memory_mb": measured["peak_memory_mb"],
        "tflops": TRAINING_FLOPS_PER_FORWARD * forward_flops * images_per_second / 1e12,
        "seconds_per_step": per_step,
        "seconds_per_step_range": [min(measured["round_seconds"]), max(measured["round_seconds"])],
        "forward_flops_per_image": forward_flops,
        "loss_finite": path.loss_is_finite(),
    }


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


# ---------------------------------------------------------------- device description and report

def describe_device(device: torch.device) -> dict:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": properties.name, "capability": f"{properties.major}.{properties.minor}",
                "memory_mb": properties.total_memory // 2**20, "multiprocessors": properties.multi_processor_count}
    return {"type": device.type, "name": _cpu_name(), "cpu_count": os.cpu_count()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def format_table(record: dict) -> str:
    settings = record.get("settings", {})
    speedups = settings.get("speedups", {})
    used = [name for name in ("bf16", "channels_last", "compile", "fused_optimizer") if speedups.get(name)]
    if speedups.get("compile"):
        used[used.index("compile")] = f"compile ({settings.get('compile_mode', 'default')})"
    lines = [f"{record['device']['name']} ({record['device']['type']}), batch {record['batch_size']}, "
             f"{record['warmup_steps']} warm-up + {record['steps']} timed steps in {settings.get('rounds', '?')} "
             f"rounds (median round); epoch = {TRAIN_IMAGES:,} images",
             f"reproresnet path: {', '.join(used) or 'fp32 eager'}; baseline: fp32 eager, DataLoader with "
             f"{settings.get('num_workers', '?')} workers",
             f"{'arch':<18} {'path':<12} {'s/epoch':>8} {'img/s':>9} {'data img/s':>11} {'warm-up s':>9} "
             f"{'peak MB':>8} {'TFLOP/s':>8}"]
    for row in record["rows"]:
        peak = "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}"
        lines.append(f"{row['arch']:<18} {row['path']:<12} {row['seconds_per_epoch']:>8.2f} "
                     f"{row['images_per_second']:>9.0f} {row['data_images_per_second']:>11.0f} "
                     f"{row['warmup_seconds']:>9.1f} {peak:>8} {row['tflops']:>8.3f}")
    if record["ratios"]:
        lines += ["", f"{'arch':<18} {'step speedup':>12} {'data speedup':>12}"]
        lines += [f"{r['arch']:<18} {r['step_speedup']:>11.2f}x {r['data_speedup']:>11.1f}x"
                  for r in record["ratios"]]
    epochs = [(row["arch"], row["epochs"]) for row in record["rows"] if row.get("epochs")]
    if epochs:
        lines += ["", "real epochs through train_one_epoch (reproresnet path, last partial batch included):"]
        lines += [f"{arch:<18} " + "  ".join(f"epoch {i} {e['seconds']:.2f} s ({e['compiles']} compiled)"
                                             for i, e in enumerate(rows, 1)) for arch, rows in epochs]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reproresnet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), metavar="NAME",
                        help=f"networks (default: {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--device", default="auto", help=f"one of {DEVICES} or cuda:N")
    parser.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 32 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps per path (default: 200 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps first (default: 50 on CUDA, 1 on CPU)")
    parser.add_argument("--rounds", type=int, help="timed steps are split into rounds that alternate the paths "
                                                   "(default: 5)")
    parser.add_argument("--data-batches", type=int, help="batches for the input-pipeline-only timing, in "
                                                         "rounds too (default: 200 on CUDA, 100 on CPU)")
    parser.add_argument("--epochs", type=int, help="real epochs of the reproresnet path through train_one_epoch "
                                                   "(default: 2 on CUDA, 0 on CPU)")
    parser.add_argument("--out", help="record path (default: results/bench-<device>/bench.json)")
    for name, what in (("bf16", "bf16 autocast"), ("channels-last", "channels_last memory format"),
                       ("compile", "torch.compile"), ("fused", "fused SGD")):
        parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                            help=f"{what} on the reproresnet path (default: on for CUDA, off for CPU)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    parser.add_argument("--dynamic-shapes", action="store_true",
                        help="torch.compile(dynamic=None), torch's default, instead of dynamic=False")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.backends.cudnn.benchmark on CUDA (default: on)")
    parser.add_argument("--threads", type=int, help="torch threads in this process (default: 1 on CPU, "
                                                   "torch's default on CUDA)")
    parser.add_argument("--num-workers", type=int, help="baseline DataLoader workers (default: min(4, CPUs))")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the plain PyTorch baseline (default: on)")
    parser.add_argument("--train-images", type=int, default=TRAIN_IMAGES, help="synthetic training set size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = benchmark(args.archs, args.device, args.batch_size, args.steps, args.warmup_steps, args.out,
                           rounds=args.rounds, data_batches=args.data_batches, epochs=args.epochs,
                           compile=args.compile, compile_mode=args.compile_mode, dynamic_shapes=args.dynamic_shapes,
                           bf16=args.bf16, channels_last=args.channels_last, fused_optimizer=args.fused,
                           cudnn_benchmark=args.cudnn_benchmark, threads=args.threads,
                           num_workers=args.num_workers,
                           baseline=args.baseline, train_images=args.train_images, seed=args.seed,
                           log=(lambda line: None) if args.quiet else None)
    except (ConfigError, UnknownArchitectureError) as error:
        print(f"reproresnet bench: error: {error}", file=sys.stderr)
        return 2
    print(format_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
