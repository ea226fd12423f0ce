"""Command line: `python -m reproresnet list | recipe | train | bench | sweep | campaign | selfcheck | bundle |
unbundle | pages`.

`list`, `recipe`, `bundle`, `unbundle` and `pages` answer in the book's environment, without
torch (`list` reads the committed architectures.csv); the commands that train or time a network
need the `train` extra and, where it is missing, say so in one line (TRAINING_COMMANDS)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys

from . import __version__, architectures
from .config import DEVICES, ENGINES, ConfigError, TrainConfig
from .recipes import AUGMENTATIONS, MOMENTUM_FORMS, NORMALIZATIONS, PADDINGS, RECIPES, WEIGHT_DECAY_SCOPES


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_integer(text: str) -> int:
    """A count of something other than a run setting (TrainConfig checks those): runs sharing a
    device, steps to time."""
    value = _integer(text)
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


def _future_time(text: str) -> float:
    """A UNIX time still to come (a stop already past would stop the run before its first epoch)."""
    import time
    value = number(text)
    if value <= time.time():
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a UNIX time still to come "
                                         f"(now is {time.time():.0f})")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every TrainConfig field. The parser has argument_default=SUPPRESS: a flag left out is not
    passed, so TrainConfig's default (or the recipe's) applies and TrainConfig checks every
    value: one default and one check per setting."""
    parser.add_argument("--arch", required=True, metavar="NAME",
                        help=f"network, one of: {', '.join(architectures.ARCHITECTURES)}")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory for records and checkpoints")
    parser.add_argument("--recipe", help=f"one of {list(RECIPES)} (default: {_default('recipe')})")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the run in RUN_DIR (or start it)")
    owned = parser.add_argument_group("recipe overrides (default: the recipe's; see `recipe NAME --arch ARCH`)")
    owned.add_argument("--epochs", type=_integer, help="shorter run; milestones and warm-up scale with it")
    owned.add_argument("--batch-size", type=_integer, help="images per SGD step")
    owned.add_argument("--lr", type=number, help="peak learning rate at this batch size")
    owned.add_argument("--weight-decay", type=number, help="L2 weight decay (PyTorch's, not an L2 loss term)")
    owned.add_argument("--weight-decay-on", metavar="|".join(WEIGHT_DECAY_SCOPES),
                       help="every parameter; conv and linear weights only; or Lasagne's regularizable "
                            "parameters, conv and linear weights and batch norm's gamma (the seed's code)")
    owned.add_argument("--milestones", type=_int_list, help="lr decay points in the recipe's units, e.g. 80,120")
    owned.add_argument("--momentum-form", metavar="|".join(MOMENTUM_FORMS),
                       help="at a change of lr the momentum is kept (PyTorch, Torch), kept in lr units "
                            "(Lasagne) or reset (the WRN authors' train.lua)")
    owned.add_argument("--val-size", type=_integer, help="hold out N training images (the seed's code: 5000)")
    owned.add_argument("--normalization", metavar="|".join(NORMALIZATIONS),
                       help="input preprocessing (see the book's Methods: the sources differ)")
    owned.add_argument("--augmentation", metavar="|".join(AUGMENTATIONS),
                       help="crop and flip drawn per image, per mini-batch (the seed's code), or none")
    owned.add_argument("--padding", metavar="|".join(PADDINGS), help="what fills the random crop's 4-pixel border")
    owned.add_argument("--shortcut", metavar="projection|input_projection|zero_pad",
                       help="shortcut where a unit changes shape (see the book's Methods)")
    owned.add_argument("--bottleneck-stride", metavar="1x1|3x3", help="which convolution of a bottleneck strides")
    owned.add_argument("--dropout", type=number, help="dropout between a wide unit's convolutions")
    owned.add_argument("--bn-batch", type=_integer, help="images per batch-norm statistic (He et al.: 64)")
    owned.add_argument("--preact-stage1", metavar="every_unit|first_unit",
                       help="first_unit: later units of stage 1 skip their BN-ReLU (the seed's code of 2016-04)")
    owned.add_argument("--layer-defaults", metavar="torch|lasagne",
                       help="conv biases, initialisation and BN epsilon as Torch's or Lasagne's layers make them")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help=f"cifar10 | cifar100 | folder:PATH | synthetic "
                                        f"(default: {_default('dataset')})")
    data.add_argument("--data-dir", help="where CIFAR lives or is downloaded (default: $REPRORESNET_DATA "
                                         "or ~/.cache/reproresnet/data)")
    data.add_argument("--download", action="store_true", help="download CIFAR if missing (checksums verified)")
    data.add_argument("--limit-train", type=_integer, help="a fixed, seeded subset of the training set")
    data.add_argument("--limit-test", type=_integer, help="a fixed, seeded subset of the test set")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--seed", type=_integer, help=f"initialisation, data order and augmentation "
                                                       f"(default: {_default('seed')})")
    runtime.add_argument("--device", help=f"one of {DEVICES} or cuda:N (default: {_default('device')})")
    runtime.add_argument("--threads", type=_integer, help="CPU threads of this process (default: the cores "
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
    runtime.add_argument("--eval-batch-size", type=_integer,
                         help=f"images per evaluation batch (default: {_default('eval_batch_size')})")
    parser.add_argument("--quiet", action="store_true", default=False, help="no progress bar")
    stop = runtime.add_mutually_exclusive_group()
    # Process settings, not run settings: each has its default here (the parser suppresses the rest).
    stop.add_argument("--stop-after", type=positive_number, metavar="SECONDS", default=None,
                      help="stop cleanly at the last epoch boundary that fits in SECONDS (resumable)")
    stop.add_argument("--stop-at", type=_future_time, metavar="UNIX_TIME", default=None,
                      help="the same, at a wall-clock time")
    runtime.add_argument("--pack", type=positive_integer, default=1,
                         help="runs sharing this device, recorded with the speed (default: 1)")
    runtime.add_argument("--compile-mode", default="default", help="torch.compile mode (default: default)")


def _fields() -> list[str]:
    return [field.name for field in dataclasses.fields(TrainConfig)]


def _default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from `train` arguments; the others say how this process runs."""
    return TrainConfig(**{key: value for key, value in vars(args).items() if key in _fields()})


def train_settings(flags: list[str], owned: dict[str, str]) -> dict:
    """The run settings that `train` flags give, read by `train`'s own parser, as the
    campaign's --train-args. A ConfigError: a flag given twice, one for a setting in `owned`
    ({setting: the caller's flag that sets it}), one that is no run setting (--resume, say)."""
    parser = argparse.ArgumentParser(prog="train flags", argument_default=argparse.SUPPRESS, add_help=False,
                                     exit_on_error=False, allow_abbrev=False)
    _add_train_arguments(parser)
    text = " ".join(flags)
    given = [parser._option_string_actions[flag].dest for flag in (token.split("=")[0] for token in flags)
             if flag in parser._option_string_actions]
    repeated = sorted({_flag(name) for name in given if given.count(name) > 1})
    if repeated:
        raise ConfigError(f"{', '.join(repeated)} given more than once in the train flags {text!r}: give each once")
    taken = [f"{_flag(name)} (use {owned[name]})" for name in dict.fromkeys(given) if name in owned]
    if taken:
        raise ConfigError(f"{', '.join(taken)} in the train flags {text!r}: set by the campaign itself")
    try:
        args = vars(parser.parse_args(["--arch", "-", "--out", "-", *flags]))
    except (argparse.ArgumentError, SystemExit) as error:
        raise ConfigError(f"train flags {text!r} cannot be read: {error}") from None
    process = [name for name, value in args.items() if name not in _fields() and value != parser.get_default(name)]
    if process:
        raise ConfigError(f"{', '.join(map(_flag, process))} in the train flags {text!r} are not run settings: "
                          f"the campaign sets them")
    return {name: value for name, value in args.items() if name in _fields() and name not in ("arch", "out")}


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _train(args: argparse.Namespace) -> int:
    import time

    # Imported here, not at the top: they need torch, which `list` and `recipe` do not.
    from .data import DataError
    from .engine import EngineError
    from .train import TrainingDiverged, train
    deadline = args.stop_at if args.stop_after is None else time.time() + args.stop_after
    config = train_config(args)
    try:
        record = train(config, resume=args.resume, progress=not args.quiet, deadline=deadline,
                       pack=args.pack, compile_mode=args.compile_mode)
    except (DataError, EngineError, TrainingDiverged) as error:
        print(f"reproresnet: error: {error}", file=sys.stderr)
        return 2
    final = record["final"]
    if final is None:  # stopped cleanly before the end
        print(f"{record['arch']}: {record['epochs_done']}/{record['epochs_planned']} epochs; "
              f"{record['message']}; record in {config.out}")
        return 0
    print(f"{record['arch']} on {record['data']['label']}: test error {final['test_error']:.2f}% "
          f"(epoch {final['epoch']}, {final['selected_by']}), {final['seconds_per_epoch']:.1f} s/epoch "
          f"on {record['device']['name']}; record in {config.out}")
    if record["message"]:  # a complete run's only message: its checkpoint is damaged
        print(f"reproresnet: note: {record['message']}", file=sys.stderr)
    return 0


def _recipe(args: argparse.Namespace) -> int:
    if args.name not in RECIPES:
        raise ConfigError(f"recipe={args.name!r} is not valid: expected one of {list(RECIPES)}")
    resolved = TrainConfig(arch=args.arch, recipe=args.name).describe(args.train_size)
    if args.json:
        print(json.dumps(resolved, indent=2))
        return 0
    width = max(map(len, resolved))
    for key, value in resolved.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.csv:  # the table recounted from the networks built (torch), to regenerate the committed one
        from .models import architecture_rows
        print(architectures.to_csv(architecture_rows()), end="")
        return 0
    # The committed table, which the tests hold to the networks built: no torch needed.
    rows = [{key: row[key] for key in ("name", "family", "block", "depth", "width", "params")}
            for row in architectures.rows()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'family':<9} {'block':<11} {'depth':>5} {'width':>5} {'params':>12}")
    for row in rows:
        print(f"{row['name']:<20} {row['family']:<9} {row['block']:<11} {row['depth']:>5} "
              f"{row['width']:>5} {row['params']:>12,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reproresnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"reproresnet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="registered networks with exact parameter counts")
    form = listing.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="as JSON")
    form.add_argument("--csv", action="store_true", help="the full table with GFLOPs and default options, as "
                      f"committed in reproresnet/architectures.csv ({architectures.REGENERATE})")
    listing.set_defaults(handler=_list)
    # A flag left out is not passed at all (argument_default), so TrainConfig's default applies.
    training = commands.add_parser("train", help="train one network (resumable)",
                                   argument_default=argparse.SUPPRESS)
    _add_train_arguments(training)
    training.set_defaults(handler=_train)
    recipe = commands.add_parser("recipe", help="a recipe resolved for one network: every value, "
                                                "positions also in iterations")
    recipe.add_argument("name", metavar="NAME", help=f"one of {list(RECIPES)}")
    recipe.add_argument("--arch", required=True, metavar="ARCH", help="the network it is resolved for")
    recipe.add_argument("--train-size", type=_integer, help="training images (default: 50,000 less the "
                                                       "recipe's validation split)")
    recipe.add_argument("--json", action="store_true", help="as JSON")
    recipe.set_defaults(handler=_recipe)
    commands.add_parser("bench", help="seconds per epoch against a plain PyTorch baseline "
                                      "(see `bench --help`)", add_help=False)
    commands.add_parser("sweep", help="papermill over networks x seeds (see `sweep --help`)", add_help=False)
    commands.add_parser("campaign", help="train a plan of runs within a time budget, resumably "
                                         "(see `campaign --help`)", add_help=False)
    commands.add_parser("selfcheck", help="each way to train judged by single steps against float64, and timed "
                                          "(see `selfcheck --help`)", add_help=False)
    commands.add_parser("bundle", help="pack a campaign directory into bounded files", add_help=False)
    commands.add_parser("unbundle", help="restore a bundle byte for byte (and render its runs' pages)",
                        add_help=False)
    commands.add_parser("pages", help="the book's page of each record and the README's status table, "
                                      "from the records (see `pages --help`)", add_help=False)
    return parser


# Subcommands with parsers of their own, in their modules ("module" runs its main, "module:f" its f).
DELEGATED = {"bench": "reproresnet.bench", "sweep": "reproresnet.sweep", "campaign": "reproresnet.campaign",
             "selfcheck": "reproresnet.selfcheck", "bundle": "reproresnet.bundle:main_bundle",
             "unbundle": "reproresnet.bundle:main_unbundle", "pages": "reproresnet.book_pages"}
# What the book's environment (`.[book]`) lacks and training needs: the `train` extra's modules,
# the step that installs them, and the commands that cannot start without them.
TRAINING_MODULES = ("torch", "torchvision", "tqdm", "submitit", "papermill")
INSTALL_TRAINING = "pip install -e '.[train]'"
TRAINING_COMMANDS = ("train", "bench", "sweep", "campaign", "selfcheck")


def _missing_training(command: str, module: str) -> int:
    print(f"reproresnet: error: {command} needs {module}, which is not installed in this environment "
          f"({sys.prefix}); install the training dependencies with: {INSTALL_TRAINING}", file=sys.stderr)
    return 2


def _run(command: str, argv: list[str], run) -> int:
    """`run()`, or one line naming the install step where a command needs the training
    dependencies and they are missing: checked before it starts, so it creates nothing."""
    asks_help = bool({"-h", "--help"} & set(argv))
    if command in TRAINING_COMMANDS and not asks_help and importlib.util.find_spec("torch") is None:
        return _missing_training(command, "torch")
    try:
        return run()
    except ModuleNotFoundError as error:  # e.g. `list --csv` (builds networks), `unbundle --render` (papermill)
        if (error.name or "").partition(".")[0] in TRAINING_MODULES:
            return _missing_training(command, error.name.partition(".")[0])
        raise
    except BrokenPipeError:  # `list | head` closed our output: nothing more to say (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib
        module, _, function = DELEGATED[argv[0]].partition(":")
        return _run(argv[0], argv[1:], lambda: getattr(importlib.import_module(module), function or "main")(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    from .rundir import RunDirError
    try:
        return _run(args.command, argv, lambda: args.handler(args))
    except (ConfigError, RunDirError) as error:
        print(f"reproresnet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reproresnet: interrupted; rerun with --resume to continue from the last epoch",
              file=sys.stderr)
        return 130
