"""What a run record holds: `run.json` (`Record`, typed, with its JSON form: this module is
the only code that knows its keys, and the text of a run directory's lock line) and
`metrics.csv`, written (`Record.start`, then `Record.after_epoch`, the speed segments and
`Record.stop` as epochs end) and read (`read_run`, `RunRecord`, `load_runs`) here: the one
format that training, the sweep, the campaign and the report share. A record of an earlier
format is read through `migrate`. How the files reach the disk: rundir.py. Needs no torch.

run.json holds the run's config, recipe, schedule, data, network size, precision and
provenance; its status (running; stopped, resumable; complete; diverged), epochs done and
planned, its reported result (`final`: `summarize`) and one speed segment per process that
trained it. metrics.csv holds one row per epoch (METRIC_COLUMNS).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import statistics
import subprocess
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .checks import is_number
from .config import CIFAR10, CIFAR_TRAIN_IMAGES, ConfigError

RUN_FORMAT = "reproresnet-run/2"
# Earlier formats `migrate` reads: /1 wrote a deadline stop as "running" and speed segments
# without threads, engine or stacking.
OLD_RUN_FORMATS = ("reproresnet-run/1",)
RUN_FILE, METRICS_FILE, CHECKPOINT_FILE, BEST_FILE = "run.json", "metrics.csv", "checkpoint.pt", "best.pt"
LOCK_FILE = ".lock"  # "pid N on HOST" while a process writes the run (rundir.run_dir_lock)
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error",
    "seconds", "images_per_second", "peak_memory_mb",
)


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode()


def metrics_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_value(row.get(key)) for key in METRIC_COLUMNS} for row in rows)
    return buffer.getvalue().encode()


def _csv_value(value):
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else value


# ---------------------------------------------------------------- written

SPEED_NOTE = ("one segment per process that trained this run; seconds_per_epoch and images_per_second "
              "are medians of the training time of its epochs after its first (which compiles or captures "
              "and warms up; evaluation and writes are not timed; first_epoch_seconds is that first epoch's "
              "training time, set-up included); pack = runs sharing the device; engine = how each step ran "
              "(eager, or a replayed CUDA graph); stacked = the runs trained as one stacked network in this "
              "process, whose images_per_second is this run's own share; threads = this process's CPU threads")


def _known(cls, data: dict) -> dict:
    """The entries of a JSON object that are fields of the dataclass `cls` (others are left out)."""
    names = {item.name for item in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass
class Data:
    """The data a run saw (data.DataSplits.describe, with the recipe's preprocessing)."""
    dataset: str | None = None
    label: str | None = None  # CIFAR10, JPEG_MIRROR, ...: what its numbers may be called
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    classes: list | None = None
    normalization: str | None = None
    augmentation: str | None = None


@dataclass
class Device:
    """Where a run trained (describe_device): its type and name, the speedups it used, and the
    rest of what describe_device says of it (`about`: capability, memory, cores)."""
    type: str | None = None
    name: str | None = None
    speedups: dict | None = None
    about: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> "Device":
        known = _known(cls, data)
        return cls(**{**known, "about": {key: value for key, value in data.items() if key not in known}})

    def to_json(self) -> dict:
        shown = {"type": self.type, "name": self.name, **self.about}
        return shown if self.speedups is None else {**shown, "speedups": self.speedups}


@dataclass
class Final:
    """A complete run's reported result (`summarize`)."""
    test_error: float | None = None
    epoch: int | None = None
    selected_by: str | None = None  # final_epoch | best_validation
    seconds_per_epoch: float | None = None
    images_per_second: float | None = None


@dataclass
class SpeedSegment:
    """How one process trained a run from `first_epoch` on (`start`): the context of its s/epoch,
    which is filled in as its epochs end (`timed`). `chosen`: why it trains this way (the
    campaign's self-check)."""
    first_epoch: int
    last_epoch: int | None = None
    started: str | None = None
    device: str | None = None  # the device's type: cuda, cpu
    gpu: str | None = None
    pack: int = 1              # runs sharing the device
    threads: int | None = None
    precision: str | None = None
    channels_last: bool | None = None
    engine: str | None = None
    stacked: int = 1           # runs trained as one stacked network in this process
    compile_mode: str | None = None
    first_epoch_seconds: float | None = None
    seconds_per_epoch: float | None = None
    images_per_second: float | None = None
    epochs_timed: int = 0
    stacked_note: str | None = None
    chosen: str | None = None

    @classmethod
    def start(cls, first_epoch: int, **context) -> "SpeedSegment":
        return cls(first_epoch, started=now(), **context)

    @classmethod
    def from_json(cls, data: dict) -> "SpeedSegment":
        return cls(**_known(cls, data))

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: value for key, value in data.items()
                if value is not None or key not in ("stacked_note", "chosen")}

    def timed(self, metrics: list[dict]) -> None:
        """The process's s/epoch and img/s: the medians of its epochs after its first."""
        self.last_epoch = metrics[-1]["epoch"]
        if self.last_epoch == self.first_epoch:  # its training time includes compilation
            self.first_epoch_seconds = metrics[-1]["seconds"]
        timed = [row for row in metrics if self.first_epoch < row["epoch"] <= self.last_epoch]
        if timed:
            self.seconds_per_epoch = statistics.median(row["seconds"] for row in timed)
            self.images_per_second = statistics.median(row["images_per_second"] for row in timed)
            self.epochs_timed = len(timed)


