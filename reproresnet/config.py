"""One training run's settings, checked here, once, before anything runs.

Every field has a plain literal default, so the same object serves the command line, a
papermill parameter cell and the run record. `None` means "the recipe's (or the
network's, or the device's) own choice": a recipe owns its optimiser, schedule,
preprocessing, augmentation, validation split and network options, and a value given
here wins over it. `resolved_recipe()` is the recipe with this run's values applied.

Each field says what it is (`setting`): a run-time setting (where and how fast the run runs,
in no experiment key), a recipe's value (checked by the recipe it resolves to, or by the
network for its options), or an experiment setting with the rule its value is checked by.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .architectures import ARCHITECTURES, NETWORK_OPTIONS, default_options
from .checks import (BOOL, OPTIONAL_BOOL, OPTIONAL_POSITIVE_INT, POSITIVE_INT, ConfigError, Rule, is_int, one_of,
                     require)
from .recipes import RECIPES, Recipe, as_record, make_schedule, weight_decay_reach

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("eager", "graph")  # engine.EagerEngine, engine.GraphEngine
DATASETS = ("cifar10", "cifar100", "folder:PATH", "synthetic")
CIFAR_TRAIN_IMAGES = 50_000  # CIFAR-10's and CIFAR-100's training split
# How records name CIFAR-10 and its JPEG mirror (data.DataSplits.label): a mirror's or a
# stand-in's numbers are never called CIFAR-10 results.
CIFAR10, JPEG_MIRROR = "CIFAR-10", "CIFAR-10 (JPEG mirror)"
# What a seed may be: numpy's seeds (0 to 2**32 - 1) and within torch.manual_seed's range, with
# room for the seeds derived from it (train.epoch_seed, data._rng, distributed.process_seed).
MAX_SEED = 2**32 - 1

# The roles of a setting (`setting`).
EXPERIMENT, RUNTIME, RECIPE = "experiment", "runtime", "recipe"


def setting(default=None, rule: Optional[Rule] = None, role: str = EXPERIMENT):
    """A TrainConfig field: its default, the rule its value is checked by (none for a recipe's
    value: the resolved recipe, or the network, checks it) and its role. A run-time setting says
    where and how fast a run runs, not what it computes: no experiment key holds it."""
    return dataclasses.field(default=default, metadata={"rule": rule, "role": role})


_SEED = Rule(lambda value: is_int(value) and 0 <= value <= MAX_SEED,
             f"an integer from 0 to {MAX_SEED} (2**32 - 1: what numpy and torch.manual_seed both take)")
_DATASET = Rule(lambda value: isinstance(value, str) and value != "folder:"
                and (value in DATASETS or value.startswith("folder:")), f"one of {list(DATASETS)}")
_DEVICE = Rule(lambda value: isinstance(value, str) and (value in DEVICES or value.startswith("cuda:")),
               f"one of {list(DEVICES)} or 'cuda:N'")
_PATH = Rule(lambda value: isinstance(value, str) and value != "", "a run directory path")
_FOLDER = Rule(lambda value: isinstance(value, str), "a folder path", optional=True)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = setting("preact_resnet20", one_of(ARCHITECTURES))
    out: str = setting("runs/preact_resnet20", _PATH, RUNTIME)
    recipe: str = setting("seed", one_of(RECIPES))
    epochs: Optional[int] = setting(role=RECIPE)      # None: the recipe's length, else a shortened run
    batch_size: Optional[int] = setting(role=RECIPE)  # images per SGD step
    lr: Optional[float] = setting(role=RECIPE)        # peak learning rate at `batch_size`
    weight_decay: Optional[float] = setting(role=RECIPE)
    weight_decay_on: Optional[str] = setting(role=RECIPE)  # all | weights | lasagne (recipes.DECAYED_ROLES)
    milestones: Optional[tuple] = setting(role=RECIPE)     # lr decay points, in the recipe's units
    momentum_form: Optional[str] = setting(role=RECIPE)    # pytorch | lasagne | reset: the momentum at a change of lr
    seed: int = setting(0, _SEED)
    dataset: str = setting("cifar10", _DATASET)       # cifar10 | cifar100 | folder:PATH | synthetic
    data_dir: Optional[str] = setting(None, _FOLDER, RUNTIME)  # None: $REPRORESNET_DATA or ~/.cache/reproresnet/data
    download: bool = setting(False, BOOL, RUNTIME)
    limit_train: Optional[int] = setting(None, OPTIONAL_POSITIVE_INT)  # a fixed, seeded subset for quick runs
    limit_test: Optional[int] = setting(None, OPTIONAL_POSITIVE_INT)
    val_size: Optional[int] = setting(role=RECIPE)    # >0: hold out that many training images (the seed: 5000)
    normalization: Optional[str] = setting(role=RECIPE)  # per_pixel_mean | per_pixel_mean_0_255 | range_0_1 | ...
    augmentation: Optional[str] = setting(role=RECIPE)   # per_image | per_batch | none
    padding: Optional[str] = setting(role=RECIPE)        # zero | reflect: the crop's 4-pixel border
    shortcut: Optional[str] = setting(role=RECIPE)       # network options; None: the recipe's, else the network's
    bottleneck_stride: Optional[str] = setting(role=RECIPE)
    dropout: Optional[float] = setting(role=RECIPE)
    bn_batch: Optional[int] = setting(role=RECIPE)       # images per batch-norm statistic ("ghost" batch norm)
    preact_stage1: Optional[str] = setting(role=RECIPE)  # every_unit | first_unit: which units of stage 1 pre-activate
    layer_defaults: Optional[str] = setting(role=RECIPE)  # torch | lasagne: conv bias, initialisation, BN epsilon
    device: str = setting("auto", _DEVICE, RUNTIME)
    # Precision is part of the result (no run-time setting): bf16 and fp32 runs are other experiments.
    bf16: Optional[bool] = setting(None, OPTIONAL_BOOL)  # None: on for CUDA, off for CPU (`precision`)
    channels_last: Optional[bool] = setting(None, OPTIONAL_BOOL, RUNTIME)
    compile: Optional[bool] = setting(None, OPTIONAL_BOOL, RUNTIME)  # torch.compile (eager engine); None: off
    # The engine is run-time: a CUDA graph replays the kernels of the eager step, so a run may
    # change engines between processes. None: graph on one CUDA device, else eager.
    engine: Optional[str] = setting(None, one_of(ENGINES, optional=True), RUNTIME)
    eval_batch_size: int = setting(1000, POSITIVE_INT, RUNTIME)
    threads: Optional[int] = setting(None, OPTIONAL_POSITIVE_INT, RUNTIME)  # this process's; None: cpu_threads

    def __post_init__(self):
        """Each value checked once: a run's own settings by their rules, a recipe's values by the
        recipe they resolve to, the network's options by the network (ArchSpec.options)."""
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        for field in dataclasses.fields(self):
            if field.metadata["rule"] is not None:
                field.metadata["rule"].check(field.name, getattr(self, field.name))
        self.resolved_recipe()  # schedule, batch, data and optimiser values together
        self.network_options()

    def resolved_recipe(self) -> Recipe:
        """The recipe as it applies to this network, with this run's values over it."""
        given = {name: getattr(self, name) for name in RECIPE_OWNED if getattr(self, name) is not None}
        return RECIPES[self.recipe].for_arch(self.arch).replace(**given)

    def model_options(self) -> dict:
        """Network options: the recipe's where the network has them, then this run's."""
        spec = ARCHITECTURES[self.arch]
        accepted = default_options(spec.family, spec.block)
        recipe = self.resolved_recipe().model_options()
        given = {name: getattr(self, name) for name in NETWORK_OPTIONS if getattr(self, name) is not None}
        return {**{k: v for k, v in recipe.items() if k in accepted}, **given}

    def network_options(self) -> dict:
        """Every option the network is built with: its source's defaults, then `model_options`,
        each checked (`ArchSpec.options`)."""
        return ARCHITECTURES[self.arch].options(self.model_options())

    def precision(self, device: str) -> str:
        """"bf16" or "fp32" on a device of type `device` (`precision_for`)."""
        return precision_for(self.bf16, device)

    def describe(self, train_size: Optional[int] = None) -> dict:
        """Every resolved value of this run, positions also in iterations: what `recipe` prints."""
        recipe = self.resolved_recipe()
        if train_size is None:
            train_size = (self.limit_train or CIFAR_TRAIN_IMAGES) - recipe.val_size
        require(is_int(train_size) and train_size > 0, "train_size", train_size, "a positive integer")
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


def precision_for(bf16: Optional[bool], device: str) -> str:
    """"bf16" or "fp32": as `bf16` says, else bf16 on a CUDA device (`device`: its type)."""
    return "bf16" if (device == "cuda" if bf16 is None else bf16) else "fp32"


def _named(role: str) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(TrainConfig) if field.metadata["role"] == role)


# Settings that say where and how fast a run runs, not what it computes: no experiment key holds
# them (TrainConfig.experiment_key). (A resume is still refused when the speedups these resolve
# to differ from the checkpoint's: rundir.check_same_speedups.)
RUNTIME_SETTINGS = _named(RUNTIME)
# Settings a recipe owns; a value given in the config replaces the recipe's.
RECIPE_OWNED = _named(RECIPE)


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
        require(is_int(requested) and 1 <= requested <= cores, "threads", requested,
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
