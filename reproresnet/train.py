"""The training loop: a run's life, top to bottom, in `train_runs`, for one run or a stack of
runs: settings checked; CPU threads; the run directories held and prepared (fresh, resumed or
complete: rundir.py); the data on the device (data.py); the network(s) built, stacked, wrapped
for DDP, compiled, the engine chosen (`build_stack`); the records started (records.py); then
each epoch trained through the engine, evaluated and checkpointed, until the last, a deadline
or a divergence; the records returned.

`train(config)` runs (or resumes) one run in `config.out`. `train_stack(configs)` trains K runs
of one config, seeds apart, as one network (`stacked.StackedResNet`): each run keeps its own
seed, data split, data order, augmentation draws, normaliser and run directory, and writes
what it would have written alone, so a stacked run can be resumed alone and a lone run in a
stack. How a step runs: engine.py; what a run record holds: records.py.

The random state of an epoch is derived from (seed, epoch), so a resumed run repeats exactly
what an uninterrupted one would have done: bit for bit on a CPU (at the same thread count,
which a resume keeps); on CUDA only the data order repeats (cuDNN autotuning and
non-deterministic backward kernels change the last bits).
A `Deadline` stops runs cleanly at an epoch boundary, checkpoints written, with the status
"stopped" (resumable) and why in the record's `message`; `hard_stop` abandons an epoch still
running then (the files keep the last complete epoch): how a campaign ends within its budget.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed, records, rundir
from .config import ConfigError  # noqa: F401 (callers catch train.ConfigError)
from .config import TrainConfig, check_stackable, cpu_threads, select_device
from .data import DataSplits, ImageSet, Normalizer, check_batch, device_splits, eval_batches, train_batches
from .engine import (Engine, Speedups, build_engine, check_compile_mode, compile_model, exact_fp32, make_optimizer,
                     precision_words, resolve_engine, scale_momentum_, switches, synchronize)
from .models import build_model, network_size
from .recipes import MAX_EPOCHS, Recipe, Schedule, make_schedule
from .stacked import (DIFFERS_FROM_SEPARATE_RUNS, StackedResNet, member_states, merge_optimizer_states, nonfinite,
                      stacked_batch, stacked_loss)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class HardStop(RuntimeError):
    """The hard stop came during an epoch: the epoch is abandoned."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * MAX_EPOCHS + epoch  # distinct for every seed and epoch (epochs < MAX_EPOCHS)


class Deadline:
    """When runs must stop cleanly: no epoch starts that is predicted to end after `at` (a
    `time.time()` moment). An epoch is predicted from the runs' last one; one that nothing has
    timed yet (a fresh run's first) from `step_seconds`, a measured training step of the stack
    about to train (the campaign's self-check), plus `setup_seconds` (warm-up steps, the
    capture, cuDNN's autotuning); without `step_seconds` it is predicted to take no time."""

    def __init__(self, at: float, step_seconds: float | None = None, setup_seconds: float = 0.0):
        self.at, self.step_seconds, self.setup_seconds = at, step_seconds, setup_seconds

    def allows(self, epochs_done: int, predicted_seconds: float) -> bool:
        """Whether the next epoch, predicted to take `predicted_seconds`, may start; asked
        before every epoch, with the epochs the runs have done."""
        return time.time() + predicted_seconds <= self.at

    def untimed_epoch_seconds(self, steps: int, evaluated_batches: float) -> float:
        """An epoch of `steps` training steps and `evaluated_batches` batches of evaluation
        (validation and test), each counted as one training step: a forward pass is about a
        third of a step's arithmetic, but evaluation runs eagerly in fp32 with TF32 off, so
        this errs long, which costs at most one epoch not started."""
        if self.step_seconds is None:
            return 0.0
        return self.setup_seconds + (steps + evaluated_batches) * self.step_seconds


@dataclass
class Run:
    """One training run as the loop trains it: its settings, its data and normaliser, and what
    it writes (its record, metrics and speed segments). `active` ends when it diverges."""
    config: TrainConfig
    splits: DataSplits
    normalizer: Normalizer
    record: records.Record | None = None
    metrics: list = dataclasses.field(default_factory=list)
    speed: list = dataclasses.field(default_factory=list)  # one records.SpeedSegment per process
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
    precision: str                   # "fp32" or "bf16": the run's (TrainConfig.precision)
    device: torch.device
    world: distributed.World = distributed.World()  # the processes of a torchrun run

    @property
    def k(self) -> int:
        return len(self.runs)