@dataclass(kw_only=True)
class Record:
    """A run's record, `run.json`: what it trains and on what (config, recipe, schedule, data),
    where and how (`device`, `versions`, `git`: provenance), how far it is (status, epochs), its
    reported result (`final`) and one speed segment per process that trained it. Its JSON form:
    `to_json`, `from_json` (which checks it: a record is data from elsewhere)."""
    status: str  # one of STATUSES
    name: str | None = None
    arch: str
    config: dict  # TrainConfig.as_dict
    recipe: dict | None = None  # Recipe.as_dict
    schedule: dict | None = None  # Schedule.as_dict
    data: Data = field(default_factory=Data)
    precision: str | None = None  # bf16 and fp32 runs are different experiments
    device: Device | None = None
    versions: dict | None = None
    git: dict | None = None  # commit, dirty
    params: int | None = None
    flops_per_image: int | None = None
    distributed: dict | None = None  # distributed.World.describe
    epochs_planned: int
    epochs_done: int = 0
    final: Final | None = None
    message: str | None = None
    started: str | None = None
    updated: str | None = None
    speed: list[SpeedSegment] = field(default_factory=list)

    @classmethod
    def start(cls, *, name: str, config: dict, recipe: dict, schedule: dict, data: dict, precision: str,
              provenance: dict, speedups: dict, params: int, flops: int, distributed: dict, epochs: int,
              started: str | None = None, epochs_done: int = 0) -> "Record":
        """A run's record as a process starts it, before its next epoch: what it trains and on what,
        where and how (`provenance`: the device, versions and git state), and how far it is (a
        resumed run: when it `started`, its `epochs_done`)."""
        return cls(status="running", name=name, arch=config["arch"], config=config, recipe=recipe,
                   schedule=schedule, data=Data(**data), precision=precision,
                   device=Device.from_json({**provenance["device"], "speedups": speedups}),
                   versions=provenance["versions"], git=provenance["git"], params=params, flops_per_image=flops,
                   distributed=distributed, epochs_planned=epochs, epochs_done=epochs_done,
                   started=started or now(), updated=now())

    def after_epoch(self, metrics: list[dict], speed: list[SpeedSegment], val_size: int) -> None:
        """The fields that change with each epoch, once `metrics` are done."""
        done = len(metrics) == self.epochs_planned
        warmup = {segment.first_epoch for segment in speed}
        self.epochs_done, self.status, self.message = len(metrics), "complete" if done else "running", None
        self.final = Final(**summarize(metrics, val_size, warmup)) if done else None
        self.speed = speed

    def stop(self, speed: list[SpeedSegment], message: str) -> None:
        """Stopped before its end, resumable, `message` saying why; the speed segment of a process
        that trained nothing is left out."""
        self.status, self.message = "stopped", message
        self.speed = speed[:-1] if speed and speed[-1].last_epoch is None else speed

    def diverge(self, message: str) -> None:
        self.status, self.message = "diverged", message

    def to_json(self) -> dict:
        fields = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return {"format": RUN_FORMAT, **fields, "data": dataclasses.asdict(self.data),
                "device": self.device and self.device.to_json(),
                "final": self.final and dataclasses.asdict(self.final),
                "speed": {"segments": [segment.to_json() for segment in self.speed], "note": SPEED_NOTE}}

    @classmethod
    def from_json(cls, data) -> "Record":
        """The record a run.json's JSON value holds, of this format or an earlier one (`migrate`);
        ValueError, in one line, if it is not ours, lacks a field a reader needs, or holds a value
        a reader does not expect (`check_record`: the field, its value, what is accepted)."""
        if not isinstance(data, dict) or data.get("format") not in (RUN_FORMAT, *OLD_RUN_FORMATS):
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"format {found!r} is not {RUN_FORMAT!r}")
        data = migrate(data)
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f"field(s) {', '.join(missing)} missing")
        if not isinstance(data["data"], dict) or not isinstance(data["config"], dict):
            raise ValueError("'data' and 'config' must be objects")
        check_record(data)
        values = _known(cls, data)
        return cls(**{**values, "data": Data(**_known(Data, data["data"])),
                      "device": data.get("device") and Device.from_json(data["device"]),
                      "final": data.get("final") and Final(**_known(Final, data["final"])),
                      "speed": [SpeedSegment.from_json(segment) for segment in _segments(data)]})


