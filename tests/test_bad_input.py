"""Bad input through the command line: a non-zero exit, a message that names the bad value and
what is accepted, and nothing partial left behind.

The CLI runs in-process (`cli.main` returns the exit code; argparse errors raise SystemExit),
so the CIFAR fixtures' patched checksums and the simulated full disk apply to it. "Nothing
partial" means: the run directory was not created (settings, device and data are checked
first), so the same --out can be used again once the input is fixed.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import argv, run_cli, without_timing
from reproresnet import cli, records, rundir
from reproresnet import train as training
from reproresnet.config import TrainConfig

RUN_FILES = (records.RUN_FILE, records.METRICS_FILE, records.CHECKPOINT_FILE, records.BEST_FILE)


def assert_refused(code: int, err: str, *words: str) -> None:
    assert code == 2, f"exit {code}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(("reproresnet: error:", "python -m reproresnet train: error:")), err
    for word in words:
        assert word in err, f"{word!r} not in the message:\n{err}"


def assert_nothing_left(out: Path) -> None:
    """Bad input is refused before the run directory is created."""
    assert not out.exists(), f"refused, yet {out} was created: {sorted(p.name for p in out.iterdir())}"


def snapshot(run_dir: Path) -> dict:
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.name != ".lock"}


def checkpoint(run_dir: Path) -> dict:
    return rundir.read_checkpoint(run_dir / records.CHECKPOINT_FILE)


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / records.METRICS_FILE, newline="") as file:
        return list(csv.DictReader(file))


def assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    got, want = checkpoint(run_dir)["model"], checkpoint(reference_dir)["model"]
    assert got.keys() == want.keys()
    assert [key for key in want if not torch.equal(got[key], want[key])] == []
    assert without_timing(metrics_rows(run_dir)) == without_timing(metrics_rows(reference_dir))


def non_finite(state: dict) -> list[str]:
    return [name for name, tensor in state.items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """BASE trained to the end without interruption."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(argv(out)) == 0
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """BASE stopped by Ctrl-C in epoch 2: the checkpoint, metrics and run.json of epoch 1."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_in_epoch(patch, 2)
        assert cli.main(argv(out)) == 130
    assert records.read_run(out).epochs_done == 1
    return out


def _interrupt_in_epoch(patch, number: int) -> None:
    real = training.train_one_epoch

    def interrupted(run, epoch, *args, **kwargs):
        if epoch + 1 == number:
            raise KeyboardInterrupt
        return real(run, epoch, *args, **kwargs)

    patch.setattr(training, "train_one_epoch", interrupted)


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("changes, words", [
    pytest.param({"--arch": "resnet19"}, ["resnet19", "preact_resnet20", "wrn_28_10"], id="unknown-network"),
    pytest.param({"--recipe": "fast"}, ["fast", "seed", "he2016", "wrn2016"], id="unknown-recipe"),
    pytest.param({"--dataset": "imagenet"}, ["imagenet", "cifar10", "synthetic", "folder:PATH"], id="unknown-dataset"),
    pytest.param({"--device": "tpu"}, ["tpu", "cpu", "cuda"], id="unknown-device"),
    pytest.param({"--dropout": "1.5"}, ["dropout=1.5", "[0, 1)"], id="dropout-above-1"),
    pytest.param({"--val-size": "-3"}, ["val_size=-3", "0 or a positive integer"], id="val-size-negative"),
    pytest.param({"--out": ""}, ["out=''", "run directory path"], id="empty-out"),
])
def test_unknown_choice_or_bad_setting(tmp_path, capsys, changes, words):
    code, err = run_cli(capsys, argv(tmp_path / "run", changes))
    assert_refused(code, err, *words)
    assert_nothing_left(tmp_path / "run")


@pytest.mark.parametrize("flag, value, accepted", [
    ("--epochs", "0", "positive"), ("--epochs", "-3", "positive"),
    ("--epochs", "abc", "integer"), ("--epochs", "2.5", "integer"),
    ("--batch-size", "0", "positive"), ("--batch-size", "-16", "positive"), ("--batch-size", "ten", "integer"),
    ("--lr", "0", "positive number"), ("--lr", "-0.1", "positive number"), ("--lr", "abc", "number"),
    ("--lr", "nan", "finite"), ("--lr", "inf", "finite"),
    ("--weight-decay", "-0.0001", ">= 0"), ("--weight-decay", "abc", "number"),
    ("--weight-decay", "nan", "finite"),
])
def test_bad_number_names_the_value_and_what_is_accepted(tmp_path, capsys, flag, value, accepted):
    code, err = run_cli(capsys, argv(tmp_path / "run", {flag: value}))
    name = flag.lstrip("-")
    assert name in err or name.replace("-", "_") in err, err
    assert_refused(code, err, value, accepted)
    assert_nothing_left(tmp_path / "run")


@pytest.mark.parametrize("args, flag", [
    (["train", "--arch", "preact_resnet20", "--out", "unused", "--stop-after", "nan"], "--stop-after"),
    (["train", "--arch", "preact_resnet20", "--out", "unused", "--dropout", "inf"], "--dropout"),
    (["campaign", "--out", "unused", "--budget", "nan"], "--budget"),
    (["campaign", "--out", "unused", "--budget", "inf"], "--budget"),
    (["campaign", "--out", "unused", "--budget", "60", "--min-start", "nan"], "--min-start"),
    (["campaign", "--out", "unused", "--budget", "60", "--max-unfinished-mb", "inf"], "--max-unfinished-mb"),
])
def test_every_command_refuses_a_non_finite_number(tmp_path, capsys, monkeypatch, args, flag):
    from reproresnet.campaign import slot as campaign
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(campaign, "run_campaign", lambda *a, **k: pytest.fail("the campaign ran"))
    code, err = run_cli(capsys, args)
    value = args[args.index(flag) + 1]
    assert code == 2 and f"argument {flag}: {value!r} is not a finite number" in err.strip().splitlines()[-1], err
    assert not any(tmp_path.iterdir())


def test_zero_weight_decay_is_a_valid_setting():
    """Zero turns weight decay off (the recipes accept "a number >= 0"); it is not bad input."""
    args = cli.build_parser().parse_args(argv("unused", {"--weight-decay": "0"}))
    assert TrainConfig(arch=args.arch, out="unused", weight_decay=args.weight_decay).resolved_recipe().weight_decay == 0


@pytest.mark.parametrize("milestones, words", [
    pytest.param("3,1", ["milestones=(3, 1)", "strictly increasing"], id="out-of-order"),
    pytest.param("2,2", ["milestones=(2, 2)", "strictly increasing"], id="repeated"),
    pytest.param("5", ["milestones=(5,)", "between 1 and 4", "5 epochs"], id="at-the-last-epoch"),
    pytest.param("2,9", ["milestones=(2, 9)", "between 1 and 4"], id="beyond-the-last-epoch"),
    pytest.param("0,2", ["milestones=(0, 2)", "between 1 and 4"], id="at-zero"),
    pytest.param("a,b", ["'a,b'", "comma-separated list of integers"], id="not-integers"),
])
def test_bad_milestones(tmp_path, capsys, milestones, words):
    code, err = run_cli(capsys, argv(tmp_path / "run", {"--epochs": "5", "--milestones": milestones}))
    assert_refused(code, err, "milestones", *words)
    assert_nothing_left(tmp_path / "run")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu(tmp_path, capsys, device):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    code, err = run_cli(capsys, argv(tmp_path / "run", {"--device": device}))
    assert_refused(code, err, repr(device), "no CUDA GPU", "--device cpu")
    assert_nothing_left(tmp_path / "run")


# ---------------------------------------------------------------- data

@pytest.mark.parametrize("changes, words", [
    pytest.param({"--limit-train": "5001"}, ["limit_train=5001", "5000 images"], id="limit-train"),
    pytest.param({"--limit-test": "1001"}, ["limit_test=1001", "1000 images"], id="limit-test"),
    pytest.param({"--val-size": "64"}, ["val_size=64", "smaller val_size"], id="val-size-takes-every-image"),
])
def test_subset_larger_than_the_data(tmp_path, capsys, changes, words):
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out, changes))
    assert_refused(code, err, *words)
    assert_nothing_left(out)
    if "--limit-train" in changes:  # the same --out is usable at once, without --resume
        assert run_cli(capsys, argv(out, {"--epochs": "1"}))[0] == 0
        assert records.read_run(out).status == "complete"


def _cifar(data_dir, **changes) -> dict:
    return {"--dataset": "cifar10", "--data-dir": str(data_dir), "--limit-train": None, "--limit-test": None,
            **changes}


def test_cifar_data_dir_missing(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, err = run_cli(capsys, argv(tmp_path / "run", _cifar(missing)))
    assert_refused(code, err, "CIFAR-10 not found", str(missing), "--download", "cifar-10-batches-py")
    assert_nothing_left(tmp_path / "run")


def test_cifar_data_dir_empty(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "cifar-10-batches-py").mkdir(parents=True)
    code, err = run_cli(capsys, argv(tmp_path / "run", _cifar(empty)))
    assert_refused(code, err, "CIFAR-10 not found", str(empty), "--download")
    assert_nothing_left(tmp_path / "run")


def test_cifar_batch_file_truncated(tmp_path, capsys, cifar_root):
    root, _ = cifar_root
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    code, err = run_cli(capsys, argv(tmp_path / "run", _cifar(root)))
    assert_refused(code, err, str(batch), "md5", "truncated", "--download")
    assert_nothing_left(tmp_path / "run")


def test_cifar_checksum_mismatch(tmp_path, capsys, cifar_files):
    root, _ = cifar_files  # the fixture's files, checked against the real CIFAR-10 md5s
    code, err = run_cli(capsys, argv(tmp_path / "run", _cifar(root)))
    assert_refused(code, err, "data_batch_1", "does not match its md5 checksum", "--download")
    assert_nothing_left(tmp_path / "run")


def test_cifar_batch_file_missing(tmp_path, capsys, cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    code, err = run_cli(capsys, argv(tmp_path / "run", _cifar(root)))
    assert_refused(code, err, "incomplete", "test_batch missing", "--download")
    assert_nothing_left(tmp_path / "run")


def test_cifar_limit_larger_than_the_fixture(tmp_path, capsys, cifar_root):
    root, expected = cifar_root
    n_train = len(expected["cifar10"]["train"][1])
    code, err = run_cli(capsys, argv(tmp_path / "run", _cifar(root, **{"--limit-train": str(n_train + 1)})))
    assert_refused(code, err, f"limit_train={n_train + 1}", f"({n_train} images)")
    assert_nothing_left(tmp_path / "run")


def _folder(root) -> dict:
    return {"--dataset": f"folder:{root}", "--limit-train": None, "--limit-test": None}


def test_image_folder_missing(tmp_path, capsys):
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(tmp_path / "nowhere")))
    assert_refused(code, err, str(tmp_path / "nowhere"), "does not exist", "train/<class>")
    assert_nothing_left(tmp_path / "run")


def test_image_folder_empty(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(tmp_path / "empty")))
    assert_refused(code, err, "has no train/ folder", "train/<class>")
    assert_nothing_left(tmp_path / "run")


def test_image_folder_without_class_folders(tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / "flat" / split).mkdir(parents=True)
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(tmp_path / "flat")))
    assert_refused(code, err, "no class folders", str(tmp_path / "flat" / "train"))
    assert_nothing_left(tmp_path / "run")


def test_image_folder_class_without_images(tmp_path, capsys, make_image_folder):
    root, _ = make_image_folder()
    for split in ("train", "test"):
        (root / split / "emu").mkdir()
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(root)))
    assert_refused(code, err, "no images", "emu")
    assert_nothing_left(tmp_path / "run")


def test_image_folder_wrong_image_size(tmp_path, capsys, make_image_folder):
    root, written = make_image_folder()
    path = written["train"][1][0]
    Image.fromarray(np.zeros((32, 33, 3), dtype=np.uint8)).save(path)  # 33 wide, 32 high
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(root)))
    assert_refused(code, err, str(path), "33x32", "32x32")
    assert_nothing_left(tmp_path / "run")


def test_image_folder_mismatched_class_folders(tmp_path, capsys, make_image_folder):
    root, _ = make_image_folder(train_classes=("cat", "dog"), test_classes=("bird", "cat"))
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(root)))
    assert_refused(code, err, "class folders differ", "only in train: ['dog']", "only in test: ['bird']")
    assert_nothing_left(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated", "not-an-image"])
def test_image_folder_unreadable_image(tmp_path, capsys, make_image_folder, damage):
    root, written = make_image_folder()
    path = written["test"][2][0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a png at all")
    code, err = run_cli(capsys, argv(tmp_path / "run", _folder(root)))
    assert_refused(code, err, "cannot decode image", str(path))
    assert_nothing_left(tmp_path / "run")


def test_folder_dataset_without_a_path(tmp_path, capsys):
    code, err = run_cli(capsys, argv(tmp_path / "run", {"--dataset": "folder:"}))
    assert_refused(code, err, "'folder:'", "folder:PATH")
    assert_nothing_left(tmp_path / "run")


# ---------------------------------------------------------------- the output directory

@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_output_directory_cannot_be_written(tmp_path, capsys, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a directory\n")
    out = blocker / "run" if where == "under-a-file" else blocker
    code, err = run_cli(capsys, argv(out))
    assert_refused(code, err, "cannot write to run directory", str(out), "--out")
    assert blocker.read_text() == "not a directory\n"


class _FullDisk:
    """Simulates a disk that fills up: once `full`, write(2) takes `free` more bytes, then
    fails with ENOSPC (short writes first, as the kernel does)."""

    def __init__(self, free: int):
        self.free, self.full = free, False
        disk = self

        class File(io.FileIO):
            def write(self, data):
                if disk.free <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n = min(len(data), disk.free)
                disk.free -= n
                return super().write(bytes(memoryview(data)[:n]))

        self.File = File

    def fdopen(self, fd, mode="r", *args, **kwargs):
        if self.full and "w" in mode:
            return io.BufferedWriter(self.File(fd, "wb", closefd=True))
        return os.fdopen(fd, mode, *args, **kwargs)


class _RundirOs:
    """`os` as rundir sees it, with the full disk's fdopen."""

    def __init__(self, disk: _FullDisk):
        self._disk = disk

    def __getattr__(self, name):
        return self._disk.fdopen if name == "fdopen" else getattr(os, name)


