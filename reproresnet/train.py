"""The training loop: CUDA first, resumable, recording everything a reader needs to check it.

`train(config)` runs (or resumes) one run in `config.out`. `train_stack(configs)` trains K runs
of one config that differ only in their seed (and directory) as one network
(`stacked.StackedResNet`), K times the work per kernel: each run keeps its own seed, data
split, data order, augmentation draws, normaliser and run directory, and writes what it would
have written alone (its checkpoint holds its own network and momentum); a stacked run can be
resumed alone and a lone run in a stack. How a step runs is the engine's (`engine.py`).

After every epoch each run writes, each atomically and in this order: `checkpoint.pt`
(model, optimizer and metrics: the source of truth), `metrics.csv` and `run.json`; on CUDA a
background thread writes them while the GPU trains on. The random state of an epoch is
derived from (seed, epoch), so a resumed run repeats exactly what an uninterrupted one would
have done: bit for bit on a CPU; on CUDA only the data order repeats (cuDNN autotuning and
non-deterministic backward kernels change the last bits of every step).

`deadline` stops a run cleanly at an epoch boundary, its checkpoint written, when the next
epoch would not end before it; such a run gets the status "stopped" (resumable) and says why
in its record's `message`. `hard_stop` abandons an epoch still running then (its steps are
lost, the files keep the last complete epoch): how a campaign ends within its budget.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed, records
from .config import ConfigError, TrainConfig, cpu_threads, differences, select_device
from .data import DataSplits, ImageSet, Normalizer, eval_batches, load_splits, train_batches
from .engine import (Engine, Speedups, build_engine, compile_model, exact_fp32, make_optimizer, resolve_engine,
                     scale_momentum_)
from .models import build_model, network_size
from .recipes import Recipe, Schedule, make_schedule
from .records import RunDirError
from .stacked import DIFFERS_FROM_SEPARATE_RUNS, StackedResNet, merge_optimizer_states, split_optimizer_state, \
    stack_inputs, stacked_loss


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class HardStop(RuntimeError):
    """The hard stop came during an epoch: the epoch is abandoned."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


@dataclass
class Run:
    """One training run: its settings, its data and normaliser, and what it writes (its record,
    metrics and speed segments). `active` ends when it diverges."""
    config: TrainConfig
    splits: DataSplits
    normalizer: Normalizer
    record: dict | None = None
    metrics: list = dataclasses.field(default_factory=list)
    speed: list = dataclasses.field(default_factory=list)  # one segment per process, see _speed_segment
    active: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class Stack:
    """What the loop trains, built once by `build_stack`: K runs of one config as one network
    (K = 1: a plain network), its optimizer and the engine that steps it."""
    runs: list[Run]
    recipe: Recipe
    schedule: Schedule
    model: torch.nn.Module           # the network, or the K networks as one StackedResNet
    optimizer: torch.optim.Optimizer
    engine: Engine
    speedups: Speedups
    device: torch.device
    world: distributed.World = distributed.World()  # the processes of a torchrun run

    @property
    def k(self) -> int:
        return len(self.runs)


