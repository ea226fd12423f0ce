"""The training loop end to end on CPU, with tiny networks and the synthetic data set."""

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
import torch

from reproresnet import cli, records, rundir, train as training
from reproresnet.config import TrainConfig, select_device
from reproresnet.data import load_device_splits
from reproresnet.models import build_model, count_parameters
from reproresnet.rundir import RunDirError
from reproresnet.engine import EagerEngine
from reproresnet.stacked import split_optimizer_state

from conftest import TINY, same_run, tiny, weights

@pytest.mark.slow
def test_a_run_writes_its_record_metrics_and_checkpoint(tmp_path):
    config = tiny(tmp_path)
    record = training.train(config, progress=False)
    run_dir = tmp_path / "run"
    assert record == records.read_run(run_dir)
    assert record.status == "complete" and record.epochs_done == record.epochs_planned == 3
    assert record.params == count_parameters(build_model("preact_resnet20")) == 269_722  # option A shortcuts
    assert record.precision == "fp32" and record.schedule["lost"] == []
    assert record.flops_per_image > 4e7  # preact_resnet20: about 41 MFLOPs (82 M multiply-adds x 2)
    assert record.data.label == "synthetic" and record.data.n_train == 24
    assert record.config == config.as_dict() and record.recipe["name"] == "seed"
    assert record.device.type == "cpu" and record.versions["torch"] == torch.__version__
    assert record.final.selected_by == "final_epoch" and record.final.epoch == 3
    rows = list(csv.DictReader(open(run_dir / records.METRICS_FILE)))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert float(rows[-1]["test_error"]) == pytest.approx(record.final.test_error)
    # the seed's decays at 80 and 120 of 200 epochs, scaled to 3: epochs 1.2 and 1.8, iterations 4 and 5
    assert record.schedule["milestones"] == [4, 5]
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
    record = training.train(tiny(tmp_path, val_size=8), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / records.METRICS_FILE)))
    best = min(rows, key=lambda row: float(row["val_error"]))
    assert record.final.selected_by == "best_validation"
    assert record.final.epoch == int(best["epoch"])
    assert record.final.test_error == pytest.approx(float(best["test_error"]))
    assert record.data.n_train == 16 and record.data.n_val == 8
    assert (tmp_path / "run" / records.BEST_FILE).exists()


@pytest.mark.slow
def test_cli_train_and_list(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["train", "--arch", "preact_resnet20", "--out", str(out), "--dataset", "synthetic",
                     "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--epochs", "1",
                     "--device", "cpu", "--quiet"])
    assert code == 0
    assert "preact_resnet20 on synthetic: test error" in capsys.readouterr().out
    assert records.read_run(out).config["batch_size"] == 32
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
    assert records.read_run(tmp_path / "loud").speed[0].threads == 1

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

STACK = dict(TINY, limit_train=16, limit_test=16, epochs=3)  # 2 steps an epoch


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


class AfterEpochs(training.Deadline):
    """A deadline that leaves time for `epochs` epochs: asked before each epoch, it answers by
    the epochs done, not by the clock."""

    def __init__(self, epochs: int):
        super().__init__(at=math.inf)
        self.epochs = epochs

    def allows(self, epochs_done: int, predicted_seconds: float) -> bool:
        return epochs_done < self.epochs


def test_a_stacked_run_writes_what_a_separate_run_writes_and_is_resumed_alone(tmp_path):
    """Two seeds trained as one stack, stopped after an epoch, then each resumed as a separate
    run: each checkpoint has a lone run's keys, shapes, dtypes and lr, holds exactly its part of
    the stack (split and merged back, bit for bit), and the lone run goes on from it."""
    device = torch.device("cpu")
    configs = stacked(tmp_path)
    first = training.train_stack(configs, device, deadline=AfterEpochs(1))
    alone = training.train(TrainConfig(out=str(tmp_path / "alone"), seed=0, **STACK), progress=False,
                           deadline=AfterEpochs(1))
    assert [(r.status, r.epochs_done) for r in first + [alone]] == [("stopped", 1)] * 3
    segment = first[0].speed[-1]
    assert (segment.stacked, segment.engine) == (2, "eager") and "dropout" in segment.stacked_note
    ours, lone = checkpoint(tmp_path / "k0"), checkpoint(tmp_path / "alone")
    assert ours.keys() == lone.keys() and all(_same_structure(ours[key], lone[key]) for key in ("model", "optimizer"))
    assert ours["optimizer"]["param_groups"] == lone["optimizer"]["param_groups"]
    saved = [checkpoint(tmp_path / f"k{seed}") for seed in (0, 1)]
    stack = training.build_stack(configs, [load_device_splits(c, device) for c in configs], device,
                                 checkpoints=saved)
    momentum = split_optimizer_state(stack.optimizer.state_dict(), 2)
    for state, optimizer, checkpoint_ in zip(stack.model.model_state_dicts(), momentum, saved):
        assert all(torch.equal(state[name], checkpoint_["model"][name]) for name in checkpoint_["model"])
        assert all(torch.equal(optimizer["state"][i]["momentum_buffer"], checkpoint_["optimizer"]["state"][i]
                               ["momentum_buffer"]) for i in checkpoint_["optimizer"]["state"])
    for seed, config in enumerate(configs):
        record = training.train(config, resume=True, progress=False)
        assert record.status == "complete" and record.epochs_done == 3
        assert [(s.first_epoch, s.stacked) for s in record.speed] == [(1, 2), (2, 1)]
        assert checkpoint(tmp_path / f"k{seed}")["metrics"][0] == saved[seed]["metrics"][0]  # the stack's epoch kept


