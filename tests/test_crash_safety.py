"""SIGKILL a training run at two dozen points, resume it every time, and get the same run.

One run is killed over and over (one long chain, not 20 separate runs) and resumed with
`--resume` after every kill; at the end it must equal, bit for bit, an uninterrupted run of
the same seed. The kill points are:

(a) "timed": the parent sends SIGKILL a seeded random delay after the child announces that
    it entered an epoch, so the kill lands somewhere in training, evaluation or the writes;
(b)/(c) "write": the child kills itself inside `records.write_atomic` while writing
    checkpoint.pt, metrics.csv or run.json: half-way through the bytes of the temporary
    file ("mid_write"), after the temporary file is complete and fsynced but before the
    rename ("before_rename"), or right after the rename, before the next file
    ("after_rename"). No hook is added to the library: the child monkeypatches
    `records.write_atomic` (its write callback) and `os.replace`.

Every attempt is a separate process, forked from a `python -c` server that imported torch
and reproresnet once: importing them costs ~5 CPU-seconds a process, which 25 processes
on the 2 shared cores of CI cannot afford. The killed process is still a real process
of its own: its files, file descriptors and flock die with it, as in a real crash.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import argv, without_timing
from reproresnet import records

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 16
SETTINGS = {"--epochs": EPOCHS, "--seed": 3}
REAL_FILES = (records.RUN_FILE, records.METRICS_FILE, records.CHECKPOINT_FILE)
# write_atomic's temporary files: mkstemp(prefix=".<name>.", suffix=".tmp")
ORPHAN = re.compile(r"^\.(run\.json|metrics\.csv|checkpoint\.pt)\.[A-Za-z0-9_]+\.tmp$")
CHILD_TIMEOUT_S = 180  # a watchdog (SIGALRM) for a hung child; an attempt takes a few seconds

# The fork server: reads one JSON request a line, answers one JSON line.
#   {"op": "start", "argv": [...], "log": path, "marker": path, "kill": null | {...}} -> {"pid"}
#   {"op": "wait", "pid": N} -> {"returncode"}  (negative: killed by that signal)
SERVER = r'''
import json, os, signal, sys, time, traceback
import torch
torch.set_num_threads(1)
import reproresnet.cli, reproresnet.records, reproresnet.train  # once, before any fork


def child(job):
    import io
    from pathlib import Path
    from reproresnet import cli, records, train

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    marker = open(job["marker"], "a")
    real_epoch = train.train_one_epoch

    def announced(run, epoch, *args, **kwargs):  # tells the parent an epoch has begun
        marker.write(f"epoch {epoch + 1} {time.monotonic()}\n")
        marker.flush()
        return real_epoch(run, epoch, *args, **kwargs)

    train.train_one_epoch = announced
    kill = job["kill"]
    if kill:
        mode, target, nth, fraction = kill["mode"], kill["file"], kill["nth"], kill.get("fraction", 0.5)
        seen, armed = [0], [False]
        real_write_atomic, real_fsync, real_replace = records.write_atomic, os.fsync, os.replace

        def write_atomic(path, write):
            if Path(path).name == target:
                seen[0] += 1
                armed[0] = seen[0] == nth
            try:
                if armed[0] and mode == "mid_write":
                    def part_then_die(file):
                        buffer = io.BytesIO()
                        write(buffer)
                        data = buffer.getvalue()
                        file.write(data[: int(len(data) * fraction)])
                        file.flush()
                        real_fsync(file.fileno())
                        die()
                    return real_write_atomic(path, part_then_die)
                return real_write_atomic(path, write)
            finally:
                armed[0] = False

        def replace(src, dst, *args, **kwargs):
            if armed[0] and mode == "before_rename":
                die()  # the temporary file is complete and fsynced; the rename never happens
            real_replace(src, dst, *args, **kwargs)
            if armed[0] and mode == "after_rename":
                die()

        records.write_atomic, os.replace = write_atomic, replace
    return cli.main(job["argv"])


def answer(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


while True:
    line = sys.stdin.readline()
    if not line:
        break
    job = json.loads(line)
    if job["op"] == "start":
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                signal.alarm(job["timeout"])
                code = child(job)
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        answer({"pid": pid})
    elif job["op"] == "wait":
        _, status = os.waitpid(job["pid"], 0)
        answer({"returncode": os.waitstatus_to_exitcode(status)})
'''


class ForkServer:
    def __init__(self, work: Path):
        self.work = work
        self.count = 0
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.stderr = open(work / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died: {(self.work / 'server.log').read_text()[-3000:]}")
        return json.loads(line)

    def start(self, argv: list[str], kill: dict | None = None) -> tuple[int, Path, Path]:
        self.count += 1
        log, marker = self.work / f"attempt{self.count:02d}.log", self.work / f"attempt{self.count:02d}.marker"
        marker.touch()
        pid = self._ask({"op": "start", "argv": argv, "kill": kill, "log": str(log), "marker": str(marker),
                         "timeout": CHILD_TIMEOUT_S})["pid"]
        return pid, log, marker

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["returncode"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


def _exited(pid: int) -> bool:
    """True once `pid` is a zombie (it ended; the server has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _epoch_seconds(marker: Path, default: float = 0.5) -> float:
    """The median time between epoch starts in one attempt's marker (the uninterrupted run's)."""
    lines = marker.read_text().split("\n")[:-1]  # whole lines only: the child may be writing one
    starts = [float(line.split()[2]) for line in lines]
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    return gaps[len(gaps) // 2] if gaps else default


def _wait_for_epoch(pid: int, marker: Path, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "epoch" in marker.read_text():
            return True
        if _exited(pid):
            return False
        time.sleep(0.005)
    raise AssertionError(f"attempt {pid} never entered an epoch in {timeout} s")


# ---------------------------------------------------------------- reading a run directory

def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / records.CHECKPOINT_FILE, map_location="cpu", weights_only=False)


def _metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / records.METRICS_FILE, newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == records.METRIC_COLUMNS
        rows = list(reader)
    assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))
    return rows


