"""A run killed at any instant, its last epoch included, resumes into the uninterrupted run.

Fast: a deterministic fault injector (tests/faults.py) kills a short run at every one of its
file operations in turn, each kill followed by a resume that must end in the uninterrupted
run; and a run directory whose run.json or metrics.csv is behind its checkpoint, damaged or
missing is rebuilt from the checkpoint (the source of truth).

Slow: SIGKILL a training run at two dozen points, resume it every time, and get the same run.
One run is killed over and over (one long chain, not 20 separate runs) and resumed with
`--resume` after every kill; at the end it must equal, bit for bit, an uninterrupted run of
the same seed. The kill points are:

(a) "timed": the parent sends SIGKILL a seeded random delay after the child announces that
    it entered an epoch, so the kill lands somewhere in training, evaluation or the writes;
(b)/(c) "write": the child kills itself inside `rundir.write_atomic` while writing
    checkpoint.pt, metrics.csv or run.json: half-way through the bytes of the temporary
    file ("mid_write"), after the temporary file is complete and fsynced but before the
    rename ("before_rename"), or right after the rename, before the next file
    ("after_rename"). No hook is added to the library: the child monkeypatches
    `rundir.write_atomic` (its write callback) and `os.replace`.

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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import argv, run_cli, without_timing
from faults import Faults, Killed
from reproresnet import records, rundir
from reproresnet import train as training
from reproresnet.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 16
SETTINGS = {"--epochs": EPOCHS, "--seed": 3}
REAL_FILES = (records.RUN_FILE, records.METRICS_FILE, records.CHECKPOINT_FILE)
# write_atomic's temporary files: mkstemp(prefix=".reproresnet.<name>.", suffix=".tmp")
ORPHAN = re.compile(r"^\.reproresnet\.(run\.json|metrics\.csv|checkpoint\.pt|best\.pt)\.[A-Za-z0-9_]+\.tmp$")
CHILD_TIMEOUT_S = 180  # a watchdog (SIGALRM) for a hung child; an attempt takes a few seconds

# The fork server: reads one JSON request a line, answers one JSON line.
#   {"op": "start", "argv": [...], "log": path, "marker": path, "kill": null | {...}} -> {"pid"}
#   {"op": "wait", "pid": N} -> {"returncode"}  (negative: killed by that signal)
SERVER = r'''
import json, os, signal, sys, time, traceback
import torch
torch.set_num_threads(1)
import reproresnet.cli, reproresnet.rundir, reproresnet.train  # once, before any fork


def child(job):
    import io
    from pathlib import Path
    from reproresnet import cli, rundir, train

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
        real_write_atomic, real_fsync, real_replace = rundir.write_atomic, os.fsync, os.replace

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

        rundir.write_atomic, os.replace = write_atomic, replace
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
    return rundir.read_checkpoint(run_dir / records.CHECKPOINT_FILE)


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
    assert names - orphans <= {".lock", records.BEST_FILE, *REAL_FILES}, f"unexpected files in {run_dir}: {sorted(names)}"
    done = {}
    if (run_dir / records.CHECKPOINT_FILE).exists():
        checkpoint = _checkpoint(run_dir)
        done["checkpoint"] = len(checkpoint["metrics"])
        assert set(checkpoint) >= {"model", "optimizer", "metrics", "config"}
    if (run_dir / records.METRICS_FILE).exists():
        done["metrics"] = len(_metrics_rows(run_dir))
    if (run_dir / records.RUN_FILE).exists():
        record = records.read_run(run_dir)  # ValueError if it is not a whole run record
        done["run"] = record.epochs_done
        assert record.status in ("running", "complete")
    ck, rows, run = done.get("checkpoint", 0), done.get("metrics", 0), done.get("run", 0)
    assert run <= rows <= ck, f"records out of step in {run_dir}: {done}"
    return {"epochs": ck, "orphans": orphans}


# ---------------------------------------------------------------- every file operation, deterministically

# Two epochs with a validation split: best.pt, checkpoint.pt, metrics.csv and run.json, twice (seed 3's
# validation error falls in epoch 2, so best.pt is written again).
SHORT = dict(arch="preact_resnet20", dataset="synthetic", limit_train=16, limit_test=8, val_size=8, seed=3,
             batch_size=8, epochs=2, device="cpu", threads=1)  # pinned: the free-core default follows the load,
# and a fresh run on other threads sums in another order (this test failed now and then under load)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """The short run, uninterrupted, and the file operations it made, in order."""
    out = tmp_path_factory.mktemp("short") / "run"
    with pytest.MonkeyPatch.context() as patch:
        faults = Faults().patch_files(patch)
        training.train(TrainConfig(out=str(out), **SHORT), progress=False)
    return out, faults.operations


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Bit for bit the reference run: weights, momentum, best weights, metrics and result."""
    got, want = _checkpoint(run_dir), _checkpoint(reference)
    assert [key for key in want["model"] if not torch.equal(got["model"][key], want["model"][key])] == []
    momentum = [(got["optimizer"]["state"][k]["momentum_buffer"], state["momentum_buffer"])
                for k, state in want["optimizer"]["state"].items()]
    assert all(torch.equal(a, b) for a, b in momentum)
    best = [rundir.read_checkpoint(d / records.BEST_FILE) for d in (run_dir, reference)]
    assert all(torch.equal(best[0][key], best[1][key]) for key in best[1])
    assert without_timing(got["metrics"]) == without_timing(want["metrics"])
    assert without_timing(_metrics_rows(run_dir)) == without_timing(_metrics_rows(reference))
    record, reference_record = records.read_run(run_dir), records.read_run(reference)
    assert record.status == "complete" and record.epochs_done == reference_record.epochs_done
    for key in ("test_error", "epoch", "selected_by"):
        assert getattr(record.final, key) == getattr(reference_record.final, key)


