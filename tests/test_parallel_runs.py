"""Runs at the same time: one run directory has one writer, and separate runs stay separate.

The children are real `python -c` processes that train through `reproresnet.cli.main`. Each
waits at a gate (a file the test creates) when it enters its first epoch, so it is certain to
be holding its run directory's lock, and to be running alongside the others, while the test
looks; no hook is added to the library.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import argv, run_cli
from reproresnet import cli, records

pytestmark = pytest.mark.slow  # real processes, each importing torch

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = {".lock", records.RUN_FILE, records.METRICS_FILE, records.CHECKPOINT_FILE}
TIMEOUT_S = 240

GATED_CHILD = r'''
import sys, time
from pathlib import Path
from reproresnet import cli, train

gate = Path(sys.argv[1])
real_epoch = train.train_one_epoch

def gated(run, epoch, *args, **kwargs):
    while not gate.exists():  # holds the run, and its lock, until the test opens the gate
        time.sleep(0.02)
    return real_epoch(run, epoch, *args, **kwargs)

train.train_one_epoch = gated
sys.exit(cli.main(sys.argv[2:]))
'''


class Child:
    def __init__(self, gate: Path, args: list[str], log: Path):
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", GATED_CHILD, str(gate), *args], cwd=REPO,
                                         env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text()

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def lock_owner(run_dir: Path) -> int | None:
    """The pid written into the lock file by the process holding it ("pid N on HOST")."""
    try:
        words = (run_dir / ".lock").read_text().split()
    except OSError:
        return None
    return int(words[1]) if len(words) >= 2 and words[0] == "pid" and words[1].isdigit() else None


def wait_until(condition, children, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        for child in children:
            if child.proc.poll() is not None and child.proc.returncode != 2:
                pytest.fail(f"a child ended ({child.proc.returncode}) before {what}:\n{child.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def expected_config(args: list[str]) -> dict:
    """The config the CLI builds from `args`, as `train` does."""
    return cli.train_config(cli.build_parser().parse_args(args)).as_dict()


def test_a_second_process_on_a_busy_run_dir_is_refused(tmp_path, capsys):
    out, gate = tmp_path / "run", tmp_path / "gate"
    args = argv(out, {"--epochs": 2, "--seed": 5}, resume=True)
    # Two real processes race for the directory: exactly one gets it.
    children = [Child(gate, args, tmp_path / f"child{i}.log") for i in range(2)]
    try:
        wait_until(lambda: lock_owner(out) in {c.pid for c in children}, children, "a child holds the lock")
        owner = lock_owner(out)
        winner, loser = sorted(children, key=lambda child: child.pid != owner)
        assert loser.finish() == 2, loser.output()
        in_use = f"reproresnet: error: run directory {out} is in use by pid {owner} on {platform.node()}"
        assert in_use in loser.output() and "choose another --out" in loser.output(), loser.output()
        assert winner.proc.poll() is None and lock_owner(out) == owner

        # The same from this process, with or without --resume, and with other settings.
        for attempt in (args, args[:-1], argv(out, {"--lr": 0.5})):
            code, err = run_cli(capsys, attempt)
            assert code == 2 and in_use in err, err
        assert winner.proc.poll() is None and lock_owner(out) == owner

        gate.touch()
        assert winner.finish() == 0, winner.output()
    finally:
        gate.touch()
        for child in children:
            child.finish()

    # The winner's run is whole and is the winner's.
    assert {path.name for path in out.iterdir()} == RUN_FILES
    record = records.read_run(out)
    assert record.status == "complete" and record.epochs_done == 2
    assert record.config == expected_config(args)
    # The lock went with the process: the directory is free again.
    code, err = run_cli(capsys, args)
    assert code == 0, err


def test_two_runs_in_different_directories_at_once(tmp_path):
    gate = tmp_path / "gate"
    runs = {
        tmp_path / "runs" / "a": {"--epochs": 2, "--seed": 1, "--lr": 0.05},
        tmp_path / "runs" / "b": {"--epochs": 3, "--seed": 2, "--lr": 0.2, "--augmentation": "per_batch"},
    }
    args = {out: argv(out, settings) for out, settings in runs.items()}
    children = {out: Child(gate, args[out], tmp_path / f"{out.name}.log") for out in runs}
    try:
        # Both hold their own directory at the same moment, then train side by side.
        wait_until(lambda: all(lock_owner(out) == child.pid for out, child in children.items()),
                   children.values(), "both children hold their run directories")
        gate.touch()
        for out, child in children.items():
            assert child.finish() == 0, child.output()
    finally:
        gate.touch()
        for child in children.values():
            child.finish()

    assert {path.name for path in (tmp_path / "runs").iterdir()} == {"a", "b"}
    for out, child in children.items():
        config = expected_config(args[out])
        assert {path.name for path in out.iterdir()} == RUN_FILES  # nothing of the other run
        assert lock_owner(out) == child.pid
        record = records.read_run(out)
        assert record.config == config and record.name == out.name
        assert record.status == "complete" and record.epochs_done == config["epochs"]
        checkpoint = torch.load(out / records.CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        assert checkpoint["config"] == config and len(checkpoint["metrics"]) == config["epochs"]
        lrs = [float(line.split(",")[1]) for line in (out / records.METRICS_FILE).read_text().splitlines()[1:]]
        # each run's own lr, decayed twice by its end (the seed's milestones, scaled)
        assert record.recipe["lr"] == record.schedule["lr"] == config["lr"]
        assert len(lrs) == config["epochs"] and lrs[-1] == pytest.approx(config["lr"] * 0.01)
