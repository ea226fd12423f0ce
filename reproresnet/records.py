"""Run records on disk: atomic writes, one writer per run directory, provenance.

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
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

RUN_FORMAT = "reproresnet-run/1"
BENCH_FORMAT = "reproresnet-bench/1"  # written by bench.py, read by report.py
RUN_FILE, METRICS_FILE, CHECKPOINT_FILE, BEST_FILE = "run.json", "metrics.csv", "checkpoint.pt", "best.pt"
METRIC_COLUMNS = (
    "epoch", "lr", "train_loss", "train_error", "val_loss", "val_error", "test_loss", "test_error",
    "seconds", "images_per_second", "peak_memory_mb",
)


class RunDirError(RuntimeError):
    """The run directory cannot be used: in use, unwritable, full, or holding another run."""


def write_atomic(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    The rename is atomic on POSIX, so `path` holds either the old or the new content.
    On failure (a full disk, say) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def remove_orphans(run_dir: Path) -> None:
    """Delete temporary files a killed writer left; call with the run directory locked."""
    for orphan in Path(run_dir).glob(".*.tmp"):
        orphan.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    write_atomic(path, lambda file: file.write(text.encode()))


def write_metrics(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_value(row.get(key)) for key in METRIC_COLUMNS} for row in rows)
    write_atomic(path, lambda file: file.write(buffer.getvalue().encode()))


def _csv_value(value):
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else value


def read_run(run_dir: Path) -> dict:
    """The run record of `run_dir`; ValueError if it is missing, corrupt or not ours."""
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable JSON run record ({error})") from error
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: format {found!r} is not {RUN_FORMAT!r}")
    return record


@contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on `run_dir` for one writer.

    flock is released by the kernel when the process dies, so a crash never leaves it stuck.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
    except OSError as error:
        raise RunDirError(f"cannot write to run directory {run_dir}: {error.strerror}; "
                          f"choose a writable --out") from error
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunDirError(f"run directory {run_dir} is in use by {owner}; wait for it to "
                              f"finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}")
        handle.flush()
        yield
    finally:
        handle.close()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