def stacked_batch(batches, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The K runs' (images, labels) as the stack's input `[B, 3K, H, W]` and labels `[K, B]`."""
    images = batches[0][0] if len(batches) == 1 else stack_inputs([images for images, _ in batches])
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.stack([labels for _, labels in batches])


def train_one_epoch(stack: Stack, epoch: int, progress: bool = True, max_steps: int | None = None,
                    hard_stop: float | None = None) -> list[dict]:
    """One epoch of SGD steps (the first `max_steps` only, for the benchmark); returns each run's
    mean loss, error (%), lr, seconds and images per second (its own images)."""
    runs, schedule, device, world = stack.runs, stack.schedule, stack.device, stack.world
    # Dropout draws: one generator for the stack, seeded by its first run (K = 1: the run's own).
    torch.manual_seed(distributed.process_seed(world, epoch_seed(runs[0].config.seed, epoch)))
    first = epoch * schedule.iterations_per_epoch
    steps = min(schedule.iterations_per_epoch, schedule.total_iterations - first, max_steps or math.inf)
    recipe = stack.recipe
    epochs = [train_batches(run.splits.train, recipe.batch_size, normalizer=run.normalizer,
                            augmentation=recipe.augmentation, padding=recipe.padding, device=device,
                            part=(world.rank, world.size),
                            generator=torch.Generator(device).manual_seed(epoch_seed(run.config.seed, epoch)))
              for run in runs]
    loss_sum = torch.zeros(stack.k, device=device)
    errors = torch.zeros(stack.k, device=device, dtype=torch.long)
    seen = 0
    stack.model.train()
    synchronize(device)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{schedule.epochs}", leave=False,
               disable=None if progress else True, unit="step")  # None: no bar off a terminal
    with exact_fp32():
        for index, batches in zip(range(steps), zip(*epochs)):
            lr = schedule.lr_at(first + index)
            stack.engine.set_lr(lr)
            momentum_scale = schedule.momentum_scale_at(first + index, recipe.momentum_form)
            if momentum_scale != 1.0:  # in place: the buffers a captured graph reads
                scale_momentum_(stack.optimizer, momentum_scale)
            images, labels = stacked_batch(batches, stack.speedups.channels_last)
            batch_loss, batch_errors = stack.engine.step(images, labels)
            loss_sum += batch_loss
            errors += batch_errors
            seen += labels.shape[1]
            bar.update()
            if hard_stop is not None and time.time() > hard_stop:  # the host runs a few steps ahead at most
                bar.close()
                raise HardStop(f"the hard stop came in epoch {epoch + 1}")
            if not bar.disable and index % 50 == 49:  # an occasional sync for the bar, not one per step
                bar.set_postfix(loss=f"{loss_sum.sum().item() / seen / stack.k:.3f}", lr=f"{lr:g}")
    distributed.all_sum(world, loss_sum, errors)
    seen *= world.size  # every process saw an equal slice
    distributed.average_buffers(world, stack.model)
    synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    return [{"lr": lr, "train_loss": loss / seen, "train_error": 100.0 * wrong / seen, "seconds": seconds,
             "images_per_second": seen / seconds} for loss, wrong in zip(loss_sum.tolist(), errors.tolist())]


@torch.no_grad()
def evaluate(stack: Stack, sets: list[ImageSet]) -> list[tuple[float, float]]:
    """Each run's mean loss and error (%) over its own set in `sets`, all K in one pass per
    batch, in large batches; restores train mode.

    Always fp32 with TF32 off, and eager (the uncompiled module, same weights): bf16 moved 4 of
    1,000 test predictions of a trained ResNet-20, and compiling evaluation's batch shape would
    cost a cold compile per process for a fifteenth of an epoch's work."""
    if len({len(data) for data in sets}) != 1 or len(sets) != stack.k:
        raise ValueError(f"evaluate needs one set per run, all of one size; got sizes {[len(s) for s in sets]} "
                         f"for {stack.k} runs")
    was_training = stack.model.training
    stack.model.eval()
    loss_sum = torch.zeros(stack.k, device=stack.device)
    errors = torch.zeros(stack.k, device=stack.device, dtype=torch.long)
    batch_size = stack.runs[0].config.eval_batch_size
    with exact_fp32():
        for batches in zip(*(eval_batches(data, batch_size, normalizer=run.normalizer, device=stack.device)
                             for run, data in zip(stack.runs, sets))):
            images, labels = stacked_batch(batches, stack.speedups.channels_last)
            logits = stack.model(images)
            _, losses, wrong = stacked_loss(logits.view(len(images), stack.k, -1), labels)
            loss_sum += losses * labels.shape[1]
            errors += wrong
    stack.model.train(was_training)
    n = len(sets[0])
    return [(loss / n, 100.0 * wrong / n) for loss, wrong in zip(loss_sum.tolist(), errors.tolist())]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool, repair: bool = True
                     ) -> tuple[dict | None, dict | None]:
    """(the checkpoint to continue from, the record of a complete run); (None, None) for a
    fresh run. Refuses to mix two runs in one directory. The checkpoint is the source of truth:
    a record or metrics.csv behind it or unreadable is rewritten from it (if `repair`)."""
    checkpoint_path = run_dir / records.CHECKPOINT_FILE
    record_path = run_dir / records.RUN_FILE
    if not checkpoint_path.exists() and not record_path.exists():
        return None, None
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it, "
                          f"or choose another --out")
    try:
        record = records.read_run(run_dir)
    except ValueError:
        record = None  # unreadable: the checkpoint decides
    complete = record is not None and record["status"] == "complete"
    try:
        checkpoint = _load_checkpoint(checkpoint_path, record) if checkpoint_path.exists() else None
    except RunDirError as damaged:
        if not complete:
            raise RunDirError(f"{damaged}; delete it to start the run again") from damaged
        _check_same_settings(run_dir, record["config"], config)
        return None, {**record, "message": f"{damaged}: damaged, but the run is complete and no longer needs it"}
    saved = checkpoint["config"] if checkpoint else record["config"] if record else None
    if saved is not None:
        _check_same_settings(run_dir, saved, config)
    ahead = complete and checkpoint is not None and record["epochs_done"] > len(checkpoint["metrics"])
    if checkpoint is not None and checkpoint["record"] is not None and not ahead:
        record = checkpoint["record"]
        if repair:
            records.write_unless_same(run_dir / records.METRICS_FILE, records.metrics_bytes(checkpoint["metrics"]))
            records.write_unless_same(record_path, records.json_bytes(record))
    if record is not None and record["status"] == "complete":
        return None, record
    return checkpoint, None  # None: killed before its first epoch ended, so start again