def _segments(data: dict) -> list[dict]:
    """The speed segments of a run.json's JSON value: ValueError unless a list of objects each
    with its first epoch."""
    segments = (data.get("speed") or {"segments": []})
    segments = segments.get("segments") if isinstance(segments, dict) else segments
    if not isinstance(segments, list) or not all(isinstance(s, dict) and _is_count(s.get("first_epoch"))
                                                   for s in segments):
        raise ValueError(f"field 'speed.segments' = {_shown(segments)} is not valid: expected a list of "
                         "objects, each with its first_epoch (an integer >= 0)")
    return segments


def migrate(data: dict) -> dict:
    """A run.json's JSON value of an earlier format (OLD_RUN_FORMATS) as this format has it (a
    copy); one of this format as it is. reproresnet-run/1: a deadline stop written before the
    status "stopped" existed says "running" with the message "stopped cleanly ..."; its speed
    segments predate threads (not recorded: null), engines (null) and stacking (1: one network)."""
    if data.get("format") == RUN_FORMAT:
        return data
    data = {**data, "format": RUN_FORMAT}
    if data.get("status") == "running" and str(data.get("message") or "").startswith("stopped cleanly"):
        data["status"] = "stopped"
    speed = data.get("speed")
    if isinstance(speed, dict) and isinstance(speed.get("segments"), list):
        data["speed"] = {**speed, "segments": [{"threads": None, "engine": None, "stacked": 1, **segment}
                                               if isinstance(segment, dict) else segment
                                               for segment in speed["segments"]]}
    return data


def summarize(metrics: list[dict], val_size: int, warmup_epochs=(1,)) -> dict:
    """The run's reported result (`Final`'s fields): the final epoch (He et al.), or the epoch of
    the best validation error when a validation split was held out (the seed's protocol). Speed
    leaves out `warmup_epochs` (1-based), the first epoch of every process: it compiles."""
    if val_size:
        chosen = min(metrics, key=lambda row: row["val_error"])
        selected_by = "best_validation"
    else:
        chosen = metrics[-1]
        selected_by = "final_epoch"
    timed = [row for row in metrics if row["epoch"] not in warmup_epochs] or metrics
    return {"test_error": chosen["test_error"], "epoch": chosen["epoch"], "selected_by": selected_by,
            "seconds_per_epoch": statistics.median(row["seconds"] for row in timed),
            "images_per_second": statistics.median(row["images_per_second"] for row in timed)}


# ---------------------------------------------------------------- read


_REQUIRED = ("arch", "status", "config", "data", "epochs_planned", "epochs_done")
STATUSES = ("running", "stopped", "complete", "diverged")

# A name (a run's, a network's, a tag, a bundle's, a file's in a bundle) becomes a file or folder
# name and part of a page's address: one path component that no shell, URL or Markdown reads as
# anything but itself.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")
NAME_RULE = ("a name of ASCII letters, digits and '_', '.', '+', '-', starting with a letter, digit or '_', "
             "at most 200 characters")


def is_safe_name(value) -> bool:
    """A single path component: no '/', '\\', '..', NUL, space or leading '.'; see NAME_RULE."""
    return isinstance(value, str) and _SAFE_NAME.fullmatch(value) is not None


def run_name(arch: str, seed: int, tag: str | None = None) -> str:
    """A run directory's name: `<arch>-seed<k>`, or `<arch>-<tag>-seed<k>` for a variant; a tag
    that is not a safe name (NAME_RULE) is a ConfigError."""
    check_tag(tag)
    return f"{arch}-{tag}-seed{seed}" if tag else f"{arch}-seed{seed}"


