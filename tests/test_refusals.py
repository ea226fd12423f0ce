"""Every number range-checked where it is read, every refusal decided before anything is created,
and every failure of the file system one line that names the next step that works for that
command: run in-process (`cli.main`), asserting the exit code, the one-line message and that
nothing was created. A read-only or full file system is simulated by making a write raise
OSError(EROFS or ENOSPC) (CI runs as root, whom a chmod'ed folder does not stop)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import argv, fake_record, run_cli
from reproresnet import records, rundir
from reproresnet.campaign import slot as campaign
from reproresnet import train as training
from reproresnet.config import MAX_SEED
from reproresnet.recipes import MAX_EPOCHS


def assert_one_line(code: int, err: str, *words: str) -> None:
    """Exit 2, no traceback, and the last line an error naming each of `words`."""
    assert code == 2, f"exit {code}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert ": error: " in last, err
    for word in words:
        assert word in last, f"{word!r} not in the message:\n{last}"


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# ---------------------------------------------------------------- train: numbers and late refusals

@pytest.mark.parametrize("changes, words", [
    pytest.param({"--lr": "1e308"}, ["lr=1e+308", "3.403e+38", "float32"], id="lr-beyond-float32"),
    pytest.param({"--weight-decay": "1e39"}, ["weight_decay=1e+39", "3.403e+38"], id="weight-decay-beyond-float32"),
    pytest.param({"--seed": "99999999999999999999999"}, ["seed=99999999999999999999999", f"0 to {MAX_SEED}"],
                 id="seed-beyond-numpy-and-torch"),
    pytest.param({"--seed": "-1"}, ["seed=-1", f"0 to {MAX_SEED}"], id="seed-negative"),
    pytest.param({"--epochs": str(10**20)}, [f"epochs={10**20}", f"{MAX_EPOCHS:,}"], id="epochs-beyond-the-seeds"),
    pytest.param({"--epochs": "1e20"}, ["'1e20' is not an integer"], id="epochs-not-whole"),
    pytest.param({"--batch-size": "1000000"}, ["batch_size=1000000", "64 images", "--batch-size 64 or less"],
                 id="batch-larger-than-the-training-split"),
    pytest.param({"--val-size": "16", "--batch-size": "64"}, ["batch_size=64", "48 images", "--batch-size 48 or less"],
                 id="batch-larger-than-what-validation-leaves"),
    pytest.param({"--stop-after": "-5"}, ["--stop-after", "'-5'", "number > 0"], id="stop-after-negative"),
    pytest.param({"--stop-after": "0"}, ["--stop-after", "number > 0"], id="stop-after-zero"),
    pytest.param({"--stop-at": "1"}, ["--stop-at", "still to come"], id="stop-at-in-the-past"),
    pytest.param({"--compile": True, "--compile-mode": "bogus"}, ["compile_mode='bogus'", "max-autotune"],
                 id="unknown-compile-mode"),
    pytest.param({"--compile-mode": "bogus"}, ["compile_mode='bogus'"], id="unknown-compile-mode-uncompiled"),
    pytest.param({"--pack": "0"}, ["--pack", "positive integer"], id="pack-zero"),
])
def test_a_setting_out_of_range_is_refused_before_anything_is_created(tmp_path, capsys, changes, words):
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out, changes))
    assert_one_line(code, err, *words)
    assert not out.exists()


def test_the_graph_engine_on_a_cpu_is_refused_before_anything_is_created(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out, {"--engine": "graph"}))
    assert_one_line(code, err, "engine='graph'", "CUDA", "--engine eager")
    assert not out.exists()


def test_a_folder_data_set_of_one_class_is_refused(tmp_path, capsys, make_image_folder):
    root, _ = make_image_folder(train_classes=("cat",))
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out, {"--dataset": f"folder:{root}", "--limit-train": None,
                                           "--limit-test": None, "--batch-size": "2"}))
    assert_one_line(code, err, str(root / "train"), "one class folder (cat)", "at least 2")
    assert not out.exists()


def test_a_refusal_after_the_lock_leaves_no_lock_nor_folder(tmp_path, capsys, monkeypatch):
    """Whatever refuses a run once its directory is locked, a directory this call created is
    removed, and a user's folder is left as it was: no .lock."""
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("my notes\n")
    (users / records.RUN_FILE).write_text('{"mine": true}\n')
    code, err = run_cli(capsys, argv(users))
    assert code == 2 and "Traceback" not in err, err
    assert listing(users) == ["notes.txt", records.RUN_FILE]
    assert (users / records.RUN_FILE).read_text() == '{"mine": true}\n'

    def refuse(run_dir, *args, **kwargs):
        raise rundir.RunDirError(f"{run_dir} refused after its lock was taken")
    monkeypatch.setattr(rundir, "prepare", refuse)
    out = tmp_path / "new" / "run"
    code, err = run_cli(capsys, argv(out))
    assert_one_line(code, err, "refused after its lock was taken")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"  # a user's folder, empty: ours to write into
    empty.mkdir()
    code, err = run_cli(capsys, argv(empty))
    assert_one_line(code, err, "refused after its lock was taken")
    assert listing(empty) == []