# ---------------------------------------------------------------- a run's life

def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          deadline: float | Deadline | None = None, pack: int = 1,
          compile_mode: str = "default") -> records.Record:
    """Train (or resume) the run `config` describes, in this process or, under torchrun, in each
    of the job's; returns its run record, or raises TrainingDiverged.

    `deadline` (a `time.time()` moment, or a Deadline): stop cleanly before an epoch that would
    end after it. `pack` (runs sharing the device) and `compile_mode` go into the record's speed."""
    [record] = train_runs([config], distributed.World.from_environment(), resume=resume, progress=progress,
                          deadline=deadline, pack=pack, compile_mode=compile_mode)
    if record.status == "diverged":
        raise TrainingDiverged(record.message)
    return record


def train_stack(configs: list[TrainConfig], device: torch.device, sources: dict | None = None, *,
                progress: bool = False, deadline: float | Deadline | None = None, hard_stop: float | None = None,
                writer: rundir.Writer | None = None, note: str | None = None) -> list[records.Record]:
    """Train (or resume) K runs of one config, seeds apart, as one stacked network in this
    process, on `device` and the CPU threads the caller chose (the campaign, once per slot);
    returns their records in `configs`' order. A run that diverges is recorded so and dropped;
    the others go on. `sources`: the data sets already read, by `data.source_key`; `note`: why
    they train this way (the campaign's choice), kept in each run's speed segment."""
    return train_runs(configs, device=device, sources=sources, own_threads=False, resume=True, progress=progress,
                      deadline=deadline, hard_stop=hard_stop, writer=writer, note=note)


def train_runs(configs: list[TrainConfig], world: distributed.World = distributed.World(), *, resume: bool,
               progress: bool, device: torch.device | None = None, own_threads: bool = True,
               sources: dict | None = None, deadline: float | Deadline | None = None, hard_stop: float | None = None,
               pack: int = 1, compile_mode: str = "default", writer: rundir.Writer | None = None,
               note: str | None = None) -> list[records.Record]:
    """The life of one run, or of K runs of one config trained as one stack, top to bottom;
    returns their records in `configs`' order. `device`: None for the config's; `own_threads`:
    choose this process's CPU threads (else keep the caller's)."""
    # The settings: every refusal before anything is created.
    check_stackable(configs)
    check_compile_mode(compile_mode)
    distributed.check_deadline(world, deadline)
    device = device or select_device(configs[0].device)
    resolve_engine(configs[0], device, world.size > 1)
    speedups = Speedups.for_device(configs[0], device)
    deadline = Deadline(deadline) if isinstance(deadline, (int, float)) else deadline
    # CPU threads: a resume keeps those it trained with, which set the order of a CPU's sums.
    threads, why = torch.get_num_threads(), "as the caller set them"
    if own_threads:
        threads, why = cpu_threads(configs[0].threads, jobs=pack,
                                   resumed=rundir.last_threads(Path(configs[0].out)) if resume else None)
        torch.set_num_threads(threads)
    with distributed.joined(world, device) as world, \
            rundir.opened(configs, resume, main=world.main, writer=writer, background=device.type == "cuda") as found:
        device, progress = distributed.device_for(world, device), progress and world.main
        if not found.to_train:
            return found.results([])  # complete already: nothing to load or build
        # A resume continues with the numerics, data-order generator and processes it began with.
        for config, checkpoint in zip(found.to_train, found.checkpoints):
            if checkpoint is not None:
                rundir.check_same_speedups(Path(config.out), checkpoint,
                                          switches(config.precision(device.type), speedups), device.type)
                distributed.check_resume(world, checkpoint, Path(config.out))
        _say(progress, f"{configs[0].arch}: loading {configs[0].dataset} ...")
        splits = device_splits(found.to_train, device, sources or {})
        for config, split in zip(found.to_train, splits):
            check_batch(config, split)
        _say(progress, _data_line(configs[0], splits[0], device, threads, why))
        stack = build_stack(found.to_train, splits, device, compile_mode, world, found.checkpoints)
        _start_records(stack, found.checkpoints, pack, compile_mode, note)
        _say(progress, _start_line(stack, found.checkpoints))
        writer, epochs, last_epoch_s = found.writer, stack.schedule.epochs, None
        for epoch in range(len(stack.runs[0].metrics), epochs):
            active = [run for run in stack.runs if run.active]
            if not active:
                break
            if _no_time_for(epoch, stack, deadline, last_epoch_s):
                _stop(active, writer, f"stopped cleanly after epoch {epoch} of {epochs} (deadline); resume to continue")
                break
            started = time.time()
            try:
                rows = _train_rows(stack, epoch, progress, hard_stop)
            except HardStop:
                _stop(active, writer, f"stopped at the hard stop during epoch {epoch + 1} of {epochs}, which is lost; "
                                      f"resume to continue from epoch {epoch}")
                break
            _stop_diverged(stack, rows, epoch, writer)
            _evaluate_and_checkpoint(stack, rows, writer)
            last_epoch_s = time.time() - started
            _say_epoch(progress, stack)
        return found.results([run.record for run in stack.runs])