def check_tag(tag: str | None) -> None:
    """A tag is part of run directories' names: ConfigError unless it is a safe name (NAME_RULE)."""
    if tag is not None and not is_safe_name(tag):
        raise ConfigError(f"tag={_shown(tag)} is not valid: expected {NAME_RULE}")


def _shown(value) -> str:
    """A bad value as an error message shows it: on one line, at most about 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text_or_none(value) -> bool:
    return value is None or isinstance(value, str)


# Each checked field of a run record: (where in the record, accepted, what is accepted). Names
# become paths and addresses; the other strings are shown in pages, as text (escaped there);
# the counts are compared and the result printed.
_FIELD_CHECKS = (
    (("name",), lambda value: value is None or is_safe_name(value), NAME_RULE),
    (("arch",), is_safe_name, NAME_RULE),
    (("status",), lambda value: value in STATUSES, f"one of {list(STATUSES)}"),
    (("epochs_planned",), _is_count, "an integer >= 0"),
    (("epochs_done",), _is_count, "an integer >= 0"),
    (("message",), _text_or_none, "text or null"),
    (("data", "label"), _text_or_none, "text or null"),
    (("data", "dataset"), _text_or_none, "text or null"),
    (("device",), lambda value: value is None or isinstance(value, dict), "an object or null"),
    (("device", "name"), _text_or_none, "text or null"),
    (("final",), lambda value: value is None or isinstance(value, dict), "an object or null"),
    (("final", "test_error"), lambda value: value is None or is_number(value), "a finite number or null"),
)


def check_record(record: dict) -> None:
    """Every field a reader relies on, of the type it expects: ValueError naming the first
    that is not (its place in the record, its value, what is accepted). A record is data from
    elsewhere (a bundle, another machine): its names become paths, its strings are shown."""
    for where, accepted, rule in _FIELD_CHECKS:
        parent = record
        for key in where[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and where[-1] in parent and not accepted(parent[where[-1]]):
            raise ValueError(f"field {'.'.join(where)!r} = {_shown(parent[where[-1]])} is not valid: "
                             f"expected {rule}")


def read_run(run_dir: Path) -> Record:
    """The run record of `run_dir`; ValueError, naming the file, if it is missing, corrupt, not
    ours, or lacks a field a reader needs (`Record.from_json`)."""
    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON run record ({error})") from error
    try:
        return Record.from_json(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def is_run_json(content: bytes) -> bool:
    """The bytes are a run.json of ours, by its format's marker (of this format or an earlier one)."""
    try:
        data = json.loads(content)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("format") in (RUN_FORMAT, *OLD_RUN_FORMATS)


@dataclass(frozen=True)
class RunRecord:
    """One run directory and its record, `run.json`."""

    run_dir: Path
    record: Record

    @classmethod
    def read(cls, run_dir) -> "RunRecord":
        return cls(Path(run_dir), read_run(run_dir))

    @property
    def name(self) -> str:
        return self.record.name or self.run_dir.name

    @property
    def arch(self) -> str:
        return self.record.arch

    @property
    def status(self) -> str:
        """running, stopped (resumable), complete or diverged. A run is "running" only while a
        process holds its lock: one left "running" by a killed process reads "stopped"."""
        status = self.record.status
        return "stopped" if status == "running" and not lock_held(self.run_dir) else status

    @property
    def label(self) -> str:
        return self.record.data.label or self.record.data.dataset or "unknown"

    @property
    def config(self) -> dict:
        return self.record.config

    @property
    def device(self) -> str:
        return (self.record.device and self.record.device.name) or "unknown device"

    @property
    def batch_size(self):
        return (self.record.recipe or {}).get("batch_size", self.config.get("batch_size"))

    @property
    def test_error(self) -> float | None:
        return self.record.final and self.record.final.test_error

    @property
    def full_training_set(self) -> bool:
        """Trained on the whole training split (no `limit_train`, not the small synthetic set)."""
        data = self.record.data
        return self.config.get("limit_train") is None and \
            (data.n_train or 0) + (data.n_val or 0) >= CIFAR_TRAIN_IMAGES

    def is_result_on(self, label: str) -> bool:
        """A complete run on the whole of the data set `label` names: what a results table averages."""
        return (self.status == "complete" and self.label == label and self.full_training_set
                and self.config.get("limit_test") is None and self.test_error is not None)

    @property
    def is_cifar10_result(self) -> bool:
        """A complete run on the whole of CIFAR-10: the only kind the error table averages."""
        return self.is_result_on(CIFAR10)

    def last_test_error(self) -> tuple[int, float] | None:
        """(epoch, test error %) of the last epoch in metrics.csv that has one: an unfinished
        run's latest number (read without pandas: the campaign prints it on the GPU machine)."""
        try:
            with open(self.run_dir / METRICS_FILE, newline="") as file:
                rows = [row for row in csv.DictReader(file) if row.get("test_error")]
            return (int(rows[-1]["epoch"]), float(rows[-1]["test_error"])) if rows else None
        except (OSError, ValueError, KeyError):
            return None

    def metrics(self):
        """metrics.csv as a pandas DataFrame; None if there is none or it has no rows; ValueError,
        naming the file, if it is not a table of numbers by epoch (damaged, or not ours)."""
        import pandas as pd
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return None
        try:
            table = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path}: not a readable metrics table ({_first_line(error)})") from None
        wrong = [column for column in table.columns
                 if column in METRIC_COLUMNS and not pd.api.types.is_numeric_dtype(table[column])]
        if "epoch" not in table.columns or wrong:
            found = f"column(s) {', '.join(map(_shown, wrong))} not numbers" if wrong else "no 'epoch' column"
            raise ValueError(f"{path}: not a metrics table of a run ({found}; expected numbers in the columns "
                             f"{', '.join(METRIC_COLUMNS)})")
        return table if len(table) else None


