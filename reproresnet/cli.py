"""Command line: `python -m reproresnet list | recipe | train | bench | sweep | campaign | selfcheck | bundle |
unbundle | pages`.

`list`, `recipe`, `bundle`, `unbundle` and `pages` answer in the book's environment, without
torch (`list` reads the committed architectures.csv); the commands that train or time a network
need the `train` extra and, where it is missing, say so in one line (TRAINING_COMMANDS)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from . import __version__, architectures
from .config import ConfigError, TrainConfig
from .arguments import add_train_arguments, integer, train_config
from .recipes import RECIPES


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
    final = record.final
    if final is None:  # stopped cleanly before the end
        print(f"{record.arch}: {record.epochs_done}/{record.epochs_planned} epochs; "
              f"{record.message}; record in {config.out}")
        return 0
    print(f"{record.arch} on {record.data.label}: test error {final.test_error:.2f}% "
          f"(epoch {final.epoch}, {final.selected_by}), {final.seconds_per_epoch:.1f} s/epoch "
          f"on {record.device.name}; record in {config.out}")
    if record.message:  # a complete run's only message: its checkpoint is damaged
        print(f"reproresnet: note: {record.message}", file=sys.stderr)
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
    add_train_arguments(training)
    training.set_defaults(handler=_train)
    recipe = commands.add_parser("recipe", help="a recipe resolved for one network: every value, "
                                                "positions also in iterations")
    recipe.add_argument("name", metavar="NAME", help=f"one of {list(RECIPES)}")
    recipe.add_argument("--arch", required=True, metavar="ARCH", help="the network it is resolved for")
    recipe.add_argument("--train-size", type=integer, help="training images (default: 50,000 less the "
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
DELEGATED = {"bench": "reproresnet.bench.measure", "sweep": "reproresnet.launch.sweep", "campaign": "reproresnet.campaign.slot",
             "selfcheck": "reproresnet.campaign.selfcheck", "bundle": "reproresnet.campaign.bundle:main_bundle",
             "unbundle": "reproresnet.campaign.bundle:main_unbundle", "pages": "reproresnet.book.pages"}
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