def _check_run_dir(run_dir: Path) -> dict:
    """Every file parses; no record is ahead of one written before it in an epoch (checkpoint,
    then metrics, then run.json); leftovers are only write_atomic's temporaries."""
    names = {path.name for path in run_dir.iterdir()}
    orphans = {name for name in names if ORPHAN.match(name)}
    assert names - orphans <= {".lock", *REAL_FILES}, f"unexpected files in {run_dir}: {sorted(names)}"
    done = {}
    if (run_dir / records.CHECKPOINT_FILE).exists():
        checkpoint = _checkpoint(run_dir)
        done["checkpoint"] = len(checkpoint["metrics"])
        assert set(checkpoint) >= {"model", "optimizer", "metrics", "config"}
    if (run_dir / records.METRICS_FILE).exists():
        done["metrics"] = len(_metrics_rows(run_dir))
    if (run_dir / records.RUN_FILE).exists():
        record = records.read_run(run_dir)  # ValueError if it is not a whole run record
        done["run"] = record["epochs_done"]
        assert record["status"] in ("running", "complete")
    ck, rows, run = done.get("checkpoint", 0), done.get("metrics", 0), done.get("run", 0)
    assert run <= rows <= ck, f"records out of step in {run_dir}: {done}"
    return {"epochs": ck, "orphans": orphans}


# ---------------------------------------------------------------- the kill chain

def _schedule() -> list[dict | None]:
    """The kill points in order; None is a timed kill, a dict a kill inside write_atomic."""
    def write(file, mode, nth=1, fraction=0.5):
        return {"file": file, "mode": mode, "nth": nth, "fraction": fraction}

    ck, metrics, run = records.CHECKPOINT_FILE, records.METRICS_FILE, records.RUN_FILE
    return [
        None,                                    # in epoch 1 of a fresh run: nothing saved yet
        write(ck, "mid_write"),                  # the first checkpoint, half its bytes on disk
        write(ck, "before_rename"),
        None,
        write(ck, "after_rename"),               # a checkpoint with no metrics.csv / run.json yet
        write(metrics, "mid_write"),
        None,
        write(metrics, "before_rename"),
        write(metrics, "after_rename"),
        None,
        write(run, "mid_write"),
        write(run, "before_rename"),
        None,
        write(run, "after_rename"),
        write(ck, "mid_write", nth=2, fraction=0.01),   # a second epoch in the same process
        None,
        write(ck, "mid_write", fraction=0.99),
        write(metrics, "mid_write", nth=2),
        None,
        write(run, "before_rename", nth=2),
        None,
        None,
        None,
        None,
    ]