# What a checkpoint must hold, and of which type, to be continued from.
CHECKPOINT_FIELDS = {"model": dict, "optimizer": dict, "metrics": list, "config": dict, "started": str}


def _load_checkpoint(path: Path, record: dict | None) -> dict:
    """The checkpoint at `path`, never unpickling anything but tensors and plain values; one
    written before checkpoints held their run record gets it from `record` (run.json)."""
    try:
        checkpoint = records.read_checkpoint(path)
    except ValueError as error:
        raise RunDirError(str(error)) from None
    wrong = [key for key, kind in CHECKPOINT_FIELDS.items() if not isinstance(checkpoint.get(key), kind)]
    if wrong:
        raise RunDirError(f"{path} is not a checkpoint of a run: {', '.join(wrong)} missing or of the wrong type")
    if "record" not in checkpoint:
        checkpoint["record"] = record and {**record, **_progress(
            checkpoint["metrics"], checkpoint.get("speed", []), record["epochs_planned"],
            record.get("recipe", {}).get("val_size", 0))}
    return checkpoint


def _check_same_settings(run_dir: Path, saved: dict, requested: TrainConfig) -> None:
    """The run in `run_dir` (its recorded config `saved`) is the experiment and seed asked for."""
    changed = differences(saved, requested)
    if changed:
        details = ", ".join(f"{key}: {before!r} -> {after!r}" for key, (before, after) in changed.items())
        raise RunDirError(f"cannot resume {run_dir} with different settings ({details}); "
                          f"use the original settings or another --out")


def _new_record(stack: Stack, run: Run, provenance: dict) -> dict:
    config = run.config
    params, flops = network_size(config.arch, len(run.splits.classes), tuple(sorted(config.model_options().items())))
    return {
        "format": records.RUN_FORMAT,
        "status": "running",
        "name": run.run_dir.name,
        "arch": config.arch,
        "config": config.as_dict(),
        "recipe": stack.recipe.as_dict(),
        "schedule": stack.schedule.as_dict(),
        "data": {**run.splits.describe(), "normalization": stack.recipe.normalization,
                 "augmentation": stack.recipe.augmentation},
        "precision": stack.speedups.precision(),  # bf16 and fp32 runs are different experiments
        **provenance,
        "device": {**provenance["device"], "speedups": dataclasses.asdict(stack.speedups)},
        "params": params,
        "flops_per_image": flops,
        "distributed": stack.world.describe(stack.recipe.batch_size),
        "epochs_planned": stack.schedule.epochs,
        "epochs_done": 0,
        "final": None,
        "message": None,
        "started": records.now(),
        "updated": records.now(),
    }


def summarize(metrics: list[dict], val_size: int, warmup_epochs=(1,)) -> dict:
    """The run's reported result: the final epoch (He et al.), or the epoch of the best
    validation error when a validation split was held out (the seed's protocol). Speed
    leaves out `warmup_epochs` (1-based), the first epoch of every process: it compiles."""
    if val_size:
        chosen = min(metrics, key=lambda row: row["val_error"])
        selected_by = "best_validation"
    else:
        chosen = metrics[-1]
        selected_by = "final_epoch"
    timed = [row for row in metrics if row["epoch"] not in warmup_epochs] or metrics
    return {"test_error": chosen["test_error"], "epoch": chosen["epoch"], "selected_by": selected_by,
            "seconds_per_epoch": statistics.median(row["seconds"] for row in timed),
            "images_per_second": statistics.median(row["images_per_second"] for row in timed)}


