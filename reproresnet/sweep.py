"""Run the training notebook once per (network, seed) with papermill, resumably.

Each run gets its own directory, `results/<arch>-seed<k>/`, holding the run record
(`run.json`, `metrics.csv`, `checkpoint.pt`) and the executed `train.ipynb`, which the
book shows as a page. A run whose record says complete is skipped; an interrupted one is
executed again and resumes from its checkpoint (the notebook calls `train(resume=True)`).

    python -m reproresnet.sweep --archs preact_resnet110 wrn_16_4 --seeds 0 1 2 --dataset cifar10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from . import records
from .config import RUNTIME_SETTINGS

DEFAULT_NOTEBOOK = "notebooks/train.ipynb"
NOTEBOOK_FILE = "train.ipynb"
TITLE = "# Training run"


def run_name(arch: str, seed: int, tag: str | None = None) -> str:
    return f"{arch}-{tag}-seed{seed}" if tag else f"{arch}-seed{seed}"


def _conflicts(run: records.RunRecord, parameters: dict) -> list[str]:
    """Requested settings a complete run was not trained with (it would not be retrained)."""
    saved = run.config
    return [f"{key}: {saved[key]!r} recorded, {value!r} requested" for key, value in parameters.items()
            if key in saved and key not in RUNTIME_SETTINGS and saved[key] != value]


def _titled(notebook: Path, name: str):
    """The template with its title naming the run, so each book page has its own title."""
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith(TITLE):
            rest = cell.source.partition("\n")[2]
            cell.source = f"{TITLE} `{name}`\n{rest}"
            break
    return nb


def execute_run(notebook: str, run_dir: str, parameters: dict, progress: bool = True) -> dict:
    """Execute the notebook for one run; returns {"run", "status", "message"}. Never raises
    for a failed run, so one failure does not stop the others."""
    import papermill
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The kernel runs in this process's directory, so relative paths (run_dir, data_dir,
        # folder:PATH) mean what they mean on the command line, and records stay relative.
        papermill.execute_notebook(_titled(Path(notebook), run_dir.name), str(run_dir / NOTEBOOK_FILE),
                                   parameters=parameters, cwd=None, progress_bar=progress)
    except Exception as error:  # papermill re-raises the cell's error with its traceback
        message = getattr(error, "evalue", None) or (str(error).strip().splitlines() or [repr(error)])[-1]
        return {"run": run_dir.name, "status": "failed", "message": message}
    complete = records.complete_run(run_dir)
    return {"run": run_dir.name, "status": "complete" if complete else "incomplete",
            "message": None if complete else f"{run_dir / records.RUN_FILE} does not say complete"}


def run_sweep(archs, seeds, results_dir, parameters: dict, jobs: int = 1,
              notebook: str = DEFAULT_NOTEBOOK, tag: str | None = None) -> list[dict]:
    """Execute `notebook` once per (arch, seed) into `results_dir/<arch>-seed<k>/train.ipynb`.

    `parameters` are papermill parameters shared by every run (epochs, dataset, ...);
    `arch`, `seed` and `run_dir` are set per run. Runs whose run.json says complete are
    skipped (status "skipped"), or reported as "conflict" if recorded with other settings;
    with `jobs` > 1, that many notebooks run at once, each in its own process.
    Returns one {"run", "status", "message"} per run, in order.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r} is not valid: expected a positive integer")
    reserved = {"arch", "seed", "run_dir"} & set(parameters)
    if reserved:
        raise ValueError(f"parameters {sorted(reserved)} are set per run; pass archs and seeds instead")
    results_dir = Path(results_dir)
    outcomes: dict[int, dict] = {}
    tasks = []
    for arch in archs:
        for seed in seeds:
            run_dir = results_dir / run_name(arch, seed, tag)
            run_parameters = {**parameters, "arch": arch, "seed": seed, "run_dir": str(run_dir)}
            index = len(outcomes) + len(tasks)
            complete = records.complete_run(run_dir)
            if complete is not None:
                conflicts = _conflicts(complete, {k: v for k, v in run_parameters.items() if k != "run_dir"})
                outcomes[index] = {"run": run_dir.name, "status": "conflict" if conflicts else "skipped",
                                   "message": "; ".join(conflicts) or "already complete"}
                _report(outcomes[index])
                continue
            tasks.append((index, (notebook, str(run_dir), run_parameters)))
    if jobs == 1 or len(tasks) <= 1:
        for index, task in tasks:
            outcomes[index] = execute_run(*task)
            _report(outcomes[index])
    else:
        # spawn, not fork: a forked child would inherit this process's torch threads.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {index: pool.submit(execute_run, *task, progress=False) for index, task in tasks}
            for index, future in futures.items():
                outcomes[index] = future.result()
                _report(outcomes[index])
    return [outcomes[index] for index in sorted(outcomes)]


