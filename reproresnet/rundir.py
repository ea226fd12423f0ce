"""A run directory's life: one writer at a time, files replaced atomically in a fixed order,
checkpoints saved and loaded (tensors and plain values only), and a resumption that
continues the run a directory holds or refuses, in one line, one it cannot.

A run directory holds `run.json` and `metrics.csv` (what they hold: records.py),
`checkpoint.pt` and, with a validation split, `best.pt`. After every epoch a run writes,
each atomically and in this order (`save`): the checkpoint (model, optimizer, metrics and
the run record: the source of truth), metrics.csv, then run.json. A process killed at any
instant leaves every file whole, old or new, and `prepare` rewrites from the checkpoint
what is behind it. Needs torch only to save and load checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import fcntl
import json
import os
import queue
import re
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from . import records
from .config import ConfigError, TrainConfig, differences
from .records import CHECKPOINT_FILE, LOCK_FILE, METRICS_FILE, RUN_FILE

# Our temporary files: ".reproresnet.<name>.<random>.tmp"; only these are ever cleaned up.
TEMP_PREFIX, TEMP_SUFFIX = ".reproresnet.", ".tmp"
# What a checkpoint must hold, and of which type, to be continued from.
CHECKPOINT_FIELDS = {"model": dict, "optimizer": dict, "metrics": list, "config": dict, "started": str}


class RunDirError(RuntimeError):
    """The run directory cannot be used: in use, unwritable, full, or holding another run."""


class DiskFull(RunDirError):
    """A file could not be written for want of space; the file is as it was. Its message says
    what, not what to do next: the command that wrote it knows (`with_advice`)."""

    def with_advice(self, advice: str) -> "DiskFull":
        return DiskFull(f"{self}; {advice}")


# ---------------------------------------------------------------- atomic files

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
            raise DiskFull(f"disk full while writing {path} (it is as it was)") from error
        raise


def refused_by_os(error: OSError, next_step: str) -> str:
    """One line for a file the file system refused (read-only, a file where a folder should be,
    no permission): which, why, and the next step."""
    return f"{error.filename or 'a file'}: {error.strerror or error}; {next_step}"


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


def write_bytes(path: Path, content: bytes) -> None:
    write_atomic(path, lambda file: file.write(content))


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda file: file.write(records.json_bytes(data)))


def write_metrics(path: Path, rows: list[dict]) -> None:
    write_atomic(path, lambda file: file.write(records.metrics_bytes(rows)))


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


# ---------------------------------------------------------------- one writer per directory

@contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on `run_dir` for one writer.

    flock is released by the kernel when the process dies, so a crash never leaves it stuck.
    """
    run_dir = Path(run_dir)
    created = [path for path in (run_dir, *run_dir.parents) if not path.exists()]
    lock = run_dir / LOCK_FILE
    fresh = not lock.exists()
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = _locked(lock, run_dir)
    except OSError as error:
        _remove_created(created)
        raise _unwritable(run_dir, error) from error
    try:
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(records.lock_line())  # records.lock_held reads it
            handle.flush()
        except OSError as error:  # a full disk
            raise _unwritable(run_dir, error) from error
        yield
    except Exception:
        if fresh and _wrote_nothing(run_dir, before):
            # Refused, having written nothing: leave the directory as this call found it, no lock, nor
            # the directories it created (removed while still locked: `_locked` tells a removed lock
            # file from the one at the path).
            with suppress(OSError):
                lock.unlink()
                _remove_created(created)
        raise
    finally:
        with suppress(OSError):  # closing flushes the owner line, again on a full disk
            handle.close()


def _wrote_nothing(run_dir: Path, before: set) -> bool:
    """No file or folder in `run_dir` but its lock that was not there before (`before`)."""
    try:
        return set(os.listdir(run_dir)) - {LOCK_FILE} == before - {LOCK_FILE}
    except OSError:
        return False


def _locked(lock: Path, run_dir: Path):
    """The lock file, open and flocked; RunDirError if another process holds it. A lock
    file removed by its last holder (see run_dir_lock) is opened afresh."""
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(handle)
            handle.close()
            raise RunDirError(f"run directory {run_dir} is in use by {owner}; wait for it to "
                              f"finish or choose another --out") from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # locked a file its holder had removed: take the one at the path now


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
    """The line the holder writes just after it takes the lock (records.lock_line): on a busy
    machine it may not be there yet, so wait for it a little."""
    deadline = time.monotonic() + 10
    while True:
        handle.seek(0)
        owner = handle.read().strip()
        if records.parse_lock_line(owner) or time.monotonic() > deadline:
            return owner or "another process"
        time.sleep(0.01)