def _progress(metrics: list[dict], speed: list[dict], epochs: int, val_size: int) -> dict:
    """The fields of a run record that change with each epoch, once `metrics` are done."""
    done = len(metrics) == epochs
    warmup = {segment["first_epoch"] for segment in speed}
    return {"epochs_done": len(metrics), "status": "complete" if done else "running", "message": None,
            "final": summarize(metrics, val_size, warmup) if done else None,
            "speed": {"segments": speed, "note": SPEED_NOTE}}


def _save(writer: records.Writer, run: Run, checkpoint: dict | None) -> None:
    """The run's files, in the writer's order: the checkpoint first, holding the record as plain
    JSON values (the source of truth a resumption rebuilds metrics.csv and run.json from), then
    metrics.csv, then run.json. What is handed to the writer is a copy: training goes on while
    a background writer works."""
    run.record["updated"] = records.now()
    record, metrics, run_dir = json.loads(records.json_bytes(run.record)), copy.deepcopy(run.metrics), run.run_dir
    if checkpoint is not None:
        writer.submit(records.write_checkpoint, run_dir / records.CHECKPOINT_FILE, {**checkpoint, "record": record})
    writer.submit(records.write_metrics, run_dir / records.METRICS_FILE, metrics)
    writer.submit(records.write_json, run_dir / records.RUN_FILE, record)


def _snapshot(value, background: bool):
    """`value` as it is now: every tensor copied to the CPU for a background writer (a copy
    of a state dict, not a view of weights that the next step changes)."""
    if not background:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((key, _snapshot(item, True)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(item, True) for item in value)
    return copy.deepcopy(value)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          deadline: float | None = None, pack: int = 1, compile_mode: str = "default") -> dict:
    """Train (or resume) the run `config` describes; returns its run record.

    `deadline` (a `time.time()` moment): stop cleanly before an epoch that would end after
    it. `pack` (runs sharing the device) and `compile_mode` go into the record's speed."""
    world = distributed.World.from_environment()  # several processes under torchrun; process 0 writes
    if deadline is not None and world.size > 1:
        # each process would time its own epochs and might stop at a different one
        raise ConfigError("--stop-after/--stop-at stop single-process runs; under torchrun, stop the job "
                          "and rerun it with --resume")
    device = select_device(config.device)
    threads, why = cpu_threads(config.threads, jobs=pack)
    torch.set_num_threads(threads)
    with distributed.joined(world, device) as world:
        device = distributed.device_for(world, device)
        progress = progress and world.main
        _say(progress, f"{config.arch}: loading {config.dataset} ...")
        splits = load_device_splits(config, device)  # bad input is refused before the run directory exists
        data = splits.describe()
        _say(progress, f"{config.arch}: {data['n_train']:,} training, {data['n_val']:,} validation and "
                       f"{data['n_test']:,} test images of {data['label']} on {device}; {threads} CPU "
                       f"thread{'s' if threads > 1 else ''} ({why})")
        [record] = _train_in([config], [splits], device, world, resume=resume, progress=progress,
                             deadline=deadline, pack=pack, compile_mode=compile_mode)
    if record["status"] == "diverged":
        raise TrainingDiverged(record["message"])
    return record


def train_stack(configs: list[TrainConfig], device: torch.device, sources: dict | None = None, *,
                progress: bool = False, deadline: float | None = None, hard_stop: float | None = None,
                writer: records.Writer | None = None, note: str | None = None) -> list[dict]:
    """Train (or resume) K runs of one config, seeds apart, as one stacked network in this
    process (single-process, `resume` implied); returns their records in `configs`' order. A
    run that diverges is recorded so and dropped; the others go on. `sources`: the data sets
    already read, by `source_key` (each run's splits are taken from them); `note`: why they
    train this way (the campaign's choice), kept in each run's speed segment."""
    sources = sources or {}
    splits = [load_device_splits(config, device, sources.get(source_key(config))) for config in configs]
    return _train_in(configs, splits, device, distributed.World(), resume=True, progress=progress,
                     deadline=deadline, hard_stop=hard_stop, writer=writer, note=note)


