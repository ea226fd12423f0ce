"""The GPU campaign on CPU: the clean stop, speed records, bundles, the self-check, and
campaigns over tiny runs that are cut by their budget, resumed, and SIGKILLed."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reproresnet import campaign, records, selfcheck
from reproresnet import train as training
from reproresnet.config import TrainConfig
from reproresnet.records import RunDirError

from conftest import digest, fake_record

REPO = Path(__file__).resolve().parents[1]
TINY = dict(arch="preact_resnet20", dataset="synthetic", limit_train=96, limit_test=48, batch_size=32,
            device="cpu", epochs=3)
TIMING = {"seconds", "images_per_second", "peak_memory_mb"}


def tiny(tmp_path, name="run", **changes):
    return TrainConfig(out=str(tmp_path / name), **{**TINY, **changes})


def rows_without_timing(run_dir):
    with open(Path(run_dir) / records.METRICS_FILE) as file:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(file)]


def weights(run_dir):
    return torch.load(Path(run_dir) / records.CHECKPOINT_FILE, weights_only=False)["model"]


def same_run(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return rows_without_timing(a) == rows_without_timing(b) and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- the clean stop and speed


def test_a_deadline_stops_at_an_epoch_boundary_and_the_resumed_run_is_exact(tmp_path, monkeypatch):
    whole = training.train(tiny(tmp_path, "whole", epochs=4), progress=False)

    config = tiny(tmp_path, "split", epochs=4)
    real = training._no_time_for
    monkeypatch.setattr(training, "_no_time_for", lambda epoch, *args: epoch == 2 or real(epoch, *args))
    stopped = training.train(config, progress=False, deadline=time.time() + 3600)
    assert stopped["status"] == "stopped" and stopped["epochs_done"] == 2 and stopped["final"] is None
    assert stopped["message"].startswith("stopped cleanly after epoch 2 of 4")
    assert records.read_run(tmp_path / "split") == stopped
    checkpoint = torch.load(tmp_path / "split" / records.CHECKPOINT_FILE, weights_only=False)
    assert len(checkpoint["metrics"]) == 2
    assert checkpoint["speedups"] == {"bf16": False, "channels_last": False, "compile": False,
                                      "fused_optimizer": False}
    assert checkpoint["generator_device"] == "cpu"
    monkeypatch.undo()

    resumed = training.train(config, resume=True, progress=False, pack=2)
    assert resumed["status"] == "complete" and resumed["message"] is None
    assert same_run(tmp_path / "whole", tmp_path / "split")
    assert resumed["final"]["test_error"] == whole["final"]["test_error"]
    # one speed segment per process; each leaves its first epoch out of s/epoch
    segments = resumed["speed"]["segments"]
    assert [(s["first_epoch"], s["last_epoch"], s["epochs_timed"], s["pack"]) for s in segments] == \
        [(1, 2, 1, 1), (3, 4, 1, 2)]
    assert all(s["precision"] == "fp32" and s["compile_mode"] is None and s["gpu"] is None for s in segments)
    assert all(s["threads"] == torch.get_num_threads() for s in segments)  # this process's CPU threads
    metrics = checkpoint["metrics"] + torch.load(tmp_path / "split" / records.CHECKPOINT_FILE,
                                                 weights_only=False)["metrics"][2:]
    assert resumed["final"]["seconds_per_epoch"] == pytest.approx(
        (metrics[1]["seconds"] + metrics[3]["seconds"]) / 2)  # epochs 2 and 4; 1 and 3 warmed up
    assert "first" in resumed["speed"]["note"]


def test_a_deadline_already_passed_trains_nothing_and_says_so(tmp_path):
    record = training.train(tiny(tmp_path), progress=False, deadline=time.time() - 1)
    assert record["epochs_done"] == 0 and record["status"] == "stopped"
    assert "stopped cleanly after epoch 0" in record["message"]
    assert not (tmp_path / "run" / records.CHECKPOINT_FILE).exists()
    assert training.train(tiny(tmp_path), resume=True, progress=False)["status"] == "complete"


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
    records.write_json(tmp_path / "run" / records.RUN_FILE, {**record, "status": "running"})
    with pytest.raises(RunDirError, match=r"speedups .*'bf16': True.* drawn on cuda.* on cpu"):
        training.train(config, resume=True, progress=False)


def test_evaluation_is_fp32_and_eager_and_the_last_partial_batch_is_eager(tmp_path):
    config = tiny(tmp_path, limit_train=80)  # 2 batches of 32 and one of 16
    device = training.select_device(config.device)
    run = training.build_run(config, training.load_device_splits(config, device), device)
    reference = training.evaluate(run, run.splits.test)

    sizes = []

    class FullBatchesOnly(torch.nn.Module):  # stands in for the compiled module
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            sizes.append(len(images))
            assert len(images) == config.batch_size, "a partial batch reached the compiled module"
            return self.model(images)

    bf16 = dataclasses.replace(run.speedups, bf16=True)
    run = dataclasses.replace(run, step_model=FullBatchesOnly(run.model), speedups=bf16)
    assert training.evaluate(run, run.splits.test) == reference  # no autocast, not the step module
    training.train_one_epoch(run, 0, progress=False)
    assert sizes == [32, 32]


def test_the_cli_stops_cleanly_and_says_how_far_it_got(tmp_path, capsys):
    from reproresnet import cli
    args = ["train", "--arch", "preact_resnet20", "--dataset", "synthetic", "--limit-train", "32",
            "--limit-test", "16", "--epochs", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "r")]
    assert cli.main(args + ["--stop-after", "0"]) == 0
    assert "0/2 epochs; stopped cleanly" in capsys.readouterr().out


def test_stop_after_and_stop_at_are_exclusive():
    from reproresnet import cli
    with pytest.raises(SystemExit):
        cli.main(["train", "--arch", "preact_resnet20", "--out", "x", "--stop-after", "5", "--stop-at", "1"])


# ---------------------------------------------------------------- planning


def test_unfinished_runs_go_first_and_new_ones_wait_for_checkpoint_room(tmp_path):
    plan = campaign.Plan(archs=("preact_resnet110", "wrn_16_4"), seeds=(0, 1))
    names = [run["name"] for run in plan.runs()]
    assert names == ["preact_resnet110-seed0", "preact_resnet110-seed1", "wrn_16_4-seed0", "wrn_16_4-seed1"]
    for name, done in (("wrn_16_4-seed1", 3), ("preact_resnet110-seed0", 200)):
        (tmp_path / name).mkdir()
        status = "complete" if done == 200 else "running"
        records.write_json(tmp_path / name / records.RUN_FILE,
                           fake_record(status=status, epochs_done=done, epochs_planned=200))
    pending = campaign._order(plan, tmp_path)
    assert [run["name"] for run in pending] == ["wrn_16_4-seed1", "preact_resnet110-seed1", "wrn_16_4-seed0"]
    # ResNet-110 (zero-padding shortcuts) needs 13.2 MiB (weights and momentum in fp32), WRN-16-4 21.0 MiB
    assert campaign.checkpoint_mb("preact_resnet110", 0, tmp_path / "x") == pytest.approx(1_727_962 * 8 / 2**20)
    first = campaign._next_that_fits(pending, tmp_path, {}, 0, cap_mb=40)
    assert first["name"] == "wrn_16_4-seed1"  # started: always continued
    active = {first["name"]: (None, first)}
    assert campaign._next_that_fits(pending, tmp_path, active, 0, cap_mb=40)["name"] == "preact_resnet110-seed1"
    active["preact_resnet110-seed1"] = (None, {"arch": "preact_resnet110", "name": "preact_resnet110-seed1"})
    assert campaign._next_that_fits(pending, tmp_path, active, 0, cap_mb=40) is None  # 21 + 13 + 21 > 40
    assert [run["name"] for run in pending] == ["wrn_16_4-seed0"]


def test_no_run_starts_after_one_stopped_for_the_deadline(tmp_path, monkeypatch):
    """On the first GPU slot, runs started after the others had stopped for the deadline were
    killed at the hard stop with nothing done: a new run compiles too, so it fits even less."""
    started = []

    class StoppedAtOnce:  # a train process that found no time for its next epoch
        def __init__(self, command, **kwargs):
            started.append(command[command.index("--seed") + 1])
            self.pid, self.returncode = 1, 0

        def poll(self):
            return 0

    monkeypatch.setattr(campaign.subprocess, "Popen", StoppedAtOnce)
    plan = campaign.Plan(archs=("preact_resnet20",), seeds=(0, 1), dataset="synthetic")
    rows = campaign.run_campaign(plan, tmp_path, campaign.Options(budget=60, device="cpu", min_start=0))
    assert started == ["0"]
    assert [row["outcome"] for row in rows] == ["stopped", "waiting"]


def test_a_second_campaign_on_the_same_directory_is_refused(tmp_path):
    options = campaign.Options(budget=30, device="cpu")
    with records.run_dir_lock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            campaign.run_campaign(campaign.Plan(archs=("preact_resnet20",), seeds=(0,)), tmp_path, options)


# ---------------------------------------------------------------- self-check (CPU structure)


@pytest.mark.slow  # compiles
def test_selfcheck_passes_compile_and_catches_a_wrong_fast_path(monkeypatch):
    device = torch.device("cpu")
    wanted = training.Speedups(False, False, True, False)
    good = selfcheck.check_network("preact_resnet20", device, steps=2, batch_size=4, wanted=wanted,
                                   backend="aot_eager")
    assert good["fast_path"]["ok"] and good["fast_path"]["graphs"] >= 1 and not good["disabled"]

    real = training.compile_model

    def wrong(model, *args, **kwargs):  # a "compiled" module whose gradients are off by 30%
        compiled = real(model, *args, **kwargs)

        class Scaled(torch.nn.Module):
            def forward(self, images):
                out = compiled(images)
                return out * 1.3 - out.detach() * 0.3  # same forward value, gradient x 1.3
        return Scaled()
    monkeypatch.setattr(selfcheck, "compile_model", wrong)
    bad = selfcheck.check_network("preact_resnet20", device, steps=2, batch_size=4, wanted=wanted,
                                  backend="aot_eager")
    assert not bad["fast_path"]["ok"] and bad["fast_path"]["first_loss_rel_diff"] < 1e-6
    assert bad["fast_path"]["update_rel_diff"] > selfcheck.UPDATE_RTOL
    assert set(bad["disabled"]) == {"compile"}


@pytest.mark.slow  # compiles
def test_selfcheck_augmentation_statistics_and_training_loop_on_cpu():
    augmentation = selfcheck.check_augmentation(torch.device("cpu"), n=9000)
    assert augmentation["ok"] and abs(augmentation["flip_rate"] - 0.5) < 0.03
    assert sum(augmentation["row_offset_freq"]) == pytest.approx(1.0)
    epochs = selfcheck.check_epochs(torch.device("cpu"), training.Speedups(False, False, True, False), 8,
                                    backend="aot_eager")
    assert epochs["ok"] and epochs["graphs_compiled_per_epoch"][0] >= 1 and epochs["graphs_compiled_per_epoch"][1] == 0


def test_selfcheck_keeps_its_budget_and_a_check_cut_short_disables_nothing(monkeypatch):
    """A cold compile of a deep network outlasted the budget on the first GPU slot, and the
    slot's timeout killed the self-check with its record half written. Now the check running
    when the budget is spent is interrupted and recorded as unchecked, even where the
    interruption surfaces as another error (a compile wraps what it catches)."""
    def slow_compile(arch, *args):
        try:
            time.sleep(30)
        except BaseException as error:
            raise RuntimeError("BackendCompilerFailed: ...") from error
    monkeypatch.setattr(selfcheck, "check_network", slow_compile)
    saved = []
    began = time.perf_counter()
    record = selfcheck.selfcheck(["preact_resnet110"], "cpu", budget=0.5, log=lambda line: None,
                                 save=lambda record: saved.append(json.loads(json.dumps(selfcheck._jsonable(record)))))
    assert time.perf_counter() - began < 5
    assert record["unchecked"] == ["network preact_resnet110", "training loop (odd last batch)",
                                   "augmentation statistics"]
    assert record["disabled"] == {} and record["networks"] == [] and record["ok"] is True
    assert "ok" in saved[-1] and all("ok" not in partial for partial in saved[:-1])
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_selfcheck_flags_switch_off_failed_parts(tmp_path):
    path = tmp_path / "selfcheck.json"
    path.write_text(json.dumps({"disabled": {"bf16": "x", "channels_last": "y"}, "compile_mode": "reduce-overhead"}))
    assert selfcheck.train_flags(path) == ["--no-bf16", "--no-channels-last", "--compile-mode", "reduce-overhead"]


# ---------------------------------------------------------------- campaigns (processes)

PLAN_ARGS = ["--archs", "preact_resnet20", "--seeds", "0", "1", "--dataset", "synthetic", "--device", "cpu",
             "--pack", "2", "--min-start", "1"]
TRAIN_ARGS = "--epochs 12 --limit-train 128 --limit-test 32 --batch-size 32"


def _train_reference(out: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reproresnet", "train", "--arch", "preact_resnet20",
                             "--seed", str(seed), "--dataset", "synthetic", "--device", "cpu", "--quiet",
                             "--out", str(out / f"preact_resnet20-seed{seed}"), *TRAIN_ARGS.split()],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL)


def _env() -> dict:
    # One thread count for the references and the campaign's runs: on a CPU, a different
    # count can change the order of a convolution's sums, and so the last bits.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The two runs uninterrupted, as `train` processes side by side (as the campaign packs
    them), and the seconds that took: the yardstick for a budget that cuts them mid-way."""
    out = tmp_path_factory.mktemp("reference")
    began = time.time()
    processes = [_train_reference(out, seed) for seed in (0, 1)]
    assert [process.wait(timeout=900) for process in processes] == [0, 0]
    return out, time.time() - began


