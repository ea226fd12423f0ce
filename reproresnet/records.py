"""Run records on disk, written and read: atomic writes, one writer per run directory,
provenance, and the one reader that training, the sweep and the report share.

A run directory holds `run.json` (config, provenance, status, summary), `metrics.csv`
(one row per epoch) and `checkpoint.pt`. Every file is replaced atomically, so a reader
or a killed process never sees half a file.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import platform
import queue
import re
import subprocess
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .config import CIFAR10, CIFAR_TRAIN_IMAGES

RUN_FORMAT = "reproresnet-run/1"
BENCH_FORMAT = "reproresnet-bench/1"  # written by bench.py, read by report.py
RUN_FILE, METRICS_FILE, CHECKPOINT_FILE, BEST_FILE = "run.json", "metrics.csv", "checkpoint.pt", "best.pt"
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error",
    "seconds", "images_per_second", "peak_memory_mb",
)


# Our temporary files: ".reproresnet.<name>.<random>.tmp"; only these are ever cleaned up.
TEMP_PREFIX, TEMP_SUFFIX = ".reproresnet.", ".tmp"


class RunDirError(RuntimeError):
    """The run directory cannot be used: in use, unwritable, full, or holding another run."""


def write_atomic(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    The rename is atomic on POSIX, so `path` holds either the old or the new content.
    On failure (a full disk, say) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; records are for reading
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(error):
            raise RunDirError(f"disk full while writing {path}; free some space and rerun with "
                              f"--resume (the last complete files are intact)") from error
        raise


def _disk_full(error: BaseException | None) -> bool:
    # torch.save reports a failed write as a RuntimeError whose context is the OSError.
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def is_temporary(name: str) -> bool:
    """A temporary file of `write_atomic` (a killed writer leaves it behind)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def remove_orphans(run_dir: Path) -> None:
    """Delete the temporary files a killed `write_atomic` left (no one else's); call with the
    run directory locked."""
    for orphan in Path(run_dir).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        orphan.unlink(missing_ok=True)


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode()


def metrics_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_value(row.get(key)) for key in METRIC_COLUMNS} for row in rows)
    return buffer.getvalue().encode()


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda file: file.write(json_bytes(data)))


def write_metrics(path: Path, rows: list[dict]) -> None:
    write_atomic(path, lambda file: file.write(metrics_bytes(rows)))


def write_unless_same(path: Path, content: bytes) -> None:
    """Write `content` to `path` atomically unless `path` already holds it."""
    try:
        if Path(path).read_bytes() == content:
            return
    except OSError:
        pass
    write_atomic(path, lambda file: file.write(content))


