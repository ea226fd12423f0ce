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

from reproresnet import bundle as bundling
from reproresnet import campaign, records, selfcheck
from reproresnet import engine as engine_module
from reproresnet import train as training
from reproresnet.config import TrainConfig
from reproresnet.engine import EagerEngine, EngineError
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
    stack = training.build_stack([config], [training.load_device_splits(config, device)], device)
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

    bf16 = dataclasses.replace(stack.speedups, bf16=True)
    engine = EagerEngine(stack.model, stack.optimizer, bf16, config.batch_size, FullBatchesOnly(stack.model))
    stack = dataclasses.replace(stack, engine=engine, speedups=bf16)
    assert training.evaluate(stack, test) == reference  # no autocast, not the step module
    training.train_one_epoch(stack, 0, progress=False)
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


def _checked(out: Path, variant: str = "eager-fp32-nchw-k2") -> None:
    """A finished self-check record in `out`, as an earlier call leaves it (then reused), that
    passed the chosen variant on the networks these tests plan."""
    (out / campaign.STATE_DIR).mkdir(parents=True, exist_ok=True)
    networks = {arch: {"ok": True, "variant": variant} for arch in ("preact_resnet20", "resnet20")}
    records.write_json(out / campaign.STATE_DIR / campaign.SELFCHECK_FILE,
                       {"format": selfcheck.FORMAT, "created": "earlier", "networks": networks,
                        "chosen": {"variant": variant, "why": "chosen by a test"}, "ok": True})


def test_the_plan_holds_train_configs_named_by_precision(tmp_path, capsys):
    plan = campaign.Plan(archs=("preact_resnet110", "wrn_16_4"), seeds=(0, 1), recipe="seed_code", tag="jpeg",
                         dataset="synthetic", train_args=("--epochs", "10", "--limit-train", "6000"))
    configs = plan.configs(tmp_path, "cpu", "fp32")
    assert [Path(c.out).name for c in configs["preact_resnet110"]] == ["preact_resnet110-jpeg-fp32-seed0",
                                                                       "preact_resnet110-jpeg-fp32-seed1"]
    assert all(isinstance(c, TrainConfig) and (c.epochs, c.limit_train, c.bf16, c.recipe, c.arch) ==
               (10, 6000, False, "seed_code", arch) for arch, runs in configs.items() for c in runs)
    bf16 = plan.configs(tmp_path, "cpu", "bf16")["wrn_16_4"][1]
    assert Path(bf16.out).name == "wrn_16_4-jpeg-bf16-seed1" and bf16.bf16 is True
    # seed_code holds out 5,000 images: the best-validation weights are a third checkpoint file
    assert campaign.checkpoint_mb(configs["preact_resnet110"][0], tmp_path / "x") == \
        pytest.approx(1_727_962 * 4 * 3 / 2**20)
    with pytest.raises(training.ConfigError, match="--resume in the train flags .* not run settings"):
        campaign.Plan(train_args=("--resume",)).configs(tmp_path, "cpu", "fp32")
    assert campaign.main(["--out", str(tmp_path), "--budget", "10", "--train-args", "--stop-after 5"]) == 2
    assert "--stop-after in the train flags" in capsys.readouterr().err


def _fake_record(config, status="running", done=0, message=None, planned=200):
    return fake_record(arch=config.arch, status=status, epochs_done=done, epochs_planned=planned, message=message)


def test_unfinished_runs_go_first_in_stacks_and_new_ones_wait_for_checkpoint_room(tmp_path):
    plan = campaign.Plan(archs=("preact_resnet110", "wrn_16_4"), seeds=(0, 1, 2)).configs(tmp_path, "cpu", "fp32")
    r110, wrn = plan["preact_resnet110"], plan["wrn_16_4"]
    for config, status, done in ((wrn[1], "running", 3), (wrn[2], "running", 3), (r110[0], "complete", 200)):
        Path(config.out).mkdir()
        records.write_json(Path(config.out) / records.RUN_FILE, _fake_record(config, status, done))
    groups = campaign.stacks(plan)
    assert groups == [[wrn[1], wrn[2]], [r110[1], r110[2]], [wrn[0]]]  # furthest along first, by epoch
    # WRN-16-4 takes 21.0 MiB of checkpoints (weights and momentum, fp32), ResNet-110 13.2 MiB
    assert campaign.admit(groups[0], plan, 60, []) == [wrn[1], wrn[2]]  # started: always continued
    assert campaign.admit(groups[1], plan, 60, []) == [r110[1]]         # 42 + 13.2 fits, + 13.2 more does not
    assert campaign.admit(groups[2], plan, 60, [r110[1]]) == []         # 42 + 13.2 + 21 > 60