@pytest.mark.slow
@pytest.mark.parametrize("fills_in, free", [
    pytest.param(records.CHECKPOINT_FILE, 0, id="checkpoint-at-its-first-byte"),
    pytest.param(records.CHECKPOINT_FILE, 4096, id="checkpoint-after-4kB"),
    pytest.param(records.CHECKPOINT_FILE, 1_000_000, id="checkpoint-after-1MB"),
    pytest.param(records.METRICS_FILE, 0, id="metrics"),
    pytest.param(records.RUN_FILE, 100, id="run-record"),
])
def test_full_disk_after_the_first_epoch(tmp_path, capsys, monkeypatch, reference, fills_in, free):
    out = tmp_path / "run"
    disk = _FullDisk(free)
    monkeypatch.setattr(rundir, "os", _RundirOs(disk))
    real_write_atomic, writes = rundir.write_atomic, []

    def write_atomic(path, write):
        writes.append(Path(path).name)
        if writes.count(fills_in) == 2:  # the disk fills up while epoch 2 is being saved
            disk.full = True
        return real_write_atomic(path, write)

    monkeypatch.setattr(rundir, "write_atomic", write_atomic)
    code, err = run_cli(capsys, argv(out))
    assert disk.full
    assert_refused(code, err, "disk full", str(out / fills_in), "--resume")

    # The previous epoch's files are whole (the checkpoint may be epoch 2's if it was saved
    # before the disk filled up), and no temporary file is left.
    monkeypatch.undo()
    assert records.read_run(out).epochs_done == 1 and records.read_run(out).status == "running"
    assert len(metrics_rows(out)) == (2 if fills_in == records.RUN_FILE else 1)
    assert len(checkpoint(out)["metrics"]) == (1 if fills_in == records.CHECKPOINT_FILE else 2)
    assert sorted(path.name for path in out.iterdir()) == [".lock", *sorted(RUN_FILES[:3])]

    # Space freed: the run resumes and ends exactly as an uninterrupted one.
    assert run_cli(capsys, argv(out, resume=True))[0] == 0
    assert records.read_run(out).status == "complete"
    assert_same_weights(out, reference)


