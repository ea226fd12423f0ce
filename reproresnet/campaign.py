"""A campaign: a plan of training runs turned into run records within a wall-clock budget.

    python -m reproresnet campaign --out runs/campaign --budget 300 --dataset folder:data/mirror

The plan is networks x seeds x one recipe x one data set (default: the seed's three
networks, seeds 0 1 2, recipe `seed`, CIFAR-10). Each run is a `train` process of its own
(`--resume --stop-at`), `--pack K` at a time on the device; runs already started are
finished before new ones start, and none starts once a run has stopped for the deadline.
Every run stops cleanly at an epoch boundary, checkpoint written, before the budget ends;
one still running at the hard stop is killed (its last complete epoch is on disk, written
atomically). The campaign exits 0 within its budget whatever its runs do: a run that fails
is recorded as failed, in `_campaign/campaign.json` and the status table printed at the end. Called again, here or on another machine after
`bundle`/`unbundle`, it continues where it stopped. One campaign per directory (flock).

Unfinished runs leave checkpoints, which must travel back from a GPU slot: a run is not
started while the unfinished checkpoints would pass `--max-unfinished-mb` (default 40).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import records
from .records import RunDirError

DEFAULT_ARCHS = ("preact_resnet110", "preact_resnet164", "wrn_16_4")
STATE_DIR = "_campaign"  # campaign-level files; holds no run.json, so the book never reads it as a run
STATE_FILE = "campaign.json"
LOG_FILE = "campaign.log"  # each run's train output, in its run directory
FORMAT = "reproresnet-campaign/1"
# Not measured (no GPU was lent while this was written): the target is 3 packed runs at
# >= 2x the epochs per second of one. Measure with `--pack 1/2/3` and set it from the record.
DEFAULT_PACK = {"cuda": 3, "cpu": 1}
# s a new run needs at least: it imports, decodes the data and compiles before its first epoch
# ends (ResNet-110's first epoch took 91 s on an H100, packed 3, 2026-11-27)
DEFAULT_MIN_START = {"cuda": 150.0, "cpu": 5.0}


@dataclass(frozen=True)
class Plan:
    archs: tuple = DEFAULT_ARCHS
    seeds: tuple = (0, 1, 2)
    recipe: str = "seed"
    dataset: str = "cifar10"
    tag: str | None = None
    train_args: tuple = ()  # further `train` flags shared by every run (--epochs, --limit-train, ...)

    def runs(self) -> list[dict]:
        return [{"name": records.run_name(arch, seed, self.tag), "arch": arch, "seed": seed}
                for arch in self.archs for seed in self.seeds]


@dataclass
class Options:
    budget: float
    pack: int = 1
    device: str = "auto"
    min_start: float = 5.0
    max_unfinished_mb: float = 40.0
    reserve: float | None = None   # s kept at the end: None = 5% of the budget, 1 to 15 s
    poll: float = 0.2
    extra_env: dict = field(default_factory=dict)


def run_state(run_dir: Path) -> dict:
    """What a run directory says about its run (never raises)."""
    try:
        run = records.RunRecord.read(run_dir)
    except ValueError:
        return {"status": "not started", "epochs_done": 0, "epochs_planned": None}
    record = run.record
    speed = [s for s in (record.get("speed") or {}).get("segments", []) if s.get("seconds_per_epoch")]
    test_error = run.test_error
    if test_error is None and (last := run.last_test_error()):
        test_error = last[1]
    return {"status": record.get("status"), "epochs_done": record.get("epochs_done", 0),
            "epochs_planned": record.get("epochs_planned"), "test_error": test_error,
            "seconds_per_epoch": speed[-1]["seconds_per_epoch"] if speed else None,
            "pack": speed[-1]["pack"] if speed else None, "message": record.get("message"),
            "device": (record.get("device") or {}).get("name")}


def checkpoint_mb(arch: str, val_size: int, run_dir: Path) -> float:
    """The run's checkpoints on disk, or as they will be: weights and momentum in fp32
    (plus the best-validation weights when a validation split is held out)."""
    files = [run_dir / name for name in (records.CHECKPOINT_FILE, records.BEST_FILE)]
    if files[0].exists():
        return sum(f.stat().st_size for f in files if f.exists()) / 2**20
    from .models import default_parameter_count
    return default_parameter_count(arch) * 4 * (3 if val_size else 2) / 2**20


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the campaign dies (Linux), so a
    SIGKILLed campaign leaves no run behind holding its directory."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _train_command(plan: Plan, run: dict, run_dir: Path, options: Options, stop_at: float) -> list[str]:
    return [sys.executable, "-m", "reproresnet", "train", "--arch", run["arch"], "--seed", str(run["seed"]),
            "--recipe", plan.recipe, "--dataset", plan.dataset, "--out", str(run_dir), "--device", options.device,
            "--resume", "--quiet", "--stop-at", f"{stop_at:.3f}", "--pack", str(options.pack), *plan.train_args]


def _order(plan: Plan, out: Path) -> list[dict]:
    """Unfinished runs, those furthest along first (finish before starting), then new ones."""
    pending = []
    for index, run in enumerate(plan.runs()):
        state = run_state(out / run["name"])
        if state["status"] == "complete":
            continue
        done = state["epochs_done"] / state["epochs_planned"] if state["epochs_planned"] else 0.0
        pending.append((-done, index, run))
    return [run for _, _, run in sorted(pending, key=lambda item: item[:2])]


def process_start_time() -> float:
    """When this process started (time.time() scale): the budget counts its imports too."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return min(time.time(), boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