# ---------------------------------------------------------------- saving an epoch

def save(writer: Writer, run_dir: Path, record: records.Record, metrics: list[dict],
         checkpoint: dict | None) -> None:
    """The run's files, in the writer's order: the checkpoint first, holding the record as plain
    JSON values (the source of truth a resumption rebuilds metrics.csv and run.json from), then
    metrics.csv, then run.json. What is handed to the writer is a copy (the files' bytes): training
    goes on while a background writer works."""
    record.updated = records.now()
    content = records.json_bytes(record.to_json())
    if checkpoint is not None:
        writer.submit(write_checkpoint, run_dir / CHECKPOINT_FILE, {**checkpoint, "record": json.loads(content)})
    writer.submit(write_bytes, run_dir / METRICS_FILE, records.metrics_bytes(metrics))
    writer.submit(write_bytes, run_dir / RUN_FILE, content)


def snapshot(value, background: bool):
    """`value` as it is now: every tensor copied to the CPU for a background writer (a copy
    of a state dict, not a view of weights that the next step changes)."""
    import torch
    if not background:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return type(value)((key, snapshot(item, True)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(item, True) for item in value)
    return copy.deepcopy(value)


# ---------------------------------------------------------------- resuming

def how_far(run_dir: Path, checkpoint: dict | None = None) -> tuple[int, bool]:
    """How far the run in `run_dir` got: (epochs done, complete), from its run.json or its
    checkpoint (`checkpoint` if it was read already), whichever is further along (the
    checkpoint is written first); (0, False) if neither can be read."""
    found = [(0, False)]
    try:
        record = records.read_run(run_dir)
        found.append((record.epochs_done, record.status == "complete"))
    except ValueError:
        pass
    if checkpoint is None and (Path(run_dir) / CHECKPOINT_FILE).exists():
        try:
            checkpoint = read_checkpoint(Path(run_dir) / CHECKPOINT_FILE)
        except ValueError:
            pass
    if checkpoint is not None:
        found.append((len(checkpoint.get("metrics", [])), _checkpoint_complete(checkpoint)))
    return max(found)


def check_run_dir(run_dir: Path) -> None:
    """Before anything is written: the folder's name can name a run (its record and its page:
    ConfigError if not), and the folder is ours to write into (`check_ours`)."""
    run_dir = Path(run_dir)
    if not records.is_safe_name(run_dir.name):
        raise ConfigError(f"out={str(run_dir)!r} is not valid: its last folder names the run (its record and "
                          f"its page), so it must be {records.NAME_RULE}")
    check_ours(run_dir)


def check_ours(run_dir: Path, instead: str = "choose a new or empty --out") -> None:
    """RunDirError unless `run_dir` is absent, empty (but for our lock and temporary files, and the
    notebook papermill is writing), or holds a run of ours (`holds_run`): a folder holding files
    we did not write is never written into, whatever their names. `instead`: the next step to name."""
    run_dir = Path(run_dir)
    try:
        found = sorted(path.name for path in run_dir.iterdir()
                       if path.name != LOCK_FILE and not is_temporary(path.name) and not _papermill_output(path))
    except OSError:
        return  # absent, or not a folder, or unreadable: taking its lock says which
    if found == [records.BEST_FILE] and _our_lock(run_dir):
        return  # a first epoch killed after best.pt, before the checkpoint (the order `save` writes in)
    if found and not holds_run(run_dir):
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise RunDirError(f"{run_dir} holds files reproresnet did not write ({shown}; no run record or checkpoint "
                          f"of a run of ours): it is never written into; {instead}")


def holds_run(run_dir: Path) -> bool:
    """The folder holds a run of ours, by our formats' own markers: a run.json whose format is
    ours, or a checkpoint holding what a run's checkpoint holds (file names alone are not enough)."""
    try:
        if records.is_run_json((Path(run_dir) / RUN_FILE).read_bytes()):
            return True
    except OSError:
        pass
    if not (Path(run_dir) / CHECKPOINT_FILE).is_file():
        return False
    try:
        load_checkpoint(Path(run_dir) / CHECKPOINT_FILE, None)
    except RunDirError:
        return False
    return True


def _our_lock(run_dir: Path) -> bool:
    """The folder holds the lock a process of ours wrote (records.lock_line, run_dir_lock)."""
    return records.lock_owner(run_dir) is not None


def _papermill_output(path: Path) -> bool:
    """The training notebook papermill writes into a run directory as it executes (the sweep)."""
    if path.name != "train.ipynb":
        return False
    try:
        return "papermill" in json.loads(path.read_bytes()).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class Found:
    """The run directories as `opened` found them: the runs still to train (fresh, or resumed from
    their checkpoints), the records of the runs complete already, and the writer of their files."""
    configs: list[TrainConfig]
    to_train: list[TrainConfig]
    checkpoints: list                  # of `to_train`: the checkpoint to continue from, or None
    complete: dict                     # `out` -> the record (records.Record) of a run complete already
    writer: Writer

    def results(self, trained: list[records.Record]) -> list[records.Record]:
        """Every run's record in `configs`' order: `trained` (those of `to_train`) and the complete."""
        found = {**self.complete, **{config.out: record for config, record in zip(self.to_train, trained)}}
        return [found[config.out] for config in self.configs]


@contextmanager
def opened(configs: list[TrainConfig], resume: bool, *, main: bool = True, writer: Writer | None = None,
           background: bool = False):
    """The run directories of `configs`, held while the runs train: each checked before anything
    is written, then (by process 0, `main`) locked and rid of orphans, then prepared; runs resumed
    as one stack must be at the same epoch. Every file is written before the locks are released; a
    full disk names the next step. Yields what was found (`Found`); the writer is `writer` or our
    own (in the background on CUDA: `background`)."""
    run_dirs = [Path(config.out) for config in configs]
    for run_dir in run_dirs:  # no lock in a folder that is not ours
        check_run_dir(run_dir)
    try:
        with ExitStack() as held:
            if main:
                for run_dir in run_dirs:
                    held.enter_context(run_dir_lock(run_dir))
                    remove_orphans(run_dir)
            if writer is None:  # the exit stack unwinds in reverse: the writes end, then the locks
                writer = held.enter_context(Writer(background))
            else:
                held.callback(writer.flush)
            found = Found(configs, [], [], {}, writer)
            for config in configs:
                # Every process decides from the same files: process 0 writes none before the first
                # epoch ends, which needs the others (DDP's collectives).
                checkpoint, complete = prepare(Path(config.out), config, resume, repair=main)
                if complete is not None:
                    found.complete[config.out] = complete
                else:
                    found.to_train.append(config)
                    found.checkpoints.append(checkpoint)
            check_same_epoch(found.to_train, found.checkpoints)
            yield found
    except DiskFull as full:
        raise full.with_advice(_next_step(run_dirs)) from None


def _next_step(run_dirs: list[Path]) -> str:
    """What to do after a full disk: resume where an epoch was saved, else start again."""
    epochs = min(how_far(run_dir)[0] for run_dir in run_dirs)
    if epochs:
        return f"free some space and rerun with --resume (the files of epoch {epochs} are intact)"
    return "free some space and run again (no epoch was saved)"


def last_threads(run_dir: Path) -> int | None:
    """The CPU threads the run in `run_dir` last trained with; None before its first epoch."""
    try:
        threads = records.read_run(run_dir).speed[-1].threads
    except (ValueError, IndexError):
        return None
    return threads if isinstance(threads, int) and threads >= 1 else None


def prepare(run_dir: Path, config: TrainConfig, resume: bool,
            repair: bool = True) -> tuple[dict | None, records.Record | None]:
    """(the checkpoint to continue from, the record of a complete run); (None, None) for a
    fresh run. Refuses to mix two runs in one directory. The checkpoint is the source of truth:
    a record or metrics.csv behind it or unreadable is rewritten from it (if `repair`)."""
    checkpoint_path = run_dir / CHECKPOINT_FILE
    record_path = run_dir / RUN_FILE
    if not checkpoint_path.exists() and not record_path.exists():
        return None, None
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it, "
                          f"or choose another --out")
    try:
        record = records.read_run(run_dir)
    except ValueError:
        record = None  # unreadable: the checkpoint decides
    complete = record is not None and record.status == "complete"
    try:
        checkpoint = load_checkpoint(checkpoint_path, record) if checkpoint_path.exists() else None
    except RunDirError as damaged:
        if not complete:
            raise RunDirError(f"{damaged}; delete it to start the run again") from damaged
        _check_same_settings(run_dir, record.config, config)
        return None, dataclasses.replace(record, message=f"{damaged}: damaged, but the run is complete and no "
                                                         "longer needs it")
    saved = checkpoint["config"] if checkpoint else record.config if record else None
    if saved is not None:
        _check_same_settings(run_dir, saved, config)
    ahead = complete and checkpoint is not None and record.epochs_done > len(checkpoint["metrics"])
    if checkpoint is not None and checkpoint["record"] is not None and not ahead:
        record = checkpoint["record"]
        if repair:
            write_unless_same(run_dir / METRICS_FILE, records.metrics_bytes(checkpoint["metrics"]))
            write_unless_same(record_path, records.json_bytes(record.to_json()))
    if record is not None and record.status == "complete":
        return None, record
    return checkpoint, None  # None: killed before its first epoch ended, so start again


