"""The command-line form of a run's settings: the argument types and the `train` flags, one per
TrainConfig field, shared by the `train` command and the campaign's --train-args (which read them
with the same parser). TrainConfig checks every run setting (`config`); these types only turn text
into numbers, and check the few counts and times that are no run setting (--pack, --stop-after,
the campaign's and the self-check's own numbers)."""

from __future__ import annotations

import argparse
import dataclasses
import math

from . import architectures
from .config import DEVICES, ENGINES, ConfigError, TrainConfig
from .recipes import AUGMENTATIONS, MOMENTUM_FORMS, NORMALIZATIONS, PADDINGS, RECIPES, WEIGHT_DECAY_SCOPES


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_integer(text: str) -> int:
    """A count of something other than a run setting (TrainConfig checks those): runs sharing a
    device, steps to time."""
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a positive integer")
    return value


def number(text: str) -> float:
    """A finite number (nan and inf are refused: no setting or budget means them)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0 (seconds to run, a budget)."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a number > 0")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0 (seconds a step may take, MiB allowed)."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a number >= 0")
    return value


def future_time(text: str) -> float:
    """A UNIX time still to come (a stop already past would stop the run before its first epoch)."""
    import time
    value = number(text)
    if value <= time.time():
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a UNIX time still to come "
                                         f"(now is {time.time():.0f})")
    return value


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig field. The parser has argument_default=SUPPRESS: a flag left out is not
    passed, so TrainConfig's default (or the recipe's) applies and TrainConfig checks every
    value: one default and one check per setting."""
    parser.add_argument("--arch", required=True, metavar="NAME",
                        help=f"network, one of: {', '.join(architectures.ARCHITECTURES)}")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory for records and checkpoints")
    parser.add_argument("--recipe", help=f"one of {list(RECIPES)} (default: {default('recipe')})")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the run in RUN_DIR (or start it)")
    owned = parser.add_argument_group("recipe overrides (default: the recipe's; see `recipe NAME --arch ARCH`)")
    owned.add_argument("--epochs", type=integer, help="shorter run; milestones and warm-up scale with it")
    owned.add_argument("--batch-size", type=integer, help="images per SGD step")
    owned.add_argument("--lr", type=number, help="peak learning rate at this batch size")
    owned.add_argument("--weight-decay", type=number, help="L2 weight decay (PyTorch's, not an L2 loss term)")
    owned.add_argument("--weight-decay-on", metavar="|".join(WEIGHT_DECAY_SCOPES),
                       help="every parameter; conv and linear weights only; or Lasagne's regularizable "
                            "parameters, conv and linear weights and batch norm's gamma (the seed's code)")
    owned.add_argument("--milestones", type=int_list, help="lr decay points in the recipe's units, e.g. 80,120")
    owned.add_argument("--momentum-form", metavar="|".join(MOMENTUM_FORMS),
                       help="at a change of lr the momentum is kept (PyTorch, Torch), kept in lr units "
                            "(Lasagne) or reset (the WRN authors' train.lua)")
    owned.add_argument("--val-size", type=integer, help="hold out N training images (the seed's code: 5000)")
    owned.add_argument("--normalization", metavar="|".join(NORMALIZATIONS),
                       help="input preprocessing (see the book's Methods: the sources differ)")
    owned.add_argument("--augmentation", metavar="|".join(AUGMENTATIONS),
                       help="crop and flip drawn per image, per mini-batch (the seed's code), or none")
    owned.add_argument("--padding", metavar="|".join(PADDINGS), help="what fills the random crop's 4-pixel border")
    owned.add_argument("--shortcut", metavar="projection|input_projection|zero_pad",
                       help="shortcut where a unit changes shape (see the book's Methods)")
    owned.add_argument("--bottleneck-stride", metavar="1x1|3x3", help="which convolution of a bottleneck strides")
    owned.add_argument("--dropout", type=number, help="dropout between a wide unit's convolutions")
    owned.add_argument("--bn-batch", type=integer, help="images per batch-norm statistic (He et al.: 64)")
    owned.add_argument("--preact-stage1", metavar="every_unit|first_unit",
                       help="first_unit: later units of stage 1 skip their BN-ReLU (the seed's code of 2016-04)")
    owned.add_argument("--layer-defaults", metavar="torch|lasagne",
                       help="conv biases, initialisation and BN epsilon as Torch's or Lasagne's layers make them")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help=f"cifar10 | cifar100 | folder:PATH | synthetic "
                                        f"(default: {default('dataset')})")
    data.add_argument("--data-dir", help="where CIFAR lives or is downloaded (default: $REPRORESNET_DATA "
                                         "or ~/.cache/reproresnet/data)")
    data.add_argument("--download", action="store_true", help="download CIFAR if missing (checksums verified)")
    data.add_argument("--limit-train", type=integer, help="a fixed, seeded subset of the training set")
    data.add_argument("--limit-test", type=integer, help="a fixed, seeded subset of the test set")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--seed", type=integer, help=f"initialisation, data order and augmentation "
                                                       f"(default: {default('seed')})")
    runtime.add_argument("--device", help=f"one of {DEVICES} or cuda:N (default: {default('device')})")
    runtime.add_argument("--threads", type=integer, help="CPU threads of this process (default: the cores "
                         "divided by --pack and capped by the free ones, or OMP_NUM_THREADS; a resume keeps "
                         "the run's; recorded)")
    for name, what in (("bf16", "bf16 autocast"), ("channels-last", "channels_last memory format")):
        runtime.add_argument(f"--{name}", action=argparse.BooleanOptionalAction,
                             help=f"{what} (default: on for CUDA, off for CPU)")
    runtime.add_argument("--compile", action=argparse.BooleanOptionalAction,
                         help="torch.compile the eager engine's model (default: off; a cold compile takes minutes)")
    runtime.add_argument("--engine", metavar="|".join(ENGINES),
                         help="how each step runs: eager, or replayed as one CUDA graph (default: graph on one "
                              "CUDA device without --compile, else eager)")
    runtime.add_argument("--eval-batch-size", type=integer,
                         help=f"images per evaluation batch (default: {default('eval_batch_size')})")
    parser.add_argument("--quiet", action="store_true", default=False, help="no progress bar")
    stop = runtime.add_mutually_exclusive_group()
    # Process settings, not run settings: each has its default here (the parser suppresses the rest).
    stop.add_argument("--stop-after", type=positive_number, metavar="SECONDS", default=None,
                      help="stop cleanly at the last epoch boundary that fits in SECONDS (resumable)")
    stop.add_argument("--stop-at", type=future_time, metavar="UNIX_TIME", default=None,
                      help="the same, at a wall-clock time")
    runtime.add_argument("--pack", type=positive_integer, default=1,
                         help="runs sharing this device, recorded with the speed (default: 1)")
    runtime.add_argument("--compile-mode", default="default", help="torch.compile mode (default: default)")


