"""A campaign: a plan of training runs turned into run records within a wall-clock budget, in
one process.

    python -m reproresnet campaign --out runs/campaign --budget 300 --dataset folder:data/mirror

The plan is networks x seeds x one recipe x one data set (default: the plan of
`reference.PLAN_TIERS` x `reference.PLANNED_SEEDS`, recipe `seed`, CIFAR-10), each run a `TrainConfig`
(`--train-args` are `train` flags shared by every run; not the settings the plan sets). Its
networks come in tiers: the seed's three networks, then the original units He et al. compare
them with; a tier starts once every run of the tiers before it has finished (complete, or
diverged: it cannot go on), so a budget spent early goes to the claims the seed tested. One
process trains it all: the device is probed first (`probe.py`: capture and replay, grouped
against separate convolutions, autotuning; `_campaign/probe.json`, once per directory and
device), the data set is read once and held once on the device (a data set that cannot serve
every run is refused before anything is created); the self-check (`selfcheck.py`,
seconds) chooses how to train (engine, precision, layout, stack size) on the real data, or its
record from an earlier call is reused, so that every call trains the same way; then each
network's seeds train as one stacked network (at most `--stack` runs; default all its seeds),
stacks one after another, those furthest along first. Every run writes what a `train` run
writes (on CUDA a background thread writes
checkpoints while the GPU trains on), so `train --resume` can continue any of them, alone.
Precision is part of the experiment: run directories are named `<arch>-<tag>-<precision>-seed<k>`.

Every run stops cleanly at an epoch boundary, checkpoint written, before the budget ends (its
next epoch predicted from its last; a fresh run's first from the self-check's measured step,
`step_seconds`, plus `--min-start` for its set-up); no stack, nor a group of one, starts once a
run has stopped for the deadline; an epoch still running at the hard stop is abandoned (the run
keeps its last complete epoch). The
campaign exits 0 within its budget, imports and exit included, whatever its runs do: a stack
that fails is retried run by run, and a run that fails, diverges or makes no progress is
recorded as such (with why) in `_campaign/campaign.json` and the status table, and the plan goes
on without it. Called again, here or on another machine after `bundle`/`unbundle`, it continues
where it stopped. One campaign per directory (flock).

Unfinished runs leave checkpoints, which must travel back from a GPU slot: a new run does not
start while the unfinished checkpoints would pass `--max-unfinished-mb` (default
`bundle.MAX_UNFINISHED_MIB`: gzipped in a bundle, under what a committed `campaign-bundle/` may hold).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import records, rundir
from ..rundir import RunDirError
from ..reference import PLAN_TIERS, PLANNED, PLANNED_SEEDS
from .bundle import MAX_UNFINISHED_MIB
from .process import deadlines, exit_without_teardown, process_start_time, seconds_left
from .variants import Variant, selfcheck_state

STATE_DIR = "_campaign"  # campaign-level files; holds no run.json, so the book never reads it as a run
STATE_FILE = "campaign.json"
SELFCHECK_FILE = "selfcheck.json"
PROBE_FILE = "probe.json"
FORMAT = "reproresnet-campaign/2"
# s a new stack needs at least: it builds its networks, warms up and captures before its first
# epoch ends (seconds on the graph engine)
DEFAULT_MIN_START = {"cuda": 20.0, "cpu": 5.0}
DEFAULT_SELFCHECK_BUDGET = {"cuda": 60.0, "cpu": 30.0}  # a complete check is reused by later calls
PRECISIONS = ("auto", "fp32", "bf16")
# Run settings the plan sets for every run, so not --train-args: {setting: the campaign's flag}.
OWNED = {"arch": "--archs", "seed": "--seeds", "recipe": "--recipe", "dataset": "--dataset", "device": "--device",
         "bf16": "--precision", "out": "--out"}


@dataclass(frozen=True)
class Plan:
    archs: tuple = PLANNED
    seeds: tuple = PLANNED_SEEDS
    recipe: str = "seed"
    dataset: str = "cifar10"
    tag: str | None = None
    train_args: tuple = ()  # further `train` flags shared by every run (--epochs, --limit-train, ...)

    def tiers(self) -> list[tuple]:
        """The plan's networks in the tiers of `reference.PLAN_TIERS`, in its order; networks of no
        tier (an ad hoc plan) join the first."""
        def tier(arch: str) -> int:
            return next((number for number, archs in enumerate(PLAN_TIERS) if arch in archs), 0)
        numbers = sorted({tier(arch) for arch in self.archs})
        return [tuple(arch for arch in self.archs if tier(arch) == number) for number in numbers]

    def configs(self, out, device: str, precision: str) -> dict[str, list]:
        """Each network's runs as `TrainConfig`s (its seeds), in `out`, at `precision`."""
        from ..arguments import train_settings
        from ..config import TrainConfig, distinct
        distinct("--archs", self.archs)
        distinct("--seeds", self.seeds)
        settings = train_settings(list(self.train_args), OWNED)
        records.check_tag(self.tag)  # as given, before the precision joins it
        tag = "-".join(filter(None, [self.tag, precision]))
        return {arch: [TrainConfig(**{**settings, "arch": arch, "seed": seed, "recipe": self.recipe,
                                      "dataset": self.dataset, "device": device, "bf16": precision == "bf16",
                                      "out": str(Path(out) / records.run_name(arch, seed, tag))})
                       for seed in self.seeds] for arch in self.archs}


