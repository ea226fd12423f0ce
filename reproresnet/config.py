"""One training run's settings, checked here, once, before anything runs.

Every field has a plain literal default, so the same object serves the command line, a
papermill parameter cell and the run record. `None` means "the recipe's (or the
network's, or the device's) own choice": a recipe owns its optimiser, schedule,
preprocessing, augmentation, validation split and network options, and a value given
here wins over it. `resolved_recipe()` is the recipe with this run's values applied.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .architectures import ARCHITECTURES, NETWORK_OPTIONS, default_options
from .recipes import (AUGMENTATIONS, MOMENTUM_FORMS, NORMALIZATIONS, PADDINGS, RECIPES, UNITS, WEIGHT_DECAY_SCOPES,
                      Recipe, as_record, make_schedule, weight_decay_reach)

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("eager", "graph")  # engine.EagerEngine, engine.GraphEngine
DATASETS = ("cifar10", "cifar100", "folder:PATH", "synthetic")
CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10's and CIFAR-100's training split
# How records name CIFAR-10 and its JPEG mirror (data.DataSplits.label): a mirror's or a
# stand-in's numbers are never called CIFAR-10 results.
CIFAR10, JPEG_MIRROR = "CIFAR-10", "CIFAR-10 (JPEG mirror)"
# Settings that say where and how fast a run runs, not what it computes: no experiment key
# holds them (TrainConfig.experiment_key). bf16 is not one: precision is part of the result. (A
# resume is still refused when the speedups these resolve to differ from the checkpoint's:
# rundir.check_same_speedups.) The engine is one: a CUDA graph replays the kernels of the eager
# step, so a run may change engines between processes.
RUNTIME_SETTINGS = ("out", "device", "data_dir", "download", "channels_last", "compile", "engine",
                    "eval_batch_size", "threads")
# Settings a recipe owns; a value given in the config replaces the recipe's.
RECIPE_OWNED = ("epochs", "batch_size", "lr", "weight_decay", "weight_decay_on", "milestones", "momentum_form",
                "normalization", "augmentation", "padding", "val_size", *NETWORK_OPTIONS)


# What a seed may be: numpy's seeds (0 to 2**32 - 1) and within torch.manual_seed's range, with
# room for the seeds derived from it (train.epoch_seed, data._rng, distributed.process_seed).
MAX_SEED = 2**32 - 1
# Epochs a run may have: train.epoch_seed draws epoch e of seed s from s * 1_000_003 + e, so a
# longer run would replay the next seed's draws.
MAX_EPOCHS = 1_000_003
# The largest float32: the optimizer applies the lr, weight decay and momentum to fp32 weights
# as float32 scalars, and a larger one overflows inside the step.
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and what would be accepted."""


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "preact_resnet20"
    out: str = "runs/preact_resnet20"
    recipe: str = "seed"
    epochs: Optional[int] = None          # None: the recipe's length, else a shortened run
    batch_size: Optional[int] = None      # images per SGD step
    lr: Optional[float] = None            # peak learning rate at `batch_size`
    weight_decay: Optional[float] = None
    weight_decay_on: Optional[str] = None  # all | weights | lasagne (recipes.DECAYED_ROLES)
    milestones: Optional[tuple] = None    # lr decay points, in the recipe's units
    momentum_form: Optional[str] = None   # pytorch | lasagne | reset: the momentum at a change of lr
    seed: int = 0
    dataset: str = "cifar10"              # cifar10 | cifar100 | folder:PATH | synthetic
    data_dir: Optional[str] = None        # None: $REPRORESNET_DATA or ~/.cache/reproresnet/data
    download: bool = False
    limit_train: Optional[int] = None     # a fixed, seeded subset for quick runs
    limit_test: Optional[int] = None
    val_size: Optional[int] = None        # >0: hold out that many training images (the seed: 5000)
    normalization: Optional[str] = None   # per_pixel_mean | per_pixel_mean_0_255 | range_0_1 | per_channel | gcn_zca
    augmentation: Optional[str] = None    # per_image | per_batch | none
    padding: Optional[str] = None         # zero | reflect: the crop's 4-pixel border
    shortcut: Optional[str] = None        # network options; None: the recipe's, else the network's
    bottleneck_stride: Optional[str] = None
    dropout: Optional[float] = None
    bn_batch: Optional[int] = None        # images per batch-norm statistic ("ghost" batch norm)
    preact_stage1: Optional[str] = None   # every_unit | first_unit: which units of stage 1 pre-activate
    layer_defaults: Optional[str] = None  # torch | lasagne: conv bias, initialisation, BN epsilon
    device: str = "auto"
    bf16: Optional[bool] = None           # None: on for CUDA, off for CPU
    channels_last: Optional[bool] = None
    compile: Optional[bool] = None        # torch.compile (eager engine); None: off
    engine: Optional[str] = None          # eager | graph; None: graph on one CUDA device, else eager
    eval_batch_size: int = 1000
    threads: Optional[int] = None         # CPU threads of this process; None: chosen by cpu_threads

    def __post_init__(self):
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        self._check_types()
        choice("recipe", self.recipe, RECIPES)
        if self.engine is not None:
            choice("engine", self.engine, ENGINES)
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is not valid: expected one of {DEVICES} or 'cuda:N'")
        if not self.dataset or not (self.dataset in DATASETS or self.dataset.startswith("folder:")) \
                or self.dataset == "folder:":
            raise ConfigError(f"dataset={self.dataset!r} is not valid: expected one of {list(DATASETS)}")
        if not self.out:
            raise ConfigError("out='' is not valid: expected a run directory path")
        check_recipe(self.resolved_recipe())  # schedule, batch, data and optimiser values together
        self.network_options()

    def _check_types(self):
        hints = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = field.type.replace("Optional[", "").rstrip("]")
            if value is None and field.type.startswith("Optional"):
                continue
            expected = hints[kind]
            ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
            if expected is float:
                ok = _is_number(value)
                kind = "a finite number"
            if not ok:
                raise ConfigError(f"{field.name}={value!r} is not valid: expected {kind}"
                                  f"{' or None' if field.type.startswith('Optional') else ''}, "
                                  f"got {type(value).__name__}")
        for name in ("limit_train", "limit_test", "eval_batch_size", "threads"):
            _require(getattr(self, name) is None or getattr(self, name) > 0, name, getattr(self, name),
                     "a positive integer")
        _require(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer from 0 to {MAX_SEED} (2**32 - 1: "
                 f"what numpy and torch.manual_seed both take)")

    def resolved_recipe(self) -> Recipe:
        """The recipe as it applies to this network, with this run's values over it."""
        given = {name: getattr(self, name) for name in RECIPE_OWNED if getattr(self, name) is not None}
        if "epochs" in given:
            _require(_is_int(given["epochs"]) and 0 < given["epochs"] <= MAX_EPOCHS, "epochs", given["epochs"],
                     _EPOCHS_ACCEPTED)
        return RECIPES[self.recipe].for_arch(self.arch).replace(**given)

    def model_options(self) -> dict:
        """Network options: the recipe's where the network has them, then this run's."""
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"arch={self.arch!r} is not valid: expected one of {list(ARCHITECTURES)}")
        spec = ARCHITECTURES[self.arch]
        accepted = default_options(spec.family, spec.block)
        recipe = self.resolved_recipe().model_options()
        given = {name: getattr(self, name) for name in NETWORK_OPTIONS if getattr(self, name) is not None}
        return {**{k: v for k, v in recipe.items() if k in accepted}, **given}

    def network_options(self) -> dict:
        """Every option the network is built with: its source's defaults, then `model_options`,
        each checked (`ArchSpec.options`)."""
        options = self.model_options()  # names an unknown network
        try:
            return ARCHITECTURES[self.arch].options(options)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def describe(self, train_size: Optional[int] = None) -> dict:
        """Every resolved value of this run, positions also in iterations: what `recipe` prints."""
        recipe = self.resolved_recipe()
        if train_size is None:
            train_size = (self.limit_train or CIFAR_TRAIN_IMAGES) - recipe.val_size
        _require(_is_int(train_size) and train_size > 0, "train_size", train_size, "a positive integer")
        schedule = make_schedule(recipe, self.arch, train_size)
        network = self.network_options()
        skip = ("warmup_archs", "batch_size_for", *NETWORK_OPTIONS)
        fields = {}
        for key, value in recipe.as_dict().items():
            if key not in skip:
                fields[key] = value
            if key == "weight_decay_on":  # the scope's meaning beside its name
                fields["weight_decay_reaches"] = weight_decay_reach(value)
        return {"arch": self.arch, **fields, "train_size": train_size,
                "iterations": schedule.total_iterations, "iterations_per_epoch": schedule.iterations_per_epoch,
                "milestones_iterations": list(schedule.milestones), "warmup_iterations": schedule.warmup_iterations,
                "lost": list(schedule.lost), **{name: network.get(name) for name in NETWORK_OPTIONS}}

    def effective(self) -> dict:
        """`as_dict()` with each recipe-owned value and network option resolved, however each
        was asked for (a default or the same value given explicitly): the recipe's length in
        epochs (None for a length in iterations), the network's options (None where it has none)."""
        recipe = self.resolved_recipe()
        network = self.network_options()
        values = self.as_dict()
        values.update({name: value for name, value in recipe.as_dict().items()
                       if name in RECIPE_OWNED and name not in NETWORK_OPTIONS})
        values["epochs"] = recipe.length if recipe.unit == "epoch" else None
        values.update({name: network.get(name) for name in NETWORK_OPTIONS})
        return values

    def experiment_key(self) -> dict:
        """What this run computes, however it was asked for: every setting at its effective
        value, less the seed and the run-time settings (RUNTIME_SETTINGS). Runs with equal keys
        are seeds of one experiment. Not in it either, as no setting: the engine and the stack
        size (how many seeds train as one network, campaign --stack). A stack computes what each
        run would alone but for its dropout masks (stacked.DIFFERS_FROM_SEPARATE_RUNS), which are
        random draws as another seed's would be: the same experiment, like a resumption in
        another process."""
        return _computed(self.effective())

    def as_dict(self) -> dict:
        return as_record(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}: expected some of {sorted(known)}")
        return cls(**data)