# ---------------------------------------------------------------- building

def build_stack(configs: list[TrainConfig], splits: list[DataSplits], device: torch.device,
                compile_mode: str = "default", world: distributed.World = distributed.World(),
                checkpoints: list | None = None) -> Stack:
    """The runs of `configs` (one config, seeds apart) as one network on `device`, with its
    optimizer and engine: each network freshly initialised from its run's seed, or from its
    run's checkpoint; stacked; wrapped for DDP under torchrun; compiled if asked; stepped by the
    engine the config and device choose."""
    check_stackable(configs)
    config, checkpoints = configs[0], checkpoints or [None] * len(configs)
    speedups, precision = Speedups.for_device(config, device), config.precision(device.type)
    recipe = config.resolved_recipe()
    schedule = make_schedule(recipe, config.arch, len(splits[0].train.labels))
    distributed.check_batches(world, recipe.batch_size, len(splits[0].train.labels))
    runs = [Run(c, s, Normalizer.fit(s.train.images, recipe.normalization).to(device)) for c, s in zip(configs, splits)]
    model = _network(runs, checkpoints, device, speedups.channels_last)
    optimizer = make_optimizer(model, recipe, speedups)
    states = [checkpoint["optimizer"] for checkpoint in checkpoints if checkpoint is not None]
    if states:
        with rundir.fitting(*(run.run_dir for run in runs)):
            optimizer.load_state_dict(states[0] if len(states) == 1 else merge_optimizer_states(states))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    step_model = distributed.wrap(model, world, device)
    step_model = compile_model(step_model, compile_mode) if speedups.compile else step_model
    engine = build_engine(resolve_engine(config, device, world.size > 1), model, optimizer, speedups,
                          recipe.batch_size // world.size, step_model, partial_through_step_model=world.size > 1,
                          precision=precision)
    return Stack(runs, recipe, schedule, model, optimizer, engine, speedups, precision, device, world)