def _campaign(out: Path, budget: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reproresnet", "campaign", "--out", str(out), "--budget",
                             f"{budget:.1f}", *PLAN_ARGS, "--train-args", TRAIN_ARGS],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check_equal_to_reference(out: Path, reference_dir: Path) -> None:
    for seed in (0, 1):
        name = f"preact_resnet20-seed{seed}"
        assert records.read_run(out / name)["status"] == "complete"
        assert same_run(out / name, reference_dir / name)


@pytest.mark.slow
def test_a_budget_cuts_the_campaign_and_a_second_call_completes_it_exactly(tmp_path, reference):
    reference_dir, seconds = reference
    budget = 0.6 * seconds  # short of the work of the same two runs side by side: they cannot finish
    began = time.time()
    first = _campaign(tmp_path, budget)
    output = first.communicate(timeout=budget + 60)[0]
    took = time.time() - began
    assert first.returncode == 0, output
    assert took <= budget + 1.0, f"took {took:.1f} s for a budget of {budget:.0f} s\n{output}"
    states = [campaign.run_state(tmp_path / f"preact_resnet20-seed{seed}") for seed in (0, 1)]
    assert not all(state["status"] == "complete" for state in states), output
    assert "run " in output and "preact_resnet20-seed0" in output  # the status table

    second = _campaign(tmp_path, 900)
    output = second.communicate(timeout=960)[0]
    assert second.returncode == 0, output
    _check_equal_to_reference(tmp_path, reference_dir)
    state = json.loads((tmp_path / campaign.STATE_DIR / campaign.STATE_FILE).read_text())
    assert len(state["calls"]) == 2 and all(row["status"] == "complete" for row in state["status"])


