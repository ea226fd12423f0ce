"""Training recipes as the papers state them, and the learning-rate schedule they imply.

A `Recipe` is written in the units its source uses (epochs or iterations). `make_schedule`
turns it into a `Schedule` in iterations for a concrete run; the learning rate is then a
pure function of the iteration (`Schedule.lr_at`), easy to test and to plot.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass

UNITS = ("epoch", "iteration")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and what would be accepted."""


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str                    # where the numbers come from
    length: int                    # training length, in `unit`s
    unit: str                      # "epoch" or "iteration"
    lr: float                      # learning rate for a batch of `batch_size`
    milestones: tuple[int, ...]    # in `unit`s; lr is multiplied by `gamma` at each
    gamma: float
    batch_size: int
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4     # PyTorch SGD weight decay, applied to every parameter
    warmup_lr: float = 0.0         # lr used before `warmup_length` (in `unit`s) ...
    warmup_length: int = 0
    warmup_archs: tuple[str, ...] = ()   # ... for these networks only

    def validate(self) -> "Recipe":
        _require(self.unit in UNITS, "unit", self.unit, f"one of {UNITS}")
        _require(_is_int(self.length) and self.length > 0, "epochs" if self.unit == "epoch" else "length",
                 self.length, "a positive integer")
        _require(_is_int(self.batch_size) and self.batch_size > 0, "batch_size", self.batch_size,
                 "a positive integer")
        for field in ("lr", "gamma"):
            value = getattr(self, field)
            _require(_is_number(value) and value > 0, field, value, "a positive number")
        for field in ("weight_decay", "momentum", "warmup_lr"):
            value = getattr(self, field)
            _require(_is_number(value) and value >= 0, field, value, "a number >= 0")
        _require(all(_is_int(m) for m in self.milestones), "milestones", self.milestones, "integers")
        ordered = all(a < b for a, b in zip(self.milestones, self.milestones[1:]))
        _require(ordered, "milestones", self.milestones, "strictly increasing values")
        inside = all(0 < m < self.length for m in self.milestones)
        _require(inside, "milestones", self.milestones, f"values between 1 and {self.length - 1} "
                 f"(the run is {self.length} {self.unit}s long)")
        _require(_is_int(self.warmup_length) and 0 <= self.warmup_length < self.length, "warmup_length",
                 self.warmup_length, f"an integer in [0, {self.length})")
        return self

    def replace(self, **overrides) -> "Recipe":
        """A copy with some fields overridden. A new `epochs` keeps the schedule's shape:
        milestones and warm-up are scaled to the new length unless given too."""
        epochs = overrides.pop("epochs", None)
        if epochs is not None:
            _require(_is_int(epochs) and epochs > 0, "epochs", epochs, "a positive integer")
            overrides.setdefault("length", epochs)
            overrides.setdefault("unit", "epoch")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        _require(not unknown, "recipe field", ", ".join(sorted(unknown)),
                 f"one of {[f.name for f in dataclasses.fields(self)]}")
        if "milestones" in overrides:
            overrides["milestones"] = tuple(overrides["milestones"])
        new = dataclasses.replace(self, **overrides)
        if epochs is not None:
            scaled = {"warmup_length": self._scaled((self.warmup_length,), new)[0],
                      "milestones": tuple(sorted({m for m in self._scaled(self.milestones, new) if m > 0}))}
            new = dataclasses.replace(new, **{k: v for k, v in scaled.items() if k not in overrides})
        return new.validate()

    def _scaled(self, positions: tuple[int, ...], new: "Recipe") -> tuple[int, ...]:
        """Positions of this recipe moved to the same fraction of `new` (in epochs); an
        iteration-based recipe is read at its nominal epoch of 50,000 CIFAR images."""
        epochs_per_unit = 1 if self.unit == "epoch" else self.batch_size / 50_000
        scale = new.length / (self.length * epochs_per_unit)
        return tuple(min(round(p * epochs_per_unit * scale), new.length - 1) for p in positions)

    def as_dict(self) -> dict:
        return as_record(self)


def as_record(settings) -> dict:
    """A dataclass as run records store it: JSON types only (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(settings).items()}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, name: str, value, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not valid: expected {accepted}")


BOTTLENECK_NETWORKS = ("preact_resnet164", "preact_resnet1001", "resnet164", "resnet1001")

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe.validate()
    for recipe in (
        Recipe(
            name="seed",
            source="Muellerklein, ReScience reproduction (the recipe as its text states it)",
            length=200, unit="epoch", lr=0.1, milestones=(80, 120), gamma=0.1, batch_size=64,
            weight_decay=1e-4,
            warmup_lr=0.01, warmup_length=10, warmup_archs=BOTTLENECK_NETWORKS,
        ),
        Recipe(
            name="he2016",
            source="He et al. 2016, Identity Mappings in Deep Residual Networks, section 4",
            length=64_000, unit="iteration", lr=0.1, milestones=(32_000, 48_000), gamma=0.1,
            batch_size=128, weight_decay=1e-4,
            warmup_lr=0.01, warmup_length=400, warmup_archs=("preact_resnet110", "resnet110"),
        ),
        Recipe(
            name="wrn2016",
            source="Zagoruyko & Komodakis 2016, Wide Residual Networks (v2), section 3",
            length=200, unit="epoch", lr=0.1, milestones=(60, 120, 160), gamma=0.2, batch_size=128,
            weight_decay=5e-4,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"recipe={name!r} is not valid: expected one of {list(RECIPES)}")
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

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_iterations / self.iterations_per_epoch)

    def lr_at(self, iteration: int) -> float:
        if iteration < self.warmup_iterations:
            return self.warmup_lr
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, iteration)

    def as_dict(self) -> dict:
        return as_record(self)


def make_schedule(recipe: Recipe, arch: str, train_size: int) -> Schedule:
    per_epoch = math.ceil(train_size / recipe.batch_size)
    to_iterations = per_epoch if recipe.unit == "epoch" else 1
    warmup = recipe.warmup_length if arch in recipe.warmup_archs else 0
    return Schedule(
        total_iterations=recipe.length * to_iterations,
        iterations_per_epoch=per_epoch,
        lr=recipe.lr,
        milestones=tuple(m * to_iterations for m in recipe.milestones),
        gamma=recipe.gamma,
        warmup_iterations=warmup * to_iterations,
        warmup_lr=recipe.warmup_lr,
    )