def test_separate_runs_are_resumed_as_one_stack_from_exactly_their_state(tmp_path, monkeypatch):
    device = torch.device("cpu")
    configs = stacked(tmp_path)
    for config in configs:
        training.train(config, progress=False, deadline=AfterEpochs(1))
    saved = [checkpoint(Path(c.out)) for c in configs]
    built = []
    real_build = training.build_stack
    monkeypatch.setattr(training, "build_stack", lambda *args, **kwargs: built.append(real_build(*args, **kwargs))
                        or built[-1])
    records_ = training.train_stack(configs, device)
    assert [(r.status, r.epochs_done) for r in records_] == [("complete", 3)] * 2
    assert [(s.first_epoch, s.stacked) for s in records_[0].speed] == [(1, 1), (2, 2)]
    # the stack began from the two checkpoints, merged (its state after training differs; rebuild it)
    again = real_build(configs, [load_device_splits(c, device) for c in configs], device,
                       checkpoints=saved)
    for state, checkpoint_ in zip(again.model.model_state_dicts(), saved):
        assert all(torch.equal(state[name], checkpoint_["model"][name]) for name in checkpoint_["model"])
    assert built and built[0].k == 2


def test_runs_at_different_epochs_are_refused_as_one_stack_before_any_data_is_loaded(tmp_path, monkeypatch):
    """A stack resumes from one epoch: a run one epoch on beside a fresh one is refused in one
    line, before any data is loaded; the fresh run's folder is left as it was (absent), the other
    run's checkpoint untouched."""
    ahead, fresh = stacked(tmp_path)
    training.train(ahead, progress=False, deadline=AfterEpochs(1))
    before = (tmp_path / "k0" / records.CHECKPOINT_FILE).read_bytes()
    monkeypatch.setattr(training, "device_splits", lambda *args: pytest.fail("data loaded before the refusal"))
    with pytest.raises(training.ConfigError, match="same epoch; epochs done: .*k0: 1, .*k1: 0"):
        training.train_stack([ahead, fresh], torch.device("cpu"))
    assert not (tmp_path / "k1").exists() and (tmp_path / "k0" / records.CHECKPOINT_FILE).read_bytes() == before


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
        assert record.status == alone.status == "complete"
        rows = [list(csv.DictReader(open(tmp_path / f"{prefix}{seed}" / records.METRICS_FILE)))
                for prefix in ("k", "alone")]
        for ours, theirs in zip(*rows):
            for key in ("train_loss", "test_loss"):
                assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=5e-3), (seed, key)
            assert abs(float(ours["train_error"]) - float(theirs["train_error"])) <= 100 * 2 / 16 + 1e-9
            assert abs(float(ours["test_error"]) - float(theirs["test_error"])) <= 100 * 2 / 16 + 1e-9