def _lock_is_free(run_dir: Path) -> bool:
    try:
        with open(run_dir / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except (BlockingIOError, FileNotFoundError):
        return not (run_dir / ".lock").exists()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_of_the_campaign_loses_nothing(tmp_path, reference):
    reference_dir, _ = reference
    first = _campaign(tmp_path, 900)
    runs = [tmp_path / f"preact_resnet20-seed{seed}" for seed in (0, 1)]
    _wait_for(lambda: any(campaign.run_state(run)["epochs_done"] >= 1 for run in runs), 600, "a first epoch")
    done = {run: campaign.run_state(run)["epochs_done"] for run in runs}
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    # its train processes die with it (PR_SET_PDEATHSIG): their run directories come free
    _wait_for(lambda: all(_lock_is_free(run) for run in runs if run.exists()), 60, "the runs to stop")
    for run in runs:
        if (run / records.RUN_FILE).exists():
            assert campaign.run_state(run)["epochs_done"] >= done[run]  # nothing lost
            checkpoint = torch.load(run / records.CHECKPOINT_FILE, weights_only=False)
            assert len(checkpoint["metrics"]) == records.read_run(run)["epochs_done"]

    second = _campaign(tmp_path, 900)
    output = second.communicate(timeout=960)[0]
    assert second.returncode == 0, output
    _check_equal_to_reference(tmp_path, reference_dir)


@pytest.mark.slow
def test_a_complete_campaign_run_renders_its_page_without_training(tmp_path):
    pytest.importorskip("papermill")
    config = tiny(tmp_path, "preact_resnet20-seed0", epochs=1, limit_train=32, limit_test=16)
    training.train(config, progress=False)
    run_dir = tmp_path / "preact_resnet20-seed0"
    before = {name: digest(run_dir / name) for name in (records.RUN_FILE, records.METRICS_FILE,
                                                        records.CHECKPOINT_FILE)}
    unfinished = tmp_path / "unfinished"
    training.train(tiny(tmp_path, "unfinished"), progress=False, deadline=time.time() - 1)
    cwd = os.getcwd()
    os.chdir(REPO)  # the notebook path and the kernel's imports are relative to the repository
    try:
        outcomes = campaign.render_runs([run_dir, unfinished])
    finally:
        os.chdir(cwd)
    assert [o["status"] for o in outcomes] == ["complete", "incomplete"], outcomes
    assert (run_dir / "train.ipynb").exists() and not (unfinished / "train.ipynb").exists()
    assert {name: digest(run_dir / name) for name in before} == before  # read, not trained
