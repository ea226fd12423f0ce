"""Speed benchmark: this project's training loop against a plain PyTorch CIFAR pipeline.

``reproresnet`` (`train.build_stack` stepped by `train_one_epoch`, the device's default speedups)
against ``baseline`` (PIL images through torchvision transforms in a DataLoader, an eager model),
on synthetic data of CIFAR-10's shape. How it times and the record it writes: bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from . import record as bench_record
from .. import records, rundir
from ..architectures import ARCHITECTURES
from .baseline import BaselinePath, queued_batches
from ..config import (CIFAR_TRAIN_IMAGES, MAX_SEED, ConfigError, TrainConfig, cpu_threads, free_core_threads,
                     load_average, precision_for, select_device, usable_cores)
from ..data import DataSplits, ImageSet
from ..engine import (COMPILE_MODES, Speedups, check_compile_mode, compile_counter, precision_words, switches,
                      synchronize)
from ..models import UnknownArchitectureError, flops_per_image
from ..reference import REPRODUCED
from ..train import build_stack, run_batches, train_one_epoch



def _option(help: str, default=None, *, per_device: tuple | None = None, least: int | None = None):
    """A BenchSettings field: its --help, its default or (on CUDA, on CPU) defaults, and for
    an integer its least valid value."""
    return field(default=default, metadata={"help": help, "per_device": per_device, "least": least})


@dataclass(frozen=True)
class BenchSettings:
    """Every setting of one benchmark; the command line has one flag per field. None: the
    device's default: on a GPU, enough steps for a stable number; on a CPU (2 shared cores in
    CI), as few as show the comparison, on one thread (an OpenMP team waits at every barrier for
    a descheduled thread); torch's thread count on CUDA, and the speedups `Speedups.for_device` picks."""
    archs: tuple = _option(f"networks (default: {' '.join(REPRODUCED)})", REPRODUCED)
    device: str = _option("auto, cpu, cuda or cuda:N", "auto")
    out: str = _option("record path (default: results/bench-<device>/bench.json)")
    batch_size: int = _option("images per step", per_device=(128, 32), least=1)
    steps: int = _option("timed steps per path", per_device=(200, 5), least=1)
    warmup_steps: int = _option("steps first, compilation included, timed apart", per_device=(50, 1), least=0)
    rounds: int = _option("the timed steps' rounds, which alternate the paths", per_device=(5, 5), least=1)
    data_batches: int = _option("batches for the input-pipeline-only timing", per_device=(200, 100), least=1)
    epochs: int = _option("real epochs of the reproresnet path", per_device=(2, 0), least=0)
    bf16: bool = _option("bf16 autocast on the reproresnet path (default: on for CUDA)")
    channels_last: bool = _option("channels_last on the reproresnet path (default: on for CUDA)")
    compile: bool = _option("torch.compile on the reproresnet path (default: on for CUDA)")
    compile_mode: str = _option(f"one of {COMPILE_MODES}", "default")
    threads: int = _option("torch threads in this process", per_device=(None, 1), least=1)
    num_workers: int = _option("baseline DataLoader workers (default: one per CPU core)", least=0)
    baseline: bool = _option("also run the plain PyTorch baseline", True)
    graph: bool = _option("also run the graph engine's path (a CUDA graph per step; CUDA only)", True)
    thread_rules: bool = _option("also time the library path on the CPU under each thread rule (the free-core rule, "
                                 "torch's default, all cores), in alternating rounds, the load average beside each",
                                 False)
    stack: int = _option("networks the stacked path trains as one (graph engine on CUDA; 1: no stacked path)", 3,
                         least=1)
    train_images: int = _option("synthetic training set size", CIFAR_TRAIN_IMAGES, least=1)
    seed: int = _option("random seed", 0, least=0)

    def resolved(self, device: torch.device) -> "BenchSettings":
        """The device's defaults filled in; ConfigError for a setting that cannot work."""
        on = 0 if device.type == "cuda" else 1
        s = dataclasses.replace(self, archs=_check_archs(self.archs), **{
            f.name: f.metadata["per_device"][on] for f in dataclasses.fields(self)
            if f.metadata["per_device"] and getattr(self, f.name) is None})
        s = dataclasses.replace(s, threads=torch.get_num_threads() if s.threads is None else s.threads,
                                rounds=min(s.rounds, s.steps),
                                num_workers=(os.cpu_count() or 1) if s.num_workers is None else s.num_workers)
        for f in dataclasses.fields(s):
            if f.metadata["least"] is not None and getattr(s, f.name) < f.metadata["least"]:
                raise ConfigError(f"{f.name}={getattr(s, f.name)!r} is not valid: "
                                  f"expected an integer >= {f.metadata['least']}")
        if s.seed > MAX_SEED:
            raise ConfigError(f"seed={s.seed!r} is not valid: expected an integer from 0 to {MAX_SEED}")
        if self.threads is not None:
            cpu_threads(self.threads)  # 1 to the cores this process may use
        check_compile_mode(s.compile_mode)
        # Each pipeline is timed within one epoch, after its untimed first batches.
        usable = s.train_images // s.batch_size - (queued_batches(s.num_workers) if s.baseline else 1)
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