def source_key(config: TrainConfig) -> tuple:
    """What identifies the data a run reads whole (`data.load_source`): the synthetic set is
    generated from the seed."""
    return config.dataset, config.data_dir, config.seed if config.dataset == "synthetic" else None


def _train_in(configs: list[TrainConfig], splits: list[DataSplits], device: torch.device,
              world: distributed.World, *, resume: bool, progress: bool, deadline: float | None,
              hard_stop: float | None = None, pack: int = 1, compile_mode: str = "default",
              writer: records.Writer | None = None, note: str | None = None) -> list[dict]:
    """The runs in their directories: one writer each, resumed from their checkpoints, stopped
    cleanly at `deadline`; returns their records, in `configs`' order."""
    with ExitStack() as held:
        if world.main:
            for config in configs:
                held.enter_context(records.run_dir_lock(Path(config.out)))
                records.remove_orphans(Path(config.out))
        # Every file is written before the locks are released (the exit stack unwinds in reverse).
        if writer is None:
            writer = held.enter_context(records.Writer(background=device.type == "cuda"))
        else:
            held.callback(writer.flush)
        # Every process decides from the same files: process 0 writes none before the first
        # epoch ends, which needs the others (DDP's collectives).
        prepared = [_prepare_run_dir(Path(config.out), config, resume, repair=world.main) for config in configs]
        done = {index: complete for index, (_, complete) in enumerate(prepared) if complete is not None}
        todo = [index for index in range(len(configs)) if index not in done]
        if todo:
            checkpoints = [prepared[index][0] for index in todo]
            _check_same_epoch([configs[index] for index in todo], checkpoints)
            stack = build_stack([configs[index] for index in todo], [splits[index] for index in todo], device,
                                compile_mode, world, checkpoints)
            _start_records(stack, checkpoints, pack, compile_mode, note)
            _say(progress, _start_line(stack, checkpoints))
            _train_epochs(stack, writer, progress, deadline, hard_stop)
            done.update(zip(todo, (run.record for run in stack.runs)))
        return [done[index] for index in range(len(configs))]


def _check_same_epoch(configs: list[TrainConfig], checkpoints: list) -> None:
    epochs = [len(checkpoint["metrics"]) if checkpoint else 0 for checkpoint in checkpoints]
    if len(set(epochs)) > 1:
        where = ", ".join(f"{config.out}: {done}" for config, done in zip(configs, epochs))
        raise ConfigError(f"runs trained as one stack must be at the same epoch; epochs done: {where}")


def _start_records(stack: Stack, checkpoints: list, pack: int, compile_mode: str, note: str | None) -> None:
    provenance = records.provenance(stack.device)
    for run, checkpoint in zip(stack.runs, checkpoints):
        run.record = _new_record(stack, run, provenance)
        if checkpoint is not None:
            run.record.update(started=checkpoint["started"], epochs_done=len(checkpoint["metrics"]))
            run.metrics, run.speed = checkpoint["metrics"], checkpoint.get("speed", [])
        run.speed.append(_speed_segment(stack, len(run.metrics) + 1, pack, compile_mode, note))


def _start_line(stack: Stack, checkpoints: list) -> str:
    """What was built and what it will do: said before the first epoch line."""
    config, record = stack.runs[0].config, stack.runs[0].record
    together = f", {stack.k} runs as one stacked network" if stack.k > 1 else ""
    epochs = stack.schedule.epochs
    return (f"{config.arch}: built, {record['params']:,} parameters, {record['precision']}, {stack.engine.name} "
            f"engine{', compiled during its first epoch' if stack.speedups.compile else ''}{together}; " +
            (f"resuming after epoch {len(checkpoints[0]['metrics'])} of {epochs}" if checkpoints[0]
             else f"training {epochs} epoch{'s' if epochs > 1 else ''}"))


def _say(progress: bool, line: str) -> None:
    """A start-up line, before the first progress bar: what is loaded and built, and where."""
    if progress:
        tqdm.write(line)