def test_full_disk_while_taking_the_run_lock(tmp_path, capsys, monkeypatch):
    """The lock's owner line cannot be written: one line, exit 2, no empty .lock left, no
    directory created."""
    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        handle.flush = lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return handle

    monkeypatch.setattr(rundir, "open", full_disk_open, raising=False)
    out = tmp_path / "new" / "run"
    code, err = run_cli(capsys, argv(out))
    assert_refused(code, err, "disk full", str(out))
    assert_nothing_left(tmp_path / "new")

    existing = tmp_path / "existing"  # an empty folder: ours to write into (a user's is never: test_untrusted_records)
    existing.mkdir()
    code, err = run_cli(capsys, argv(existing))
    assert_refused(code, err, "disk full")
    assert list(existing.iterdir()) == []


# ---------------------------------------------------------------- checkpoints that are not a run's

class _RunsCode:
    """A pickle payload: unpickling it creates `marker` (it could run anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """BASE at one epoch, complete."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(argv(out, {"--epochs": "1"})) == 0
    return out


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path, capsys, interrupted):
    out, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(interrupted, out)
    torch.save({**checkpoint(out), "model": _RunsCode(marker)}, out / records.CHECKPOINT_FILE)
    torch.load(out / records.CHECKPOINT_FILE, weights_only=False)  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    before = snapshot(out)
    code, err = run_cli(capsys, argv(out, resume=True))  # ... and never runs here
    assert_refused(code, err, str(out / records.CHECKPOINT_FILE), "refused", "could run code", "delete it")
    assert not marker.exists() and snapshot(out) == before