def test_a_stack_evaluates_each_run_as_it_would_alone(tmp_path):
    """One evaluation pass of a stack of two freshly built runs (each on its own synthetic data,
    normalised by its own training split) against each run built alone: losses within 1e-5
    relative (a forward pass, summed in another order), errors within one image."""
    device = torch.device("cpu")
    configs = stacked(tmp_path)
    splits = [load_device_splits(c, device) for c in configs]
    together = training.evaluate(training.build_stack(configs, splits, device), [s.test for s in splits])
    for config, split, (loss, error) in zip(configs, splits, together):
        [(alone_loss, alone_error)] = training.evaluate(training.build_stack([config], [split], device), [split.test])
        assert loss == pytest.approx(alone_loss, rel=1e-5) and abs(error - alone_error) <= 100 / 16 + 1e-9


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
    assert [r.status for r in ours] == ["complete", "diverged"] == [clean[0].status, "diverged"]
    assert ours[1].epochs_done == 1 and records.read_run(tmp_path / "k1") == ours[1]
    assert ours[1].message == ("weights became non-finite (stem.weight) in epoch 2; "
                                  "the checkpoint of epoch 1 is kept")
    assert len(checkpoint(tmp_path / "k1")["metrics"]) == 1
    a, b = weights(tmp_path / "k0"), weights(tmp_path / "clean0")
    assert all(torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------- the clean stop and speed


def test_a_deadline_stops_at_an_epoch_boundary_and_the_resumed_run_is_exact(tmp_path):
    whole = training.train(tiny(tmp_path, "whole", epochs=4), progress=False)

    config = tiny(tmp_path, "split", epochs=4)
    stopped = training.train(config, progress=False, deadline=AfterEpochs(2))
    assert stopped.status == "stopped" and stopped.epochs_done == 2 and stopped.final is None
    assert stopped.message.startswith("stopped cleanly after epoch 2 of 4")
    assert records.read_run(tmp_path / "split") == stopped
    checkpoint = torch.load(tmp_path / "split" / records.CHECKPOINT_FILE, weights_only=False)
    assert len(checkpoint["metrics"]) == 2
    assert checkpoint["speedups"] == {"bf16": False, "channels_last": False, "compile": False,
                                      "fused_optimizer": False}
    assert checkpoint["generator_device"] == "cpu"

    resumed = training.train(config, resume=True, progress=False, pack=2)
    assert resumed.status == "complete" and resumed.message is None
    assert same_run(tmp_path / "whole", tmp_path / "split")
    assert resumed.final.test_error == whole.final.test_error
    # one speed segment per process; each leaves its first epoch out of s/epoch
    segments = resumed.speed
    assert [(s.first_epoch, s.last_epoch, s.epochs_timed, s.pack) for s in segments] == \
        [(1, 2, 1, 1), (3, 4, 1, 2)]
    assert all(s.precision == "fp32" and s.compile_mode is None and s.gpu is None for s in segments)
    assert all(s.threads == torch.get_num_threads() for s in segments)  # this process's CPU threads
    metrics = checkpoint["metrics"] + torch.load(tmp_path / "split" / records.CHECKPOINT_FILE,
                                                 weights_only=False)["metrics"][2:]
    assert resumed.final.seconds_per_epoch == pytest.approx(
        (metrics[1]["seconds"] + metrics[3]["seconds"]) / 2)  # epochs 2 and 4; 1 and 3 warmed up
    assert "first" in resumed.to_json()["speed"]["note"]


def test_a_resume_keeps_the_threads_the_run_trained_with_unless_told_otherwise(tmp_path, monkeypatch):
    """On a CPU the thread count sets the last bits, so a resume keeps the count the run started
    with rather than the one today's load would choose (here: four idle cores)."""
    config = tiny(tmp_path, epochs=3, limit_train=8)  # a step an epoch: this test is about threads
    training.train(config, progress=False, deadline=AfterEpochs(1))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    unset = dataclasses.replace(config, threads=None)
    record = training.train(unset, resume=True, progress=False, deadline=AfterEpochs(2))
    assert [s.threads for s in record.speed] == [1, 1]
    record = training.train(dataclasses.replace(config, threads=2), resume=True, progress=False)
    assert [s.threads for s in record.speed] == [1, 1, 2]  # a choice given is kept


def test_a_deadline_already_passed_trains_nothing_and_says_so(tmp_path):
    record = training.train(tiny(tmp_path), progress=False, deadline=time.time() - 1)
    assert record.epochs_done == 0 and record.status == "stopped"
    assert "stopped cleanly after epoch 0" in record.message
    assert not (tmp_path / "run" / records.CHECKPOINT_FILE).exists()
    assert training.train(tiny(tmp_path), resume=True, progress=False).status == "complete"


def test_a_fresh_runs_first_epoch_is_predicted_from_a_measured_step(tmp_path):
    """Nothing has timed a fresh run's first epoch: the deadline predicts it from a measured
    step (the campaign's self-check): setup, then its training steps and its evaluated batches
    (validation and test) at a step each. Without a measured step it is predicted to take no
    time, as before; a clock-bound deadline that a predicted epoch would pass trains nothing."""
    asked = []

    class Asked(training.Deadline):
        def allows(self, epochs_done, predicted_seconds):
            asked.append(predicted_seconds)
            return False

    record = training.train(tiny(tmp_path), progress=False, deadline=Asked(math.inf, step_seconds=2.0,
                                                                          setup_seconds=5.0))
    data = record.data
    assert asked == [pytest.approx(5.0 + (24 / 8 + (data.n_test + data.n_val) / 8) * 2.0)]
    assert record.status == "stopped" and record.epochs_done == 0
    training.train(tiny(tmp_path, "unmeasured"), progress=False, deadline=Asked(math.inf))
    assert asked[1] == 0.0
    late = training.train(tiny(tmp_path, "late"), progress=False,
                          deadline=training.Deadline(time.time() + 60, step_seconds=30.0))
    assert late.epochs_done == 0 and "stopped cleanly after epoch 0" in late.message


def test_resuming_with_other_speedups_or_generator_device_is_refused(tmp_path):
    config = tiny(tmp_path, epochs=2)
    training.train(config, progress=False, deadline=time.time() + 3600)
    path = tmp_path / "run" / records.CHECKPOINT_FILE
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["metrics"] = checkpoint["metrics"][:1]  # as if stopped after epoch 1 ...
    checkpoint["record"].update(status="running", epochs_done=1, final=None)
    checkpoint["speedups"]["bf16"] = True             # ... of a run that started on CUDA
    checkpoint["generator_device"] = "cuda"
    torch.save(checkpoint, path)
    record = records.read_run(tmp_path / "run")
    rundir.write_json(tmp_path / "run" / records.RUN_FILE, {**record.to_json(), "status": "running"})
    with pytest.raises(RunDirError, match=r"speedups .*'bf16': True.* drawn on cuda.* on cpu"):
        training.train(config, resume=True, progress=False)


def test_evaluation_is_fp32_and_eager_and_the_last_partial_batch_is_eager(tmp_path):
    config = tiny(tmp_path, limit_train=20)  # 2 batches of 8 and one of 4
    device = select_device(config.device)
    stack = training.build_stack([config], [load_device_splits(config, device)], device)
    test = [stack.runs[0].splits.test]
    reference = training.evaluate(stack, test)

    sizes = []

    class FullBatchesOnly(torch.nn.Module):  # stands in for the compiled module
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            sizes.append(len(images))
            assert len(images) == config.batch_size, "a partial batch reached the compiled module"
            return self.model(images)

    engine = EagerEngine(stack.model, stack.optimizer, stack.speedups, config.batch_size, FullBatchesOnly(stack.model),
                         precision="bf16")
    stack = dataclasses.replace(stack, engine=engine, precision="bf16")
    assert training.evaluate(stack, test) == reference  # no autocast, not the step module
    training.train_one_epoch(stack, 0, progress=False)
    assert sizes == [8, 8]


def test_the_cli_stops_cleanly_and_says_how_far_it_got(tmp_path, capsys):
    from reproresnet import cli
    args = ["train", "--arch", "preact_resnet20", "--dataset", "synthetic", "--limit-train", "32",
            "--limit-test", "16", "--batch-size", "16", "--epochs", "2", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "r")]
    assert cli.main(args + ["--stop-after", "0.001"]) == 0  # spent by the time the first epoch could start
    assert "0/2 epochs; stopped cleanly" in capsys.readouterr().out