def _report(outcome: dict) -> None:
    message = f": {outcome['message']}" if outcome["message"] else ""
    print(f"{outcome['run']}: {outcome['status']}{message}", file=sys.stderr, flush=True)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE for any TrainConfig field; VALUE is a Python literal (3, 0.1, None, True,
    [80, 120]) or else a string (input_projection)."""
    import ast
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig
    default = {f: TrainConfig.__dataclass_fields__[f].default for f in ("recipe", "dataset", "device")}
    parser = argparse.ArgumentParser(prog="python -m reproresnet.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", required=True, metavar="NAME")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="K")
    parser.add_argument("--results-dir", "--results", default="results",
                        help="where the run directories go (default: results)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run at once, one process each (default: 1)")
    parser.add_argument("--notebook", default=DEFAULT_NOTEBOOK)
    parser.add_argument("--tag", help="run directories are named <arch>-<tag>-seed<k> instead of <arch>-seed<k>")
    # Defaults here are the full experiment (TrainConfig's and the recipe's), replacing the
    # notebook's one-minute smoke values.
    run = parser.add_argument_group("training parameters (passed to the notebook)")
    run.add_argument("--recipe", default=default["recipe"])
    run.add_argument("--epochs", type=_optional_int, default=None, help="default: the recipe's length")
    run.add_argument("--batch-size", type=_optional_int, default=None, help="default: the recipe's")
    run.add_argument("--dataset", default=default["dataset"], help="cifar10 | cifar100 | folder:PATH | synthetic")
    run.add_argument("--data-dir", default=None)
    run.add_argument("--device", default=default["device"])
    run.add_argument("--limit-train", type=_optional_int, default=None, help="default: the whole split")
    run.add_argument("--limit-test", type=_optional_int, default=None, help="default: the whole split")
    run.add_argument("--val-size", type=_optional_int, default=None, help="default: the recipe's")
    run.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                     help="any other training setting, e.g. --set shortcut=input_projection (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .config import TrainConfig
    args = build_parser().parse_args(argv)
    parameters = {"recipe": args.recipe, "epochs": args.epochs, "batch_size": args.batch_size,
                  "dataset": args.dataset, "data_dir": args.data_dir, "device": args.device,
                  "limit_train": args.limit_train, "limit_test": args.limit_test, "val_size": args.val_size}
    unknown = sorted({key for key, _ in args.set} - set(TrainConfig.__dataclass_fields__) - {"run_dir"})
    if unknown:
        print(f"reproresnet.sweep: error: --set {', '.join(unknown)}: not a training setting; expected "
              f"one of {sorted(TrainConfig.__dataclass_fields__)}", file=sys.stderr)
        return 2
    parameters.update(args.set)
    try:
        outcomes = run_sweep(args.archs, args.seeds, args.results_dir, parameters, jobs=args.jobs,
                             notebook=args.notebook, tag=args.tag)
    except ValueError as error:
        print(f"reproresnet.sweep: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(outcomes, indent=2))
    return 0 if all(o["status"] in ("complete", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