@pytest.mark.parametrize("content, words", [
    pytest.param({"model": {}, "metrics": []}, ["not a checkpoint of a run", "optimizer", "config"], id="fields"),
    pytest.param([1, 2, 3], ["holds a list, not a checkpoint"], id="a-list"),
    pytest.param("wrong-network", ["does not fit", "delete it"], id="wrong-network"),
])
def test_a_checkpoint_with_the_wrong_content_is_a_one_line_error(tmp_path, capsys, interrupted, content, words):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    if content == "wrong-network":
        state = checkpoint(out)
        content = {**state, "model": {key: value[..., :1] if value.dim() else value
                                      for key, value in state["model"].items()}}
    torch.save(content, out / records.CHECKPOINT_FILE)
    code, err = run_cli(capsys, argv(out, resume=True))
    assert_refused(code, err, str(out / records.CHECKPOINT_FILE), *words)


@pytest.mark.parametrize("damage", ["truncated", "runs-code"])
def test_a_complete_run_reports_its_result_and_says_its_checkpoint_is_damaged(tmp_path, capsys, finished, damage):
    out, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(finished, out)
    path = out / records.CHECKPOINT_FILE
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        torch.save({"model": _RunsCode(marker)}, path)
    before = snapshot(out)
    capsys.readouterr()
    assert cli.main(argv(out, {"--epochs": "1"}, resume=True)) == 0
    printed = capsys.readouterr()
    final = records.read_run(out).final
    assert f"test error {final.test_error:.2f}%" in printed.out
    assert "damaged" in printed.err and "no longer needs it" in printed.err and "delete" not in printed.err
    assert len(printed.err.strip().splitlines()) == 1 and not marker.exists() and snapshot(out) == before