def test_stop_after_and_stop_at_are_exclusive():
    from reproresnet import cli
    with pytest.raises(SystemExit):
        cli.main(["train", "--arch", "preact_resnet20", "--out", "x", "--stop-after", "5", "--stop-at", "1"])


def test_the_epoch_line_prints_the_lr_the_epoch_ran_at():
    """`train --epochs 2` of the seed recipe on 256 images: 4 steps an epoch, the first decay at
    step 3 (0.8 epochs), the second at step 5. The first epoch ran 3 steps at 0.1 and its last at
    0.01: its line says both, not the last alone."""
    from reproresnet.recipes import RECIPES, make_schedule
    schedule = make_schedule(RECIPES["seed"].replace(epochs=2), "preact_resnet20", 256)
    assert (schedule.iterations_per_epoch, schedule.milestones) == (4, (3, 5))
    row = {"epoch": 1, "lr": 0.01, "train_loss": 2.3, "train_error": 90.0, "test_error": 89.0, "seconds": 1.0,
           "images_per_second": 200.0}
    assert "lr 0.1→0.01 (first→last step) " in training._epoch_line(row, schedule)
    assert "lr 0.01→0.001 (first→last step) " in training._epoch_line({**row, "epoch": 2}, schedule)
    steady = make_schedule(RECIPES["seed"].replace(epochs=200), "preact_resnet20", 256)
    assert " lr 0.1  train loss" in training._epoch_line(row, steady)  # one lr all epoch: said once
