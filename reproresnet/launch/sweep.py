"""Run the training notebook once per (network, seed) with papermill, as submitit jobs.

Each run gets its own directory, `results/<arch>-seed<k>/`, holding the run record
(`run.json`, `metrics.csv`, `checkpoint.pt`) and the executed `train.ipynb`, which the
book shows as a page. A run whose record says complete is skipped; an interrupted one is
executed again and resumes from its checkpoint (the notebook calls `train(resume=True)`).

Each run is one submitit job: `--launcher local` runs them on this machine (spread over
its GPUs, `--pack K` per GPU), `--launcher slurm` submits them to a Slurm cluster as one
job array, `--launcher debug` runs them one after another in this process. A job that is
preempted or reaches its time limit is requeued and resumes from the run's checkpoint.

    python -m reproresnet sweep --archs preact_resnet110 wrn_16_4 --seeds 0 1 2 --dataset cifar10
    python -m reproresnet sweep --archs wrn_16_4 --seeds 0 1 2 --launcher slurm --slurm-partition gpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from .. import records
from ..config import TrainConfig, cpu_threads, differences

# The repository's notebook, wherever the sweep is started from.
DEFAULT_NOTEBOOK = str(Path(__file__).resolve().parents[2] / "notebooks" / "train.ipynb")
NOTEBOOK_FILE = "train.ipynb"
TITLE = "# Training run"

LAUNCHERS = ("local", "slurm", "debug")
LOG_FOLDER = ".submitit"           # submitit's folder under the results directory, one folder per job
MAX_TIMEOUTS = 50                  # requeues after a time limit (preemptions do not count) before giving up
LOCAL_TIMEOUT_MIN = 60 * 24 * 30   # local jobs have no time limit to speak of
SLURM_TIMEOUT_MIN = 60 * 24


def _conflicts(run: records.RunRecord, requested) -> list[str]:
    """Settings in which the complete `run` is another experiment or seed than `requested` (a
    TrainConfig): it would not be retrained."""
    return [f"{key}: {recorded!r} recorded, {value!r} requested"
            for key, (recorded, value) in differences(run.config, requested).items()]


def notebook_config(parameters: dict):
    """The TrainConfig the training notebook builds from its `parameters` (None: TrainConfig's default)."""
    return TrainConfig(**{key: value for key, value in parameters.items()
                          if key in TrainConfig.__dataclass_fields__ and value is not None})


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


@dataclass(frozen=True)
class Launch:
    """Where the sweep's jobs run, through which submitit executor, with what resources.

    None means the default; options of the other launcher must stay None."""
    launcher: str = "local"                 # local | slurm | debug
    logs: str | None = None                 # submitit's folder; None: <results_dir>/.submitit
    timeout_min: int | None = None          # a job's time limit; a job reaching it is requeued
    poll_s: float = 10.0                    # how often the sweep looks at its jobs
    # local: runs at once (default: one per GPU slot, or 1 without GPUs), runs per GPU (1),
    # the GPUs to spread over (default: those visible)
    jobs: int | None = None
    pack: int | None = None
    gpus: tuple[int, ...] | None = None
    # slurm: partition, GPUs per job (1), array jobs at once (256), more sbatch options
    slurm_partition: str | None = None
    gpus_per_job: int | None = None
    array_parallelism: int | None = None
    slurm_args: dict | None = None

    LOCAL_ONLY = ("jobs", "pack", "gpus")
    SLURM_ONLY = ("slurm_partition", "gpus_per_job", "array_parallelism", "slurm_args")

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher={self.launcher!r} is not valid: expected one of {list(LAUNCHERS)}")
        for name in ("timeout_min", "jobs", "pack", "array_parallelism", "gpus_per_job"):
            value, least = getattr(self, name), 0 if name == "gpus_per_job" else 1
            if value is not None and (type(value) is not int or value < least):
                raise ValueError(f"{name}={value!r} is not valid: expected an integer >= {least}")
        own = {"local": self.LOCAL_ONLY, "slurm": self.SLURM_ONLY}.get(self.launcher, ())
        for name in self.LOCAL_ONLY + self.SLURM_ONLY:
            if getattr(self, name) is not None and name not in own:
                which = "local" if name in self.LOCAL_ONLY else "slurm"
                raise ValueError(f"{name}={getattr(self, name)!r} applies to launcher {which!r}, "
                                 f"not {self.launcher!r}")


class NotebookTask(submitit.helpers.Checkpointable):
    """What a submitit job does for one run: execute the notebook into the run's directory.

    When the job is preempted or reaches its time limit, submitit calls `checkpoint()`,
    which (as Checkpointable does) requeues this same call; executed again, the notebook's
    `train(resume=True)` continues from the run's last epoch checkpoint."""

    def __init__(self, notebook: str, run_dir: str, parameters: dict):
        self.notebook, self.run_dir, self.parameters = notebook, run_dir, parameters

    @property
    def name(self) -> str:
        return Path(self.run_dir).name

    def __call__(self) -> dict:
        return execute_run(self.notebook, self.run_dir, self.parameters, progress=False)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        print(f"{self.name}: interrupted; requeued to resume from its last checkpoint", flush=True)
        return super().checkpoint()


def make_executor(launch: Launch, folder: Path) -> submitit.Executor:
    """The submitit executor for `launch`, writing job scripts and logs to `folder/<job id>/`."""
    folder = Path(folder) / "%j"
    if launch.launcher == "debug":
        return submitit.DebugExecutor(folder)
    if launch.launcher == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=MAX_TIMEOUTS)
        executor.update_parameters(timeout_min=launch.timeout_min or LOCAL_TIMEOUT_MIN)
        return executor
    try:
        executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError as error:
        raise ValueError(f"launcher 'slurm' needs Slurm's commands on PATH ({error})") from None
    executor.update_parameters(
        name="reproresnet", nodes=1, tasks_per_node=1, timeout_min=launch.timeout_min or SLURM_TIMEOUT_MIN,
        gpus_per_node=1 if launch.gpus_per_job is None else launch.gpus_per_job,
        slurm_partition=launch.slurm_partition, slurm_array_parallelism=launch.array_parallelism or 256,
        # sbatch's spelling (cpus-per-task) and submitit's (cpus_per_task) name one option
        slurm_additional_parameters={key.replace("-", "_"): value
                                     for key, value in (launch.slurm_args or {}).items()})
    return executor