def load_checkpoint(path: Path, record: records.Record | None) -> dict:
    """The checkpoint at `path`, never unpickling anything but tensors and plain values, its run
    record and speed segments typed (records.Record); one written before checkpoints held their
    run record gets it from `record` (run.json)."""
    try:
        checkpoint = read_checkpoint(path)
    except ValueError as error:
        raise RunDirError(str(error)) from None
    wrong = [key for key, kind in CHECKPOINT_FIELDS.items() if not isinstance(checkpoint.get(key), kind)]
    if wrong:
        raise RunDirError(f"{path} is not a checkpoint of a run: {', '.join(wrong)} missing or of the wrong type")
    try:
        checkpoint["speed"] = [records.SpeedSegment.from_json(segment) for segment in checkpoint.get("speed", [])]
        if checkpoint.get("record") is not None:
            checkpoint["record"] = records.Record.from_json(checkpoint["record"])
    except (TypeError, ValueError) as error:
        raise RunDirError(f"{path} is not a checkpoint of a run: its record or speed segments are not "
                          f"valid ({_first_sentence(error)})") from None
    if "record" not in checkpoint:
        checkpoint["record"] = record and dataclasses.replace(record)
        if record:
            checkpoint["record"].after_epoch(checkpoint["metrics"], checkpoint["speed"],
                                             (record.recipe or {}).get("val_size", 0))
    return checkpoint


