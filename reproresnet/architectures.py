"""The registered networks, each fact stated once, read without torch.

A network is an `ArchSpec`: a family, a block, a depth and a widening factor, from which its
name follows. `FAMILIES` says what each family is (pre-activation or original units, how its
depth counts the units, how its networks are named), `default_options` what each source
builds, and `ArchSpec.options` checks a network's options once, for the run's settings
(`config.TrainConfig`) and the builder (`models.create`) alike. `ARCHITECTURES` is the
registry: one spec per network name.

`architectures.csv` holds one row per registered network: family, block, depth, width, exact
parameters, forward GFLOPs per image and default options. It is written from the registry by
`python -m reproresnet list --csv` and checked against it by the tests
(tests/test_architectures.py), so the book reads it instead of building 21 networks with torch.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from pathlib import Path

from .checks import ConfigError, choice, is_int, is_number, require

SHORTCUTS = ("projection", "input_projection", "zero_pad")
BOTTLENECK_STRIDES = ("1x1", "3x3")
PREACT_STAGE1 = ("every_unit", "first_unit")  # which units of stage 1 begin with their own BN-ReLU
LAYER_DEFAULTS = ("torch", "lasagne")  # whose layers: conv bias, initialisation, BN epsilon
# The network options a run may set over its recipe (config.TrainConfig, recipes.Recipe).
NETWORK_OPTIONS = ("shortcut", "bottleneck_stride", "dropout", "bn_batch", "preact_stage1", "layer_defaults")


@dataclass(frozen=True)
class Family:
    named: str         # a network's name, from its depth, width and n (units per stage)
    preact: bool       # pre-activation units (He et al. 2016), else the original ones (He et al. 2015)
    depth_rules: dict  # block -> (per_unit, extra): depth = per_unit * n + extra
    extra_units: tuple = (0, 0, 0)  # units of each stage beyond n


FAMILIES = {
    "preact": Family("preact_resnet{depth}", True, {"basic": (6, 2), "bottleneck": (9, 2)}),
    "original": Family("resnet{depth}", False, {"basic": (6, 2), "bottleneck": (9, 2)}),
    "wide": Family("wrn_{depth}_{width}", True, {"basic": (6, 4)}),
    # The seed's ResNet_FullPre_Wide(n, k) stacks n, n+2, n+2 units (its `for _ in range(1,(n+2))`
    # in stages 2 and 3), so its depth is 2 + 2 * (3n + 4).
    "seed_wide": Family("seed_wrn_n{n}_k{width}", True, {"basic": (6, 10)}, (0, 2, 2)),
}


def default_options(family: str, block: str) -> dict:
    """Each network's options as its source builds it."""
    # He 2016: "we use projection shortcuts [for the bottleneck nets] ... otherwise, we follow
    # [He 2015]", whose CIFAR nets use "identity shortcuts in all cases (i.e., option A)";
    # fb.resnet.torch: "Default shortcutType=A" for cifar10. WRN's code: a 1x1 Convolution.
    shortcut = "projection" if block == "bottleneck" or family == "wide" else "zero_pad"
    defaults = {"num_classes": 10, "shortcut": shortcut}
    if block == "bottleneck":
        defaults["bottleneck_stride"] = "1x1"
    if family == "wide":
        defaults["dropout"] = 0.3  # the report's WRN-16-4 is the dropout variant
    if family == "seed_wide":
        # The seed's code: `projection = ConvLayer(l, ...)` on the unit's raw input where the
        # stride changes; `DropoutLayer(conv_1, p=0.3)`.
        defaults.update(shortcut="input_projection", dropout=0.3)
    if family == "preact":
        defaults["preact_stage1"] = "every_unit"  # "first_unit": the seed's code at 7c4c997
    if family != "original":
        # Torch's (the authors' code): no conv bias, N(0, 2/(k*k*out)); Lasagne's: the seed's.
        defaults["layer_defaults"] = "lasagne" if family == "seed_wide" else "torch"
    defaults["bn_batch"] = None  # images per batch-norm statistic; None: the whole batch
    return defaults


