"""The training loop: CUDA first, resumable, recording everything a reader needs to check it.

`train(config)` runs (or resumes) one run in `config.out`. After every epoch it writes,
each atomically: `checkpoint.pt` (model, optimizer and metrics: the source of truth),
`metrics.csv` and `run.json`. The random state of an epoch is derived from (seed, epoch),
so a resumed run repeats exactly what an uninterrupted one would have done: bit for bit on
a CPU; on CUDA only the data order repeats (cuDNN autotuning and non-deterministic backward
kernels change the last bits of every step).

`deadline` stops a run cleanly at an epoch boundary, its checkpoint written, when the next
epoch would not end before it; such a run gets the status "stopped" (resumable) and says
why in its record's `message`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed, records
from .config import RUNTIME_SETTINGS, ConfigError, TrainConfig, cpu_threads, select_device
from .data import DataSplits, ImageSet, Normalizer, eval_batches, load_splits, train_batches
from .models import build_model, count_parameters, flops_per_image
from .recipes import Recipe, Schedule, make_schedule
from .records import RunDirError


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Speedups:
    """The fast path's switches, each on by default on CUDA only."""
    bf16: bool
    channels_last: bool
    compile: bool
    fused_optimizer: bool

    @classmethod
    def for_device(cls, config: TrainConfig, device: torch.device) -> "Speedups":
        cuda = device.type == "cuda"
        pick = lambda value: cuda if value is None else value  # noqa: E731
        return cls(pick(config.bf16), pick(config.channels_last), pick(config.compile), cuda)

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, torch.bfloat16) if self.bf16 else nullcontext()

    def precision(self) -> str:
        return "bf16 autocast" if self.bf16 else "fp32"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def compile_model(model: torch.nn.Module, mode: str = "default", backend="inductor"):
    """torch.compile for training. dynamic=False keeps the full-batch graph static: with torch's
    default (dynamic=None) the epoch's smaller last batch makes torch recompile with a symbolic
    batch size, and every later full batch then runs that dynamic graph instead. With
    dynamic=False the last batch gets a second static graph, compiled once per process; CUDA
    graphs (mode "reduce-overhead") then also record one graph per batch size."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode={mode!r} is not valid: expected one of {list(COMPILE_MODES)}")
    return torch.compile(model, mode=None if mode == "default" else mode,
                         dynamic=False, backend=backend)


def compile_counter(group: str, name: str) -> int:
    """A torch.compile counter of this process: ("stats", "unique_graphs") graphs built,
    ("inductor", "cudagraph_skips") CUDA graphs skipped."""
    from torch._dynamo.utils import counters
    return int(counters[group][name])


def make_optimizer(model: torch.nn.Module, recipe: Recipe, speedups: Speedups) -> torch.optim.SGD:
    # weight_decay_on="all": every parameter, BN included, as the authors' Torch code and PyTorch's
    # default; "weights": conv and linear weights only, as Lasagne's regularize_layer_params (the
    # 'regularizable' tag: W, not b, not BN's beta and gamma). Chosen by what a parameter is (a
    # weight has >= 2 dims, a bias or BN scale 1), not by the module holding it, so that a stacked
    # network (stacked.py) groups its parameters exactly as each of its networks would.
    groups = [{"params": list(model.parameters())}]
    if recipe.weight_decay_on == "weights":
        groups = [{"params": [p for p in model.parameters() if p.ndim >= 2]},
                  {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
                           fused=speedups.fused_optimizer or None)


def scale_momentum_(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every momentum buffer times `factor`, in place: fused SGD and a captured CUDA graph keep
    reading the same tensors (recipes.Schedule.momentum_scale_at says when and by how much)."""
    for state in optimizer.state.values():
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"].mul_(factor)


def train_step(model, optimizer, images, labels, speedups: Speedups):
    """One SGD step; returns the summed loss and the number of errors, left on the device."""
    with speedups.autocast(images.device):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(labels), (logits.argmax(1) != labels).sum()


