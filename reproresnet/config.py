"""One training run's settings, checked before anything runs.

Every field has a plain literal default, so the same object serves the command line, a
papermill parameter cell and the run record. `None` means "the recipe's (or the
network's, or the device's) own choice".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .data import AUGMENTATIONS, NORMALIZATIONS
from .recipes import ConfigError, Recipe, as_record, get_recipe

DEVICES = ("auto", "cpu", "cuda")
# Settings that say where and how fast a run runs, not what it computes: a run may resume
# with other values, the sweep ignores them, and the report's seeds of one experiment may
# differ in them. bf16 is not one: precision is part of the result.
RUNTIME_SETTINGS = ("out", "device", "data_dir", "download", "channels_last", "compile", "eval_batch_size")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "preact_resnet20"
    out: str = "runs/preact_resnet20"
    recipe: str = "seed"
    epochs: Optional[int] = None          # None: the recipe's length, else a shortened run
    batch_size: Optional[int] = None      # images per SGD step
    lr: Optional[float] = None            # peak learning rate at `batch_size`
    weight_decay: Optional[float] = None
    milestones: Optional[tuple] = None    # lr decay points, in the recipe's units
    seed: int = 0
    dataset: str = "synthetic"            # cifar10 | cifar100 | folder:PATH | synthetic
    data_dir: Optional[str] = None        # None: $REPRORESNET_DATA or ~/.cache/reproresnet/data
    download: bool = False
    limit_train: Optional[int] = None     # a fixed, seeded subset for quick runs
    limit_test: Optional[int] = None
    val_size: int = 0                     # >0: hold out that many training images (the seed: 5000)
    normalization: str = "per_pixel_mean"
    augmentation: str = "per_image"
    shortcut: Optional[str] = None        # network options; None: the network's default
    bottleneck_stride: Optional[str] = None
    dropout: Optional[float] = None
    device: str = "auto"
    bf16: Optional[bool] = None           # None: on for CUDA, off for CPU
    channels_last: Optional[bool] = None
    compile: Optional[bool] = None
    eval_batch_size: int = 1000

    def __post_init__(self):
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        self._check_types()
        self._check_network()
        get_recipe(self.recipe)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("augmentation", self.augmentation, AUGMENTATIONS)
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is not valid: expected one of {DEVICES} or 'cuda:N'")
        if not self.dataset or not (self.dataset in ("cifar10", "cifar100", "synthetic")
                                    or self.dataset.startswith("folder:")):
            raise ConfigError(f"dataset={self.dataset!r} is not valid: expected cifar10, cifar100, "
                              f"synthetic or folder:PATH")
        if not self.out:
            raise ConfigError("out='' is not valid: expected a run directory path")
        self.resolved_recipe()  # checks epochs, batch size, lr, weight decay and milestones together

    def _check_network(self):
        from .models import build_model
        try:
            with torch.device("meta"):  # checks the options without allocating any weights
                build_model(self.arch, **self.model_options())
        except ValueError as error:
            raise ConfigError(str(error)) from None

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
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                kind = "a finite number"
            if not ok:
                raise ConfigError(f"{field.name}={value!r} is not valid: expected {kind}"
                                  f"{' or None' if field.type.startswith('Optional') else ''}, "
                                  f"got {type(value).__name__}")
        for name in ("limit_train", "limit_test", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}={value!r} is not valid: expected a positive integer")
        if self.val_size < 0:
            raise ConfigError(f"val_size={self.val_size!r} is not valid: expected 0 or a positive integer")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout!r} is not valid: expected a number in [0, 1)")

    def resolved_recipe(self) -> Recipe:
        """The recipe with this run's overrides applied, validated as a whole."""
        overrides = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                     "weight_decay": self.weight_decay, "milestones": self.milestones}
        return get_recipe(self.recipe).replace(**{k: v for k, v in overrides.items() if v is not None})

    def model_options(self) -> dict:
        options = {"shortcut": self.shortcut, "bottleneck_stride": self.bottleneck_stride,
                   "dropout": self.dropout}
        return {k: v for k, v in options.items() if v is not None}

    def as_dict(self) -> dict:
        return as_record(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}: expected some of {sorted(known)}")
        return cls(**data)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid: expected one of {list(choices)}")


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={requested!r} but no CUDA GPU is visible "
                          f"(torch.cuda.is_available() is False); use --device cpu or auto")
    return torch.device(requested)