def write_checkpoint(path: Path, state: dict) -> None:
    """`state` (tensors and plain values only, so `read_checkpoint` can load it) via torch.save."""
    import torch
    write_atomic(path, lambda file: torch.save(state, file))


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as `write_checkpoint` wrote it. Loaded with weights_only=True: a pickle
    holding anything but tensors and plain values (which could run code as it loads) is
    refused without being run. ValueError, in one line, if it cannot be read."""
    import pickle

    import torch
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle before refusing it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error:\s*([^.\n]+)", str(error))
        raise ValueError(f"{path} holds objects other than tensors and plain values, refused unloaded "
                         f"(loading them could run code; {found.group(1) if found else 'not a checkpoint'})") from None
    except Exception as error:  # truncated, not a torch file, unreadable
        raise ValueError(f"{path} cannot be read ({_first_sentence(error)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint")
    return state


def progress(run_dir: Path) -> tuple[int, bool]:
    """How far the run in `run_dir` got: (epochs done, complete), from its run.json or its
    checkpoint, whichever is further along (the checkpoint is written first); (0, False) if
    neither can be read."""
    found = [(0, False)]
    try:
        record = read_run(run_dir)
        found.append((record["epochs_done"], record["status"] == "complete"))
    except ValueError:
        pass
    if (Path(run_dir) / CHECKPOINT_FILE).exists():
        try:
            checkpoint = read_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
            status = (checkpoint.get("record") or {}).get("status")
            found.append((len(checkpoint.get("metrics", [])), status == "complete"))
        except ValueError:
            pass
    return max(found)


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].rstrip(".")


class Writer:
    """Runs file writes in the order they are submitted: at once, or (`background=True`) in one
    background thread, so that a GPU keeps training while a checkpoint goes to disk. What is
    submitted must not change afterwards (copies, not live tensors). A write that failed is
    raised again at the next `submit` or at `flush`; `flush` waits for every write."""

    def __init__(self, background: bool = False):
        self.background, self.error = background, None
        self.queue: queue.Queue | None = None
        if background:
            self.queue = queue.Queue()
            threading.Thread(target=self._work, name="reproresnet-writer", daemon=True).start()

    def submit(self, write, *args) -> None:
        self._raise()
        if self.queue is None:
            write(*args)
        else:
            self.queue.put((write, args))

    def flush(self) -> None:
        if self.queue is not None:
            self.queue.join()
        self._raise()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
        finally:
            if self.queue is not None:
                self.queue.put(None)  # ends the thread

    def _raise(self) -> None:
        if self.error is not None:  # stays: nothing queued after a failed write may be written
            raise self.error

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            write, args = item
            try:
                if self.error is None:  # after a failure nothing more is written: files keep their order
                    write(*args)
            except BaseException as error:  # noqa: BLE001 (handed to the training thread)
                self.error = error
            finally:
                self.queue.task_done()


def _csv_value(value):
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else value


_REQUIRED = ("arch", "status", "config", "data", "epochs_planned", "epochs_done")


def run_name(arch: str, seed: int, tag: str | None = None) -> str:
    """A run directory's name: `<arch>-seed<k>`, or `<arch>-<tag>-seed<k>` for a variant."""
    return f"{arch}-{tag}-seed{seed}" if tag else f"{arch}-seed{seed}"


def read_run(run_dir: Path) -> dict:
    """The run record of `run_dir`; ValueError if it is missing, corrupt, not ours, or lacks
    a field a reader needs."""
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON run record ({error})") from error
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: format {found!r} is not {RUN_FORMAT!r}")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{path}: field(s) {', '.join(missing)} missing")
    if not isinstance(record["data"], dict) or not isinstance(record["config"], dict):
        raise ValueError(f"{path}: 'data' and 'config' must be objects")
    if record["status"] == "running" and str(record.get("message") or "").startswith("stopped cleanly"):
        record["status"] = "stopped"  # a deadline stop written before the status "stopped" existed
    return record


@dataclass(frozen=True)
class RunRecord:
    """One run directory and its parsed `run.json`."""

    run_dir: Path
    record: dict

    @classmethod
    def read(cls, run_dir) -> "RunRecord":
        return cls(Path(run_dir), read_run(run_dir))

    @property
    def name(self) -> str:
        return self.record.get("name") or self.run_dir.name

    @property
    def arch(self) -> str:
        return self.record["arch"]

    @property
    def status(self) -> str:
        """running, stopped (resumable), complete or diverged. A run is "running" only while a
        process holds its lock: one left "running" by a killed process reads "stopped"."""
        status = self.record["status"]
        return "stopped" if status == "running" and not lock_held(self.run_dir) else status

    @property
    def label(self) -> str:
        return self.record["data"].get("label") or self.record["data"].get("dataset") or "unknown"

    @property
    def config(self) -> dict:
        return self.record["config"]

    @property
    def device(self) -> str:
        return (self.record.get("device") or {}).get("name") or "unknown device"

    @property
    def batch_size(self):
        return (self.record.get("recipe") or {}).get("batch_size", self.config.get("batch_size"))

    @property
    def test_error(self) -> float | None:
        final = self.record.get("final") or {}
        return final.get("test_error")

    @property
    def full_training_set(self) -> bool:
        """Trained on the whole training split (no `limit_train`, not the small synthetic set)."""
        data = self.record["data"]
        return self.config.get("limit_train") is None and \
            data.get("n_train", 0) + data.get("n_val", 0) >= CIFAR_TRAIN_IMAGES

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
        """metrics.csv as a pandas DataFrame, or None if it cannot be read."""
        import pandas as pd
        try:
            return pd.read_csv(self.run_dir / METRICS_FILE)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            return None


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
            runs.append(RunRecord.read(path.parent))
        except ValueError as error:
            problems.append({"path": str(path), "problem": str(error).removeprefix(f"{path}: ")})
    for notebook in sorted(Path(results_dir).glob("*/train.ipynb")):
        if not (notebook.parent / RUN_FILE).exists():
            problems.append({"path": str(notebook), "problem": f"no {RUN_FILE} beside it: the notebook "
                             "stopped before the first epoch ended (its page shows why)"})
    return runs, problems