@pytest.mark.slow
def test_sigkill_at_two_dozen_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    chained, reference = tmp_path / "chained", tmp_path / "reference"
    server = ForkServer(tmp_path)
    try:
        # The uninterrupted run, forked from the same server (same threads, same code).
        reference_pid, reference_log, reference_marker = server.start(argv(reference, SETTINGS))

        rng = random.Random(20160316)
        landed = {"timed": 0, "write": 0}
        landed_points = []
        first = True
        for kill in _schedule():
            args = argv(chained, SETTINGS, resume=not first)
            first = False
            before = _check_run_dir(chained)["epochs"] if chained.exists() else 0
            pid, log, marker = server.start(args, kill)
            if kill is None:
                entered = _wait_for_epoch(pid, marker)
                if entered:
                    # well inside the epoch: before its files are written at its end
                    time.sleep(rng.uniform(0.0, 0.6) * _epoch_seconds(reference_marker))
                    os.kill(pid, signal.SIGKILL)  # a zombie (already exited) ignores it
            returncode = server.wait(pid)
            kind = "timed" if kill is None else "write"
            if returncode == -signal.SIGKILL:
                landed[kind] += 1
                after = _check_run_dir(chained)
                landed_points.append((kind, kill and (kill["file"], kill["mode"], kill["nth"]),
                                      before, after["epochs"]))
            else:
                assert returncode == 0, f"attempt failed with {returncode}:\n{log.read_text()[-3000:]}"
            assert _check_run_dir(chained)["epochs"] < EPOCHS, \
                "the run completed before the kill schedule ended; raise EPOCHS"

        # Resume until the run completes: no more kills, so one attempt must finish it.
        pid, log, _ = server.start(argv(chained, SETTINGS, resume=True))
        assert server.wait(pid) == 0, log.read_text()[-3000:]
        assert server.wait(reference_pid) == 0, reference_log.read_text()[-3000:]

        # A resume of the finished run changes nothing.
        finished = {name: (chained / name).read_bytes() for name in REAL_FILES}
        pid, log, _ = server.start(argv(chained, SETTINGS, resume=True))
        assert server.wait(pid) == 0, log.read_text()[-3000:]
        assert finished == {name: (chained / name).read_bytes() for name in REAL_FILES}
    finally:
        server.close()

    print(f"kill points landed: {landed}; (kind, point, epochs before, epochs after): {landed_points}")
    assert landed["timed"] >= 8 and landed["write"] >= 12
    assert sum(landed.values()) >= 20

    # Every file parses, and the only leftovers are temporaries of killed writes, which never
    # take the name of a real file.
    state = _check_run_dir(chained)
    assert state["epochs"] == EPOCHS
    assert len(state["orphans"]) <= sum(landed.values())
    assert not _check_run_dir(reference)["orphans"]

    # Bit-identical to the uninterrupted run.
    got, want = _checkpoint(chained), _checkpoint(reference)
    assert got["model"].keys() == want["model"].keys()
    different = [key for key in want["model"] if not torch.equal(got["model"][key], want["model"][key])]
    assert not different, f"weights differ from the uninterrupted run: {different}"
    got_state, want_state = got["optimizer"]["state"], want["optimizer"]["state"]
    assert got_state.keys() == want_state.keys()
    assert all(torch.equal(got_state[k]["momentum_buffer"], want_state[k]["momentum_buffer"]) for k in want_state)
    assert without_timing(got["metrics"]) == without_timing(want["metrics"])
    assert without_timing(_metrics_rows(chained)) == without_timing(_metrics_rows(reference))

    record, reference_record = records.read_run(chained), records.read_run(reference)
    assert record["status"] == "complete" and record["epochs_done"] == EPOCHS
    assert {k: v for k, v in record["config"].items() if k != "out"} == \
           {k: v for k, v in reference_record["config"].items() if k != "out"}
    for key in ("test_error", "epoch", "selected_by"):
        assert record["final"][key] == reference_record["final"][key]