def distinct(flag: str, values) -> None:
    """Each of `values` once: a repeated network or seed would train one run directory twice."""
    repeated = sorted({str(value) for value in values if list(values).count(value) > 1})
    if repeated:
        raise ConfigError(f"{flag} {' '.join(map(str, values))} is not valid: {', '.join(repeated)} given more than "
                          f"once; expected each once (each names a run directory)")


def check_stackable(configs: list[TrainConfig]) -> None:
    """Runs trained as one stack: one config, seeds apart, each run in its own directory."""
    def shared(config):
        return {key: value for key, value in config.effective().items() if key not in ("seed", "out")}
    values = [shared(config) for config in configs]
    for config, this in zip(configs[1:], values[1:]):
        if this != values[0]:
            changed = sorted(key for key, value in this.items() if values[0].get(key) != value)
            raise ConfigError(f"{config.out} differs from {configs[0].out} in {changed}: only runs that differ "
                              f"in their seed can be trained as one stack")
    if len({os.path.realpath(config.out) for config in configs}) != len(configs):
        raise ConfigError(f"two runs of one stack share a directory: {[config.out for config in configs]}")


def recorded_key(config: dict) -> dict:
    """The experiment key of a config as a record holds it (`TrainConfig.as_dict`); one this
    version cannot read is taken as written, less the seed and the run-time settings."""
    try:
        return TrainConfig.from_dict(config).experiment_key()
    except ConfigError:
        return _computed(config)