def _train_epochs(stack: Stack, writer: records.Writer, progress: bool, deadline: float | None,
                  hard_stop: float | None) -> None:
    last_epoch_s = None
    for epoch in range(len(stack.runs[0].metrics), stack.schedule.epochs):
        active = [run for run in stack.runs if run.active]
        if not active:
            return
        if deadline is not None and _no_time_for(epoch, deadline, last_epoch_s, active[0].metrics, active[0].speed):
            for run in active:
                _stop(run, writer, f"stopped cleanly after epoch {epoch} of {stack.schedule.epochs} (deadline); "
                               f"resume to continue")
            return
        started = time.time()
        try:
            _train_and_evaluate(stack, epoch, writer, progress, hard_stop)
        except HardStop:
            for run in active:
                _stop(run, writer, f"stopped at the hard stop during epoch {epoch + 1} of {stack.schedule.epochs}, "
                                   f"which is lost; resume to continue from epoch {epoch}")
            return
        last_epoch_s = time.time() - started
        if progress:
            for run in stack.runs:
                if run.active:
                    name = f"{run.run_dir.name}: " if stack.k > 1 else ""
                    tqdm.write(name + _epoch_line(run.metrics[-1], stack.schedule.epochs))


def _stop(run: Run, writer: records.Writer, message: str) -> None:
    if run.speed[-1]["last_epoch"] is None:
        run.speed.pop()  # this process trained nothing
    run.record.update(status="stopped", message=message, speed={"segments": run.speed, "note": SPEED_NOTE})
    _save(writer, run, None)


def _no_time_for(epoch: int, deadline: float, last_epoch_s: float | None, metrics: list[dict],
                 speed: list[dict] = ()) -> bool:
    """Would the next epoch end after `deadline`? Predicted from this process's last epoch
    (training, evaluation and writes); for a process's first epoch, which also compiles, from
    the first epoch of the run's last process, else from its earlier epochs' training time."""
    if last_epoch_s is not None:
        predicted = last_epoch_s
    else:
        firsts = [s["first_epoch_seconds"] for s in speed if s.get("first_epoch_seconds") is not None]
        steady = statistics.median(row["seconds"] for row in metrics) if metrics else 0.0
        predicted = max(firsts[-1] if firsts else 0.0, steady)
    return time.time() + predicted > deadline


def _speed_segment(stack: Stack, first_epoch: int, pack: int, compile_mode: str, note: str | None = None) -> dict:
    """How one process trains: the context of its s/epoch (filled in as epochs end)."""
    segment = {"first_epoch": first_epoch, "last_epoch": None, "started": records.now(),
               "device": stack.device.type,
               "gpu": torch.cuda.get_device_name(stack.device) if stack.device.type == "cuda" else None,
               "pack": pack, "threads": torch.get_num_threads(), "precision": stack.speedups.precision(),
               "channels_last": stack.speedups.channels_last,
               "engine": stack.engine.name, "stacked": stack.k,
               "compile_mode": compile_mode if stack.speedups.compile else None, "first_epoch_seconds": None,
               "seconds_per_epoch": None, "images_per_second": None, "epochs_timed": 0}
    if stack.k > 1:
        segment["stacked_note"] = DIFFERS_FROM_SEPARATE_RUNS
    if note:
        segment["chosen"] = note  # why this process trains the run this way (the campaign's self-check)
    return segment


def _update_speed(run: Run, rows: list[dict]) -> None:
    """This process's s/epoch and img/s: the median of its epochs after its first."""
    segment = run.speed[-1]
    segment["last_epoch"] = rows[-1]["epoch"]
    if segment["last_epoch"] == segment["first_epoch"]:  # its training time includes compilation
        segment["first_epoch_seconds"] = rows[-1]["seconds"]
    timed = [row for row in rows if segment["first_epoch"] < row["epoch"] <= segment["last_epoch"]]
    if timed:
        segment.update(seconds_per_epoch=statistics.median(row["seconds"] for row in timed),
                       images_per_second=statistics.median(row["images_per_second"] for row in timed),
                       epochs_timed=len(timed))


SPEED_NOTE = ("one segment per process that trained this run; seconds_per_epoch and images_per_second "
              "are medians of the training time of its epochs after its first (which compiles or captures "
              "and warms up; evaluation and writes are not timed; first_epoch_seconds is that first epoch's "
              "training time, set-up included); pack = runs sharing the device; engine = how each step ran "
              "(eager, or a replayed CUDA graph); stacked = the runs trained as one stacked network in this "
              "process, whose images_per_second is this run's own share; threads = this process's CPU threads")