@dataclass
class Run:
    """Everything one training run works with, built once by `build_run`."""
    config: TrainConfig
    recipe: Recipe
    schedule: Schedule
    splits: DataSplits
    normalizer: Normalizer
    model: torch.nn.Module
    step_model: torch.nn.Module     # what training and evaluation call: compiled on the fast path
    optimizer: torch.optim.Optimizer
    speedups: Speedups
    device: torch.device
    speed: list = dataclasses.field(default_factory=list)  # one segment per process, see _speed_segment
    world: distributed.World = distributed.World()  # the processes of a torchrun run


def train_one_epoch(run: Run, epoch: int, progress: bool = True, max_steps: int | None = None) -> dict:
    """One epoch of SGD steps (the first `max_steps` only, for the benchmark); returns its
    mean loss, error (%), lr, seconds and images per second."""
    generator = torch.Generator(run.device).manual_seed(epoch_seed(run.config.seed, epoch))
    torch.manual_seed(distributed.process_seed(run.world, epoch_seed(run.config.seed, epoch)))  # dropout draws
    schedule = run.schedule
    first = epoch * schedule.iterations_per_epoch
    steps = min(schedule.iterations_per_epoch, schedule.total_iterations - first, max_steps or math.inf)
    batches = train_batches(run.splits.train, run.recipe.batch_size, normalizer=run.normalizer,
                            augmentation=run.recipe.augmentation, generator=generator, device=run.device,
                            padding=run.recipe.padding, part=(run.world.rank, run.world.size))
    loss_sum = torch.zeros((), device=run.device)
    errors = torch.zeros((), device=run.device, dtype=torch.long)
    seen = 0
    run.step_model.train()
    synchronize(run.device)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{schedule.epochs}", leave=False,
               disable=None if progress else True, unit="step")  # None: no bar off a terminal
    for index, (images, labels) in zip(range(steps), batches):
        lr = schedule.lr_at(first + index)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        momentum_scale = schedule.momentum_scale_at(first + index, run.recipe.momentum_form)
        if momentum_scale != 1.0:
            scale_momentum_(run.optimizer, momentum_scale)
        if run.speedups.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # The epoch's last, smaller batch runs eagerly on the same weights: compiling it would
        # cost a second cold compile per process, and padding it would change BN's statistics.
        # Under torchrun every batch goes through the DDP wrapper, which averages the gradients.
        partial = run.world.size == 1 and len(labels) < run.recipe.batch_size
        model = run.model if partial else run.step_model
        batch_loss, batch_errors = train_step(model, run.optimizer, images, labels, run.speedups)
        loss_sum += batch_loss
        errors += batch_errors
        seen += len(labels)
        bar.update()
        if not bar.disable and index % 50 == 49:  # an occasional sync for the bar, not one per step
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", lr=f"{lr:g}")
    distributed.all_sum(run.world, loss_sum, errors)
    seen *= run.world.size  # every process saw an equal slice
    distributed.average_buffers(run.world, run.model)
    synchronize(run.device)
    seconds = time.perf_counter() - start
    bar.close()
    return {"lr": lr, "train_loss": loss_sum.item() / seen, "train_error": 100.0 * errors.item() / seen,
            "seconds": seconds, "images_per_second": seen / seconds}


@contextmanager
def exact_fp32():
    """fp32 as the sources computed it: cuDNN convolutions and matmuls without TF32 (on by
    default for cuDNN on Ampere and later GPUs); the previous settings are restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def evaluate(run: Run, data: ImageSet) -> tuple[float, float]:
    """Mean loss and error (%) over `data`, in large batches; restores train mode.

    Always fp32 with TF32 off, and eager (the uncompiled module, same weights): bf16 moved 4
    of 1,000 test predictions of a trained ResNet-20, and compiling evaluation's batch shape
    would cost a cold compile per process for a fifteenth of an epoch's work."""
    with exact_fp32():
        return _evaluate(run, data)