FIELDS = frozenset(field.name for field in dataclasses.fields(TrainConfig))  # the run settings' names


def default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from `train` arguments; the others say how this process runs."""
    return TrainConfig(**{key: value for key, value in vars(args).items() if key in FIELDS})


def train_settings(flags: list[str], owned: dict[str, str]) -> dict:
    """The run settings that `train` flags give, read by `train`'s own parser, as the
    campaign's --train-args. A ConfigError: a flag given twice, one for a setting in `owned`
    ({setting: the caller's flag that sets it}), one that is no run setting (--resume, say)."""
    parser = argparse.ArgumentParser(prog="train flags", argument_default=argparse.SUPPRESS, add_help=False,
                                     exit_on_error=False, allow_abbrev=False)
    add_train_arguments(parser)
    text = " ".join(flags)
    given = [parser._option_string_actions[flag].dest for flag in (token.split("=")[0] for token in flags)
             if flag in parser._option_string_actions]
    repeated = sorted({flag(name) for name in given if given.count(name) > 1})
    if repeated:
        raise ConfigError(f"{', '.join(repeated)} given more than once in the train flags {text!r}: give each once")
    taken = [f"{flag(name)} (use {owned[name]})" for name in dict.fromkeys(given) if name in owned]
    if taken:
        raise ConfigError(f"{', '.join(taken)} in the train flags {text!r}: set by the campaign itself")
    try:
        args = vars(parser.parse_args(["--arch", "-", "--out", "-", *flags]))
    except (argparse.ArgumentError, SystemExit) as error:
        raise ConfigError(f"train flags {text!r} cannot be read: {error}") from None
    process = [name for name, value in args.items() if name not in FIELDS and value != parser.get_default(name)]
    if process:
        raise ConfigError(f"{', '.join(map(flag, process))} in the train flags {text!r} are not run settings: "
                          f"the campaign sets them")
    return {name: value for name, value in args.items() if name in FIELDS and name not in ("arch", "out")}


def flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")