def _network(runs: list[Run], checkpoints: list, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """Each run's network, from its seed or its checkpoint; K of them as one StackedResNet."""
    models = []
    for run, checkpoint in zip(runs, checkpoints):
        torch.manual_seed(run.config.seed)
        model = build_model(run.config.arch, num_classes=len(run.splits.classes),
                            **run.config.model_options()).to(device)
        if checkpoint is not None:
            with rundir.fitting(run.run_dir):
                model.load_state_dict(checkpoint["model"])
        models.append(model)
    model = models[0] if len(models) == 1 else StackedResNet.from_models(models)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---------------------------------------------------------------- one epoch, and evaluation

def run_batches(stack: Stack, run: Run, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of `run`'s training batches as training draws them (its data and normaliser; the
    recipe's batch size, augmentation and padding; this process's part of each batch), in the
    order and with the augmentation that `seed` draws."""
    recipe, device = stack.recipe, stack.device
    return train_batches(run.splits.train, recipe.batch_size, normalizer=run.normalizer,
                         augmentation=recipe.augmentation, padding=recipe.padding, device=device,
                         part=(stack.world.rank, stack.world.size),
                         generator=torch.Generator(device).manual_seed(seed))


def set_step_lr(stack: Stack, lr: float, momentum_scale: float = 1.0) -> None:
    """The next step's learning rate, and the momentum buffers times `momentum_scale` where the
    recipe's momentum form rescales them at an lr change: in place, the tensors a captured graph
    reads (the loop and the self-check both step through this)."""
    stack.engine.set_lr(lr)
    if momentum_scale != 1.0:
        scale_momentum_(stack.optimizer, momentum_scale)


def train_one_epoch(stack: Stack, epoch: int, progress: bool = True, max_steps: int | None = None,
                    hard_stop: float | None = None) -> list[dict]:
    """One epoch of SGD steps (the first `max_steps` only, for the benchmark); returns each run's
    mean loss, error (%), lr, seconds and images per second (its own images)."""
    runs, schedule, device, world = stack.runs, stack.schedule, stack.device, stack.world
    # Dropout draws: one generator for the stack, seeded by its first run (K = 1: the run's own).
    torch.manual_seed(distributed.process_seed(world, epoch_seed(runs[0].config.seed, epoch)))
    first = epoch * schedule.iterations_per_epoch
    steps = min(schedule.iterations_per_epoch, schedule.total_iterations - first, max_steps or math.inf)
    epochs = [run_batches(stack, run, epoch_seed(run.config.seed, epoch)) for run in runs]
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
            set_step_lr(stack, lr, schedule.momentum_scale_at(first + index, stack.recipe.momentum_form))
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


# ---------------------------------------------------------------- the records started, and what is said

def _start_records(stack: Stack, checkpoints: list, pack: int, compile_mode: str, note: str | None) -> None:
    """Each run's record, metrics and speed segments as this process starts it (or resumes it
    from its checkpoint), with a new speed segment for this process."""
    provenance = records.provenance(stack.device)
    for run, checkpoint in zip(stack.runs, checkpoints):
        config = run.config
        params, flops = network_size(config.arch, len(run.splits.classes),
                                     tuple(sorted(config.model_options().items())))
        run.record = records.Record.start(
            name=run.run_dir.name, config=config.as_dict(), recipe=stack.recipe.as_dict(),
            schedule=stack.schedule.as_dict(), data={**run.splits.describe(), "normalization": stack.recipe.normalization,
                                                     "augmentation": stack.recipe.augmentation},
            precision=precision_words(stack.precision), provenance=provenance,
            speedups=switches(stack.precision, stack.speedups), params=params, flops=flops,
            distributed=stack.world.describe(stack.recipe.batch_size), epochs=stack.schedule.epochs,
            started=checkpoint and checkpoint["started"], epochs_done=len(checkpoint["metrics"]) if checkpoint else 0)
        if checkpoint is not None:
            run.metrics, run.speed = checkpoint["metrics"], checkpoint.get("speed", [])
        run.speed.append(records.SpeedSegment.start(
            len(run.metrics) + 1, device=stack.device.type,
            gpu=torch.cuda.get_device_name(stack.device) if stack.device.type == "cuda" else None,
            pack=pack, threads=torch.get_num_threads(), precision=precision_words(stack.precision),
            channels_last=stack.speedups.channels_last, engine=stack.engine.name, stacked=stack.k,
            compile_mode=compile_mode if stack.speedups.compile else None,
            stacked_note=DIFFERS_FROM_SEPARATE_RUNS if stack.k > 1 else None, chosen=note))


def _start_line(stack: Stack, checkpoints: list) -> str:
    """What was built and what it will do: said before the first epoch line."""
    config, record = stack.runs[0].config, stack.runs[0].record
    together = f", {stack.k} runs as one stacked network" if stack.k > 1 else ""
    epochs = stack.schedule.epochs
    return (f"{config.arch}: built, {record.params:,} parameters, {record.precision}, {stack.engine.name} "
            f"engine{', compiled during its first epoch' if stack.speedups.compile else ''}{together}; " +
            (f"resuming after epoch {len(checkpoints[0]['metrics'])} of {epochs}" if checkpoints[0]
             else f"training {epochs} epoch{'s' if epochs > 1 else ''}"))


def _say(progress: bool, line: str) -> None:
    """A start-up line, before the first progress bar: what is loaded and built, and where."""
    if progress:
        tqdm.write(line)


def _data_line(config: TrainConfig, splits: DataSplits, device: torch.device, threads: int, why: str) -> str:
    data = splits.describe()
    return (f"{config.arch}: {data['n_train']:,} training, {data['n_val']:,} validation and {data['n_test']:,} test "
            f"images of {data['label']} on {device}; {threads} CPU thread{'s' if threads > 1 else ''} ({why})")


def _say_epoch(progress: bool, stack: Stack) -> None:
    """Each active run's epoch in one line (named, in a stack)."""
    for run in stack.runs:
        if progress and run.active:
            name = f"{run.run_dir.name}: " if stack.k > 1 else ""
            tqdm.write(name + _epoch_line(run.metrics[-1], stack.schedule))