# ---------------------------------------------------------------- reusing a run directory

@pytest.mark.slow
@pytest.mark.parametrize("which", ["interrupted", "complete"])
def test_existing_run_dir_without_resume(capsys, request, which):
    out = request.getfixturevalue("interrupted" if which == "interrupted" else "reference")
    before = snapshot(out)
    code, err = run_cli(capsys, argv(out))
    assert_refused(code, err, str(out), "already holds a run", "--resume", "another --out")
    assert snapshot(out) == before


@pytest.mark.slow
@pytest.mark.parametrize("changes, words", [
    pytest.param({"--lr": "0.05"}, ["lr: 0.1 -> 0.05"], id="lr"),  # the effective value: the recipe's
    pytest.param({"--seed": "1"}, ["seed: 0 -> 1"], id="seed"),
    pytest.param({"--epochs": "4"}, ["epochs: 3 -> 4"], id="epochs"),
    pytest.param({"--batch-size": "32"}, ["batch_size: 16 -> 32"], id="batch-size"),
    pytest.param({"--arch": "preact_resnet32"}, ["arch: 'preact_resnet20' -> 'preact_resnet32'"], id="network"),
    pytest.param({"--limit-train": "48"}, ["limit_train: 64 -> 48"], id="subset"),
    pytest.param({"--augmentation": "none"}, ["augmentation: 'per_image' -> 'none'"], id="augmentation"),
])
@pytest.mark.parametrize("which", ["interrupted", "complete"])
def test_resume_with_different_settings(capsys, request, which, changes, words):
    out = request.getfixturevalue("interrupted" if which == "interrupted" else "reference")
    before = snapshot(out)
    code, err = run_cli(capsys, argv(out, changes, resume=True))
    assert_refused(code, err, f"cannot resume {out} with different settings", *words)
    assert snapshot(out) == before