def load_benches(results_dir) -> tuple[list[dict], list[dict]]:
    """Every `bench-*/bench.json` under `results_dir`: (benchmarks, problems)."""
    benches, problems = [], []
    for path in sorted(Path(results_dir).glob("bench-*/bench.json")):
        try:
            bench = json.loads(path.read_text())
            if not isinstance(bench, dict) or bench.get("format") != BENCH_FORMAT:
                found = bench.get("format") if isinstance(bench, dict) else type(bench).__name__
                raise ValueError(f"format {found!r} is not {BENCH_FORMAT!r}")
            if not isinstance(bench.get("rows"), list):
                raise ValueError("field 'rows' missing")
        except (OSError, UnicodeDecodeError, ValueError) as error:
            problems.append({"path": str(path), "problem": str(error)})
            continue
        benches.append({**bench, "name": path.parent.name})  # its page in the book: book/runs/<name>
    return benches, problems


@contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on `run_dir` for one writer.

    flock is released by the kernel when the process dies, so a crash never leaves it stuck.
    """
    run_dir = Path(run_dir)
    created = [path for path in (run_dir, *run_dir.parents) if not path.exists()]
    lock = run_dir / ".lock"
    fresh = not lock.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
    except OSError as error:
        _remove_created(created)
        raise _unwritable(run_dir, error) from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"run directory {run_dir} is in use by {_lock_owner(handle)}; wait for it to "
                              f"finish or choose another --out") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {platform.node()}")
            handle.flush()
        except OSError as error:  # a full disk: leave nothing this call created
            with suppress(OSError):  # closing flushes the line again
                handle.close()
            if fresh:
                lock.unlink(missing_ok=True)
            _remove_created(created)
            raise _unwritable(run_dir, error) from error
        yield
    finally:
        handle.close()


def lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock, read from the "pid N on HOST" its holder
    wrote (reading, not locking: a probe would make a starting writer fail). A lock written
    on another host cannot be checked from here and counts as held."""
    try:
        owner = (Path(run_dir) / ".lock").read_text().split()
    except OSError:
        return False
    if len(owner) != 4 or owner[0] != "pid" or not owner[1].isdigit():
        return False
    if owner[3] != platform.node():
        return True
    try:
        os.kill(int(owner[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _unwritable(run_dir: Path, error: OSError) -> RunDirError:
    if _disk_full(error):
        return RunDirError(f"disk full while taking the lock of run directory {run_dir}; free some space "
                           f"and run again (nothing was written)")
    return RunDirError(f"cannot write to run directory {run_dir}: {error.strerror}; choose a writable --out")


def _remove_created(directories: list[Path]) -> None:
    """Remove the directories a failed call created (innermost first), if still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _lock_owner(handle) -> str:
    """The "pid N on HOST" line the holder writes just after it takes the lock: on a busy
    machine it may not be there yet, so wait for it a little."""
    deadline = time.monotonic() + 10
    while True:
        handle.seek(0)
        owner = handle.read().strip()
        if owner.startswith("pid ") and " on " in owner or time.monotonic() > deadline:
            return owner or "another process"
        time.sleep(0.01)


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