def _fake_training(calls: list, behaviour):
    """A stand-in for train.train_stack: `behaviour(configs)` gives each run's (status, epochs
    done, message) or raises; the run directories get matching records."""
    def train_stack(configs, device, sources=None, **options):
        calls.append((configs, options.get("note")))
        results = []
        for config, (status, done, message) in zip(configs, behaviour(configs)):
            Path(config.out).mkdir(parents=True, exist_ok=True)
            record = _fake_record(config, status, done, message, planned=3)
            records.write_json(Path(config.out) / records.RUN_FILE, record)
            results.append(record)
        return results
    return train_stack


PLAN = campaign.Plan(archs=("preact_resnet20", "resnet20"), seeds=(0, 1), dataset="synthetic",
                     train_args=("--epochs", "3", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32"))


def test_no_stack_starts_after_one_stopped_for_the_deadline(tmp_path, monkeypatch):
    """On the first GPU slot, runs started after the others had stopped for the deadline were
    killed at the hard stop with nothing done: a new stack, which must set up too, fits even less."""
    calls = []
    monkeypatch.setattr(training, "train_stack", _fake_training(calls, lambda configs: [
        ("running", 0, "stopped cleanly after epoch 0 of 3 (deadline); resume to continue")] * len(configs)))
    _checked(tmp_path)
    rows = campaign.run_campaign(PLAN, tmp_path, campaign.Options(budget=60, device="cpu", min_start=0),
                                 log=lambda line: None)
    assert [[Path(c.out).name for c in configs] for configs, _ in calls] == [
        ["preact_resnet20-fp32-seed0", "preact_resnet20-fp32-seed1"]]  # one stack of two, as the check chose
    assert [row["outcome"] for row in rows] == ["stopped", "stopped", "waiting", "waiting"]
    assert "a run stopped for the deadline" in rows[2]["detail"]


def test_a_run_that_fails_or_makes_no_progress_does_not_stall_the_plan_and_says_why(tmp_path, monkeypatch):
    """The furthest-along runs go first; one that fails every call (here seed 0, its checkpoint
    unreadable) or trains nothing (seed 1) must not keep the rest of the plan waiting."""
    calls = []

    def behaviour(configs):
        if any(c.arch == "preact_resnet20" and c.seed == 0 for c in configs):
            raise RunDirError("checkpoint.pt cannot be read (truncated)")
        return [("running", 1, None) if c.arch == "preact_resnet20" else ("complete", 3, None) for c in configs]

    monkeypatch.setattr(training, "train_stack", _fake_training(calls, behaviour))
    _checked(tmp_path)
    for seed in (0, 1):  # the furthest along
        config = PLAN.configs(tmp_path, "cpu", "fp32")["preact_resnet20"][seed]
        Path(config.out).mkdir(parents=True)
        records.write_json(Path(config.out) / records.RUN_FILE, _fake_record(config, done=1, planned=3))
    logged = []
    rows = campaign.run_campaign(PLAN, tmp_path, campaign.Options(budget=60, device="cpu", min_start=0),
                                 log=logged.append)
    outcomes = {row["run"]: (row["outcome"], row["detail"]) for row in rows}
    assert outcomes["preact_resnet20-fp32-seed0"] == ("failed", "RunDirError: checkpoint.pt cannot be read (truncated)")
    assert outcomes["preact_resnet20-fp32-seed1"][0] == "stuck"
    assert "no epoch done in this call" in outcomes["preact_resnet20-fp32-seed1"][1]
    assert [outcomes[f"resnet20-fp32-seed{seed}"][0] for seed in (0, 1)] == ["complete", "complete"]
    assert any("training its runs one by one" in line for line in logged)  # the stack, then each run
    table = campaign.format_status(rows)
    assert "failed: RunDirError: checkpoint.pt cannot be read" in table and "stuck: no epoch done" in table


def test_an_engine_that_cannot_run_falls_back_to_eager_and_says_so(tmp_path, monkeypatch):
    calls = []

    def behaviour(configs):
        if configs[0].engine == "graph":
            raise EngineError("capturing the training step as a CUDA graph failed: RuntimeError: x")
        return [("complete", 3, None)] * len(configs)

    monkeypatch.setattr(training, "train_stack", _fake_training(calls, behaviour))
    _checked(tmp_path, "graph-fp32-nhwc-k2")
    logged = []
    campaign.run_campaign(dataclasses.replace(PLAN, archs=("preact_resnet20",)), tmp_path,
                          campaign.Options(budget=60, device="cpu", min_start=0), log=logged.append)
    assert [(configs[0].engine, configs[0].channels_last, len(configs)) for configs, _ in calls] == [
        ("graph", True, 2), ("eager", True, 2)]
    assert calls[1][1].startswith("eager-fp32-nhwc-k2: fallback, graph-fp32-nhwc-k2 failed: capturing")
    assert any("cannot run" in line and "falling back to eager-fp32-nhwc-k2" in line for line in logged)


def test_a_network_not_checked_yet_is_checked_before_it_trains_and_falls_back_if_it_fails(tmp_path, monkeypatch):
    """The self-check times variants on the plan's first network only; another network is
    compared (chosen variant against the reference) just before its first stack. Here the
    chosen graph variant cannot run on this CPU: ResNet-20 trains eagerly, unstacked, and
    its runs and the record say why."""
    calls = []
    monkeypatch.setattr(training, "train_stack", _fake_training(calls, lambda configs: [("complete", 3, None)]
                                                                * len(configs)))
    _checked(tmp_path, "graph-fp32-nhwc-k2")
    path = tmp_path / campaign.STATE_DIR / campaign.SELFCHECK_FILE
    record = json.loads(path.read_text())
    del record["networks"]["resnet20"]
    records.write_json(path, record)
    campaign.run_campaign(dataclasses.replace(PLAN, archs=("resnet20",)), tmp_path,
                          campaign.Options(budget=120, device="cpu", min_start=0), log=lambda line: None)
    checked = json.loads(path.read_text())["networks"]["resnet20"]
    assert checked["ok"] is False and "needs a CUDA device" in checked["error"]
    assert [(c.engine, len(configs)) for configs, _ in calls for c in configs[:1]] == [("eager", 1), ("eager", 1)]
    assert all(note.startswith("eager-fp32-nchw-k1: fallback, graph-fp32-nhwc-k2 failed the self-check on resnet20")
               for _, note in calls)


def test_a_second_campaign_on_the_same_directory_is_refused(tmp_path):
    options = campaign.Options(budget=30, device="cpu")
    with records.run_dir_lock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            campaign.run_campaign(campaign.Plan(archs=("preact_resnet20",), seeds=(0,)), tmp_path, options)


# ---------------------------------------------------------------- self-check


def _results(**times):
    """Fabricated variant results: name -> ms per step (None: failed)."""
    out = []
    for name, ms in times.items():
        variant = selfcheck.Variant.from_name(name.replace("_", "-"))
        out.append({**selfcheck.variant_fields(variant), "ok": ms is not None,
                    "seconds_per_step": None if ms is None else ms / 1e3})
    return out


def test_the_check_chooses_fp32_unless_it_costs_more_than_1_5x_bf16():
    within = _results(eager_fp32_nchw_k1=30, graph_fp32_nhwc_k3=9, graph_bf16_nhwc_k3=7)
    assert selfcheck.choose(within)[0] == "graph-fp32-nhwc-k3"  # 9 / 7 = 1.29x
    over = _results(eager_fp32_nchw_k1=30, graph_fp32_nhwc_k3=12, graph_bf16_nhwc_k3=7, graph_bf16_nchw_k3=None)
    name, why = selfcheck.choose(over)
    assert name == "graph-bf16-nhwc-k3" and "1.71x" in why and "over 1.5x" in why
    # per network: a step of a stack of 3 at 24 ms beats one network's at 10 ms
    assert selfcheck.choose(_results(eager_fp32_nchw_k1=10, eager_fp32_nchw_k3=24))[0] == "eager-fp32-nchw-k3"
    assert selfcheck.choose(_results(eager_fp32_nchw_k1=10, eager_fp32_nchw_k3=24), stack=1)[0] == \
        "eager-fp32-nchw-k1"
    assert selfcheck.choose(over, precision="fp32")[0] == "graph-fp32-nhwc-k3"
    assert selfcheck.choose(_results(graph_bf16_nhwc_k3=None), precision="bf16")[0] == "eager-bf16-nchw-k1"


def test_a_network_where_the_chosen_variant_failed_trains_eagerly_unstacked():
    record = {"chosen": {"variant": "graph-bf16-nhwc-k3", "why": "fastest"},
              "networks": {"a": {"ok": True}, "b": {"ok": False, "update_rel_diff": 0.4}, "c": {"ok": None}}}
    assert selfcheck.variant_for(record, "a")[0].name == "graph-bf16-nhwc-k3"
    variant, why = selfcheck.variant_for(record, "b")
    assert variant.name == "eager-bf16-nchw-k1" and "fallback, graph-bf16-nhwc-k3 failed the self-check on b" in why
    assert selfcheck.variant_for(record, "c")[0].name == "graph-bf16-nhwc-k3"


def _tiny_check(**options):
    plan = {"preact_resnet20": [TrainConfig(arch="preact_resnet20", out=f"x/s{seed}", seed=seed, dataset="synthetic",
                                            limit_train=64, batch_size=8, device="cpu") for seed in (0, 1)]}
    return selfcheck.selfcheck(plan, "cpu", budget=120, log=lambda line: None, **options)


def test_the_check_passes_a_right_stack_and_catches_a_wrong_gradient_or_a_frozen_lr(monkeypatch):
    """Real steps on a CPU: the stack of two passes against the two networks apart; a stack whose
    gradient is 30% too large (same forward value), or whose engine keeps its first lr, fails on
    the weights' change and is not chosen."""
    good = _tiny_check(stack=2)
    (reference, stacked) = good["variants"]
    assert reference["variant"] == "eager-fp32-nchw-k1" and stacked["variant"] == "eager-fp32-nchw-k2"
    assert stacked["ok"] and stacked["update_rel_diff"] < 0.05 and good["chosen"]["variant"] == "eager-fp32-nchw-k2"
    assert good["ok"] and "ok" in selfcheck.jsonable(good)

    real_step = engine_module.train_step

    def scaled(model, optimizer, images, labels, speedups):
        if len(labels) == 1:
            return real_step(model, optimizer, images, labels, speedups)

        class Scaled(torch.nn.Module):
            def forward(self, x):
                out = model(x)
                return out * 1.3 - out.detach() * 0.3  # same forward value, gradient x 1.3
        return real_step(Scaled(), optimizer, images, labels, speedups)

    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "train_step", scaled)
        wrong = _tiny_check(stack=2)
    stacked = wrong["variants"][1]
    assert not stacked["ok"] and stacked["first_loss_rel_diff"] < 1e-6 and stacked["update_rel_diff"] > 0.10
    assert wrong["chosen"]["variant"] == "eager-fp32-nchw-k1" and not wrong["ok"]

    real_set_lr = engine_module.Engine.set_lr

    def frozen(self, lr):  # a graph that baked its first lr in
        if self.lr is None or isinstance(self.model, torch.nn.Module) and getattr(self.model, "k", 1) == 1:
            real_set_lr(self, lr)

    monkeypatch.setattr(engine_module.Engine, "set_lr", frozen)
    baked = _tiny_check(stack=2)["variants"][1]
    assert not baked["ok"] and baked["update_rel_diff"] > 0.10


def test_the_check_steps_and_times_fp32_without_tf32(monkeypatch):
    """The variants are timed as the loop trains: fp32 with TF32 off (on CUDA, cuDNN would use
    TF32 by default, and an fp32 variant would look faster than its training runs)."""
    def flags():
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    seen, real_step, saved = [], engine_module.train_step, flags()
    monkeypatch.setattr(engine_module, "train_step", lambda *args: seen.append(flags()) or real_step(*args))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _tiny_check(stack=2)
        assert len(seen) > 10 and set(seen) == {(False, False)} and flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_check_keeps_its_budget_and_a_check_cut_short_chooses_nothing_unchecked(monkeypatch):
    """A check still running when the budget is spent is interrupted and recorded as unchecked,
    even where the interruption surfaces as another error; then the eager unstacked reference
    is the choice, and "ok" is written last."""
    def slow(*args, **kwargs):
        try:
            time.sleep(30)
        except BaseException as error:
            raise RuntimeError("cuDNN autotuning ...") from error
    monkeypatch.setattr(selfcheck, "measure", slow)
    saved = []
    plan = {"preact_resnet110": [TrainConfig(arch="preact_resnet110", out="x", device="cpu")]}
    began = time.perf_counter()
    record = selfcheck.selfcheck(plan, "cpu", budget=0.5, log=lambda line: None,
                                 save=lambda record: saved.append(json.loads(json.dumps(selfcheck.jsonable(record)))))
    assert time.perf_counter() - began < 5
    assert record["unchecked"] == ["preact_resnet110 eager-fp32-nchw-k1 (reference)", "augmentation statistics"]
    assert record["chosen"]["variant"] == "eager-fp32-nchw-k1" and record["ok"] is False
    assert "ok" in saved[-1] and all("ok" not in partial for partial in saved[:-1])
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_selfcheck_augmentation_statistics_on_cpu():
    augmentation = selfcheck.check_augmentation(torch.device("cpu"), n=9000)
    assert augmentation["ok"] and abs(augmentation["flip_rate"] - 0.5) < 0.03
    assert sum(augmentation["row_offset_freq"]) == pytest.approx(1.0)


# ---------------------------------------------------------------- campaigns (processes)

PLAN_ARGS = ["--archs", "preact_resnet20", "--dataset", "synthetic", "--device", "cpu", "--min-start", "1"]
TRAIN_ARGS = "--epochs 12 --limit-train 128 --limit-test 32 --batch-size 32"


def _train_reference(out: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reproresnet", "train", "--arch", "preact_resnet20",
                             "--seed", str(seed), "--dataset", "synthetic", "--device", "cpu", "--quiet",
                             "--out", str(out / f"preact_resnet20-seed{seed}"), *TRAIN_ARGS.split()],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL)


