"""The training loop end to end on CPU, with tiny networks and the synthetic data set."""

import csv
import json

import pytest
import torch

from reproresnet import cli, records, train as training
from reproresnet.config import TrainConfig
from reproresnet.models import build_model, count_parameters
from reproresnet.records import RunDirError

TINY = dict(arch="preact_resnet20", dataset="synthetic", limit_train=96, limit_test=48, batch_size=32,
            device="cpu", epochs=3)


def tiny(tmp_path, name="run", **changes):
    return TrainConfig(out=str(tmp_path / name), **{**TINY, **changes})


def weights(run_dir):
    return torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["model"]


@pytest.mark.slow
def test_a_run_writes_its_record_metrics_and_checkpoint(tmp_path):
    config = tiny(tmp_path)
    record = training.train(config, progress=False)
    run_dir = tmp_path / "run"
    assert record == records.read_run(run_dir)
    assert record["status"] == "complete" and record["epochs_done"] == record["epochs_planned"] == 3
    assert record["params"] == count_parameters(build_model("preact_resnet20")) == 269_722  # option A shortcuts
    assert record["precision"] == "fp32" and record["schedule"]["lost"] == []
    assert record["flops_per_image"] > 4e7  # preact_resnet20: about 41 MFLOPs (82 M multiply-adds x 2)
    assert record["data"]["label"] == "synthetic" and record["data"]["n_train"] == 96
    assert record["config"] == config.as_dict() and record["recipe"]["name"] == "seed"
    assert record["device"]["type"] == "cpu" and record["versions"]["torch"] == torch.__version__
    assert record["final"]["selected_by"] == "final_epoch" and record["final"]["epoch"] == 3
    rows = list(csv.DictReader(open(run_dir / records.METRICS_FILE)))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert float(rows[-1]["test_error"]) == pytest.approx(record["final"]["test_error"])
    # the seed's decays at 80 and 120 of 200 epochs, scaled to 3: epochs 1.2 and 1.8, iterations 4 and 5
    assert record["schedule"]["milestones"] == [4, 5]
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.1, 0.001, 0.001])  # each epoch's last step
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_different_seeds_give_different_runs(tmp_path):
    training.train(tiny(tmp_path, "a", epochs=1), progress=False)
    training.train(tiny(tmp_path, "b", epochs=1, seed=1), progress=False)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert not all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_complete_run_is_not_trained_again(tmp_path, monkeypatch):
    config = tiny(tmp_path, epochs=1)
    first = training.train(config, progress=False)
    monkeypatch.setattr(training, "build_run", lambda *a: pytest.fail("a complete run was set up again"))
    assert training.train(config, resume=True, progress=False) == first


@pytest.mark.slow
def test_existing_run_needs_resume_and_the_same_settings(tmp_path):
    training.train(tiny(tmp_path, epochs=1), progress=False)
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        training.train(tiny(tmp_path, epochs=1), progress=False)
    with pytest.raises(RunDirError, match="different settings .*lr: 0.1 -> 0.05"):
        training.train(tiny(tmp_path, epochs=1, lr=0.05), resume=True, progress=False)


@pytest.mark.slow
def test_validation_split_reports_the_best_validation_epoch(tmp_path):
    record = training.train(tiny(tmp_path, val_size=32), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / records.METRICS_FILE)))
    best = min(rows, key=lambda row: float(row["val_error"]))
    assert record["final"]["selected_by"] == "best_validation"
    assert record["final"]["epoch"] == int(best["epoch"])
    assert record["final"]["test_error"] == pytest.approx(float(best["test_error"]))
    assert record["data"]["n_train"] == 64 and record["data"]["n_val"] == 32
    assert (tmp_path / "run" / records.BEST_FILE).exists()


@pytest.mark.slow
def test_cli_train_and_list(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["train", "--arch", "preact_resnet20", "--out", str(out), "--dataset", "synthetic",
                     "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--epochs", "1",
                     "--device", "cpu", "--quiet"])
    assert code == 0
    assert "preact_resnet20 on synthetic: test error" in capsys.readouterr().out
    assert records.read_run(out)["config"]["batch_size"] == 32
    # without --quiet: what is loaded and built, and where, before the first progress bar
    code = cli.main(["train", "--arch", "preact_resnet20", "--out", str(tmp_path / "loud"), "--dataset", "synthetic",
                     "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--epochs", "1",
                     "--device", "cpu", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[:3] == [
        "preact_resnet20: loading synthetic ...",
        "preact_resnet20: 64 training, 0 validation and 32 test images of synthetic on cpu; 1 CPU thread (requested)",
        "preact_resnet20: built, 269,722 parameters, fp32; training 1 epoch"]
    assert lines[3].startswith("epoch   1/1")
    assert records.read_run(tmp_path / "loud")["speed"]["segments"][0]["threads"] == 1

    assert cli.main(["list", "--json"]) == 0
    listing = {row["name"]: row["params"] for row in json.loads(capsys.readouterr().out)}
    assert listing["preact_resnet164"] == 1_703_258 and listing["wrn_16_4"] == 2_748_890
    assert listing["preact_resnet110"] == 1_727_962  # zero-padding shortcuts by default (He 2015, option A)


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    code = cli.main(["train", "--arch", "resnet111", "--out", str(tmp_path / "x"), "--dataset", "synthetic"])
    assert code == 2
    error = capsys.readouterr().err
    assert "arch" in error and "resnet111" in error and "preact_resnet110" in error
    assert not (tmp_path / "x").exists()
