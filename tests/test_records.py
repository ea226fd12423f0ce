"""Atomic files and one writer per run directory."""

import errno
import json
import multiprocessing
import os
import platform

import pytest

from reproresnet import records
from reproresnet.records import RunDirError


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "run.json"
    records.write_json(path, {"a": 1})
    records.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left behind


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    records.write_json(path, {"epoch": 1})

    def half_then_fail(file):
        file.write(b'{"epoch": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        records.write_atomic(path, half_then_fail)
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path):
    path = tmp_path / "metrics.csv"
    records.write_metrics(path, [{"epoch": 1, "test_error": 50.0}])

    def disk_full(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunDirError, match="disk full while writing .*metrics.csv"):
        records.write_atomic(path, disk_full)
    assert "50" in path.read_text()
    assert len(list(tmp_path.iterdir())) == 1


def test_metrics_csv_has_every_column_and_blank_for_missing(tmp_path):
    path = tmp_path / "metrics.csv"
    records.write_metrics(path, [{"epoch": 1, "lr": 0.1, "test_error": 12.5}])
    header, row = path.read_text().splitlines()
    assert header.split(",") == list(records.METRIC_COLUMNS)
    values = dict(zip(records.METRIC_COLUMNS, row.split(",")))
    assert values["lr"] == "0.1" and values["test_error"] == "12.5" and values["val_error"] == ""


def test_read_run_rejects_corrupt_and_foreign_records(tmp_path):
    (tmp_path / "run.json").write_text('{"format": "reproresnet-run/1", "sta')
    with pytest.raises(ValueError, match="not a readable JSON run record"):
        records.read_run(tmp_path)
    (tmp_path / "run.json").write_text('{"format": "someone-else/3"}')
    with pytest.raises(ValueError, match="format 'someone-else/3'"):
        records.read_run(tmp_path)
    with pytest.raises(ValueError):
        records.read_run(tmp_path / "missing")


def _hold_lock(run_dir, ready, release):
    with records.run_dir_lock(run_dir):
        ready.set()
        release.wait(30)


def test_second_writer_is_refused_while_the_first_holds_the_directory(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunDirError, match=f"in use by pid {holder.pid}"):
            with records.run_dir_lock(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with records.run_dir_lock(tmp_path):  # released once the holder is gone
        pass


def test_lock_of_a_killed_process_is_not_stuck(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, 9)
    holder.join(30)
    with records.run_dir_lock(tmp_path):
        pass


def test_unwritable_run_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="cannot write to run directory"):
        with records.run_dir_lock(blocker / "run"):
            pass


def _record(run_dir, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    records.write_json(run_dir / records.RUN_FILE, {"format": records.RUN_FORMAT, "arch": "wrn_16_4",
                                                    "status": "running", "config": {}, "data": {},
                                                    "epochs_planned": 200, "epochs_done": 5, **fields})
    return run_dir


def test_a_deadline_stop_written_before_the_stopped_status_reads_as_stopped(tmp_path):
    old = _record(tmp_path / "old", message="stopped cleanly after epoch 5 of 200 (deadline); resume to continue")
    assert records.read_run(old)["status"] == "stopped"
    assert records.read_run(_record(tmp_path / "killed"))["status"] == "running"  # as written: no lock is read


def test_a_run_is_running_only_while_a_live_process_holds_its_lock(tmp_path):
    run = records.RunRecord.read(_record(tmp_path / "run"))
    assert run.status == "stopped"  # no lock at all: killed, or copied from another machine
    with records.run_dir_lock(tmp_path / "run"):  # this process trains it
        assert run.status == "running"
    assert run.status == "running"  # the holder's pid is still alive (it is this process)
    (tmp_path / "run" / ".lock").write_text(f"pid {2**22 + 12345} on {platform.node()}")  # no such process
    assert run.status == "stopped"
    (tmp_path / "run" / ".lock").write_text("pid 1 on another-host")  # cannot be checked from here
    assert run.status == "running"
    complete = records.RunRecord.read(_record(tmp_path / "done", status="complete"))
    assert complete.status == "complete"