def test_a_lock_file_removed_by_a_refused_holder_is_not_shared(tmp_path, monkeypatch):
    """A refused call removes the lock file it created; a process that opened that file before
    it went and locks it after locks the file now at the path, not the removed one."""
    run = tmp_path / "run"
    with pytest.raises(ValueError), rundir.run_dir_lock(run):
        opened_before = open(run / records.LOCK_FILE)
        raise ValueError("refused")
    assert not run.exists()
    real_open, first = open, [opened_before]
    monkeypatch.setattr(rundir, "open", lambda path, *args, **kwargs: first.pop() if first else
                        real_open(path, *args, **kwargs), raising=False)
    with rundir.run_dir_lock(run):
        assert opened_before.closed and records.lock_held(run)
    with pytest.raises(RuntimeError), rundir.run_dir_lock(run):  # one that wrote keeps its lock
        (run / records.RUN_FILE).write_text("{}")
        raise RuntimeError("failed after writing")
    assert listing(run) == [records.LOCK_FILE, records.RUN_FILE]


def test_a_learning_rate_that_overflows_the_weights_is_a_recorded_divergence(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out, {"--lr": "3e38"}))
    assert_one_line(code, err, "in epoch 1", "no checkpoint was saved")
    record = records.read_run(out)
    assert record.status == "diverged" and record.epochs_done == 0


def test_a_step_that_overflows_is_a_recorded_divergence(tmp_path, capsys, monkeypatch):
    def overflow(*args, **kwargs):
        raise RuntimeError("value cannot be converted to type float without overflow")
    monkeypatch.setattr(training, "train_one_epoch", overflow)
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out))
    assert_one_line(code, err, "the SGD step overflowed", "cannot be converted", "in epoch 1")
    assert records.read_run(out).status == "diverged"


def _full_disk_at(monkeypatch, name: str) -> None:
    """Writing a file called `name` fails for want of space (the first byte)."""
    real = rundir.write_atomic

    def write_atomic(path, write):
        if Path(path).name == name:
            def no_space(file):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, no_space)
        return real(path, write)
    monkeypatch.setattr(rundir, "write_atomic", write_atomic)


def test_a_full_disk_at_the_first_checkpoint_says_to_run_again_not_to_resume(tmp_path, capsys, monkeypatch):
    _full_disk_at(monkeypatch, records.CHECKPOINT_FILE)
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out))
    assert_one_line(code, err, "disk full", str(out / records.CHECKPOINT_FILE), "run again (no epoch was saved)")
    assert "--resume" not in err
    assert not out.exists()  # nothing was written: nothing is left


# ---------------------------------------------------------------- bundle, unbundle, pages: read-only and full

def _read_only(monkeypatch) -> None:
    """A read-only file system: creating a folder or writing a file raises EROFS."""
    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    monkeypatch.setattr(Path, "mkdir", lambda self, *args, **kwargs: refuse(self))
    monkeypatch.setattr(rundir, "write_atomic", refuse)


@pytest.fixture
def bundled(tmp_path) -> tuple[Path, Path]:
    """(a campaign directory with one run, its bundle)."""
    from reproresnet.campaign import bundle
    src = tmp_path / "campaign"
    (src / "a-seed0").mkdir(parents=True)
    rundir.write_json(src / "a-seed0" / records.RUN_FILE, fake_record(status="complete"))
    bundle.bundle(src, tmp_path / "bundle")
    return src, tmp_path / "bundle"


