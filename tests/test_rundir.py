"""The run directory's files: atomic writes that lose nothing, and one writer at a time (rundir.py).
How a run resumes from them: tests/test_crash_safety.py and tests/test_bad_input.py."""

import errno
import json
import multiprocessing
import os
import threading

import pytest

from reproresnet import rundir
from reproresnet.rundir import RunDirError


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "run.json"
    rundir.write_json(path, {"a": 1})
    rundir.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary left behind


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    rundir.write_json(path, {"epoch": 1})

    def half_then_fail(file):
        file.write(b'{"epoch": ')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        rundir.write_atomic(path, half_then_fail)
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path):
    path = tmp_path / "metrics.csv"
    rundir.write_metrics(path, [{"epoch": 1, "test_error": 50.0}])

    def disk_full(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunDirError, match="disk full while writing .*metrics.csv"):
        rundir.write_atomic(path, disk_full)
    assert "50" in path.read_text()
    assert len(list(tmp_path.iterdir())) == 1


def _hold_lock(run_dir, ready, release):
    with rundir.run_dir_lock(run_dir):
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
            with rundir.run_dir_lock(tmp_path):
                pass
    finally:
        release.set()
        holder.join(30)
    with rundir.run_dir_lock(tmp_path):  # released once the holder is gone
        pass


def test_lock_of_a_killed_process_is_not_stuck(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    os.kill(holder.pid, 9)
    holder.join(30)
    with rundir.run_dir_lock(tmp_path):
        pass


def test_unwritable_run_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="cannot write to run directory"):
        with rundir.run_dir_lock(blocker / "run"):
            pass


def test_the_background_writer_keeps_the_order_and_raises_a_failed_write(tmp_path):
    written, gate = [], threading.Event()

    def write(name):
        gate.wait(10)
        written.append(name)

    with rundir.Writer(background=True) as writer:
        for name in ("checkpoint", "metrics", "record"):
            writer.submit(write, name)
        assert written == []  # nothing yet: the caller went on
        gate.set()
        writer.flush()
        assert written == ["checkpoint", "metrics", "record"]

    def fail():
        raise OSError(28, "No space left on device")

    writer = rundir.Writer(background=True)
    writer.submit(fail)
    writer.submit(write, "after the failure")
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    with pytest.raises(OSError):  # it stays failed: nothing more is written out of order
        writer.submit(write, "later")
    assert "after the failure" not in written and "later" not in written