def run_campaign(plan: Plan, out, options: Options, log=print, start: float | None = None) -> list[dict]:
    """Run the plan in `out` until it is complete or the budget, counted from `start`
    (default: now), is spent; returns the status rows. Raises RunDirError only if another
    campaign holds `out`."""
    start = time.time() if start is None else start
    out = Path(out)
    reserve = options.reserve if options.reserve is not None else min(15.0, max(1.0, 0.05 * options.budget))
    hard_stop = start + options.budget - reserve     # by then every child is gone
    stop_at = hard_stop - reserve                    # the children's clean-stop deadline
    with records.run_dir_lock(out):
        (out / STATE_DIR).mkdir(exist_ok=True)
        outcomes: dict[str, dict] = {}
        try:
            _loop(plan, out, options, hard_stop, stop_at, outcomes, log)
        except Exception as error:  # the campaign itself failed: say so, keep what the runs wrote
            log(f"campaign error: {error!r}")
            outcomes["_campaign"] = {"outcome": "error", "detail": repr(error)}
        rows = status_rows(plan, out, outcomes)
        _write_state(out, plan, options, start, rows)
    return rows


def _loop(plan, out, options, hard_stop, stop_at, outcomes, log) -> None:
    pending = _order(plan, out)
    active: dict[str, tuple[subprocess.Popen, dict]] = {}
    val_size = _val_size(plan.train_args)
    env = {**os.environ, **options.extra_env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    closing = False  # a run stopped for the deadline: a new one, which must also compile, fits less
    try:
        while pending or active:
            for name, (process, run) in list(active.items()):
                if process.poll() is not None:
                    del active[name]
                    outcomes[name] = _outcome(out / name, process.returncode)
                    closing |= outcomes[name]["outcome"] == "stopped"
                    log(f"{name}: {outcomes[name]['outcome']} ({outcomes[name]['detail']})")
            if time.time() >= hard_stop:
                break
            while (pending and not closing and len(active) < options.pack
                   and time.time() + options.min_start < stop_at):
                run = _next_that_fits(pending, out, active, val_size, options.max_unfinished_mb)
                if run is None:
                    break
                run_dir = out / run["name"]
                run_dir.mkdir(exist_ok=True)
                with open(run_dir / LOG_FILE, "ab") as log_file:
                    process = subprocess.Popen(_train_command(plan, run, run_dir, options, stop_at),
                                               stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                               preexec_fn=_die_with_parent)
                active[run["name"]] = (process, run)
                log(f"{run['name']}: started (pid {process.pid})")
            if not active:
                break  # nothing running and nothing that may start
            time.sleep(options.poll)
    finally:
        for name, (process, _) in active.items():  # past the hard stop, or the campaign failed
            process.kill()
            process.wait()
            message = run_state(out / name).get("message") or ""
            outcomes[name] = {"outcome": "stopped", "detail": f"{message} (killed while exiting)"} \
                if message.startswith("stopped cleanly") else \
                {"outcome": "killed", "detail": "still running at the campaign's hard stop; its last complete "
                                                "epoch is kept"}
            log(f"{name}: {outcomes[name]['outcome']} at the hard stop")
    for run in pending:
        outcomes.setdefault(run["name"], {"outcome": "waiting", "detail": "not started: no time or checkpoint room left"})


def _val_size(train_args: tuple) -> int:
    args = list(train_args)
    return int(args[args.index("--val-size") + 1]) if "--val-size" in args else 0


def _next_that_fits(pending: list[dict], out: Path, active: dict, val_size: int, cap_mb: float) -> dict | None:
    """The first pending run that is already started, or whose checkpoint still fits beside
    those of the unfinished runs; removed from `pending`."""
    unfinished = [run for run in pending if run_state(out / run["name"])["epochs_done"] > 0]
    unfinished += [run for _, run in active.values()]
    used = sum(checkpoint_mb(run["arch"], val_size, out / run["name"]) for run in unfinished)
    for run in pending:
        started = run_state(out / run["name"])["epochs_done"] > 0
        if started or used + checkpoint_mb(run["arch"], val_size, out / run["name"]) <= cap_mb:
            pending.remove(run)
            return run
    return None


def _outcome(run_dir: Path, returncode: int) -> dict:
    state = run_state(run_dir)
    if returncode == 0:
        outcome = "complete" if state["status"] == "complete" else "stopped"
        return {"outcome": outcome, "detail": state.get("message") or f"{state['epochs_done']} epochs done"}
    tail = (run_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-1:] \
        if (run_dir / LOG_FILE).exists() else []
    return {"outcome": "failed", "detail": f"exit {returncode}: {tail[0] if tail else 'no output'}"}


def status_rows(plan: Plan, out: Path, outcomes: dict | None = None) -> list[dict]:
    rows = []
    for run in plan.runs():
        state = run_state(Path(out) / run["name"])
        outcome = (outcomes or {}).get(run["name"], {})
        rows.append({"run": run["name"], **state, "outcome": outcome.get("outcome"), "detail": outcome.get("detail")})
    if outcomes and "_campaign" in outcomes:
        rows.append({"run": "_campaign", "status": "error", "epochs_done": 0, "epochs_planned": None,
                     "outcome": "error", "detail": outcomes["_campaign"]["detail"]})
    return rows


def format_status(rows: list[dict]) -> str:
    lines = [f"{'run':<32} {'status':<12} {'epochs':>9} {'test err':>9} {'s/epoch':>8} {'pack':>4}  this call"]
    for row in rows:
        epochs = f"{row['epochs_done']}/{row['epochs_planned'] or '?'}"
        error = "-" if row.get("test_error") is None else f"{row['test_error']:.2f}%"
        speed = "-" if row.get("seconds_per_epoch") is None else f"{row['seconds_per_epoch']:.2f}"
        note = row.get("outcome") or "-"
        if row.get("outcome") == "failed":
            note += f": {row['detail']}"
        lines.append(f"{row['run']:<32} {row['status']:<12} {epochs:>9} {error:>9} {speed:>8} "
                     f"{row.get('pack') or '-':>4}  {note}")
    return "\n".join(lines)


def _write_state(out: Path, plan: Plan, options: Options, start: float, rows: list[dict]) -> None:
    path = out / STATE_DIR / STATE_FILE
    try:
        calls = json.loads(path.read_text()).get("calls", [])
    except (OSError, ValueError):
        calls = []
    calls.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
                  "seconds": round(time.time() - start, 1), "budget": options.budget, "pack": options.pack,
                  "device": options.device, "outcomes": {r["run"]: r["outcome"] for r in rows}})
    records.write_json(path, {"format": FORMAT, "plan": {**plan.__dict__, "runs": [r["name"] for r in plan.runs()]},
                              "status": rows, "calls": calls})