def complete_run(run_dir: Path) -> RunRecord | None:
    """The run in `run_dir` if its record is readable and says complete, else None."""
    try:
        run = RunRecord.read(run_dir)
    except ValueError:
        return None
    return run if run.status == "complete" else None


def load_runs(results_dir) -> tuple[list[RunRecord], list[dict]]:
    """Every `*/run.json` under `results_dir`: (runs, problems).

    A record `read_run` refuses goes into `problems` as {"path", "problem"}, as does an
    executed training notebook without a record beside it; the others are returned, sorted
    by name. A missing `results_dir` means no runs yet, not a problem.
    """
    runs, problems = [], []
    for path in sorted(Path(results_dir).glob(f"*/{RUN_FILE}")):
        try:
            run = RunRecord.read(path.parent)
            if not is_safe_name(run.name):  # a record without a name is named by its folder
                raise ValueError(f"{path}: its folder's name {_shown(run.name)} is not valid: expected {NAME_RULE}")
            runs.append(run)
        except ValueError as error:
            problems.append({"path": str(path), "problem": str(error).removeprefix(f"{path}: ")})
    for notebook in sorted(Path(results_dir).glob("*/train.ipynb")):
        if not (notebook.parent / RUN_FILE).exists():
            problems.append({"path": str(notebook), "problem": f"no {RUN_FILE} beside it: the notebook "
                             "stopped before the first epoch ended (its page shows why)"})
    return runs, problems


def lock_line() -> str:
    """The line the holder of a run directory's lock writes in it (rundir.run_dir_lock)."""
    return f"pid {os.getpid()} on {platform.node()}"


def parse_lock_line(text: str) -> tuple[int, str] | None:
    """(pid, host) of a `lock_line`, or None where `text` is not of its shape."""
    words = text.split()
    if len(words) == 4 and words[0] == "pid" and words[1].isdigit() and words[2] == "on":
        return int(words[1]), words[3]
    return None


def lock_owner(run_dir: Path) -> tuple[int, str] | None:
    """(pid, host) of the process that holds, or last held, the run's lock (`lock_line`), or
    None where there is no lock file or its line is not of that shape."""
    try:
        return parse_lock_line((Path(run_dir) / LOCK_FILE).read_text())
    except OSError:
        return None


def lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock, read from the `lock_line` its holder wrote
    (reading, not locking: a probe would make a starting writer fail). A lock written on
    another host cannot be checked from here and counts as held."""
    owner = lock_owner(run_dir)
    if owner is None:
        return False
    pid, host = owner
    if host != platform.node():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(device) -> dict:
    """Where a run or benchmark ran and with what: the device, library versions, git state."""
    return {"device": describe_device(device), "versions": library_versions(), "git": git_state()}


def describe_device(device) -> dict:
    import torch
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": properties.name, "capability": f"{properties.major}.{properties.minor}",
                "memory_mb": properties.total_memory // 2**20, "multiprocessors": properties.multi_processor_count}
    return {"type": device.type, "name": _cpu_name(), "cpu_count": os.cpu_count()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def git_state() -> dict:
    """Commit and dirtiness of the source tree this package runs from, if it is a git clone."""
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def library_versions() -> dict:
    import numpy
    import torch
    import torchvision

    from . import __version__
    return {"reproresnet": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