def synthetic_train_set(n: int = CIFAR_TRAIN_IMAGES, seed: int = 0) -> ImageSet:
    """n random uint8 images of CIFAR's shape and labels 0..9 (random: zeros can run faster)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.randint(0, 10, (n,), generator=generator))


# ---------------------------------------------------------------- the paths timed

class TimedPath(Protocol):
    """What the benchmark times: the library's paths (`LibraryPath`) and the plain baseline
    (`baseline.BaselinePath`)."""
    name: str
    model: torch.nn.Module
    precision: str
    engine: str
    networks: int            # networks one step trains
    losses: list[float]      # the training losses seen, to check they stay finite
    data_warmup_batches: int  # batches of an epoch left untimed before its input pipeline is timed

    def steps(self, count: int) -> float:
        """Seconds for `count` full-batch steps."""

    def new_epoch(self) -> Iterator:
        """One epoch of its input pipeline."""

    def close(self) -> None:
        """Lets go of what it holds (a DataLoader's worker processes)."""


def paper_recipe(arch: str) -> str:
    """The recipe of the paper a network comes from: Zagoruyko & Komodakis's for the wide
    networks, else He et al.'s (the seed's own network is a pre-activation ResNet)."""
    return "wrn2016" if ARCHITECTURES[arch].family == "wide" else "he2016"


class LibraryPath:
    """The library's own run of `arch` as `train` builds it (`train.build_stack`), stepped by its
    `train_one_epoch` over full batches: `networks` seeds as one stacked network, each step run
    by `engine` (eager, with the settings' speedups, or graph)."""

    data_warmup_batches = 1

    def __init__(self, arch: str, data: ImageSet, device: torch.device, s: BenchSettings, name: str = "reproresnet",
                 engine: str = "eager", networks: int = 1):
        configs = [TrainConfig(arch=arch, out=str(Path(s.out).parent / f"{name}-{seed}"), seed=seed,
                               recipe=paper_recipe(arch), batch_size=s.batch_size,
                               dataset="synthetic", device=str(device), bf16=s.bf16, channels_last=s.channels_last,
                               compile=s.compile and engine == "eager", engine=engine)
                   for seed in range(s.seed, s.seed + networks)]
        splits = DataSplits.one_set(data.to(device))
        self.name, self.networks = name, networks
        self.stack = build_stack(configs, [splits] * networks, device, s.compile_mode)
        self.model, self.precision, self.engine = self.stack.model, precision_words(self.stack.precision), \
            self.stack.engine.name
        self.full_batches, self.epoch, self.losses = len(data) // s.batch_size, 0, []

    def train_epoch(self, max_steps: int | None = None) -> dict:
        """The next epoch by `train_one_epoch` (its first `max_steps` steps), with the graphs it
        compiled; images per second count every network's images."""
        graphs = compile_counter("stats", "unique_graphs")
        rows = train_one_epoch(self.stack, self.epoch, progress=False, max_steps=max_steps)
        self.epoch += 1
        loss = statistics.fmean(row["train_loss"] for row in rows)
        self.losses.append(loss)
        return {"seconds": rows[0]["seconds"], "images_per_second": self.networks * rows[0]["images_per_second"],
                "train_loss": loss, "compiles": compile_counter("stats", "unique_graphs") - graphs}

    def steps(self, count: int) -> float:
        """Seconds for `count` full-batch steps, as `train_one_epoch` times them."""
        epochs = _split(count, -(-count // self.full_batches))  # epochs of at most full_batches steps
        return sum((self.train_epoch(steps)["seconds"] for steps in epochs), 0.0)

    def new_epoch(self) -> Iterator:
        run = self.stack.runs[0]
        return run_batches(self.stack, run, run.config.seed)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- timing

def _time_data(path: TimedPath, windows: list[int], device: torch.device) -> list[float]:
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
            images, labels = (tensor.to(device, non_blocking=True) for tensor in next(epoch))
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
    # as build_stack picks them from the same switches
    speedups = switches(precision_for(s.bf16, device.type), Speedups.for_device(s, device))
    out.parent.mkdir(parents=True, exist_ok=True)
    record = bench_record.new_record(
        provenance=records.provenance(device), batch_size=s.batch_size, steps=s.steps, warmup_steps=s.warmup_steps,
        settings={**dataclasses.asdict(s), "speedups": speedups,
                  "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
                  "cpu_count": os.cpu_count()},
        unavailable=[] if device.type == "cuda" or not s.graph else [
            {"path": "graph", "why": "the graph engine replays CUDA graphs: a CUDA device only"}] +
        ([{"path": "thread rules", "why": "CPU threads set the speed of a CPU run only"}]
         if s.thread_rules and device.type == "cuda" else []))
    if s.thread_rules and device.type != "cuda":
        record.update(thread_rules=[], load_at_start=load_average())
    rundir.write_json(out, record)
    log(f"benchmark on {record['device']['name']} ({device}): batch {s.batch_size}, {s.warmup_steps} warm-up + "
        f"{s.steps} timed steps in {s.rounds} rounds; speedups {speedups}; record: {out}")
    data = synthetic_train_set(s.train_images, s.seed)
    threads = torch.get_num_threads()  # torch's default, unless this process chose before
    torch.set_num_threads(s.threads)
    try:
        for arch in s.archs:
            record["rows"] += _bench_arch(arch, data, device, s, log)
            record["ratios"] = bench_record.ratios(record["rows"])
            if "thread_rules" in record:
                record["thread_rules"] += _bench_thread_rules(arch, data, device, s, threads, log)
                record["thread_ratios"] = bench_record.thread_ratios(record["thread_rules"])
            rundir.write_json(out, record)
    finally:
        torch.set_num_threads(threads)
    bench_record.finish(record)
    rundir.write_json(out, record)
    return record


def _paths(arch: str, data: ImageSet, device: torch.device, s: BenchSettings) -> list[Callable[[], TimedPath]]:
    """What builds each path to time: the library's eager path, its graph engine, its stacked
    network, and the plain baseline."""
    cuda = device.type == "cuda"
    paths = [lambda: LibraryPath(arch, data, device, s)]
    if s.graph and cuda:
        paths.append(lambda: LibraryPath(arch, data, device, s, "graph", "graph"))
    if s.stack > 1:
        paths.append(lambda: LibraryPath(arch, data, device, s, f"stacked-{s.stack}", "graph" if cuda else "eager",
                                         s.stack))
    return paths + ([lambda: BaselinePath(arch, data, device, s.batch_size, s.num_workers, s.seed)]
                    if s.baseline else [])


def _bench_arch(arch: str, data: ImageSet, device: torch.device, s: BenchSettings, log) -> list[dict]:
    # torch.compile stops after 8 versions of one function, a count every ResNet.forward shares.
    torch._dynamo.reset()
    graphs, skips = compile_counter("stats", "unique_graphs"), compile_counter("inductor", "cudagraph_skips")
    cuda = device.type == "cuda"
    paths, measured = [], {}
    try:
        # Built and warmed up one at a time: each path's peak memory is its own.
        for build in _paths(arch, data, device, s):
            held = torch.cuda.memory_allocated(device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            paths.append(path := build())
            seconds = path.steps(s.warmup_steps)
            peak = (torch.cuda.max_memory_allocated(device) - held) / 2**20 if cuda else None
            measured[path.name] = {"warmup_seconds": seconds, "peak_memory_mb": peak, "round_seconds": []}
            log(f"{arch}: {path.name} warmed up in {seconds:.1f} s")
        forward_flops = flops_per_image(paths[0].model, device)
        timing_graphs = compile_counter("stats", "unique_graphs")
        for index, count in enumerate(_split(s.steps, s.rounds)):
            for path in paths if index % 2 == 0 else paths[::-1]:  # no path always goes first
                measured[path.name]["round_seconds"].append(path.steps(count) / count)
        timing_graphs = compile_counter("stats", "unique_graphs") - timing_graphs
        # The pipelines one after the other: a worker pool keeps working after its window ends.
        windows = _split(s.data_batches, min(s.rounds, s.data_batches))
        for path in paths[::-1]:
            measured[path.name]["data_rates"] = _time_data(path, windows, device)
            path.close()
        rows = [bench_record.row(arch, path=path.name, networks=path.networks, engine=path.engine,
                                 precision=path.precision, batch_size=s.batch_size, forward_flops=forward_flops,
                                 losses=path.losses, **measured[path.name]) for path in paths]
        warnings = bench_record.compiled(
            rows[0], graphs=compile_counter("stats", "unique_graphs") - graphs, during_timing=timing_graphs,
            cudagraph_skips=compile_counter("inductor", "cudagraph_skips") - skips,
            speedups=switches(paths[0].stack.precision, paths[0].stack.speedups))
        log("; ".join(f"{arch}: {row['path']} {row['images_per_second']:.0f} img/s" for row in rows))
        for warning in warnings:
            log(f"{arch}: WARNING: {warning}")
        for number in range(1, s.epochs + 1):  # whole epochs, the last, smaller batch included
            rows[0].setdefault("epochs", []).append(epoch := paths[0].train_epoch())
            log(f"{arch}: reproresnet epoch {number}: {epoch['seconds']:.2f} s "
                f"({epoch['compiles']} graph(s) compiled)")
        return rows
    finally:
        for path in paths:
            path.close()
        if cuda:
            torch.cuda.empty_cache()


def thread_rules(torch_default: int) -> dict[str, Callable[[], int]]:
    """The CPU thread rules compared, each its thread count now: the free-core rule
    (`config.cpu_threads`'s default, from the load average of the moment), torch's default
    and every usable core. Rules that give the same fixed count are timed once, under a joint name."""
    cores = usable_cores()
    rules: dict[str, Callable[[], int]] = {bench_record.FREE_CORES: lambda: free_core_threads(cores, 1, load_average())}
    fixed: dict[int, list[str]] = {}
    for name, count in (("torch default", torch_default), ("all cores", cores)):
        fixed.setdefault(count, []).append(name)
    rules.update({" = ".join(names): (lambda count=count: count) for count, names in fixed.items()})
    return rules


def _bench_thread_rules(arch: str, data: ImageSet, device: torch.device, s: BenchSettings, torch_default: int,
                        log) -> list[dict]:
    """The library's eager path under each thread rule, the rules alternating in rounds (no
    rule always first); before each round its rule is applied, one untimed step runs (a new
    OpenMP team starts) and the load average is read."""
    path, rules = LibraryPath(arch, data, device, s, "threads"), thread_rules(torch_default)
    before = torch.get_num_threads()
    measured = {name: {"threads": [], "load_averages": [], "round_seconds": []} for name in rules}
    try:
        path.steps(s.warmup_steps)
        for index, count in enumerate(_split(s.steps, s.rounds)):
            for name in rules if index % 2 == 0 else list(rules)[::-1]:
                torch.set_num_threads(threads := rules[name]())
                path.steps(1)
                load = load_average()
                seconds = path.steps(count) / count
                for key, value in zip(measured[name], (threads, load, seconds)):
                    measured[name][key].append(value)
    finally:
        torch.set_num_threads(before)
    rows = [bench_record.thread_row(arch, rule=name, batch_size=s.batch_size, **values)
            for name, values in measured.items()]
    log("; ".join(f"{arch}: {row['rule']} ({'/'.join(map(str, sorted(set(row['threads']))))} thread(s)) "
                  f"{row['images_per_second']:.0f} img/s" for row in rows))
    return rows


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """One flag per BenchSettings field (`--batch-size` for batch_size), and --quiet."""
    parser = argparse.ArgumentParser(prog="python -m reproresnet bench", description=__doc__.split("\n\n")[0])
    kinds = {"bool": {"action": argparse.BooleanOptionalAction}, "tuple": {"nargs": "+", "metavar": "NAME"},
             "int": {"type": int}, "str": {"type": str}}  # how a field of each type is read
    for setting in dataclasses.fields(BenchSettings):
        help = setting.metadata["help"]
        if setting.metadata["per_device"]:
            cuda, cpu = ("torch's" if value is None else value for value in setting.metadata["per_device"])
            help += f" (default: {cuda} on CUDA, {cpu} on CPU)" if cuda != cpu else f" (default: {cpu})"
        parser.add_argument("--" + setting.name.replace("_", "-"), help=help, default=setting.default,
                            **kinds[setting.type])
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
    print(bench_record.format_bench(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