def _evaluate(run: Run, data: ImageSet) -> tuple[float, float]:
    was_training = run.model.training
    run.model.eval()
    loss_sum = torch.zeros((), device=run.device)
    errors = torch.zeros((), device=run.device, dtype=torch.long)
    for images, labels in eval_batches(data, run.config.eval_batch_size, normalizer=run.normalizer,
                                       device=run.device):
        if run.speedups.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = run.model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        errors += (logits.argmax(1) != labels).sum()
    run.model.train(was_training)
    return loss_sum.item() / len(data.labels), 100.0 * errors.item() / len(data.labels)


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
        _check_same_settings(run_dir, _effective(record["config"]), config.effective())
        return None, {**record, "message": f"{damaged}: damaged, but the run is complete and no longer needs it"}
    saved = checkpoint["config"] if checkpoint else record["config"] if record else None
    if saved is not None:
        _check_same_settings(run_dir, _effective(saved), config.effective())
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


def _effective(saved: dict) -> dict:
    try:
        return TrainConfig.from_dict(saved).effective()
    except ConfigError:
        return saved  # settings this version cannot read: compared as they were written


def _check_same_settings(run_dir: Path, saved: dict, requested: dict) -> None:
    changed = [key for key, value in requested.items() if key not in RUNTIME_SETTINGS and saved.get(key) != value]
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {requested[key]!r}" for key in changed)
        raise RunDirError(f"cannot resume {run_dir} with different settings ({details}); "
                          f"use the original settings or another --out")


def _new_record(run: Run) -> dict:
    config, provenance = run.config, records.provenance(run.device)
    return {
        "format": records.RUN_FORMAT,
        "status": "running",
        "name": Path(config.out).name,
        "arch": config.arch,
        "config": config.as_dict(),
        "recipe": run.recipe.as_dict(),
        "schedule": run.schedule.as_dict(),
        "data": {**run.splits.describe(), "normalization": run.recipe.normalization,
                 "augmentation": run.recipe.augmentation},
        "precision": run.speedups.precision(),  # bf16 and fp32 runs are different experiments
        **provenance,
        "device": {**provenance["device"], "speedups": dataclasses.asdict(run.speedups)},
        "params": count_parameters(run.model),
        "flops_per_image": flops_per_image(run.model, run.device),
        "distributed": run.world.describe(run.recipe.batch_size),
        "epochs_planned": run.schedule.epochs,
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


def _save(run_dir: Path, record: dict, metrics: list[dict], checkpoint: dict | None) -> None:
    # The checkpoint first, holding the record as plain JSON values: it is the source of truth
    # a resumption rebuilds metrics.csv and run.json from.
    record["updated"] = records.now()
    if checkpoint is not None:
        plain_record = json.loads(records.json_bytes(record))
        records.write_checkpoint(run_dir / records.CHECKPOINT_FILE, {**checkpoint, "record": plain_record})
    records.write_metrics(run_dir / records.METRICS_FILE, metrics)
    records.write_json(run_dir / records.RUN_FILE, record)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True,
          deadline: float | None = None, pack: int = 1, compile_mode: str = "default") -> dict:
    """Train (or resume) the run `config` describes; returns its run record.

    `deadline` (a `time.time()` moment): stop cleanly before an epoch that would end after
    it. `pack` (runs sharing the device) and `compile_mode` go into the record's speed."""
    run_dir = Path(config.out)
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
        return _train_in(run_dir, config, splits, device, world, resume=resume, progress=progress,
                         deadline=deadline, pack=pack, compile_mode=compile_mode)


