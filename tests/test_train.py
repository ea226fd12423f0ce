"""The training loop end to end on CPU, with tiny networks and the synthetic data set."""

import csv
import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from reproresnet import cli, records, train as training
from reproresnet.config import TrainConfig
from reproresnet.models import build_model, count_parameters
from reproresnet.records import RunDirError
from reproresnet.stacked import split_optimizer_state

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
    monkeypatch.setattr(training, "build_stack", lambda *a, **k: pytest.fail("a complete run was set up again"))
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
        "preact_resnet20: built, 269,722 parameters, fp32, eager engine; training 1 epoch"]
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


# ---------------------------------------------------------------- K runs as one stacked network

STACK = dict(TINY, limit_train=64, epochs=3)


def stacked(tmp_path, seeds=(0, 1), prefix="k", **changes):
    return [TrainConfig(out=str(tmp_path / f"{prefix}{seed}"), seed=seed, **{**STACK, **changes}) for seed in seeds]


def checkpoint(run_dir):
    return torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)


def _same_structure(a, b):
    """Same keys, shapes, dtypes and plain values, tensors aside: what a separate run writes."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_structure(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_structure, a, b))
    return type(a) is type(b)


def _stop_after_epoch(monkeypatch, last: int) -> None:
    real = training._no_time_for
    monkeypatch.setattr(training, "_no_time_for", lambda epoch, *args: epoch == last or real(epoch, *args))


def test_a_stacked_run_writes_what_a_separate_run_writes_and_is_resumed_alone(tmp_path, monkeypatch):
    """Two seeds trained as one stack, stopped after an epoch, then each resumed as a separate
    run: each checkpoint has a lone run's keys, shapes, dtypes and lr, holds exactly its part of
    the stack (split and merged back, bit for bit), and the lone run goes on from it."""
    device = torch.device("cpu")
    configs = stacked(tmp_path)
    _stop_after_epoch(monkeypatch, 1)
    first = training.train_stack(configs, device, deadline=time.time() + 3600)
    alone = training.train(TrainConfig(out=str(tmp_path / "alone"), seed=0, **STACK), progress=False,
                           deadline=time.time() + 3600)
    monkeypatch.undo()
    assert [(r["status"], r["epochs_done"]) for r in first + [alone]] == [("stopped", 1)] * 3
    segment = first[0]["speed"]["segments"][-1]
    assert (segment["stacked"], segment["engine"]) == (2, "eager") and "dropout" in segment["stacked_note"]
    ours, lone = checkpoint(tmp_path / "k0"), checkpoint(tmp_path / "alone")
    assert ours.keys() == lone.keys() and all(_same_structure(ours[key], lone[key]) for key in ("model", "optimizer"))
    assert ours["optimizer"]["param_groups"] == lone["optimizer"]["param_groups"]
    saved = [checkpoint(tmp_path / f"k{seed}") for seed in (0, 1)]
    stack = training.build_stack(configs, [training.load_device_splits(c, device) for c in configs], device,
                                 checkpoints=saved)
    momentum = split_optimizer_state(stack.optimizer.state_dict(), 2)
    for state, optimizer, checkpoint_ in zip(stack.model.model_state_dicts(), momentum, saved):
        assert all(torch.equal(state[name], checkpoint_["model"][name]) for name in checkpoint_["model"])
        assert all(torch.equal(optimizer["state"][i]["momentum_buffer"], checkpoint_["optimizer"]["state"][i]
                               ["momentum_buffer"]) for i in checkpoint_["optimizer"]["state"])
    for seed, config in enumerate(configs):
        record = training.train(config, resume=True, progress=False)
        assert record["status"] == "complete" and record["epochs_done"] == 3
        assert [(s["first_epoch"], s["stacked"]) for s in record["speed"]["segments"]] == [(1, 2), (2, 1)]
        assert checkpoint(tmp_path / f"k{seed}")["metrics"][0] == saved[seed]["metrics"][0]  # the stack's epoch kept


def test_separate_runs_are_resumed_as_one_stack_from_exactly_their_state(tmp_path, monkeypatch):
    device = torch.device("cpu")
    configs = stacked(tmp_path)
    _stop_after_epoch(monkeypatch, 1)
    for config in configs:
        training.train(config, progress=False, deadline=time.time() + 3600)
    monkeypatch.undo()
    saved = [checkpoint(Path(c.out)) for c in configs]
    built = []
    real_build = training.build_stack
    monkeypatch.setattr(training, "build_stack", lambda *args, **kwargs: built.append(real_build(*args, **kwargs))
                        or built[-1])
    records_ = training.train_stack(configs, device)
    assert [(r["status"], r["epochs_done"]) for r in records_] == [("complete", 3)] * 2
    assert [(s["first_epoch"], s["stacked"]) for s in records_[0]["speed"]["segments"]] == [(1, 1), (2, 2)]
    # the stack began from the two checkpoints, merged (its state after training differs; rebuild it)
    again = real_build(configs, [training.load_device_splits(c, device) for c in configs], device,
                       checkpoints=saved)
    for state, checkpoint_ in zip(again.model.model_state_dicts(), saved):
        assert all(torch.equal(state[name], checkpoint_["model"][name]) for name in checkpoint_["model"])
    assert built and built[0].k == 2


def test_a_stack_trains_each_run_as_it_would_train_alone(tmp_path):
    """Stacked and separate runs of the same seeds, 3 epochs (6 steps) on a CPU in fp32: every
    metric agrees within 5e-3 relative (losses) and 2 images (errors). Not bit for bit: a grouped
    convolution sums in another order than K separate ones, and a ReLU within rounding of zero
    then switches (tests/test_fast_path.py), so the last bits grow with the steps (1e-4 after an
    epoch, 1e-3 after two, a few % after ten, measured on such sets); in float64 stacks are
    exact (test_stacked.py)."""
    device = torch.device("cpu")
    together = training.train_stack(stacked(tmp_path, seeds=(0, 1, 2)), device)
    for seed, record in enumerate(together):
        alone = training.train(stacked(tmp_path, seeds=(seed,), prefix="alone")[0], progress=False)
        assert record["status"] == alone["status"] == "complete"
        rows = [list(csv.DictReader(open(tmp_path / f"{prefix}{seed}" / records.METRICS_FILE)))
                for prefix in ("k", "alone")]
        for ours, theirs in zip(*rows):
            for key in ("train_loss", "test_loss"):
                assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=5e-3), (seed, key)
            assert abs(float(ours["train_error"]) - float(theirs["train_error"])) <= 100 * 2 / 64 + 1e-9
            assert abs(float(ours["test_error"]) - float(theirs["test_error"])) <= 100 * 2 / 48 + 1e-9


def test_a_stack_evaluates_each_run_as_it_would_alone(tmp_path):
    """One evaluation pass of a stack of two freshly built runs (each on its own synthetic data,
    normalised by its own training split) against each run built alone: losses within 1e-5
    relative (a forward pass, summed in another order), errors within one image."""
    device = torch.device("cpu")
    configs = stacked(tmp_path)
    splits = [training.load_device_splits(c, device) for c in configs]
    together = training.evaluate(training.build_stack(configs, splits, device), [s.test for s in splits])
    for config, split, (loss, error) in zip(configs, splits, together):
        [(alone_loss, alone_error)] = training.evaluate(training.build_stack([config], [split], device), [split.test])
        assert loss == pytest.approx(alone_loss, rel=1e-5) and abs(error - alone_error) <= 100 / 48 + 1e-9


def test_a_nan_in_one_run_of_a_stack_stops_that_run_only(tmp_path, monkeypatch):
    """Seed 1's network (its rows of the stem's weight) poisoned after epoch 2's steps: its run
    is recorded as diverged with its epoch-1 checkpoint kept; seed 0 trains on to the end,
    bit for bit as in a stack where nothing went wrong."""
    device = torch.device("cpu")
    clean = training.train_stack(stacked(tmp_path, prefix="clean"), device)
    real_epoch = training.train_one_epoch

    def poisoned(stack, epoch, *args, **kwargs):
        rows = real_epoch(stack, epoch, *args, **kwargs)
        if epoch == 1:
            with torch.no_grad():
                stack.model.stem.weight[16:] = float("nan")  # seed 1's 16 filters
        return rows

    monkeypatch.setattr(training, "train_one_epoch", poisoned)
    ours = training.train_stack(stacked(tmp_path), device)
    assert [r["status"] for r in ours] == ["complete", "diverged"] == [clean[0]["status"], "diverged"]
    assert ours[1]["epochs_done"] == 1 and records.read_run(tmp_path / "k1") == ours[1]
    assert ours[1]["message"] == ("weights became non-finite (stem.weight) in epoch 2; "
                                  "the checkpoint of epoch 1 is kept")
    assert len(checkpoint(tmp_path / "k1")["metrics"]) == 1
    a, b = weights(tmp_path / "k0"), weights(tmp_path / "clean0")
    assert all(torch.equal(a[key], b[key]) for key in a)