@dataclass
class Options:
    budget: float
    stack: int | None = None         # runs per stack; None: all of a network's seeds, or apart if faster
    device: str = "auto"
    precision: str = "auto"          # auto: the self-check's choice (fp32 unless > 1.5x bf16's step time)
    min_start: float = 5.0
    selfcheck_budget: float = 30.0
    max_unfinished_mb: float = MAX_UNFINISHED_MIB  # MiB of raw checkpoints of unfinished runs (bundle.py)
    reserve: float | None = None     # s kept at the end: None = 5% of the budget, 1 to 15 s
    log_epochs: bool = True


def run_state(run_dir: Path) -> dict:
    """What a run directory says about its run (never raises)."""
    try:
        run = records.RunRecord.read(run_dir)
    except ValueError:
        return {"status": "not started", "epochs_done": 0, "epochs_planned": None}
    record = run.record
    speed = [segment for segment in record.speed if segment.seconds_per_epoch]
    test_error = run.test_error
    if test_error is None and (last := run.last_test_error()):
        test_error = last[1]
    return {"status": record.status, "epochs_done": record.epochs_done,
            "epochs_planned": record.epochs_planned, "test_error": test_error,
            "seconds_per_epoch": speed[-1].seconds_per_epoch if speed else None,
            "engine": f"{speed[-1].engine or '?'}/{speed[-1].stacked}" if speed else None,
            "message": record.message, "device": record.device and record.device.name}


def checkpoint_mb(config, run_dir: Path) -> float:
    """The run's checkpoints on disk, or as they will be: weights and momentum in fp32 (plus
    the best-validation weights when a validation split is held out)."""
    files = [run_dir / name for name in (records.CHECKPOINT_FILE, records.BEST_FILE)]
    if files[0].exists():
        return sum(f.stat().st_size for f in files if f.exists()) / 2**20
    from ..models import default_parameter_count
    val_size = config.resolved_recipe().val_size
    return default_parameter_count(config.arch) * 4 * (3 if val_size else 2) / 2**20


# ---------------------------------------------------------------- the order of the work


def stacks(plan_configs: dict[str, list]) -> list[list]:
    """The unfinished runs in groups that may train as one stack (one network's runs at the same
    epoch), those furthest along first (finish before starting), then in the plan's order."""
    groups = []
    for index, configs in enumerate(plan_configs.values()):
        by_epoch: dict[int, list] = {}
        for config in configs:
            state = run_state(Path(config.out))
            if state["status"] != "complete":
                by_epoch.setdefault(state["epochs_done"], []).append((config, state))
        for epochs, members in by_epoch.items():
            planned = members[0][1]["epochs_planned"]
            groups.append((-(epochs / planned if planned else 0.0), index, [config for config, _ in members]))
    return [group for *_, group in sorted(groups, key=lambda item: item[:2])]