@pytest.mark.slow
def test_resume_may_change_where_it_runs(tmp_path, capsys, interrupted, reference):
    """--device (like --out and --data-dir) may differ: it changes where, not what."""
    out = tmp_path / "moved"
    shutil.copytree(interrupted, out)
    assert run_cli(capsys, argv(out, {"--device": "auto"}, resume=True))[0] == 0
    assert records.read_run(out).status == "complete"
    assert_same_weights(out, reference)


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_epochs_and_resume_equals_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """The one test of Ctrl-C then --resume: the same run as an uninterrupted one, bit for bit,
    dropout's random draws included. (A SIGKILL is test_crash_safety's, a full disk and a
    divergence are tested above and below.)"""
    dropout, whole, out = {"--arch": "wrn_16_4", "--dropout": "0.3"}, tmp_path / "whole", tmp_path / "run"
    assert run_cli(capsys, argv(whole, dropout))[0] == 0
    _interrupt_in_epoch(monkeypatch, 3)
    code, err = run_cli(capsys, argv(out, dropout))
    assert code == 130 and "interrupted" in err and "--resume" in err
    assert records.read_run(out).epochs_done == 2 and len(checkpoint(out)["metrics"]) == 2
    monkeypatch.undo()
    assert run_cli(capsys, argv(out, dropout, resume=True))[0] == 0
    assert_same_weights(out, whole)
    assert records.read_run(out).final.test_error == records.read_run(whole).final.test_error


# ---------------------------------------------------------------- divergence

def _assert_diverged(out: Path, err: str, epoch: int) -> dict | None:
    """The run stopped in `epoch` with a clear message; the last good checkpoint is kept."""
    message = err.strip().splitlines()[-1].removeprefix("reproresnet: error: ")
    assert f"epoch {epoch}" in message and any(word in message for word in ("nan", "inf", "finite")), err
    record = records.read_run(out)
    assert record.status == "diverged" and record.message == message
    assert record.epochs_done == epoch - 1 == len(metrics_rows(out))
    if epoch == 1:
        assert not (out / records.CHECKPOINT_FILE).exists()
        return None
    kept = checkpoint(out)
    assert len(kept["metrics"]) == epoch - 1
    assert non_finite(kept["model"]) == [], "the kept checkpoint is not a good one: it holds NaN/inf"
    return kept


@pytest.mark.slow
def test_huge_learning_rate_diverges_with_a_clear_message(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(capsys, argv(out, {"--lr": "1e6"}))
    assert code == 2 and "Traceback" not in err, err
    record = records.read_run(out)
    _assert_diverged(out, err, record.epochs_done + 1)


@pytest.mark.slow
def test_divergence_keeps_the_last_good_checkpoint_and_can_be_resumed(tmp_path, capsys, monkeypatch, reference):
    """A NaN loss in epoch 2 (the loss is poisoned for that epoch only)."""
    out = tmp_path / "run"
    real_epoch, real_loss = training.train_one_epoch, torch.nn.functional.cross_entropy

    def nan_loss(*args, **kwargs):
        return real_loss(*args, **kwargs) * float("nan")

    def epoch_2_diverges(run, epoch, *args, **kwargs):
        if epoch != 1:
            return real_epoch(run, epoch, *args, **kwargs)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.nn.functional, "cross_entropy", nan_loss)  # the loss of every step
            return real_epoch(run, epoch, *args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", epoch_2_diverges)
    code, err = run_cli(capsys, argv(out))
    assert code == 2 and "Traceback" not in err, err
    _assert_diverged(out, err, 2)
    monkeypatch.undo()
    assert run_cli(capsys, argv(out, resume=True))[0] == 0  # from the kept epoch-1 checkpoint
    assert records.read_run(out).status == "complete"
    assert_same_weights(out, reference)