def _checkpoint_complete(checkpoint: dict) -> bool:
    """The run record a checkpoint holds (as read, or as `load_checkpoint` typed it) says complete."""
    record = checkpoint.get("record")
    try:
        return (record if isinstance(record, records.Record) else records.Record.from_json(record)).status \
            == "complete"
    except ValueError:
        return False


def _check_same_settings(run_dir: Path, saved: dict, requested: TrainConfig) -> None:
    """The run in `run_dir` (its recorded config `saved`) is the experiment and seed asked for."""
    changed = differences(saved, requested)
    if changed:
        details = ", ".join(f"{key}: {before!r} -> {after!r}" for key, (before, after) in changed.items())
        raise RunDirError(f"cannot resume {run_dir} with different settings ({details}); "
                          f"use the original settings or another --out")


def check_same_speedups(run_dir: Path, checkpoint: dict, speedups: dict, device_type: str) -> None:
    """A run continues with the numerics and the data-order generator it started with: a run
    begun on a CPU and resumed on CUDA would switch bf16 on and change its data order."""
    saved = checkpoint.get("speedups"), checkpoint.get("generator_device")
    now = speedups, device_type
    if saved[0] is not None and saved != now:
        raise RunDirError(f"cannot resume {run_dir}: it was trained with speedups {saved[0]} and data order "
                          f"drawn on {saved[1]}, this process would use {now[0]} on {now[1]}; resume it on a "
                          f"{saved[1]} device with the same --bf16/--channels-last/--compile switches")


def check_same_epoch(configs: list[TrainConfig], checkpoints: list) -> None:
    """Runs resumed as one stack are at the same epoch."""
    epochs = [len(checkpoint["metrics"]) if checkpoint else 0 for checkpoint in checkpoints]
    if len(set(epochs)) > 1:
        where = ", ".join(f"{config.out}: {done}" for config, done in zip(configs, epochs))
        raise ConfigError(f"runs trained as one stack must be at the same epoch; epochs done: {where}")


@contextmanager
def fitting(*run_dirs: Path):
    """A checkpoint's state loaded into the run's network or optimizer: one that does not fit is
    a one-line RunDirError naming the checkpoint(s)."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
        detail = lines[1] if len(lines) > 1 else lines[0]  # torch's first line only says "Error(s) in ..."
        paths = " or ".join(str(run_dir / CHECKPOINT_FILE) for run_dir in run_dirs)
        raise RunDirError(f"{paths} does not fit this run's network and optimizer ({detail}); delete it to "
                          f"start the run again") from None