# A run that can train no further: a later tier waits for no other.
FINISHED = ("complete", "diverged")


def tiered_stacks(plan_configs: dict[str, list], tiers: list[tuple], outcomes: dict):
    """`stacks` tier by tier, each tier's computed once every run of the tiers before it has
    finished (so a tier completed in this call lets the next one start); the runs of a tier
    that must wait are recorded as waiting in `outcomes`."""
    before: list = []
    for number, archs in enumerate(tiers, 1):
        tier = {arch: plan_configs[arch] for arch in archs}
        unfinished = [config for config in before if run_state(Path(config.out))["status"] not in FINISHED]
        before += [config for configs in tier.values() for config in configs]
        if unfinished:
            for config in (config for configs in tier.values() for config in configs):
                outcomes[Path(config.out).name] = {"outcome": "waiting", "detail": (
                    f"not started: tier {number} starts once the {len(unfinished)} unfinished run(s) of the "
                    f"tiers before it have finished")}
            continue
        yield from stacks(tier)


def admit(stack: list, plan_configs: dict[str, list], cap_mb: float, training: list) -> list:
    """The runs of `stack` that may train now: started ones always; a new one only while the
    checkpoints of the unfinished runs (those of `training` included) stay under `cap_mb`."""
    unfinished = {config.out: config for configs in plan_configs.values() for config in configs
                  if 0 < (state := run_state(Path(config.out)))["epochs_done"] and state["status"] != "complete"}
    unfinished.update({config.out: config for config in training})
    used = sum(checkpoint_mb(config, Path(config.out)) for config in unfinished.values())
    chosen = []
    for config in stack:
        started = config.out in unfinished
        size = checkpoint_mb(config, Path(config.out))
        if started or used + size <= cap_mb:
            chosen.append(config)
            used += 0 if started else size
    return chosen


# ---------------------------------------------------------------- the campaign


def run_campaign(plan: Plan, out, options: Options, log=print, start: float | None = None) -> list[dict]:
    """Run the plan in `out` until it is complete or the budget, counted from `start`
    (default: now), is spent; returns the status rows. Raises RunDirError if another campaign
    holds `out` (or the disk is full), and ConfigError or DataError if the data cannot serve the
    plan (`load_data`), leaving nothing behind."""
    start = time.time() if start is None else start
    out = Path(out)
    hard_stop, stop_at = deadlines(start, options.budget, options.reserve)
    with rundir.run_dir_lock(out), rundir.Writer(background=_device_type(options.device) == "cuda") as writer:
        device = _device(options, log)
        configs = plan.configs(out, device.type, "fp32")  # each network's runs
        probed = _probe(out, configs, device, options, log)  # a slot's first seconds
        sources = load_data(configs, device, log)  # refused: the lock goes, and a folder it made
        (out / STATE_DIR).mkdir(exist_ok=True)
        if probed is not None:
            rundir.write_json(out / STATE_DIR / PROBE_FILE, probed)
        outcomes: dict[str, dict] = {}
        plan_configs = {}
        try:
            plan_configs = _campaign(plan, out, options, device, sources, hard_stop, stop_at, outcomes, writer, log)
        except Exception as error:  # the campaign itself failed: say so, keep what the runs wrote
            log(f"campaign error: {error!r}")
            outcomes["_campaign"] = {"outcome": "error", "detail": repr(error)}
        writer.flush()
        rows = status_rows(plan_configs, outcomes)
        _write_state(out, plan, options, start, rows)
    return rows


