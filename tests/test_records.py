"""The run record's format: metrics.csv's columns, run.json read and its status (records.py)."""

import json
import os
import platform
from pathlib import Path

import pytest

from reproresnet import records, rundir


def test_metrics_csv_has_every_column_and_blank_for_missing(tmp_path):
    path = tmp_path / "metrics.csv"
    rundir.write_metrics(path, [{"epoch": 1, "lr": 0.1, "test_error": 12.5}])
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


def _record(run_dir, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / records.RUN_FILE, {"format": records.RUN_FORMAT, "arch": "wrn_16_4",
                                                    "status": "running", "config": {}, "data": {},
                                                    "epochs_planned": 200, "epochs_done": 5, **fields})
    return run_dir


def test_a_deadline_stop_written_before_the_stopped_status_reads_as_stopped(tmp_path):
    """Through the one migration (records.migrate) from reproresnet-run/1; in the current format
    a record says what it says."""
    stopped = "stopped cleanly after epoch 5 of 200 (deadline); resume to continue"
    old = _record(tmp_path / "old", format="reproresnet-run/1", message=stopped)
    assert records.read_run(old).status == "stopped"
    assert records.read_run(_record(tmp_path / "new", message=stopped)).status == "running"  # as written
    assert records.read_run(_record(tmp_path / "killed")).status == "running"  # as written: no lock is read


def test_a_record_of_the_first_format_reads_through_the_one_migration(tmp_path):
    segment = {"first_epoch": 1, "last_epoch": 5, "device": "cuda", "pack": 3, "seconds_per_epoch": 36.9}
    old = _record(tmp_path / "old", format="reproresnet-run/1", speed={"segments": [segment], "note": "old"})
    record = records.read_run(old)
    assert [(s.threads, s.engine, s.stacked, s.pack, s.seconds_per_epoch) for s in record.speed] == \
        [(None, None, 1, 3, 36.9)]
    written = record.to_json()
    assert written["format"] == records.RUN_FORMAT != "reproresnet-run/1"
    assert records.Record.from_json(written) == record  # the JSON form reads back as it was
    assert records.migrate(written) is written  # a record of this format is not migrated


def test_every_committed_record_is_of_the_current_format():
    """The committed records were migrated once (records.migrate): they read without it."""
    results = sorted(Path(__file__).resolve().parents[1].glob(f"results/*/{records.RUN_FILE}"))
    assert results
    for path in results:
        data = json.loads(path.read_text())
        assert data["format"] == records.RUN_FORMAT, path
        assert records.Record.from_json(data).to_json() == data, path  # written as to_json writes it


def test_the_lock_line_is_written_and_read_in_one_place(tmp_path):
    pid, host = records.parse_lock_line(records.lock_line())
    assert records.parse_lock_line(records.lock_line()) == (os.getpid(), platform.node())
    for other in ("", "pid x on host", "pid 12 at host", "pid 12 on", "someone else's file"):
        assert records.parse_lock_line(other) is None, other
    with rundir.run_dir_lock(tmp_path / "run"):
        assert records.lock_owner(tmp_path / "run") == (pid, host)


def test_a_run_is_running_only_while_a_live_process_holds_its_lock(tmp_path):
    run = records.RunRecord.read(_record(tmp_path / "run"))
    assert run.status == "stopped"  # no lock at all: killed, or copied from another machine
    with rundir.run_dir_lock(tmp_path / "run"):  # this process trains it
        assert run.status == "running"
    assert run.status == "running"  # the holder's pid is still alive (it is this process)
    (tmp_path / "run" / ".lock").write_text(f"pid {2**22 + 12345} on {platform.node()}")  # no such process
    assert run.status == "stopped"
    (tmp_path / "run" / ".lock").write_text("pid 1 on another-host")  # cannot be checked from here
    assert run.status == "running"
    complete = records.RunRecord.read(_record(tmp_path / "done", status="complete"))
    assert complete.status == "complete"