# ---------------------------------------------------------------- an epoch: its start, its rows, its end

def _no_time_for(epoch: int, stack: Stack, deadline: Deadline | None, last_epoch_s: float | None) -> bool:
    """The deadline leaves no time for the epoch, as `_predicted_seconds` predicts it."""
    return deadline is not None and not deadline.allows(epoch, _predicted_seconds(last_epoch_s, stack, epoch, deadline))


def _predicted_seconds(last_epoch_s: float | None, stack: Stack, epoch: int, deadline: Deadline) -> float:
    """How long the next epoch will take: this process's last epoch (training, evaluation and
    writes); for a process's first epoch, which also warms up and captures, the first epoch of
    the run's last process, else its earlier epochs' training time; for a fresh run's first
    epoch, the deadline's prediction from a measured step."""
    if last_epoch_s is not None:
        return last_epoch_s
    run = next(run for run in stack.runs if run.active)
    firsts = [s.first_epoch_seconds for s in run.speed if s.first_epoch_seconds is not None]
    if firsts or run.metrics:
        steady = statistics.median(row["seconds"] for row in run.metrics) if run.metrics else 0.0
        return max(firsts[-1] if firsts else 0.0, steady)
    schedule = stack.schedule
    steps = min(schedule.iterations_per_epoch, schedule.total_iterations - epoch * schedule.iterations_per_epoch)
    evaluated = len(run.splits.test) + (len(run.splits.val) if run.splits.val is not None else 0)
    return deadline.untimed_epoch_seconds(steps, evaluated / stack.recipe.batch_size)


def _stop(runs: list[Run], writer: rundir.Writer, message: str) -> None:
    """The runs stopped before their last epoch (resumable): `message` says why, in each record."""
    for run in runs:
        run.record.stop(run.speed, message)
        rundir.save(writer, run.run_dir, run.record, run.metrics, None)


def _train_rows(stack: Stack, epoch: int, progress: bool, hard_stop: float | None) -> list[dict]:
    """One epoch of training: each run's row (HardStop if the hard stop comes during it)."""
    if stack.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(stack.device)
    try:
        return [{"epoch": epoch + 1, **row} for row in train_one_epoch(stack, epoch, progress, hard_stop=hard_stop)]
    except RuntimeError as error:
        if "overflow" not in str(error):
            raise
        # A scalar of the step (the lr, weight decay, a momentum rescale) beyond the weights' float
        # type: the step cannot be taken, as if the loss had become infinite.
        return [{"epoch": epoch + 1, "train_loss": math.inf, "overflow": str(error).splitlines()[0]}
                for _ in stack.runs]


def _stop_diverged(stack: Stack, rows: list[dict], epoch: int, writer: rundir.Writer) -> None:
    for run, problem in zip(stack.runs, _divergence(stack, rows)):
        if run.active and problem:
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was saved"
            run.record.diverge(f"{problem} in epoch {epoch + 1}; {kept}")
            run.active = False
            if stack.world.main:
                rundir.save(writer, run.run_dir, run.record, run.metrics, None)