@dataclass(frozen=True)
class ArchSpec:
    """One network: `family` (a key of FAMILIES), `block` ("basic" or "bottleneck"), `depth`
    (weighted layers) and `width` (the widening factor k; 1 unless wide). Refuses, in one line,
    a combination its family cannot build."""
    family: str
    block: str
    depth: int
    width: int = 1

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {', '.join(map(repr, FAMILIES))}")
        rules = FAMILIES[self.family].depth_rules
        if self.block not in rules:
            raise ValueError(f"block {self.block!r} is not one of {', '.join(map(repr, rules))}")
        if not (is_int(self.width) and self.width >= 1):
            raise ValueError(f"widening factor k must be an int >= 1, got {self.width!r}")
        per_unit, extra = rules[self.block]
        if not (is_int(self.depth) and self.depth >= per_unit + extra) or (self.depth - extra) % per_unit:
            valid = ", ".join(str(per_unit * n + extra) for n in (1, 2, 3))
            kind = f"{self.family} networks" if "wide" in self.family else f"{self.block} blocks"
            raise ValueError(f"depth {self.depth!r} is not {per_unit}n+{extra} for {kind}; valid: {valid}, ...")

    @property
    def name(self) -> str:
        return FAMILIES[self.family].named.format(depth=self.depth, width=self.width, n=self.units[0])

    @property
    def preact(self) -> bool:
        return FAMILIES[self.family].preact

    @property
    def units(self) -> tuple[int, int, int]:
        """Units in each of the three stages."""
        family = FAMILIES[self.family]
        per_unit, extra = family.depth_rules[self.block]
        return tuple((self.depth - extra) // per_unit + more for more in family.extra_units)

    @property
    def widths(self) -> tuple[int, int, int]:
        return 16 * self.width, 32 * self.width, 64 * self.width

    def options(self, given: dict) -> dict:
        """Every option this network is built with: its source's defaults, then `given`, each
        checked here, for a run's settings and the builder alike (ConfigError, a ValueError,
        naming the bad one and what would be accepted)."""
        defaults = default_options(self.family, self.block)
        options = {**defaults, **given}
        num_classes, bn_batch = options["num_classes"], options["bn_batch"]
        require(is_int(num_classes) and num_classes >= 2, "num_classes", num_classes, "an int >= 2")
        choice("shortcut", options["shortcut"], SHORTCUTS)
        for name, accepted in (("bottleneck_stride", BOTTLENECK_STRIDES), ("preact_stage1", PREACT_STAGE1),
                               ("layer_defaults", LAYER_DEFAULTS)):
            if name in options:
                choice(name, options[name], accepted)
        if "dropout" in options:
            dropout = options["dropout"]
            require(is_number(dropout) and 0 <= dropout < 1, "dropout", dropout, "a float in [0, 1)")
        require(bn_batch is None or (is_int(bn_batch) and bn_batch >= 1), "bn_batch", bn_batch, "None or an int >= 1")
        unknown = sorted(set(given) - set(defaults))  # after the values: a bad value is named first
        if unknown:
            raise ConfigError(f"option(s) {', '.join(unknown)} do not apply to {self.family} {self.block}-block "
                              f"networks; accepted: {', '.join(defaults)}")
        return options


# The registry: every network by name.
ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in (
    # Pre-activation ResNets (He et al. 2016), basic then bottleneck blocks.
    *(ArchSpec("preact", "basic", depth) for depth in (20, 32, 44, 56, 110, 1202)),
    *(ArchSpec("preact", "bottleneck", depth) for depth in (164, 1001)),
    # Original post-activation ResNets (He et al. 2015).
    *(ArchSpec("original", "basic", depth) for depth in (20, 32, 44, 56, 110, 1202)),
    *(ArchSpec("original", "bottleneck", depth) for depth in (164, 1001)),
    # Wide ResNets (Zagoruyko & Komodakis 2016); WRN-16-4 is the network of the seed's table.
    *(ArchSpec("wide", "basic", depth, k) for depth, k in ((16, 4), (16, 8), (28, 10), (40, 4))),
    # The seed's "WRN n=2 k=4" as its code builds it (ResNet_FullPre_Wide(n=2, k=4)): 22 layers.
    ArchSpec("seed_wide", "basic", 22, 4),
)}
BOTTLENECK_NETWORKS = tuple(name for name, spec in ARCHITECTURES.items() if spec.block == "bottleneck")


# ---------------------------------------------------------------- the committed table of their sizes

TABLE = Path(__file__).with_name("architectures.csv")
# Each network's default options: every network option but bn_batch, which is None for every one.
OPTIONS = tuple(name for name in NETWORK_OPTIONS if name != "bn_batch")
COLUMNS = ("name", "family", "block", "depth", "width", "params", "gflops", *OPTIONS)
_TYPES = {"depth": int, "width": int, "params": int, "gflops": float, "dropout": float}
REGENERATE = "python -m reproresnet list --csv > reproresnet/architectures.csv"


def to_csv(rows: list[dict]) -> str:
    """The table's text for `rows` (as `models.architecture_rows` gives them); None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: "" if row.get(key) is None else row[key] for key in COLUMNS} for row in rows)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def rows() -> tuple[dict, ...]:
    """The committed table, typed: ints, floats, strings, and None for an option a network lacks."""
    with open(TABLE, newline="") as file:
        return tuple({key: None if text == "" else _TYPES.get(key, str)(text) for key, text in row.items()}
                     for row in csv.DictReader(file))


def row(name: str) -> dict | None:
    """The network's row, or None if the registry has no such network."""
    return next((dict(r) for r in rows() if r["name"] == name), None)