def render_runs(run_dirs, notebook: str | None = None) -> list[dict]:
    """Each complete run's book page: `notebook` (default: the repository's train.ipynb)
    executed by papermill with the run's own recorded settings, so `train(resume=True)` only
    reads the complete run (no training). An unfinished run is not rendered (its notebook
    would train it)."""
    import papermill

    from .sweep import DEFAULT_NOTEBOOK, execute_run
    notebook = notebook or DEFAULT_NOTEBOOK
    names = set(papermill.inspect_notebook(notebook))
    from .config import RUNTIME_SETTINGS, TrainConfig
    defaults = TrainConfig().as_dict()
    outcomes = []
    for run_dir in map(Path, run_dirs):
        record = records.read_run(run_dir)
        if record["status"] != "complete":
            outcome = {"run": run_dir.name, "status": "incomplete",
                       "message": f"{record['epochs_done']}/{record['epochs_planned']} epochs: not rendered"}
        else:
            config = record["config"]
            missing = [k for k, v in config.items()
                       if k not in names and k not in RUNTIME_SETTINGS and v != defaults.get(k)]
            if missing:
                outcome = {"run": run_dir.name, "status": "failed",
                           "message": f"{notebook} has no parameter for the recorded {missing}"}
            else:
                parameters = {k: v for k, v in config.items() if k in names}
                outcome = execute_run(notebook, str(run_dir), {**parameters, "run_dir": str(run_dir)},
                                      progress=False)
        print(f"{outcome['run']}: {outcome['status']}" + (f" ({outcome['message']})" if outcome["message"] else ""))
        outcomes.append(outcome)
    return outcomes