def _train_in(run_dir: Path, config: TrainConfig, splits: DataSplits, device: torch.device,
              world: distributed.World, *, resume: bool, progress: bool, deadline: float | None, pack: int,
              compile_mode: str) -> dict:
    """The run in its directory: one writer, resumed from its checkpoint, stopped cleanly at `deadline`."""
    with records.run_dir_lock(run_dir) if world.main else nullcontext():
        if world.main:
            records.remove_orphans(run_dir)
        # Every process decides from the same files: process 0 writes none before the first
        # epoch ends, which needs the others (DDP's collectives).
        checkpoint, complete = _prepare_run_dir(run_dir, config, resume, repair=world.main)
        if complete is not None:
            return complete
        run = build_run(config, splits, device, compile_mode, world)
        record = _new_record(run)
        _say(progress, f"{config.arch}: built, {record['params']:,} parameters, {record['precision']}"
                       f"{', compiled during its first epoch' if run.speedups.compile else ''}; " +
                       (f"resuming after epoch {len(checkpoint['metrics'])} of {run.schedule.epochs}" if checkpoint
                        else f"training {run.schedule.epochs} epoch{'s' if run.schedule.epochs > 1 else ''}"))
        if checkpoint is not None:
            _check_same_speedups(run_dir, checkpoint, run.speedups, device)
            distributed.check_resume(world, checkpoint, run_dir)
            _load_state(run, checkpoint, run_dir)
            record.update(started=checkpoint["started"], epochs_done=len(checkpoint["metrics"]))
        metrics = checkpoint["metrics"] if checkpoint else []
        run.speed = checkpoint.get("speed", []) if checkpoint else []
        run.speed.append(_speed_segment(run, len(metrics) + 1, pack, compile_mode))
        last_epoch_s = None
        for epoch in range(len(metrics), run.schedule.epochs):
            if deadline is not None and _no_time_for(epoch, deadline, last_epoch_s, metrics, run.speed):
                if run.speed[-1]["last_epoch"] is None:
                    run.speed.pop()  # this process trained nothing
                record.update(status="stopped", message=f"stopped cleanly after epoch {epoch} of "
                                                        f"{run.schedule.epochs} (deadline); resume to continue",
                              speed={"segments": run.speed, "note": SPEED_NOTE})
                _save(run_dir, record, metrics, None)
                break
            started = time.time()
            metrics.append(_train_and_evaluate(run, record, epoch, metrics, run_dir, progress))
            last_epoch_s = time.time() - started
            if progress:
                tqdm.write(_epoch_line(metrics[-1], run.schedule.epochs))
        return record


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


def _speed_segment(run: "Run", first_epoch: int, pack: int, compile_mode: str) -> dict:
    """How one process trains: the context of its s/epoch (filled in as epochs end)."""
    return {"first_epoch": first_epoch, "last_epoch": None, "started": records.now(),
            "device": run.device.type,
            "gpu": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else None,
            "pack": pack, "threads": torch.get_num_threads(), "precision": run.speedups.precision(), "channels_last": run.speedups.channels_last,
            "compile_mode": compile_mode if run.speedups.compile else None, "first_epoch_seconds": None,
            "seconds_per_epoch": None, "images_per_second": None, "epochs_timed": 0}


def _update_speed(run: "Run", rows: list[dict]) -> None:
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
              "are medians of the training time of its epochs after its first (which compiles and warms "
              "up; evaluation and writes are not timed; first_epoch_seconds is that first epoch's training "
              "time, compilation included); pack = runs sharing the device; threads = this process's CPU threads")


def load_device_splits(config: TrainConfig, device: torch.device) -> DataSplits:
    """The run's data, resident on `device` as uint8."""
    splits = load_splits(config.dataset, config.data_dir, download=config.download,
                         limit_train=config.limit_train, limit_test=config.limit_test,
                         val_size=config.resolved_recipe().val_size, seed=config.seed)
    val = splits.val.to(device) if splits.val is not None else None
    return dataclasses.replace(splits, train=splits.train.to(device), val=val, test=splits.test.to(device))


def build_run(config: TrainConfig, splits: DataSplits, device: torch.device, compile_mode: str = "default",
              world: distributed.World = distributed.World()) -> Run:
    """The network, optimizer and schedule of `config` on `device`, freshly initialised."""
    speedups = Speedups.for_device(config, device)
    recipe = config.resolved_recipe()
    schedule = make_schedule(recipe, config.arch, len(splits.train.labels))
    distributed.check_batches(world, recipe.batch_size, len(splits.train.labels))
    normalizer = Normalizer.fit(splits.train.images, recipe.normalization).to(device)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes=len(splits.classes), **config.model_options()).to(device)
    if speedups.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe, speedups)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    # Compile the model only: the optimizer's lr is a Python float that changes every step.
    step_model = distributed.wrap(model, world, device)
    step_model = compile_model(step_model, compile_mode) if speedups.compile else step_model
    return Run(config, recipe, schedule, splits, normalizer, model, step_model, optimizer, speedups, device,
               world=world)