def _computed(settings: dict) -> dict:
    return {name: value for name, value in settings.items() if name not in RUNTIME_SETTINGS and name != "seed"}


def differences(recorded: dict, requested: TrainConfig) -> dict[str, tuple]:
    """{setting: (recorded, requested)} for each setting in which `requested` is another
    experiment, or another seed, than the run whose record holds the config `recorded`."""
    saved = {**recorded_key(recorded), "seed": recorded.get("seed")}
    wanted = {**requested.experiment_key(), "seed": requested.seed}
    return {name: (saved.get(name), value) for name, value in wanted.items() if saved.get(name) != value}


def recorded_differences(here: dict, there: dict) -> dict[str, tuple]:
    """{setting: (here, there)} for each setting in which two recorded configs are other
    experiments, or other seeds (as `differences`, both sides read from records)."""
    keys = [{**recorded_key(config), "seed": config.get("seed")} for config in (here, there)]
    names = dict.fromkeys([*keys[0], *keys[1]])
    return {name: (keys[0].get(name), keys[1].get(name)) for name in names if keys[0].get(name) != keys[1].get(name)}


def check_recipe(recipe: Recipe) -> Recipe:
    """Every value of a (resolved) recipe, checked together; raises ConfigError naming the first bad one."""
    _require(recipe.unit in UNITS, "unit", recipe.unit, f"one of {UNITS}")
    _require(_is_int(recipe.length) and 0 < recipe.length <= MAX_EPOCHS, "epochs" if recipe.unit == "epoch"
             else "length", recipe.length, _EPOCHS_ACCEPTED)
    _require(_is_int(recipe.batch_size) and recipe.batch_size > 0, "batch_size", recipe.batch_size,
             "a positive integer")
    for field in ("lr", "gamma"):
        value = getattr(recipe, field)
        _require(_is_number(value) and 0 < value <= FLOAT32_MAX, field, value,
                 f"a positive number up to {FLOAT32_MAX:.4g} (float32's largest: the step applies it to fp32 weights)")
    for field in ("weight_decay", "momentum", "warmup_lr"):
        value = getattr(recipe, field)
        _require(_is_number(value) and 0 <= value <= FLOAT32_MAX, field, value,
                 f"a number >= 0 and up to {FLOAT32_MAX:.4g} (float32's largest: the step applies it to fp32 weights)")
    _require(all(_is_number(m) for m in recipe.milestones), "milestones", recipe.milestones, "numbers")
    ordered = all(a < b for a, b in zip(recipe.milestones, recipe.milestones[1:]))
    _require(ordered, "milestones", recipe.milestones, "strictly increasing values")
    inside = all(0 < m < recipe.length for m in recipe.milestones)
    _require(inside, "milestones", recipe.milestones, f"values between 1 and {recipe.length - 1} (or "
             f"fractions strictly between 0 and {recipe.length}; the run is {recipe.length} {recipe.unit}s long)")
    _require(_is_number(recipe.warmup_length) and 0 <= recipe.warmup_length < recipe.length, "warmup_length",
             recipe.warmup_length, f"a number in [0, {recipe.length})")
    choice("weight_decay_on", recipe.weight_decay_on, WEIGHT_DECAY_SCOPES)
    choice("momentum_form", recipe.momentum_form, MOMENTUM_FORMS)
    choice("normalization", recipe.normalization, NORMALIZATIONS)
    choice("augmentation", recipe.augmentation, AUGMENTATIONS)
    choice("padding", recipe.padding, PADDINGS)
    _require(_is_int(recipe.val_size) and recipe.val_size >= 0, "val_size", recipe.val_size,
             "0 or a positive integer")
    return recipe