def _divergence(stack: Stack, rows: list[dict]) -> list[str | None]:
    """What went non-finite in each run, if anything: its loss, or its weights and BN statistics
    (these can overflow while the epoch's mean loss is still a finite 1e27)."""
    problems = []
    for row, broken in zip(rows, nonfinite(stack.model, stack.k)):
        if "overflow" in row:
            problems.append(f"the SGD step overflowed ({row['overflow']})")
        elif not math.isfinite(row["train_loss"]):
            problems.append(f"training loss became {row['train_loss']}")
        elif broken is not None:
            problems.append(f"weights became non-finite ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''})")
        else:
            problems.append(None)
    return problems


def _validate(stack: Stack, rows: list[dict], models: list[dict], writer: rundir.Writer) -> None:
    """Each run's validation loss and error into its row, where it holds a validation split; an
    active run's weights to best.pt when its error is its best yet (the seed's best-validation
    snapshot)."""
    if stack.runs[0].splits.val is None:
        return
    results = evaluate(stack, [run.splits.val for run in stack.runs])
    for run, row, model, (loss, error) in zip(stack.runs, rows, models, results):
        row.update(val_loss=loss, val_error=error)
        best = min((r["val_error"] for r in run.metrics), default=math.inf)
        if run.active and row["val_error"] < best and stack.world.main:
            writer.submit(rundir.write_checkpoint, run.run_dir / records.BEST_FILE, model)


def _test(stack: Stack, rows: list[dict]) -> None:
    """Each run's test loss and error into its row, and on CUDA the epoch's peak memory."""
    results = evaluate(stack, [run.splits.test for run in stack.runs])
    for row, (loss, error) in zip(rows, results):
        row.update(test_loss=loss, test_error=error)
        if stack.device.type == "cuda":
            row["peak_memory_mb"] = torch.cuda.max_memory_allocated(stack.device) / 2**20


def _evaluate_and_checkpoint(stack: Stack, rows: list[dict], writer: rundir.Writer) -> None:
    """The runs still active evaluated; each hands its row to its record and writes its files."""
    if not any(run.active for run in stack.runs):
        return
    # Each run's state as it is now (for a background writer, as on CUDA, a copy).
    models, optimizers = rundir.snapshot(member_states(stack.model, stack.optimizer, stack.k), writer.background)
    _validate(stack, rows, models, writer)
    _test(stack, rows)
    for run, row, model, optimizer in zip(stack.runs, rows, models, optimizers):
        if run.active:
            _record(stack, run, row)
            _checkpoint(stack, run, model, optimizer, writer)


def _record(stack: Stack, run: Run, row: dict) -> None:
    """The epoch's row into the run's metrics, speed and record (status, epochs done, result)."""
    run.metrics = run.metrics + [row]
    run.speed[-1].timed(run.metrics)
    run.record.after_epoch(run.metrics, run.speed, stack.recipe.val_size)


def _checkpoint(stack: Stack, run: Run, model: dict, optimizer: dict, writer: rundir.Writer) -> None:
    """The run's checkpoint, metrics.csv and run.json, by process 0."""
    if stack.world.main:
        rundir.save(writer, run.run_dir, run.record, run.metrics, {
            "model": model, "optimizer": optimizer, "metrics": copy.deepcopy(run.metrics),
            "config": run.config.as_dict(), "started": run.record.started, "speed": [segment.to_json() for segment in run.speed],
            "speedups": switches(stack.precision, stack.speedups), "generator_device": stack.device.type,
            "world_size": stack.world.size})


def _epoch_line(row: dict, schedule: Schedule) -> str:
    """The epoch in one line; its lr is the lr its steps ran at: "lr 0.1", or "lr 0.1→0.01 (first→last
    step)" where the schedule changes it within the epoch (metrics.csv keeps the last)."""
    val = f"  val err {row['val_error']:5.2f}%" if "val_error" in row else ""
    first, last = schedule.epoch_lrs(row["epoch"] - 1)
    lr = f"{first:.4g}" if first == last else f"{first:.4g}→{last:.4g} (first→last step)"
    return (f"epoch {row['epoch']:>3}/{schedule.epochs}  lr {lr}  train loss {row['train_loss']:.3f} "
            f"err {row['train_error']:5.2f}%{val}  test err {row['test_error']:5.2f}%  "
            f"{row['seconds']:.1f} s  {row['images_per_second']:.0f} img/s")
