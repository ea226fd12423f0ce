"""Training recipes as their sources state them, and the learning-rate schedule they imply.

A `Recipe` is written in the units its source uses (epochs or iterations) and owns every
choice its source makes: optimiser (and how its momentum meets a change of learning rate),
schedule, batch-norm batch, preprocessing, augmentation, validation split and the network
options, and checks its own values when it is made (`check_recipe`): its source's, a network's
(`for_arch`) or a run's (`replace`, as `config.TrainConfig` applies a run's explicit values over
it), each refused in one line that names it. `make_schedule`
turns it into a `Schedule` in iterations; the learning rate is then a pure function of the
iteration (`Schedule.lr_at`), easy to test and to plot.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from .architectures import BOTTLENECK_NETWORKS, NETWORK_OPTIONS
from .checks import choice, is_int, is_number, require

UNITS = ("epoch", "iteration")
# The parameter roles (engine.parameter_roles) and which of them each weight_decay_on scope decays.
PARAMETER_ROLES = {"weight": "conv and linear weights", "bias": "conv and linear biases",
                   "bn_gamma": "batch norm's gamma", "bn_beta": "batch norm's beta"}
DECAYED_ROLES = {
    "all": tuple(PARAMETER_ROLES),     # every parameter: the authors' Torch code, PyTorch's default
    "weights": ("weight",),            # conv and linear weights only
    # Lasagne's regularize_layer_params: the parameters tagged regularizable=True, a layer's W and
    # BatchNormLayer's gamma (lasagne/layers/normalization.py); b, beta, mean and inv_std are not.
    "lasagne": ("weight", "bn_gamma"),
}
WEIGHT_DECAY_SCOPES = tuple(DECAYED_ROLES)

# The preprocessing a recipe may choose (data.py implements them).
NORMALIZATIONS = ("per_pixel_mean", "per_pixel_mean_0_255", "range_0_1", "per_channel", "gcn_zca")
AUGMENTATIONS = ("per_image", "per_batch", "none")
PADDINGS = ("zero", "reflect")
# What a change of learning rate does to the momentum (Schedule.momentum_scale_at says how).
MOMENTUM_FORMS = ("pytorch", "lasagne", "reset")
# Epochs a run may have: train.epoch_seed draws epoch e of seed s from s * 1_000_003 + e, so a
# longer run would replay the next seed's draws.
MAX_EPOCHS = 1_000_003
# The largest float32: the optimizer applies the lr, weight decay and momentum to fp32 weights
# as float32 scalars, and a larger one overflows inside the step.
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_WHY = "float32's largest: the step applies it to fp32 weights"


def weight_decay_reach(scope: str, spared: bool = True) -> str:
    """In words, which parameters a weight_decay_on scope decays (and, if `spared`, which not)."""
    decayed = DECAYED_ROLES[scope]
    left = [words for role, words in PARAMETER_ROLES.items() if role not in decayed]
    if not left:
        return "every parameter"
    reach = ", ".join(PARAMETER_ROLES[role] for role in decayed)
    return f"{reach}; not {', '.join(left)}" if spared else reach


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str                    # where the numbers come from, quoted where it can be
    length: int                    # training length, in `unit`s
    unit: str                      # "epoch" or "iteration"
    lr: float                      # learning rate for a batch of `batch_size`
    milestones: tuple[float, ...]  # in `unit`s; lr is multiplied by `gamma` at each
    gamma: float
    batch_size: int
    momentum: float = 0.9
    nesterov: bool = True
    momentum_form: str = "pytorch"  # MOMENTUM_FORMS: kept, rescaled (Lasagne) or emptied at an lr change
    weight_decay: float = 1e-4     # PyTorch SGD weight decay ...
    weight_decay_on: str = "all"   # ... on the parameters this scope names (DECAYED_ROLES)
    warmup_lr: float = 0.0         # lr used before `warmup_length` (in `unit`s) ...
    warmup_length: float = 0
    warmup_archs: Optional[tuple[str, ...]] = None  # ... for these networks only; None: every one
    batch_size_for: tuple[tuple[str, int], ...] = ()  # per-network exceptions to batch_size
    normalization: str = "per_pixel_mean"
    augmentation: str = "per_image"
    padding: str = "zero"          # what fills the 4-pixel border of the random crop: "zero" | "reflect"
    val_size: int = 0              # training images held out; the best-validation epoch is reported
    bn_batch: Optional[int] = None  # images per batch-norm statistic; None: the whole mini-batch
    shortcut: Optional[str] = None  # network options; None: the network's own default
    bottleneck_stride: Optional[str] = None
    dropout: Optional[float] = None
    preact_stage1: Optional[str] = None
    layer_defaults: Optional[str] = None

    def __post_init__(self):
        check_recipe(self)

    def for_arch(self, arch: str) -> "Recipe":
        """The recipe as it applies to one network: its batch size and warm-up resolved."""
        warms_up = self.warmup_archs is None or arch in self.warmup_archs
        return dataclasses.replace(self, batch_size=dict(self.batch_size_for).get(arch, self.batch_size),
                                   batch_size_for=(), warmup_archs=None,
                                   warmup_length=self.warmup_length if warms_up else 0)

    def replace(self, **overrides) -> "Recipe":
        """A copy with some fields overridden, checked as every recipe is. A new
        `epochs` keeps the schedule's shape: milestones and warm-up move to the same fraction
        of the new length, as fractional epochs, so that no decay merges with another and a
        warm-up does not round to nothing (make_schedule rounds them to iterations)."""
        epochs = overrides.pop("epochs", None)
        if epochs is not None:
            overrides.setdefault("length", epochs)
            overrides.setdefault("unit", "epoch")
        if is_int(epochs) and epochs > 0:  # else the copy refuses its length, in epochs
            scale = epochs / self.length  # an iteration recipe is read at its nominal 50,000-image epoch
            overrides.setdefault("milestones", tuple(_tidy(m * scale) for m in self.milestones))
            overrides.setdefault("warmup_length", _tidy(self.warmup_length * scale))
        if isinstance(overrides.get("milestones"), list):
            overrides["milestones"] = tuple(overrides["milestones"])
        return dataclasses.replace(self, **overrides)

    def model_options(self) -> dict:
        return {name: getattr(self, name) for name in NETWORK_OPTIONS if getattr(self, name) is not None}

    def as_dict(self) -> dict:
        return as_record(self)


def check_recipe(recipe: Recipe) -> Recipe:
    """Every value of a recipe, checked together; raises ConfigError naming the first bad one.
    (Its network options are the network's to check: architectures.ArchSpec.options.)"""
    require(recipe.unit in UNITS, "unit", recipe.unit, f"one of {UNITS}")
    require(is_int(recipe.length) and 0 < recipe.length <= MAX_EPOCHS, "epochs" if recipe.unit == "epoch"
            else "length", recipe.length, EPOCHS_ACCEPTED)
    require(is_int(recipe.batch_size) and recipe.batch_size > 0, "batch_size", recipe.batch_size,
            "a positive integer")
    for field in ("lr", "gamma"):
        value = getattr(recipe, field)
        require(is_number(value) and 0 < value <= FLOAT32_MAX, field, value,
                f"a finite number (here a positive number up to {FLOAT32_MAX:.4g}, {FLOAT32_WHY})")
    for field in ("weight_decay", "momentum", "warmup_lr"):
        value = getattr(recipe, field)
        require(is_number(value) and 0 <= value <= FLOAT32_MAX, field, value,
                f"a finite number (here a number >= 0 and up to {FLOAT32_MAX:.4g}, {FLOAT32_WHY})")
    milestones = recipe.milestones
    require(isinstance(milestones, tuple) and all(is_number(m) for m in milestones), "milestones", milestones,
            "numbers")
    ordered = all(a < b for a, b in zip(milestones, milestones[1:]))
    require(ordered, "milestones", milestones, "strictly increasing values")
    inside = all(0 < m < recipe.length for m in milestones)
    require(inside, "milestones", milestones, f"values between 1 and {recipe.length - 1} (or "
            f"fractions strictly between 0 and {recipe.length}; the run is {recipe.length} {recipe.unit}s long)")
    require(is_number(recipe.warmup_length) and 0 <= recipe.warmup_length < recipe.length, "warmup_length",
            recipe.warmup_length, f"a number in [0, {recipe.length})")
    choice("weight_decay_on", recipe.weight_decay_on, WEIGHT_DECAY_SCOPES)
    choice("momentum_form", recipe.momentum_form, MOMENTUM_FORMS)
    choice("normalization", recipe.normalization, NORMALIZATIONS)
    choice("augmentation", recipe.augmentation, AUGMENTATIONS)
    choice("padding", recipe.padding, PADDINGS)
    require(is_int(recipe.val_size) and recipe.val_size >= 0, "val_size", recipe.val_size,
            "0 or a positive integer")
    return recipe


EPOCHS_ACCEPTED = (f"a positive integer up to {MAX_EPOCHS:,} (epoch e of seed s draws from s * {MAX_EPOCHS:,} + e: "
                   f"a longer run would replay the next seed's draws)")


def _tidy(value: float):
    """Whole numbers stay ints, so that records read 80, not 80.0."""
    return int(value) if float(value).is_integer() else value


def as_record(settings) -> dict:
    """A dataclass as run records store it: JSON types only (tuples become lists)."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, tuple) else value
    return {key: plain(value) for key, value in dataclasses.asdict(settings).items()}


_SEED_CODE = Recipe(
    name="seed_code",
    source="Muellerklein's code (Identity-Mapping-ResNet-Lasagne at 3403cfb for ResNet-164 and 0adef49 for "
           "the wide network; train_nn.py, utils.py, models.py, README): "
           "\"LR_SCHEDULE = {0: 0.01, 10: 0.1, 80: 0.01, 120: 0.001}\", \"ITERS = 200\", "
           "\"nesterov_momentum(loss, params, learning_rate=l_r, momentum=0.9)\" (Lasagne's velocity is in "
           "learning-rate units), \"regularize_layer_params(all_layers, lasagne.regularization.l2) * 0.0001\" "
           "(= weight decay 2e-4 on what Lasagne tags regularizable: conv and dense W and BatchNormLayer's gamma, "
           "not b, not beta), \"train_test_split(X_train, y_train, test_size=0.1)\" "
           "with the best-validation parameters kept, \".astype('float32')\" and \"X_train -= pixel_mean\" "
           "(raw 0-255 values minus the mean image), one crop offset and one flip per mini-batch, \"batch sizes "
           "of 64 for ResNet-110 and 48 for ResNet-164\", projections \"ConvLayer(l, ...)\" on the raw input, "
           "stride on the 3x3, Lasagne's layer defaults (a bias on each unit's last convolution, HeNormal and "
           "GlorotUniform weights, BatchNormLayer epsilon 1e-4)",
    length=200, unit="epoch", lr=0.1, milestones=(80, 120), gamma=0.1, batch_size=64,
    momentum_form="lasagne", weight_decay=2e-4, weight_decay_on="lasagne", warmup_lr=0.01, warmup_length=10,
    batch_size_for=tuple((arch, 48) for arch in BOTTLENECK_NETWORKS),
    normalization="per_pixel_mean_0_255", augmentation="per_batch", val_size=5000,
    shortcut="input_projection", bottleneck_stride="3x3", layer_defaults="lasagne",
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe(
        name="seed",
        source="Muellerklein, ReScience reproduction, as its text states it: \"200 epochs\", "
               "\"nesterov momentum of 0.9\", \"For the bottleneck architecture, the initial learning rate "
               "was set to 0.01 ... increased to 0.1 at epoch 10\", \"{0:0.1, 80: 0.01, 120: 0.001}\", "
               "\"L2 regularization of 0.0001\", \"batch sizes of 64\", \"perpixel mean subtraction\"",
        length=200, unit="epoch", lr=0.1, milestones=(80, 120), gamma=0.1, batch_size=64,
        weight_decay=1e-4, warmup_lr=0.01, warmup_length=10, warmup_archs=BOTTLENECK_NETWORKS,
    ),
    _SEED_CODE,
    dataclasses.replace(
        _SEED_CODE,  # the same code, as it read before the ResNet-164 and wide-network runs
        name="seed_code_2016_04",
        source="Muellerklein's code at 7c4c997 (2016-04-24, \"initialize repo with ResNet110 results\"), the "
               "state that reports ResNet-110's 6.38 (3403cfb's README: \"Weights for ResNet-110 are from an older "
               "slightly tweaked architecture\"): README \"32 instead of 128\", \"0.01 instead of 0.1\"; "
               "train_nn.py \"BATCHSIZE = 32\", \"LR_SCHEDULE = {0: 0.01, 80: 0.001, 120: 0.0001}\", "
               "\"ITERS = 200\", \"nesterov_momentum(loss, params, learning_rate=l_r, momentum=0.9)\", L2 "
               "\"* 0.0001\" on the regularizable parameters (conv and dense W, BN's gamma), the best-validation "
               "parameters kept; utils.py "
               "\"train_test_split(X_train, y_train, test_size=0.1)\", \".astype('float32') / 255.\" with no mean "
               "subtracted, one crop offset and one flip per mini-batch from a zero pad; models.py: every unit of "
               "stage 1 built with \"first=True\" (\"bn_pre_relu = l\": no BN-ReLU of its own), projections "
               "\"ConvLayer(l, ...)\" on the raw input, Lasagne's layer defaults",
        lr=0.01, batch_size=32, batch_size_for=(), warmup_lr=0.0, warmup_length=0, normalization="range_0_1",
        bottleneck_stride=None, preact_stage1="first_unit",
    ),
    Recipe(
        name="he2016",
        source="He et al. 2016, Identity Mappings, appendix (CIFAR): batch 128 on 2 GPUs, 64 each; "
               "weight decay 0.0001, momentum 0.9; lr 0.01 for the first 400 iterations in all CIFAR "
               "experiments, then 0.1, divided by 10 at 32k and 48k iterations, 64k in all; He et al. 2015, "
               "4.2: \"32x32 images, with the per-pixel mean subtracted\". Nesterov momentum is "
               "fb.resnet.torch's (the paper says momentum 0.9), whose optim.sgd keeps its momentum when "
               "train.lua sets a new \"optimState.learningRate\"",
        length=64_000, unit="iteration", lr=0.1, milestones=(32_000, 48_000), gamma=0.1,
        batch_size=128, weight_decay=1e-4, warmup_lr=0.01, warmup_length=400, bn_batch=64,
    ),
    Recipe(
        name="wrn2016",
        source="Zagoruyko & Komodakis 2016, Wide Residual Networks (v2), section 3, and the authors' code "
               "(szagoruyko/wide-residual-networks): lr 0.1 \"dropped by 0.2 at 60, 120 and 160 epochs\", 200 "
               "epochs, batch 128, Nesterov 0.9, weight decay 0.0005, \"mean/std normalization\"; "
               "scripts/train_cifar.sh: \"randomcrop_type=reflection\"; train.lua drops the lr in its "
               "onStartEpoch hook (\"local epoch = state.epoch + 1\", \"tablex.find(opt.epoch_step, epoch)\"), at "
               "the start of 1-based epoch 60, after 59 epochs, and there replaces the optimizer state "
               "(\"state.optim = tablex.deepcopy(opt)\"; 8b166cc: \"drop learning rate and reset momentum vector\")",
        length=200, unit="epoch", lr=0.1, milestones=(59, 119, 159), gamma=0.2, batch_size=128,
        weight_decay=5e-4, momentum_form="reset", normalization="per_channel", padding="reflect",
    ),
)}


def get_recipe(name: str) -> Recipe:
    """The preset by name (KeyError if none; config.TrainConfig names the accepted ones)."""
    return RECIPES[name]


@dataclass(frozen=True)
class Schedule:
    """A recipe made concrete for one run, every position in iterations."""
    total_iterations: int
    iterations_per_epoch: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    warmup_iterations: int
    warmup_lr: float
    lost: tuple[str, ...] = ()  # what a run too short to hold the recipe's schedule dropped

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_iterations / self.iterations_per_epoch)

    def lr_at(self, iteration: int) -> float:
        if iteration < self.warmup_iterations:
            return self.warmup_lr
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, iteration)

    def epoch_lrs(self, epoch: int) -> tuple[float, float]:
        """The lr of the first and of the last step of 0-based `epoch`."""
        first = epoch * self.iterations_per_epoch
        last = min(first + self.iterations_per_epoch, self.total_iterations) - 1
        return self.lr_at(first), self.lr_at(last)

    def momentum_scale_at(self, iteration: int, form: str) -> float:
        """What PyTorch's momentum buffers are multiplied by just before step `iteration`, so that
        its SGD (b = mu b + g; p -= lr (g + mu b)) steps as `form` does. "pytorch": the buffer is
        kept (Torch's optim.sgd too). "lasagne": Lasagne's velocity v = -lr b is kept (v = mu v -
        lr g; p += mu v - lr g), so a new lr rescales b by old/new. "reset": the buffer starts
        afresh where the lr changes, as a new optim.sgd state does. 1.0 where the lr stays."""
        if form == "pytorch" or iteration == 0:
            return 1.0
        old, new = self.lr_at(iteration - 1), self.lr_at(iteration)
        if old == new:
            return 1.0
        return old / new if form == "lasagne" else 0.0

    def as_dict(self) -> dict:
        return as_record(self)


def make_schedule(recipe: Recipe, arch: str, train_size: int) -> Schedule:
    """The recipe in iterations of `train_size` images. Positions round to whole iterations;
    a warm-up keeps at least one, and a milestone that would fall on another, on the start or
    past the end is dropped and named in `lost`."""
    recipe = recipe.for_arch(arch)
    per_epoch = math.ceil(train_size / recipe.batch_size)
    to_iterations = per_epoch if recipe.unit == "epoch" else 1
    total = recipe.length * to_iterations
    warmup = max(1, round(recipe.warmup_length * to_iterations)) if recipe.warmup_length else 0
    lost = []
    if warmup >= total:
        lost.append(f"warm-up of {recipe.warmup_length} {recipe.unit}s: the run has {total} iterations")
        warmup = 0
    milestones: list[int] = []
    for m in recipe.milestones:
        position = round(m * to_iterations)
        if (milestones and position <= milestones[-1]) or not 0 < position < total:
            lost.append(f"milestone {m} {recipe.unit}s: iteration {position} of {total} is taken or outside")
        else:
            milestones.append(position)
    return Schedule(total_iterations=total, iterations_per_epoch=per_epoch, lr=recipe.lr,
                    milestones=tuple(milestones), gamma=recipe.gamma, warmup_iterations=warmup,
                    warmup_lr=recipe.warmup_lr, lost=tuple(lost))