def _per_device(values: dict) -> str:
    """{"cuda": 3, "cpu": 1} as help text: "3 on CUDA, 1 on a CPU"."""
    return ", ".join(f"{value:g} on {'CUDA' if device == 'cuda' else 'a CPU'}" for device, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    from .cli import number
    parser = argparse.ArgumentParser(prog="python -m reproresnet campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="the campaign directory (run directories in it)")
    parser.add_argument("--budget", type=number, metavar="SECONDS",
                        help="wall-clock seconds this call may take, start to exit (required unless --status)")
    plan = parser.add_argument_group("plan")
    plan.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), metavar="NAME",
                      help=f"networks of the plan (default: {' '.join(DEFAULT_ARCHS)})")
    plan.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="K",
                      help="seeds of each network (default: 0 1 2)")
    plan.add_argument("--recipe", default="seed", help="the recipe of every run (default: seed)")
    plan.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | folder:PATH | synthetic")
    plan.add_argument("--tag", help="run directories <arch>-<tag>-seed<k> (default: <arch>-seed<k>)")
    plan.add_argument("--train-args", default="", metavar="'FLAGS'",
                      help="further train flags for every run, e.g. '--epochs 10 --limit-train 5000'")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    runtime.add_argument("--pack", type=int, help=f"runs at once on the device (default: {_per_device(DEFAULT_PACK)})")
    runtime.add_argument("--selfcheck", metavar="JSON", help="a selfcheck record: its switched-off parts and "
                                                             "compile mode apply to every run")
    runtime.add_argument("--min-start", type=number, help=f"seconds a new run needs at least "
                         f"(default: {_per_device(DEFAULT_MIN_START)})")
    runtime.add_argument("--max-unfinished-mb", type=number, default=40.0,
                         help="checkpoints of unfinished runs stay under this (default: 40)")
    runtime.add_argument("--status", action="store_true", help="print the status table and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    import shlex
    args = build_parser().parse_args(argv)
    if (not args.status and (args.budget is None or args.budget <= 0)) or (args.pack is not None and args.pack < 1):
        print(f"reproresnet campaign: error: --budget {args.budget} and --pack {args.pack} are not valid: "
              f"expected positive numbers (--budget is required unless --status)", file=sys.stderr)
        return 2
    train_args = tuple(shlex.split(args.train_args))
    if args.selfcheck:
        from .selfcheck import train_flags
        train_args += tuple(train_flags(args.selfcheck))
    plan = Plan(tuple(args.archs), tuple(args.seeds), args.recipe, args.dataset, args.tag, train_args)
    if args.status:
        print(format_status(status_rows(plan, Path(args.out))))
        return 0
    device = _device_type(args.device)
    options = Options(budget=args.budget, pack=args.pack or DEFAULT_PACK[device], device=args.device,
                      min_start=DEFAULT_MIN_START[device] if args.min_start is None else args.min_start,
                      max_unfinished_mb=args.max_unfinished_mb)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # packed CPU runs share the cores
        options.extra_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // options.pack))
    print(f"campaign: {len(plan.runs())} runs in {args.out}, budget {args.budget:g} s, pack {options.pack}",
          flush=True)
    try:
        rows = run_campaign(plan, args.out, options, log=lambda line: print(line, flush=True),
                            start=process_start_time())
    except RunDirError as error:
        print(f"reproresnet campaign: error: {error}", file=sys.stderr)
        return 2
    print(format_status(rows), flush=True)
    sys.stderr.flush()
    # Everything is written (atomically, fsynced). Skip the interpreter's teardown: with torch
    # imported it took 5 s and more on a loaded machine, and the budget includes the exit.
    os._exit(0)


def _device_type(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


if __name__ == "__main__":
    sys.exit(main())