@pytest.mark.parametrize("command", ["bundle", "unbundle", "pages"])
def test_a_read_only_file_system_is_one_line(tmp_path, capsys, monkeypatch, bundled, command):
    src, parts = bundled
    target = tmp_path / "target"
    args = {"bundle": ["bundle", str(src), "--to", str(target)],
            "unbundle": ["unbundle", str(parts), "--to", str(target)],
            "pages": ["pages", "--results", str(src), "--out", str(target)]}[command]
    _read_only(monkeypatch)
    code, err = run_cli(capsys, args)
    assert_one_line(code, err, str(target), "Read-only file system", f"run {'pages' if command == 'pages' else ''}")
    assert "writ" in err.strip().splitlines()[-1]  # what to make writable
    assert len(err.strip().splitlines()) <= 2  # pages says nothing else; no traceback
    assert not target.exists()


@pytest.mark.parametrize("command, written, again", [
    ("bundle", "campaign.part00", "run python -m reproresnet bundle again"),
    ("unbundle", records.RUN_FILE, "run python -m reproresnet unbundle again"),
])
def test_a_full_disk_during_bundle_or_unbundle_names_a_next_step_it_has(tmp_path, capsys, monkeypatch, bundled,
                                                                         command, written, again):
    src, parts = bundled
    _full_disk_at(monkeypatch, written)
    target = tmp_path / "target"
    args = ["bundle", str(src)] if command == "bundle" else ["unbundle", str(parts)]
    code, err = run_cli(capsys, [*args, "--to", str(target)])
    assert_one_line(code, err, "disk full", written, "free some space", again)
    assert "--resume" not in err


# ---------------------------------------------------------------- campaign

@pytest.fixture
def no_campaign(monkeypatch):
    """A campaign that gets as far as training fails the test (and never ends the process)."""
    monkeypatch.setattr(campaign, "_campaign", lambda *a, **k: pytest.fail("the campaign started"))
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail(f"the campaign exited {code}"))


@pytest.mark.parametrize("flags, words", [
    pytest.param(["--train-args", "--arch wrn_16_4"], ["--arch (use --archs)", "set by the campaign"], id="arch"),
    pytest.param(["--train-args", "--seed 3"], ["--seed (use --seeds)"], id="seed"),
    pytest.param(["--train-args", "--dataset cifar10"], ["--dataset (use --dataset)"], id="dataset"),
    pytest.param(["--train-args=--no-bf16"], ["--bf16 (use --precision)"], id="precision"),
    pytest.param(["--train-args", "--epochs 3", "--train-args", "--epochs 4"], ["--epochs given more than once"],
                 id="repeated-across-train-args"),
    pytest.param(["--seeds", "0", "1", "0"], ["--seeds 0 1 0", "0 given more than once"], id="seeds-repeated"),
    pytest.param(["--archs", "wrn_16_4", "wrn_16_4"], ["--archs", "wrn_16_4 given more than once"],
                 id="archs-repeated"),
    pytest.param(["--stack", "0"], ["--stack", "positive integer"], id="stack-zero"),
    pytest.param(["--budget", "0"], ["--budget", "number > 0"], id="budget-zero"),
    pytest.param(["--min-start", "-1"], ["--min-start", "'-1'", "number >= 0"], id="min-start-negative"),
    pytest.param(["--max-unfinished-mb", "-5"], ["--max-unfinished-mb", "'-5'", "number >= 0"],
                 id="max-unfinished-negative"),
    pytest.param(["--train-args", "--epochs 1 --limit-train 64 --batch-size 1000000"],
                 ["batch_size=1000000", "--batch-size 64 or less"], id="batch-larger-than-the-training-split"),
])
def test_a_campaign_refuses_before_anything_is_created(tmp_path, capsys, no_campaign, flags, words):
    out = tmp_path / "campaign"
    code, err = run_cli(capsys, ["campaign", "--out", str(out), "--budget", "60", "--device", "cpu",
                                 "--dataset", "synthetic", *flags])
    assert_one_line(code, err, *words)
    assert not out.exists()


def test_a_campaign_without_a_budget_is_refused_unless_it_only_says_its_status(tmp_path, capsys, no_campaign):
    out = tmp_path / "campaign"
    code, err = run_cli(capsys, ["campaign", "--out", str(out), "--device", "cpu", "--dataset", "synthetic"])
    assert_one_line(code, err, "--budget missing", "number > 0", "--status")
    assert not out.exists()


def test_a_corrupt_image_in_a_campaigns_data_set_is_refused_before_anything_is_created(
        tmp_path, capsys, no_campaign, make_image_folder):
    root, written = make_image_folder(ext=".jpg")
    broken = written["train"][1][0]
    broken.write_bytes(broken.read_bytes()[:100])
    out = tmp_path / "campaign"
    code, err = run_cli(capsys, ["campaign", "--out", str(out), "--budget", "60", "--device", "cpu",
                                 "--archs", "preact_resnet20", "--seeds", "0", "--dataset", f"folder:{root}",
                                 "--train-args", "--epochs 1 --batch-size 2"])
    assert_one_line(code, err, "cannot decode image", str(broken))
    assert not out.exists()