_EPOCHS_ACCEPTED = (f"a positive integer up to {MAX_EPOCHS:,} (epoch e of seed s draws from s * {MAX_EPOCHS:,} + e: "
                    f"a longer run would replay the next seed's draws)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, name: str, value, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not valid: expected {accepted}")


def choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid: expected one of {list(choices)}")


def select_device(requested: str) -> torch.device:
    import torch
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={requested!r} but no CUDA GPU is visible "
                          f"(torch.cuda.is_available() is False); use --device cpu or auto")
    return torch.device(requested)


def cpu_threads(requested: Optional[int] = None, jobs: int = 1, resumed: Optional[int] = None) -> tuple[int, str]:
    """(threads, why) for this process's CPU work, never more than the cores it may use.

    Given: that many. Else OMP_NUM_THREADS if set. Else, on a resume, the threads the run last
    trained with (`resumed`): on a CPU the thread count sets the order of a convolution's sums,
    so keeping it keeps the resumed run bit for bit the run it continues. Else the cores divided
    among the `jobs` sharing them (a sweep's parallel runs, a pack) and capped by the cores the
    load average leaves free: on a busy machine, more threads than free cores spin against each
    other (torch's default of one per core ran 5-14x slower than one thread at load 6 on 2 cores)."""
    cores = usable_cores()
    if requested is not None:
        _require(_is_int(requested) and 1 <= requested <= cores, "threads", requested,
                 f"an integer from 1 to {cores} (the cores this process may use)")
        return requested, "requested"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return min(int(os.environ["OMP_NUM_THREADS"]), cores), "OMP_NUM_THREADS"
    if resumed is not None:
        return min(resumed, cores), "as the run last trained"
    load = load_average()
    return free_core_threads(cores, jobs, load), f"{cores} cores, {jobs} job(s) sharing them, load {load:.1f}"


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> float:
    """The last minute's load average (runnable threads, this process's included); 0 where unknown."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def free_core_threads(cores: int, jobs: int, load: float) -> int:
    """The free-core rule: the `cores` divided among the `jobs` sharing them, capped by the cores
    the `load` leaves free (`bench --thread-rules` compares it with torch's default and all cores)."""
    share, free = max(1, cores // max(jobs, 1)), max(1, cores - int(load))
    return min(share, free)