def _env() -> dict:
    # One thread count for the references and the campaign: on a CPU, a different count can
    # change the order of a convolution's sums, and so the last bits.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The two runs uninterrupted, as `train` processes side by side, and the seconds that took:
    the yardstick for a budget that cuts a campaign of those two mid-way."""
    out = tmp_path_factory.mktemp("reference")
    began = time.time()
    processes = [_train_reference(out, seed) for seed in (0, 1)]
    assert [process.wait(timeout=900) for process in processes] == [0, 0]
    return out, time.time() - began


def _campaign(out: Path, budget: float) -> subprocess.Popen:
    """The two runs of the reference as a campaign process, one after the other (--stack 1)."""
    argv = ["campaign", "--out", str(out), "--budget", f"{budget:.1f}", *PLAN_ARGS, "--seeds", "0", "1",
            "--stack", "1", "--train-args", TRAIN_ARGS]
    return subprocess.Popen([sys.executable, "-m", "reproresnet", *argv], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _check_equal_to_reference(out: Path, reference_dir: Path, seeds=(0, 1)) -> None:
    for seed in seeds:
        ours = out / f"preact_resnet20-fp32-seed{seed}"
        assert records.read_run(ours)["status"] == "complete"
        assert same_run(ours, reference_dir / f"preact_resnet20-seed{seed}")


@pytest.mark.slow
def test_a_budget_cuts_the_campaign_and_a_second_call_completes_it_exactly(tmp_path, reference):
    """Runs trained one after another in the campaign's process (--stack 1) are the `train`
    runs of the same seeds, bit for bit, however the budget cuts them."""
    reference_dir, seconds = reference
    budget = 0.6 * seconds  # short of the work of the same two runs side by side: they cannot finish
    began = time.time()
    first = _campaign(tmp_path, budget)
    output = first.communicate(timeout=budget + 60)[0]
    took = time.time() - began
    assert first.returncode == 0, output
    assert took <= budget + 1.0, f"took {took:.1f} s for a budget of {budget:.0f} s\n{output}"
    states = [campaign.run_state(tmp_path / f"preact_resnet20-fp32-seed{seed}") for seed in (0, 1)]
    assert not all(state["status"] == "complete" for state in states), output
    assert "run " in output and "preact_resnet20-fp32-seed0" in output  # the status table

    second = _campaign(tmp_path, 900)
    output = second.communicate(timeout=960)[0]
    assert second.returncode == 0, output
    assert "the self-check of" in output  # the first call's choice, reused
    _check_equal_to_reference(tmp_path, reference_dir)
    state = json.loads((tmp_path / campaign.STATE_DIR / campaign.STATE_FILE).read_text())
    assert len(state["calls"]) == 2 and all(row["status"] == "complete" for row in state["status"])


@pytest.mark.slow
def test_a_campaign_of_stacks_gives_each_seed_its_train_run(tmp_path):
    """--stack 3: the three seeds as one stacked network in the campaign's process. Each run's
    metrics are those of the `train` run of its seed within 5e-3 relative (losses) and 2 images
    (errors), in fp32 on a CPU. Not bit for bit: a grouped convolution sums in another order
    than three separate ones, and the last bits grow as training goes on (ReLUs within rounding
    of zero switch). Measured on this 128-image set at lr 0.1: 1e-4 after the first epoch, 1e-3
    after the second, 1-3 % after five to twelve; so two epochs are compared here, and in
    float64 a stack is exact (tests/test_stacked.py). The campaign bundles as before."""
    args = TRAIN_ARGS.replace("--epochs 12", "--epochs 2")
    references = [subprocess.Popen([sys.executable, "-m", "reproresnet", "train", "--arch", "preact_resnet20",
                                    "--seed", str(seed), "--dataset", "synthetic", "--device", "cpu", "--quiet",
                                    "--out", str(tmp_path / "alone" / f"seed{seed}"), *args.split()],
                                   cwd=REPO, env=_env(), stdout=subprocess.DEVNULL) for seed in (0, 1, 2)]
    assert [process.wait(timeout=900) for process in references] == [0, 0, 0]
    out = tmp_path / "campaign"
    process = subprocess.Popen([sys.executable, "-m", "reproresnet", "campaign", "--out", str(out), "--budget", "900",
                                *PLAN_ARGS, "--seeds", "0", "1", "2", "--stack", "3", "--train-args", args],
                               cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.communicate(timeout=960)[0]
    assert process.returncode == 0, output
    for seed in (0, 1, 2):
        ours, theirs = (rows_without_timing(d) for d in (out / f"preact_resnet20-fp32-seed{seed}",
                                                         tmp_path / "alone" / f"seed{seed}"))
        record = records.read_run(out / f"preact_resnet20-fp32-seed{seed}")
        assert record["status"] == "complete" and record["speed"]["segments"][-1]["stacked"] == 3, output
        assert len(ours) == len(theirs) == 2
        for mine, other in zip(ours, theirs):
            assert mine["lr"] == other["lr"]
            for key in ("train_loss", "test_loss"):
                assert float(mine[key]) == pytest.approx(float(other[key]), rel=5e-3), (seed, mine["epoch"], key)
            assert abs(float(mine["train_error"]) - float(other["train_error"])) <= 100 * 2 / 128 + 1e-9
            assert abs(float(mine["test_error"]) - float(other["test_error"])) <= 100 * 2 / 32 + 1e-9
    manifest = bundling.bundle(out, tmp_path / "bundle")
    assert {f"preact_resnet20-fp32-seed{seed}/run.json" for seed in (0, 1, 2)} | {"_campaign/selfcheck.json"} <= \
        {entry["path"] for entry in manifest["files"]}
    assert len(bundling.unbundle(tmp_path / "bundle", tmp_path / "home")["restored"]) == len(manifest["files"])


def _lock_is_free(run_dir: Path) -> bool:
    try:
        with open(run_dir / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except (BlockingIOError, FileNotFoundError):
        return not (run_dir / ".lock").exists()


@pytest.mark.slow
def test_a_campaign_killed_at_any_file_operation_and_called_again_equals_the_uninterrupted_one(tmp_path):
    """The campaign "dies" at its n-th file operation (tests/faults.py: half-way through a write,
    before a rename, before an unlink), for every n of an uninterrupted campaign, and is called
    again: every run then equals the uninterrupted campaign's, metrics and weights bit for bit,
    and no lock is left held (runs one by one, so that the same code runs either way)."""
    from faults import Faults, Killed
    plan = campaign.Plan(archs=("preact_resnet20",), seeds=(0, 1), dataset="synthetic",
                         train_args=("--epochs", "2", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32"))
    options = campaign.Options(budget=900, device="cpu", stack=1, min_start=0, log_epochs=False)
    names = [f"preact_resnet20-fp32-seed{seed}" for seed in (0, 1)]

    def called(out, faults=None):
        with pytest.MonkeyPatch.context() as patch:
            if faults:
                faults.patch_files(patch)
            return campaign.run_campaign(plan, out, options, log=lambda line: None)

    whole = tmp_path / "whole"
    _checked(whole, "eager-fp32-nchw-k1")
    counted = Faults()
    called(whole, counted)
    assert all(records.read_run(whole / name)["status"] == "complete" for name in names)
    assert len(counted.operations) > 20
    for n in range(1, len(counted.operations) + 1):
        out = tmp_path / f"killed-at-{n}"
        _checked(out, "eager-fp32-nchw-k1")
        with pytest.raises(Killed):
            called(out, Faults(kill_at=n))
        assert _lock_is_free(out) and all(_lock_is_free(out / name) for name in names if (out / name).exists())
        rows = called(out)
        where = (n, counted.operations[n - 1])
        assert [row["status"] for row in rows] == ["complete", "complete"], where
        assert all(same_run(out / name, whole / name) for name in names), where


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


def test_a_run_whose_settings_the_notebook_cannot_take_is_not_rendered(tmp_path, monkeypatch):
    """A recorded setting that changes the experiment and that the notebook has no parameter
    for fails the run's page; one at its effective default (epochs 200, the recipe's) or a
    run-time one (device) does not."""
    import nbformat
    pytest.importorskip("papermill")
    from reproresnet import sweep
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell('arch = "preact_resnet20"\nseed = 0\nrun_dir = ""',
                                                metadata={"tags": ["parameters"]})]
    nbformat.write(notebook, tmp_path / "thin.ipynb")
    for name, config in (("other-lr", {"lr": 0.05, "epochs": 200}), ("defaults", {"epochs": 200, "device": "cpu"})):
        (tmp_path / name).mkdir()
        records.write_json(tmp_path / name / records.RUN_FILE, fake_record(
            arch="preact_resnet20", status="complete", config={"arch": "preact_resnet20", "seed": 0, **config}))
    executed = []
    monkeypatch.setattr(sweep, "execute_run", lambda notebook, run_dir, parameters, progress: executed.append(
        run_dir) or {"run": Path(run_dir).name, "status": "complete", "message": None})
    outcomes = campaign.render_runs([tmp_path / "other-lr", tmp_path / "defaults"], str(tmp_path / "thin.ipynb"))
    assert outcomes[0]["status"] == "failed" and outcomes[0]["message"].endswith("the recorded ['lr']")
    assert executed == [str(tmp_path / "defaults")]