def _load_state(run: Run, checkpoint: dict, run_dir: Path) -> None:
    try:
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
        detail = lines[1] if len(lines) > 1 else lines[0]  # torch's first line only says "Error(s) in ..."
        raise RunDirError(f"{run_dir / records.CHECKPOINT_FILE} does not fit this run's network and optimizer "
                          f"({detail}); delete it to start the run again") from None


def _check_same_speedups(run_dir: Path, checkpoint: dict, speedups: Speedups, device: torch.device) -> None:
    """A run continues with the numerics and the data-order generator it started with: a run
    begun on a CPU and resumed on CUDA would switch bf16 and compile on and change its data order."""
    saved = checkpoint.get("speedups"), checkpoint.get("generator_device")
    now = dataclasses.asdict(speedups), device.type
    if saved[0] is not None and saved != now:
        raise RunDirError(f"cannot resume {run_dir}: it was trained with speedups {saved[0]} and data order "
                          f"drawn on {saved[1]}, this process would use {now[0]} on {now[1]}; resume it on a "
                          f"{saved[1]} device with the same --bf16/--channels-last/--compile switches")


def _divergence(run: Run, train_loss: float) -> str | None:
    """What went non-finite, if anything: the loss, or weights and BN statistics (these can
    overflow while the epoch's mean loss is still a finite 1e27)."""
    if not math.isfinite(train_loss):
        return f"training loss became {train_loss}"
    broken = [name for name, tensor in run.model.state_dict().items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        return f"weights became non-finite ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''})"
    return None


def _train_and_evaluate(run: Run, record: dict, epoch: int, metrics: list[dict], run_dir: Path,
                        progress: bool) -> dict:
    """One epoch of training and evaluation, then every file of the run written atomically."""
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    row = {"epoch": epoch + 1, **train_one_epoch(run, epoch, progress)}
    problem = _divergence(run, row["train_loss"])
    if problem:
        kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was saved"
        record.update(status="diverged", message=f"{problem} in epoch {epoch + 1}; {kept}")
        if run.world.main:
            _save(run_dir, record, metrics, None)
        raise TrainingDiverged(record["message"])
    if run.splits.val is not None:
        row["val_loss"], row["val_error"] = evaluate(run, run.splits.val)
        if row["val_error"] < min((r["val_error"] for r in metrics), default=math.inf) and run.world.main:
            best = run.model.state_dict()  # the seed's best-validation snapshot
            records.write_checkpoint(run_dir / records.BEST_FILE, best)
    row["test_loss"], row["test_error"] = evaluate(run, run.splits.test)
    if run.device.type == "cuda":
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    rows = metrics + [row]
    _update_speed(run, rows)
    record.update(_progress(rows, run.speed, run.schedule.epochs, run.recipe.val_size))
    if run.world.main:
        _save(run_dir, record, rows, {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                      "metrics": rows, "config": run.config.as_dict(),
                                      "started": record["started"], "speed": run.speed,
                                      "speedups": dataclasses.asdict(run.speedups),
                                      "generator_device": run.device.type, "world_size": run.world.size})
    return row


def _say(progress: bool, line: str) -> None:
    """A start-up line, before the first progress bar: what is loaded and built, and where."""
    if progress:
        tqdm.write(line)


def _epoch_line(row: dict, epochs: int) -> str:
    val = f"  val err {row['val_error']:5.2f}%" if "val_error" in row else ""
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.3f} "
            f"err {row['train_error']:5.2f}%{val}  test err {row['test_error']:5.2f}%  "
            f"{row['seconds']:.1f} s  {row['images_per_second']:.0f} img/s")