def visible_gpus() -> list[int]:
    """The GPUs local jobs may use: those CUDA_VISIBLE_DEVICES lists, else all torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        import torch
        return list(range(torch.cuda.device_count()))
    try:
        return [index for index in map(int, filter(None, listed.split(","))) if index >= 0]
    except ValueError:
        raise ValueError(f"CUDA_VISIBLE_DEVICES={listed!r}: the local launcher needs GPU indices "
                         f"(e.g. 0,1), not UUIDs") from None


def local_slots(gpus, pack: int | None, jobs: int | None) -> list[int | None]:
    """Where local jobs run at once: each GPU `pack` times, in turn, so that a `jobs` cap
    still spreads them over the GPUs; without GPUs, `jobs` places on the CPU."""
    if not gpus:
        return [None] * (jobs or 1)
    slots = [gpu for _ in range(pack or 1) for gpu in gpus]
    return slots[:jobs] if jobs else slots


def run_sweep(archs, seeds, results_dir, parameters: dict, launch: Launch | None = None,
              notebook: str = DEFAULT_NOTEBOOK, tag: str | None = None, wait: bool = True) -> list[dict]:
    """Execute `notebook` once per (arch, seed) into `results_dir/<arch>-seed<k>/train.ipynb`.

    `parameters` are papermill parameters shared by every run (epochs, dataset, ...);
    `arch`, `seed` and `run_dir` are set per run. Runs whose run.json says complete are
    skipped (status "skipped"), or reported as "conflict" if recorded with other settings;
    the others are submitit jobs, launched as `launch` says (default: local, one at a time
    or one per GPU). Returns one {"run", "status", "message"} per run, in order; with
    `wait` False (Slurm only), right after submitting, with status "submitted".
    """
    launch = launch or Launch()
    launch.check()
    if not wait and launch.launcher != "slurm":
        raise ValueError(f"wait=False is for launcher 'slurm', not {launch.launcher!r}: local jobs end with the sweep")
    reserved = {"arch", "seed", "run_dir"} & set(parameters)
    if reserved:
        raise ValueError(f"parameters {sorted(reserved)} are set per run; pass archs and seeds instead")
    if not Path(notebook).is_file():
        raise ValueError(f"notebook {notebook!r} not found: expected the training notebook (default: {DEFAULT_NOTEBOOK})")
    _check_settings(archs, seeds, parameters)
    results_dir = Path(results_dir)
    outcomes: dict[str, dict] = {}
    tasks = []
    for arch in dict.fromkeys(archs):
        for seed in dict.fromkeys(seeds):
            run_dir = results_dir / records.run_name(arch, seed, tag)
            run_parameters = {**parameters, "arch": arch, "seed": seed, "run_dir": str(run_dir)}
            outcomes[run_dir.name] = None
            complete = records.complete_run(run_dir)
            if complete is not None:
                conflicts = _conflicts(complete, notebook_config(run_parameters))
                outcomes[run_dir.name] = {"run": run_dir.name, "status": "conflict" if conflicts else "skipped",
                                          "message": "; ".join(conflicts) or "already complete"}
                _report(outcomes[run_dir.name])
                continue
            tasks.append(NotebookTask(notebook, str(run_dir), run_parameters))
    if tasks:
        executor = make_executor(launch, Path(launch.logs) if launch.logs else results_dir / LOG_FOLDER)
        if wait:
            outcomes.update(_follow(tasks, launch, executor, parameters.get("device")))
        else:
            for task, job in zip(tasks, executor.submit_array(tasks)):
                outcomes[task.name] = {"run": task.name, "status": "submitted",
                                       "message": f"job {job.job_id} (log: {job.paths.stdout})"}
                _report(outcomes[task.name])
    return list(outcomes.values())


def _check_settings(archs, seeds, parameters: dict) -> None:
    """Every run's settings, checked as `train` will (ConfigError, a ValueError, names the bad
    one) before any job starts: a job would fail on them and leave a failed notebook behind."""
    for arch in dict.fromkeys(archs):
        for seed in dict.fromkeys(seeds):
            notebook_config({**parameters, "arch": arch, "seed": seed})


def _follow(tasks: list[NotebookTask], launch: Launch, executor, device: str | None) -> dict[str, dict]:
    """Submit the runs' jobs and follow them to the end, printing where each stands.

    Slurm gets one job array; locally, a job starts when a place (a GPU, `pack` times) is free."""
    pending, running, outcomes, board = list(tasks), {}, {}, _Board()
    if launch.launcher == "slurm":
        running = {task: (job, None) for task, job in zip(tasks, executor.submit_array(tasks))}
        pending, free = [], []
    else:
        gpus = launch.gpus if launch.gpus is not None else [] if device == "cpu" else visible_gpus()
        free = local_slots(gpus, launch.pack, launch.jobs)
        threads, _ = cpu_threads(jobs=len(free))  # the jobs running at once share this machine's cores
        for task in pending:
            task.parameters.setdefault("threads", threads)
    try:
        while pending or running:
            while pending and free:
                task, slot = pending.pop(0), free.pop(0)
                if launch.launcher == "local":  # gpus_per_node=0: submitit hides every GPU from the job
                    executor.update_parameters(gpus_per_node=int(slot is not None),
                                               visible_gpus=() if slot is None else (slot,))
                running[task] = (executor.submit(task), slot)
            for task, (job, slot) in list(running.items()):
                done = job.done()  # the debug executor runs the job here
                board.show(task, job)
                if done:
                    outcomes[task.name] = _outcome(task, job)
                    _report(outcomes[task.name])
                    del running[task]
                    free.append(slot)
            if running and not (pending and free):  # nothing to start until a job ends
                time.sleep(launch.poll_s)
    except KeyboardInterrupt:
        if launch.launcher == "slurm":
            ids = " ".join(sorted({job.job_id.split("_")[0] for job, _ in running.values()}))
            print(f"sweep interrupted; the Slurm jobs keep running: squeue -j {ids}; cancel: scancel {ids}",
                  file=sys.stderr)
        raise
    return outcomes


class _Board:
    """Prints a line for a job whenever where it stands changes: its state, its epochs done."""

    def __init__(self):
        self.last = {}

    def show(self, task: NotebookTask, job) -> None:
        try:
            record = records.read_run(task.run_dir)
            epochs = f", epoch {record.epochs_done}/{record.epochs_planned}"
        except ValueError:
            epochs = ""
        stand = f"job {job.job_id} {job.state}{epochs}"
        if self.last.get(task.name) != stand:
            self.last[task.name] = stand
            print(f"{task.name}: {stand} (log: {job.paths.stdout})", file=sys.stderr, flush=True)


def _outcome(task: NotebookTask, job) -> dict:
    try:
        return job.result()
    except Exception as error:  # the job itself died (killed, cancelled, out of requeues): its log says why
        first = (str(error).strip().splitlines() or [repr(error)])[0]
        return {"run": task.name, "status": "failed", "message": f"{first} (log: {job.paths.stderr})"}


def _report(outcome: dict) -> None:
    message = f": {outcome['message']}" if outcome["message"] else ""
    print(f"{outcome['run']}: {outcome['status']}{message}", file=sys.stderr, flush=True)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _train_setting(text: str) -> tuple[str, object]:
    """KEY=VALUE for any TrainConfig field; VALUE is a Python literal (3, 0.1, None, True,
    [80, 120]) or else a string (input_projection)."""
    import ast
    key, value = _key_value(text)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _count(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    """KEY=VALUE, as given to --set and --slurm-arg (a leading "--" on the key is dropped)."""
    key, equals, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not (key and equals):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. shortcut=zero_pad, account=abc)")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    default = {f: TrainConfig.__dataclass_fields__[f].default for f in ("recipe", "dataset", "device")}
    parser = argparse.ArgumentParser(prog="python -m reproresnet sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", required=True, metavar="NAME", help="networks to train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="K", help="seeds of each (default: 0)")
    parser.add_argument("--results-dir", "--results", default="results",
                        help="where the run directories go (default: results)")
    parser.add_argument("--notebook", default=DEFAULT_NOTEBOOK,
                        help=f"the notebook papermill executes per run (default: {DEFAULT_NOTEBOOK})")
    parser.add_argument("--tag", help="run directories are named <arch>-<tag>-seed<k> instead of <arch>-seed<k>")
    # Defaults here are the full experiment (TrainConfig's and the recipe's), replacing the
    # notebook's one-minute smoke values.
    training = parser.add_argument_group("training parameters (passed to the notebook)")
    training.add_argument("--recipe", default=default["recipe"], help=f"default: {default['recipe']}")
    training.add_argument("--epochs", type=_optional_int, default=None, help="default: the recipe's length")
    training.add_argument("--batch-size", type=_optional_int, default=None, help="default: the recipe's")
    training.add_argument("--dataset", default=default["dataset"], help="cifar10 | cifar100 | folder:PATH | synthetic")
    training.add_argument("--data-dir", default=None, help="where CIFAR lives (default: $REPRORESNET_DATA or "
                                                        "~/.cache/reproresnet/data)")
    training.add_argument("--device", default=default["device"], help=f"default: {default['device']}")
    training.add_argument("--limit-train", type=_optional_int, default=None, help="default: the whole split")
    training.add_argument("--limit-test", type=_optional_int, default=None, help="default: the whole split")
    training.add_argument("--val-size", type=_optional_int, default=None, help="default: the recipe's")
    training.add_argument("--set", type=_train_setting, action="append", default=[], metavar="KEY=VALUE",
                     help="any other training setting, e.g. --set shortcut=input_projection (repeatable)")
    launch = parser.add_argument_group("where the jobs run: one submitit job per run")
    launch.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: this machine; slurm: a Slurm cluster, as one job array; "
                             "debug: one after another in this process (default: local)")
    launch.add_argument("--logs", metavar="DIR", help="job scripts and logs, one folder per job "
                                                      f"(default: RESULTS_DIR/{LOG_FOLDER})")
    launch.add_argument("--timeout-min", type=_count, metavar="MINUTES",
                        help="a job's time limit; a job reaching it is requeued and resumes "
                             f"(default: {SLURM_TIMEOUT_MIN} on Slurm, {LOCAL_TIMEOUT_MIN} locally)")
    launch.add_argument("--jobs", type=_count, help="local: runs at once (default: GPUs x --pack, "
                                                     "or 1 without a GPU)")
    launch.add_argument("--pack", type=_count, help="local: runs sharing each GPU (default: 1)")
    launch.add_argument("--slurm-partition", metavar="NAME", help="slurm: the partition to submit to")
    launch.add_argument("--gpus-per-job", type=lambda text: _count(text, 0), metavar="N",
                        help="slurm: GPUs each job asks for (default: 1; the notebook trains on one)")
    launch.add_argument("--array-parallelism", type=_count, metavar="N",
                        help="slurm: jobs of the array running at once (default: 256)")
    launch.add_argument("--slurm-arg", type=_key_value, action="append", metavar="KEY=VALUE",
                        help="slurm: another sbatch option, e.g. account=abc or constraint=a100; repeatable")
    launch.add_argument("--no-wait", dest="wait", action="store_false",
                        help="slurm: submit the jobs and return; rerun the sweep later to see them complete")
    return parser


def launch_from(args: argparse.Namespace) -> Launch:
    return Launch(launcher=args.launcher, logs=args.logs, timeout_min=args.timeout_min, jobs=args.jobs,
                  pack=args.pack, slurm_partition=args.slurm_partition, gpus_per_job=args.gpus_per_job,
                  array_parallelism=args.array_parallelism,
                  slurm_args=dict(args.slurm_arg) if args.slurm_arg else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parameters = {"recipe": args.recipe, "epochs": args.epochs, "batch_size": args.batch_size,
                  "dataset": args.dataset, "data_dir": args.data_dir, "device": args.device,
                  "limit_train": args.limit_train, "limit_test": args.limit_test, "val_size": args.val_size}
    unknown = sorted({key for key, _ in args.set} - set(TrainConfig.__dataclass_fields__) - {"run_dir"})
    if unknown:
        print(f"reproresnet.launch.sweep: error: --set {', '.join(unknown)}: not a training setting; expected "
              f"one of {sorted(TrainConfig.__dataclass_fields__)}", file=sys.stderr)
        return 2
    parameters.update(args.set)
    try:
        outcomes = run_sweep(args.archs, args.seeds, args.results_dir, parameters, launch=launch_from(args),
                             notebook=args.notebook, tag=args.tag, wait=args.wait)
    except ValueError as error:
        print(f"reproresnet.launch.sweep: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(outcomes, indent=2))
    return 0 if all(o["status"] in ("complete", "skipped", "submitted") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