def load_device_splits(config: TrainConfig, device: torch.device, source: DataSplits | None = None) -> DataSplits:
    """The run's data, resident on `device` as uint8 (taken from `source` if given: see `data.load_source`)."""
    splits = load_splits(config.dataset, config.data_dir, download=config.download,
                         limit_train=config.limit_train, limit_test=config.limit_test,
                         val_size=config.resolved_recipe().val_size, seed=config.seed, source=source)
    return splits.to(device)


def build_stack(configs: list[TrainConfig], splits: list[DataSplits], device: torch.device,
                compile_mode: str = "default", world: distributed.World = distributed.World(),
                checkpoints: list | None = None) -> Stack:
    """The runs of `configs` (one config, seeds apart) as one network on `device`, with its
    optimizer and engine: each network freshly initialised from its run's seed, or from its
    run's checkpoint."""
    _check_stackable(configs)
    config, checkpoints = configs[0], checkpoints or [None] * len(configs)
    speedups = Speedups.for_device(config, device)
    recipe = config.resolved_recipe()
    schedule = make_schedule(recipe, config.arch, len(splits[0].train.labels))
    distributed.check_batches(world, recipe.batch_size, len(splits[0].train.labels))
    runs = [Run(c, s, Normalizer.fit(s.train.images, recipe.normalization).to(device)) for c, s in zip(configs, splits)]
    models = []
    for run, checkpoint in zip(runs, checkpoints):
        torch.manual_seed(run.config.seed)
        model = build_model(config.arch, num_classes=len(run.splits.classes), **config.model_options()).to(device)
        if checkpoint is not None:
            _check_same_speedups(run.run_dir, checkpoint, speedups, device)
            distributed.check_resume(world, checkpoint, run.run_dir)
            with _fitting(run.run_dir):
                model.load_state_dict(checkpoint["model"])
        models.append(model)
    model = models[0] if len(models) == 1 else StackedResNet.from_models(models)
    if speedups.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe, speedups)
    states = [checkpoint["optimizer"] for checkpoint in checkpoints if checkpoint is not None]
    if states:
        with _fitting(*(run.run_dir for run in runs)):
            optimizer.load_state_dict(states[0] if len(states) == 1 else merge_optimizer_states(states))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    step_model = distributed.wrap(model, world, device)
    step_model = compile_model(step_model, compile_mode) if speedups.compile else step_model
    engine = build_engine(resolve_engine(config, device, world.size > 1), model, optimizer, speedups,
                          recipe.batch_size // world.size, step_model, partial_through_step_model=world.size > 1)
    return Stack(runs, recipe, schedule, model, optimizer, engine, speedups, device, world)


@contextmanager
def _fitting(*run_dirs: Path):
    """A checkpoint's state loaded into the run's network or optimizer: one that does not fit is
    a one-line RunDirError naming the checkpoint(s)."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
        detail = lines[1] if len(lines) > 1 else lines[0]  # torch's first line only says "Error(s) in ..."
        paths = " or ".join(str(run_dir / records.CHECKPOINT_FILE) for run_dir in run_dirs)
        raise RunDirError(f"{paths} does not fit this run's network and optimizer ({detail}); delete it to "
                          f"start the run again") from None


def _check_stackable(configs: list[TrainConfig]) -> None:
    """One config, seeds apart, each run in its own directory."""
    def shared(config):
        return {key: value for key, value in config.effective().items() if key not in ("seed", "out")}
    for config in configs[1:]:
        if shared(config) != shared(configs[0]):
            changed = sorted(key for key, value in shared(config).items() if shared(configs[0]).get(key) != value)
            raise ConfigError(f"{config.out} differs from {configs[0].out} in {changed}: only runs that differ "
                              f"in their seed can be trained as one stack")
    if len({Path(config.out).resolve() for config in configs}) != len(configs):
        raise ConfigError(f"two runs of one stack share a directory: {[config.out for config in configs]}")


def _check_same_speedups(run_dir: Path, checkpoint: dict, speedups: Speedups, device: torch.device) -> None:
    """A run continues with the numerics and the data-order generator it started with: a run
    begun on a CPU and resumed on CUDA would switch bf16 on and change its data order."""
    saved = checkpoint.get("speedups"), checkpoint.get("generator_device")
    now = dataclasses.asdict(speedups), device.type
    if saved[0] is not None and saved != now:
        raise RunDirError(f"cannot resume {run_dir}: it was trained with speedups {saved[0]} and data order "
                          f"drawn on {saved[1]}, this process would use {now[0]} on {now[1]}; resume it on a "
                          f"{saved[1]} device with the same --bf16/--channels-last/--compile switches")


def _divergence(stack: Stack, rows: list[dict]) -> list[str | None]:
    """What went non-finite in each run, if anything: its loss, or its weights and BN statistics
    (these can overflow while the epoch's mean loss is still a finite 1e27). All K networks are
    checked on the device at once, with one synchronisation."""
    state = {name: tensor.detach() for name, tensor in stack.model.state_dict().items() if tensor.is_floating_point()}
    flat = torch.cat([tensor.reshape(stack.k, -1).float() for tensor in state.values()], 1)
    finite = torch.isfinite(flat).all(1).tolist()
    problems = []
    for index, (row, ok) in enumerate(zip(rows, finite)):
        if not math.isfinite(row["train_loss"]):
            problems.append(f"training loss became {row['train_loss']}")
        elif not ok:
            broken = [name for name, tensor in state.items()
                      if not torch.isfinite(tensor.reshape(stack.k, -1)[index]).all()]
            problems.append(f"weights became non-finite ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''})")
        else:
            problems.append(None)
    return problems


def _member_states(stack: Stack) -> tuple[list[dict], list[dict]]:
    """Each run's model and optimizer state, as a run trained alone holds them (a tensor lr, the
    engine's, saved as the number a separate run saves)."""
    background = stack.device.type == "cuda"
    optimizer = stack.optimizer.state_dict()
    for group in optimizer["param_groups"]:
        group["lr"] = float(group["lr"])
    if stack.k == 1:
        models, optimizers = [stack.model.state_dict()], [optimizer]
    else:
        models, optimizers = stack.model.model_state_dicts(), split_optimizer_state(optimizer, stack.k)
    return _snapshot(models, background), _snapshot(optimizers, background)


def _train_and_evaluate(stack: Stack, epoch: int, writer: records.Writer, progress: bool,
                        hard_stop: float | None) -> None:
    """One epoch of training and evaluation, then every active run's files written."""
    if stack.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(stack.device)
    rows = [{"epoch": epoch + 1, **row} for row in train_one_epoch(stack, epoch, progress, hard_stop=hard_stop)]
    for run, problem in zip(stack.runs, _divergence(stack, rows)):
        if run.active and problem:
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was saved"
            run.record.update(status="diverged", message=f"{problem} in epoch {epoch + 1}; {kept}")
            run.active = False
            if stack.world.main:
                _save(writer, run, None)
    if not any(run.active for run in stack.runs):
        return
    models, optimizers = _member_states(stack)
    if stack.runs[0].splits.val is not None:
        results = evaluate(stack, [run.splits.val for run in stack.runs])
        for run, row, model, (loss, error) in zip(stack.runs, rows, models, results):
            row.update(val_loss=loss, val_error=error)
            best = min((r["val_error"] for r in run.metrics), default=math.inf)
            if run.active and row["val_error"] < best and stack.world.main:  # the seed's best-validation snapshot
                writer.submit(records.write_checkpoint, run.run_dir / records.BEST_FILE, model)
    results = evaluate(stack, [run.splits.test for run in stack.runs])
    for row, (loss, error) in zip(rows, results):
        row.update(test_loss=loss, test_error=error)
        if stack.device.type == "cuda":
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(stack.device) / 2**20
    for run, row, model, optimizer in zip(stack.runs, rows, models, optimizers):
        if not run.active:
            continue
        run.metrics = run.metrics + [row]
        _update_speed(run, run.metrics)
        run.record.update(_progress(run.metrics, run.speed, stack.schedule.epochs, stack.recipe.val_size))
        if stack.world.main:
            _save(writer, run, {"model": model, "optimizer": optimizer, "metrics": copy.deepcopy(run.metrics),
                                "config": run.config.as_dict(), "started": run.record["started"],
                                "speed": copy.deepcopy(run.speed), "speedups": dataclasses.asdict(stack.speedups),
                                "generator_device": stack.device.type, "world_size": stack.world.size})


def _epoch_line(row: dict, epochs: int) -> str:
    val = f"  val err {row['val_error']:5.2f}%" if "val_error" in row else ""
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.3f} "
            f"err {row['train_error']:5.2f}%{val}  test err {row['test_error']:5.2f}%  "
            f"{row['seconds']:.1f} s  {row['images_per_second']:.0f} img/s")