def test_the_fault_injector_reaches_every_write_of_every_epoch(short_run):
    _, operations = short_run
    names = [Path(operation.split()[1]).name for operation in operations]
    per_epoch = [records.BEST_FILE, records.CHECKPOINT_FILE, records.METRICS_FILE, records.RUN_FILE]
    assert [op.split()[0] for op in operations] == ["write", "replace"] * 8
    assert names[::2] == per_epoch * 2


def test_a_kill_at_every_file_operation_then_resume_equals_the_uninterrupted_run(tmp_path, short_run):
    reference, operations = short_run
    for n in range(1, len(operations) + 1):
        config = TrainConfig(out=str(tmp_path / f"killed-at-{n}"), **SHORT)
        with pytest.MonkeyPatch.context() as patch:
            faults = Faults(kill_at=n).patch_files(patch)
            with pytest.raises(Killed):
                training.train(config, progress=False)
        assert faults.dead and len(faults.operations) == n
        _check_run_dir(Path(config.out))  # whole files, none ahead of the one written before it
        record = training.train(config, resume=True, progress=False)
        assert record == records.read_run(config.out), f"killed at operation {n}: {operations[n - 1]}"
        assert_same_run(Path(config.out), reference)
        assert not [p for p in Path(config.out).iterdir() if rundir.is_temporary(p.name)]


# ---------------------------------------------------------------- records behind their checkpoint

def _behind(run_dir: Path) -> None:
    """The issue's reproduction: run.json one epoch behind its (last) checkpoint."""
    record = json.loads((run_dir / records.RUN_FILE).read_text())
    record.update(status="running", epochs_done=1, final=None)
    (run_dir / records.RUN_FILE).write_text(json.dumps(record))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _lose_last_line(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


@pytest.mark.parametrize("damage", [
    pytest.param(_behind, id="record-one-epoch-behind"),
    pytest.param(lambda run: _truncate(run / records.RUN_FILE), id="record-truncated"),
    pytest.param(lambda run: (run / records.RUN_FILE).unlink(), id="no-record"),
    pytest.param(lambda run: _lose_last_line(run / records.METRICS_FILE), id="metrics-last-line-lost"),
    pytest.param(lambda run: (run / records.METRICS_FILE).unlink(), id="no-metrics"),
])
def test_resume_rebuilds_the_record_and_metrics_from_the_checkpoint(tmp_path, capsys, short_run, damage):
    reference, _ = short_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    damage(out)
    code, err = run_cli(capsys, ["train", *_short_argv(out), "--resume"])
    assert code == 0, err
    # run.json and metrics.csv as the uninterrupted run wrote them, byte for byte
    for name in (records.RUN_FILE, records.METRICS_FILE):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert_same_run(out, reference)


def _short_argv(out: Path) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in SHORT.items()] + ["--out", str(out), "--quiet"]


def test_a_checkpoint_without_its_record_resumes_from_run_json(tmp_path, short_run):
    """Checkpoints written before they held their record (the committed campaign bundle's):
    run.json supplies it, even one epoch behind."""
    reference, _ = short_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    checkpoint = _checkpoint(out)
    del checkpoint["record"]
    torch.save(checkpoint, out / records.CHECKPOINT_FILE)
    _behind(out)
    record = training.train(TrainConfig(out=str(out), **SHORT), resume=True, progress=False)
    assert record.status == "complete" and record == records.read_run(out)
    assert record.final == records.read_run(reference).final
    assert without_timing(_metrics_rows(out)) == without_timing(_metrics_rows(reference))


def test_resume_removes_only_its_own_temporary_files(tmp_path, short_run):
    reference, _ = short_run
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    ours = out / f"{rundir.TEMP_PREFIX}checkpoint.pt.x1y2{rundir.TEMP_SUFFIX}"
    ours.write_bytes(b"half a checkpoint")
    theirs = [out / ".notes.tmp", out / ".checkpoint.pt.abc.tmp"]
    for path in theirs:
        path.write_text("the user's")
    training.train(TrainConfig(out=str(out), **SHORT), resume=True, progress=False)
    assert not ours.exists() and all(path.read_text() == "the user's" for path in theirs)


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
    assert record.status == "complete" and record.epochs_done == EPOCHS
    assert {k: v for k, v in record.config.items() if k != "out"} == \
           {k: v for k, v in reference_record.config.items() if k != "out"}
    for key in ("test_error", "epoch", "selected_by"):
        assert getattr(record.final, key) == getattr(reference_record.final, key)