def test_train_args_add_up():
    plan = campaign.Plan(archs=("preact_resnet20",), seeds=(0,), train_args=("--epochs", "3", "--limit-train", "64"))
    [config] = plan.configs("out", "cpu", "fp32")["preact_resnet20"]
    assert (config.epochs, config.limit_train) == (3, 64)
    parsed = campaign.build_parser().parse_args(["--out", "o", "--train-args", "--epochs 3",
                                                 "--train-args", "--limit-train 64"])
    assert parsed.train_args == ["--epochs 3", "--limit-train 64"]


def test_campaign_status_shows_what_is_on_disk(tmp_path, capsys):
    from reproresnet import cli
    out = tmp_path / "campaign"
    assert cli.main(["campaign", "--out", str(out), "--status"]) == 0
    assert "no runs" in capsys.readouterr().out and not out.exists()
    for name, status in (("preact_resnet20-fp32-seed0", "complete"), ("mine-seed4", "stopped")):
        (out / name).mkdir(parents=True)
        rundir.write_json(out / name / records.RUN_FILE, fake_record(status=status, epochs_done=2))
    (out / campaign.STATE_DIR).mkdir()
    (out / campaign.STATE_DIR / campaign.STATE_FILE).write_text(json.dumps(
        {"plan": {"runs": ["preact_resnet20-fp32-seed0", "preact_resnet20-fp32-seed1", "../escape"]}}))
    assert cli.main(["campaign", "--out", str(out), "--status"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:-1]]  # then the self-check's line
    assert rows == [["preact_resnet20-fp32-seed0", "complete"], ["preact_resnet20-fp32-seed1", "not"],
                    ["mine-seed4", "stopped"]]  # the recorded plan, then what else is there; no default plan


def test_campaign_status_needs_no_torch(tmp_path):
    import subprocess
    import sys
    code = ("import sys; from pathlib import Path; from reproresnet.campaign import slot as campaign; "
            "campaign.disk_status(Path(sys.argv[1])); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"], done.stderr


# ---------------------------------------------------------------- bench and selfcheck

@pytest.mark.parametrize("args, words", [
    pytest.param(["bench", "--threads", "0"], ["threads=0", ">= 1"], id="bench-threads-zero"),
    pytest.param(["bench", "--threads", "100000"], ["threads=100000", "from 1 to"], id="bench-threads-beyond-cores"),
    pytest.param(["bench", "--seed", str(2**40)], [f"seed={2**40}", f"0 to {MAX_SEED}"], id="bench-seed"),
    pytest.param(["bench", "--data-batches", "0"], ["data_batches=0", ">= 1"], id="bench-data-batches-zero"),
    pytest.param(["selfcheck", "--budget", "-1"], ["--budget", "number > 0"], id="selfcheck-budget-negative"),
    pytest.param(["selfcheck", "--budget", "nan"], ["--budget", "finite"], id="selfcheck-budget-nan"),
    pytest.param(["selfcheck", "--timed-steps", "0"], ["--timed-steps", "positive integer"],
                 id="selfcheck-timed-steps-zero"),
    pytest.param(["selfcheck", "--seeds", "1", "1"], ["--seeds 1 1", "1 given more than once"],
                 id="selfcheck-seeds-repeated"),
    pytest.param(["selfcheck", "--seeds", "-1"], ["seed=-1"], id="selfcheck-seed-negative"),
    pytest.param(["selfcheck", "--seeds", "1.5"], ["--seeds", "'1.5' is not an integer"], id="selfcheck-seed-not-whole"),
])
def test_bench_and_selfcheck_refuse_numbers_out_of_range(tmp_path, capsys, monkeypatch, args, words):
    from reproresnet.bench import measure as bench
    from reproresnet.campaign import selfcheck
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_bench_arch", lambda *a, **k: pytest.fail("the benchmark ran"))
    monkeypatch.setattr(selfcheck, "selfcheck", lambda *a, **k: pytest.fail("the self-check ran"))
    code, err = run_cli(capsys, [*args, "--device", "cpu"])
    assert_one_line(code, err, *words)
    assert not any(tmp_path.iterdir())
    assert torch.get_num_threads() >= 1