def _device(options: Options, log):
    """The campaign's device, and this process's CPU threads, said."""
    import torch

    from ..config import cpu_threads, select_device
    device = select_device(options.device)
    threads, why = cpu_threads()
    torch.set_num_threads(threads)
    log(f"campaign: torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"{threads} CPU thread{'s' if threads > 1 else ''} ({why})")
    return device


def load_data(plan_configs: dict, device, log) -> dict:
    """The data sets of the plan's runs (`Plan.configs`) on `device` by `data.source_key`, each
    read once; every run's subsets and batch checked against its data set (ConfigError, DataError)."""
    from ..data import check_batch, load_device_splits, load_sources, source_key
    began = time.time()
    configs = [config for configs in plan_configs.values() for config in configs]
    sources = load_sources(configs, device)
    for config in configs:  # its subsets and batch fit its data set
        check_batch(config, load_device_splits(config, device, sources[source_key(config)]))
    log(f"campaign: {len(sources)} data set(s) read and on {device} in {time.time() - began:.1f} s")
    return sources


def _campaign(plan: Plan, out: Path, options: Options, device, sources: dict, hard_stop: float, stop_at: float,
              outcomes: dict, writer: rundir.Writer, log) -> dict:
    precision = None if options.precision == "auto" else options.precision
    check_configs = plan.configs(out / STATE_DIR / "selfcheck", device.type, precision or "fp32")
    record = _selfcheck_record(out, check_configs, device, sources, options, precision, stop_at, log)
    chosen = Variant.from_name(record["chosen"]["variant"])
    plan_configs = plan.configs(out, device.type, chosen.precision)
    _train_plan(out, plan_configs, plan.tiers(), record, device, sources, options, hard_stop, stop_at, outcomes,
                writer, log)
    return plan_configs


def _probe(out: Path, plan: dict, device, options: Options, log) -> dict | None:
    """What only the device can tell (probe.py), measured before anything else, once per
    campaign directory, device and torch: the record for `_campaign/probe.json` (written once
    the data is read: a refused call leaves nothing), None if an earlier call's holds."""
    import torch

    from . import probe
    path = out / STATE_DIR / PROBE_FILE
    try:
        earlier = json.loads(path.read_text())
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        if (earlier.get("format"), earlier.get("device"), earlier.get("gpu"), earlier.get("torch")) == \
                (probe.FORMAT, str(device), gpu, torch.__version__) and "error" not in earlier:
            log(f"campaign: the device probe of {earlier.get('created')} holds ({path})")
            return None
    except (OSError, ValueError, AttributeError):
        pass
    batches = {arch: configs[0].resolved_recipe().batch_size for arch, configs in plan.items()}
    record = probe.probe(device, batches, budget=min(probe.BUDGET, 0.05 * options.budget))
    log(probe.format_probe(record))
    return {**record, "created": records.now()}


def _selfcheck_record(out: Path, plan: dict, device, sources: dict, options: Options, precision: str | None,
                      stop_at: float, log) -> dict:
    """The self-check's record: an earlier call's if it is complete and its choice passed
    (`variants.selfcheck_state`; every call then trains the same way and at the same precision),
    else a new one within its budget."""
    from . import selfcheck
    path = out / STATE_DIR / SELFCHECK_FILE
    record = _read_selfcheck(out)
    if record is not None:
        state, why = selfcheck_state(record)
        chosen = Variant.from_name(record["chosen"]["variant"]) if state == "complete" else None
        if chosen and precision in (None, chosen.precision) and options.stack in (None, chosen.stack):
            log(f"campaign: the self-check of {record['created']} {why}")
            return record
        log("campaign: the earlier self-check is not reused: " + (
            f"{state}, {why}" if chosen is None else f"it chose {chosen.name}, this call asks for "
                                                     f"precision {precision or 'auto'}, stack {options.stack or 'auto'}"))
    budget = min(options.selfcheck_budget, seconds_left(stop_at, kept=options.min_start))
    # The first network's variants now; the others just before they first train (_check_network).
    record = selfcheck.selfcheck({arch: configs for arch, configs in list(plan.items())[:1]}, device, sources,
                                 budget=budget, precision=precision, stack=options.stack, log=log,
                                 save=lambda record: rundir.write_json(path, selfcheck.jsonable(record)))
    log(selfcheck.format_variants(record))
    return record


def _check_network(out: Path, record: dict, configs: list, device, sources: dict, log) -> None:
    """The chosen variant against the reference on a network not checked yet (seconds), saved
    into the self-check's record: a network where it fails trains eagerly and unstacked."""
    from . import selfcheck
    arch = configs[0].arch
    if (record["networks"].get(arch) or {}).get("ok") is not None:
        return
    chosen = Variant.from_name(record["chosen"]["variant"])
    began = time.time()
    try:
        result = selfcheck.check_network(configs[:chosen.stack], device, sources, chosen)
    except Exception as error:  # noqa: BLE001 (a crash is a failed check, recorded)
        result = {"ok": False, "variant": chosen.name, "error": f"{type(error).__name__}: {error}"[:500]}
    result["seconds"] = round(time.time() - began, 1)
    record["networks"][arch] = result
    log(f"selfcheck {arch} {chosen.name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)"
        + (f" worst {result['worst']['ratio']:.2g} x tolerance" if "worst" in result else "")
        + (f" {result['error']}" if "error" in result else ""))
    rundir.write_json(out / STATE_DIR / SELFCHECK_FILE, selfcheck.jsonable(record))


def _train_plan(out: Path, plan_configs: dict, tiers: list, record: dict, device, sources: dict, options: Options,
                hard_stop: float, stop_at: float, outcomes: dict, writer: rundir.Writer, log) -> None:
    from . import selfcheck
    training: list = []
    for stack in tiered_stacks(plan_configs, tiers, outcomes):
        names = [Path(config.out).name for config in stack]
        why = _why_not_start(outcomes, options, stop_at)
        admitted = [] if why else admit(stack, plan_configs, options.max_unfinished_mb, training)
        _wait(stack, admitted, outcomes, why or f"not started: the unfinished runs' checkpoints would pass "
                                                 f"{options.max_unfinished_mb:g} MB")
        if not admitted:
            continue
        _check_network(out, record, plan_configs[admitted[0].arch], device, sources, log)
        variant, note = selfcheck.variant_for(record, admitted[0].arch)
        for group in variant.groups(admitted):
            if why := _why_not_start(outcomes, options, stop_at):  # a run of this stack may have stopped
                _wait(group, [], outcomes, why)
                continue
            training += group
            _train_group(group, variant, note, record, device, sources, options, hard_stop, stop_at, outcomes,
                         writer, log)
        log(f"campaign: {', '.join(names)} done for this call")


def _why_not_start(outcomes: dict, options: Options, stop_at: float) -> str | None:
    """Why no new stack (or group of a stack) starts now, if it does not."""
    if any(outcome.get("outcome") == "stopped" for outcome in outcomes.values()):
        return "not started: a run stopped for the deadline, and a new stack fits even less"
    if seconds_left(stop_at, kept=options.min_start) <= 0:
        return "not started: no time left"
    return None


def _wait(configs: list, started: list, outcomes: dict, why: str) -> None:
    for config in configs:
        if config not in started:
            outcomes[Path(config.out).name] = {"outcome": "waiting", "detail": why}


def step_seconds(record: dict, config, variant) -> float | None:
    """A training step of `config`'s network trained as `variant`, from the self-check's
    `record`: as timed on that network, where the check timed this variant there; else as
    timed on the network the check timed it on, scaled by the larger of two ratios, the
    networks' arithmetic per step (forward FLOPs x batch) and their depths (a step's time
    grows with its arithmetic where the GPU is busy, with its layers where it waits on kernel
    launches); None where the check timed no such variant."""
    from ..architectures import row
    network = (record.get("networks") or {}).get(config.arch) or {}
    if network.get("variant") == variant.name and network.get("seconds_per_step"):
        return network["seconds_per_step"]
    timed = next((r["seconds_per_step"] for r in record.get("variants") or []
                  if r.get("variant") == variant.name and r.get("seconds_per_step")), None)
    if timed is None or record.get("arch") == config.arch:
        return timed
    ours, theirs = row(config.arch), row(record.get("arch") or "")
    if ours is None or theirs is None or not record.get("batch_size"):
        return None
    arithmetic = ours["gflops"] * config.resolved_recipe().batch_size / (theirs["gflops"] * record["batch_size"])
    return timed * max(arithmetic, ours["depth"] / theirs["depth"])


def _train_group(group: list, variant, note: str, record: dict, device, sources: dict, options: Options,
                 hard_stop: float, stop_at: float, outcomes: dict, writer: rundir.Writer, log) -> None:
    """One stack trained until done or the deadline; a failing stack is retried run by run,
    a failing engine replaced by the eager one at the same precision. A fresh run's first
    epoch is predicted from the self-check's step time, its setup from `--min-start`."""
    from ..engine import EngineError
    from ..train import Deadline, train_stack
    before = {config.out: run_state(Path(config.out))["epochs_done"] for config in group}
    names = [Path(config.out).name for config in group]
    step = step_seconds(record, group[0], variant)
    log(f"campaign: training {', '.join(names)} as {'one stack' if len(group) > 1 else 'one run'}"
        f"{f', {1e3 * step:.1f} ms a step predicted' if step else ''}; {note}")
    again = lambda configs, variant, note: _train_group(  # noqa: E731
        configs, variant, note, record, device, sources, options, hard_stop, stop_at, outcomes, writer, log)
    try:
        results = train_stack(variant.configs(group), device, sources, progress=options.log_epochs,
                              deadline=Deadline(stop_at, step, options.min_start), hard_stop=hard_stop,
                              writer=writer, note=note)
    except EngineError as error:
        eager = Variant("eager", variant.bf16, variant.channels_last, len(group))
        log(f"campaign: {variant.name} cannot run ({error}); falling back to {eager.name}")
        return again(group, eager, f"{eager.name}: fallback, {variant.name} failed: {error}")
    except Exception as error:  # noqa: BLE001 (recorded; the plan goes on)
        if len(group) > 1:
            log(f"campaign: the stack {', '.join(names)} failed ({type(error).__name__}: {error}); "
                f"training its runs one by one")
            for config in group:
                if why := _why_not_start(outcomes, options, stop_at):
                    _wait([config], [], outcomes, why)
                else:
                    again([config], variant, note)
            return
        outcomes[names[0]] = {"outcome": "failed", "detail": f"{type(error).__name__}: {error}"[:300]}
        log(f"{names[0]}: failed ({outcomes[names[0]]['detail']})")
        return
    for config, result in zip(group, results):
        outcomes[Path(config.out).name] = _outcome(result, before[config.out])
        log(f"{Path(config.out).name}: {outcomes[Path(config.out).name]['outcome']} "
            f"({outcomes[Path(config.out).name]['detail']})")


def _outcome(record: records.Record, epochs_before: int) -> dict:
    status, done = record.status, record.epochs_done
    if status == "complete":
        return {"outcome": "complete", "detail": f"{done} epochs done"}
    if status == "diverged":
        return {"outcome": "diverged", "detail": record.message or "diverged"}
    if done <= epochs_before:
        return {"outcome": "stopped" if (record.message or "").startswith("stopped") else "stuck",
                "detail": f"no epoch done in this call: {record.message or 'the loop trained nothing'}"}
    return {"outcome": "stopped", "detail": record.message or f"{done} epochs done"}


def status_rows(plan_configs: dict, outcomes: dict | None = None) -> list[dict]:
    rows = []
    for configs in plan_configs.values():
        for config in configs:
            name = Path(config.out).name
            outcome = (outcomes or {}).get(name, {})
            rows.append({"run": name, **run_state(Path(config.out)), "outcome": outcome.get("outcome"),
                         "detail": outcome.get("detail")})
    if outcomes and "_campaign" in outcomes:
        rows.append({"run": "_campaign", "status": "error", "epochs_done": 0, "epochs_planned": None,
                     "outcome": "error", "detail": outcomes["_campaign"]["detail"]})
    return rows


def _read_selfcheck(out: Path) -> dict | None:
    """The self-check record in `out`, or None where there is none or it cannot be read."""
    try:
        record = json.loads((out / STATE_DIR / SELFCHECK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def selfcheck_line(out: Path) -> str:
    """What the status table says of the self-check in `out`: complete (reused), cut short or
    failed (checked again on the next call), or none yet; torch-free."""
    record = _read_selfcheck(Path(out))
    if record is None:
        return "self-check: none yet (the next call checks first)"
    state, why = selfcheck_state(record)
    return f"self-check of {record.get('created', '?')}: {state}, {why}"


def format_status(rows: list[dict]) -> str:
    lines = [f"{'run':<36} {'status':<12} {'epochs':>9} {'test err':>9} {'s/epoch':>8} {'engine':>8}  this call"]
    for row in rows:
        epochs = f"{row['epochs_done']}/{row['epochs_planned'] or '?'}"
        error = "-" if row.get("test_error") is None else f"{row['test_error']:.2f}%"
        speed = "-" if row.get("seconds_per_epoch") is None else f"{row['seconds_per_epoch']:.2f}"
        note = row.get("outcome") or "-"
        if row.get("outcome") in ("failed", "stuck", "diverged", "error", "waiting"):
            note += f": {row['detail']}"
        lines.append(f"{row['run']:<36} {row['status']:<12} {epochs:>9} {error:>9} {speed:>8} "
                     f"{row.get('engine') or '-':>8}  {note}")
    return "\n".join(lines)


def _write_state(out: Path, plan: Plan, options: Options, start: float, rows: list[dict]) -> None:
    path = out / STATE_DIR / STATE_FILE
    try:
        calls = json.loads(path.read_text()).get("calls", [])
    except (OSError, ValueError):
        calls = []
    calls.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
                  "seconds": round(time.time() - start, 1), "budget": options.budget, "stack": options.stack,
                  "device": options.device, "precision": options.precision,
                  "outcomes": {r["run"]: r["outcome"] for r in rows}})
    rundir.write_json(path, {"format": FORMAT, "plan": {**plan.__dict__, "tiers": plan.tiers(),
                                                        "runs": [r["run"] for r in rows]},
                              "status": rows, "calls": calls})


def _per_device(values: dict) -> str:
    """{"cuda": 3, "cpu": 1} as help text: "3 on CUDA, 1 on a CPU"."""
    return ", ".join(f"{value:g} on {'CUDA' if device == 'cuda' else 'a CPU'}" for device, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    from ..arguments import integer, non_negative_number, positive_integer, positive_number
    parser = argparse.ArgumentParser(prog="python -m reproresnet campaign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="the campaign directory (run directories in it)")
    parser.add_argument("--budget", type=positive_number, metavar="SECONDS",
                        help="wall-clock seconds this call may take, start to exit (required unless --status)")
    plan = parser.add_argument_group("plan")
    plan.add_argument("--archs", nargs="+", default=list(PLANNED), metavar="NAME",
                      help=f"networks of the plan, trained tier by tier (default: {' '.join(PLANNED)}; the "
                           f"tiers: {' | '.join(' '.join(tier) for tier in PLAN_TIERS)})")
    plan.add_argument("--seeds", nargs="+", type=integer, default=list(PLANNED_SEEDS), metavar="K",
                      help=f"seeds of each network (default: {' '.join(map(str, PLANNED_SEEDS))})")
    plan.add_argument("--recipe", default="seed", help="the recipe of every run (default: seed)")
    plan.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | folder:PATH | synthetic")
    plan.add_argument("--tag", help="run directories <arch>-<tag>-<precision>-seed<k>")
    plan.add_argument("--train-args", action="append", default=[], metavar="'FLAGS'",
                      help="further train flags for every run, e.g. '--epochs 10 --limit-train 5000' (repeatable: "
                           "they add up; not the settings the campaign's own flags set)")
    plan.add_argument("--precision", default="auto", choices=PRECISIONS,
                      help="auto (default): the self-check's choice, fp32 unless its step costs more than "
                           "1.5x bf16's; a directory keeps the precision its first call chose")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    runtime.add_argument("--stack", type=positive_integer,
                         help="runs trained as one stacked network (default: all of a network's seeds, or apart if "
                              "the self-check finds that faster)")
    runtime.add_argument("--min-start", type=non_negative_number, help=f"seconds a new stack needs at least "
                         f"(default: {_per_device(DEFAULT_MIN_START)})")
    runtime.add_argument("--selfcheck-budget", type=non_negative_number,
                         help=f"seconds the self-check may take (default: {_per_device(DEFAULT_SELFCHECK_BUDGET)})")
    runtime.add_argument("--max-unfinished-mb", type=non_negative_number, default=Options.max_unfinished_mb,
                         help=f"MiB of checkpoints of unfinished runs; new runs wait above it (default: "
                              f"{Options.max_unfinished_mb:g}, which gzips to a bundle under the 40 MB a commit may hold)")
    runtime.add_argument("--status", action="store_true",
                         help="print what DIR holds and exit: the runs its last call planned, then any other run "
                              "directory in it (the plan flags are not read)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The slot's steps: read the flags (each number by its type), say what the directory holds
    (--status), or check the plan, train it within the budget counted from this process's
    start, say where each run stands, and exit without the interpreter's teardown."""
    args = build_parser().parse_args(argv)
    if args.status:
        return print_status(Path(args.out))
    if args.budget is None:
        return _error("--budget missing: expected the seconds this call may take (a number > 0), "
                      "or --status")
    from ..config import ConfigError
    from ..data import DataError
    plan = plan_of(args)
    try:
        plan.configs(args.out, "cpu", "fp32")  # every setting checked before anything runs
    except ConfigError as error:
        return _error(error)
    print(f"campaign: {len(plan.archs) * len(plan.seeds)} runs in {args.out}, budget {args.budget:g} s, "
          f"stack {args.stack or 'all seeds'}", flush=True)
    try:
        rows = run_campaign(plan, args.out, options_of(args), log=lambda line: print(line, flush=True),
                            start=process_start_time())
    except rundir.DiskFull as full:
        return _error(full.with_advice("free some space and call the campaign again: it continues where it stopped"))
    except (ConfigError, DataError, RunDirError) as error:  # refused before anything was created, or in use
        return _error(error)
    print(format_status(rows), flush=True)
    print(selfcheck_line(Path(args.out)), flush=True)
    exit_without_teardown()


def plan_of(args: argparse.Namespace) -> Plan:
    return Plan(tuple(args.archs), tuple(args.seeds), args.recipe, args.dataset, args.tag,
                tuple(flag for flags in args.train_args for flag in shlex.split(flags)))


def options_of(args: argparse.Namespace) -> Options:
    """The call's options; the seconds left out default to the device's."""
    device = _device_type(args.device)
    return Options(budget=args.budget, stack=args.stack, device=args.device, precision=args.precision,
                   min_start=DEFAULT_MIN_START[device] if args.min_start is None else args.min_start,
                   selfcheck_budget=DEFAULT_SELFCHECK_BUDGET[device] if args.selfcheck_budget is None
                   else args.selfcheck_budget, max_unfinished_mb=args.max_unfinished_mb)


def print_status(out: Path) -> int:
    """What `out` holds, and its self-check, without torch."""
    rows = disk_status(out)
    print(format_status(rows) if rows else f"{out}: no runs (no run directory, no campaign record)")
    print(selfcheck_line(out))
    return 0


def _error(error) -> int:
    print(f"reproresnet campaign: error: {error}", file=sys.stderr)
    return 2


def disk_status(out: Path) -> list[dict]:
    """The status rows of what `out` holds: the runs its last call planned (campaign.json), then
    any other run directory in it, each as its files say (torch-free)."""
    try:
        planned = json.loads((out / STATE_DIR / STATE_FILE).read_text())["plan"]["runs"]
        planned = [name for name in planned if isinstance(name, str) and name != STATE_DIR and Path(name).name == name]
    except (OSError, ValueError, KeyError, TypeError):
        planned = []
    try:
        found = sorted(path.name for path in out.iterdir() if path.is_dir() and not path.name.startswith(("_", "."))
                       and any((path / name).exists() for name in (records.RUN_FILE, records.CHECKPOINT_FILE)))
    except OSError:
        found = []
    return [{"run": name, **run_state(out / name), "outcome": None, "detail": None}
            for name in dict.fromkeys([*planned, *found])]


def _device_type(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


if __name__ == "__main__":
    sys.exit(main())
