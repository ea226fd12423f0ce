"""The campaign on CPU: its plan and order of work, what it does when runs fail, stall or
cannot use the chosen engine, and campaigns over tiny runs that are cut by their budget,
resumed and SIGKILLed (campaign.py)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reproresnet.campaign import bundle as bundling
from reproresnet import records, rundir
from reproresnet.campaign import slot as campaign
from reproresnet.campaign import selfcheck
from reproresnet import train as training
from reproresnet.campaign import process, selfcheck_state
from reproresnet.config import TrainConfig
from reproresnet.reference import ORIGINAL_UNITS, REPRODUCED
from reproresnet.engine import EngineError
from reproresnet.rundir import RunDirError

from conftest import digest, fake_record, metrics_without_timing, same_run, tiny

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- planning


def _checked(out: Path, variant: str = "eager-fp32-nchw-k2") -> None:
    """A finished self-check record in `out`, as an earlier call leaves it (then reused), that
    passed the chosen variant on the networks these tests plan."""
    (out / campaign.STATE_DIR).mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / campaign.STATE_DIR / campaign.SELFCHECK_FILE, _check_record(variant))


def _check_record(variant: str, created: str = "earlier", cut_short: bool = False) -> dict:
    """A self-check record as `selfcheck.selfcheck` writes it, complete or cut short."""
    networks = {arch: {"ok": True, "variant": variant} for arch in ("preact_resnet20", "resnet20")}
    return {"format": selfcheck.FORMAT, "created": created, "networks": networks,
            "chosen": {"variant": variant, "why": "chosen by a test"},
            "variants": [{**selfcheck.variant_fields(selfcheck.Variant.from_name(variant)), "ok": True}],
            "unchecked": ["augmentation statistics"] if cut_short else [], "complete": not cut_short,
            "ok": not cut_short}


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
        rundir.write_json(Path(config.out) / records.RUN_FILE, _fake_record(config, status, done))
    groups = campaign.stacks(plan)
    assert groups == [[wrn[1], wrn[2]], [r110[1], r110[2]], [wrn[0]]]  # furthest along first, by epoch
    # WRN-16-4 takes 21.0 MiB of checkpoints (weights and momentum, fp32), ResNet-110 13.2 MiB
    assert campaign.admit(groups[0], plan, 60, []) == [wrn[1], wrn[2]]  # started: always continued
    assert campaign.admit(groups[1], plan, 60, []) == [r110[1]]         # 42 + 13.2 fits, + 13.2 more does not
    assert campaign.admit(groups[2], plan, 60, [r110[1]]) == []         # 42 + 13.2 + 21 > 60


def test_the_second_tier_starts_once_every_run_of_the_first_has_finished(tmp_path):
    """The original units (tier 2) wait while a pre-activation run (tier 1) can still train; a
    tier finished in this call lets the next one start (the stacks are computed tier by tier)."""
    plan = campaign.Plan(archs=("resnet110", "preact_resnet110"), seeds=(0, 1))
    assert campaign.Plan().tiers() == [REPRODUCED, ORIGINAL_UNITS]
    assert plan.tiers() == [("preact_resnet110",), ("resnet110",)]  # the plan's order, not the flags'
    assert campaign.Plan(archs=("preact_resnet20", "resnet20")).tiers() == [("preact_resnet20", "resnet20")]
    configs = plan.configs(tmp_path, "cpu", "fp32")
    preact, original = configs["preact_resnet110"], configs["resnet110"]
    Path(preact[0].out).mkdir()
    rundir.write_json(Path(preact[0].out) / records.RUN_FILE, _fake_record(preact[0], "complete", 200))
    outcomes: dict = {}
    order = campaign.tiered_stacks(configs, plan.tiers(), outcomes)
    assert next(order) == [preact[1]]
    assert list(order) == []  # preact seed 1 did not finish
    assert outcomes[Path(original[0].out).name]["outcome"] == "waiting"
    assert "tier 2 starts once the 1 unfinished run(s)" in outcomes[Path(original[1].out).name]["detail"]
    outcomes.clear()
    order = campaign.tiered_stacks(configs, plan.tiers(), outcomes)
    assert next(order) == [preact[1]]
    Path(preact[1].out).mkdir()  # trained to the end while tier 1 was being worked through
    rundir.write_json(Path(preact[1].out) / records.RUN_FILE, _fake_record(preact[1], "diverged", 40))
    assert list(order) == [original] and outcomes == {}


def _fake_training(calls: list, behaviour):
    """A stand-in for train.train_stack: `behaviour(configs)` gives each run's (status, epochs
    done, message) or raises; the run directories get matching records."""
    def train_stack(configs, device, sources=None, **options):
        calls.append((configs, options.get("note")))
        results = []
        for config, (status, done, message) in zip(configs, behaviour(configs)):
            Path(config.out).mkdir(parents=True, exist_ok=True)
            record = _fake_record(config, status, done, message, planned=3)
            rundir.write_json(Path(config.out) / records.RUN_FILE, record)
            results.append(records.Record.from_json(record))
        return results
    return train_stack


PLAN = campaign.Plan(archs=("preact_resnet20", "resnet20"), seeds=(0, 1), dataset="synthetic",
                     train_args=("--epochs", "3", "--limit-train", "64", "--limit-test", "32", "--batch-size", "8"))


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


def test_a_fresh_run_after_one_stopped_for_the_deadline_is_not_started_and_gets_a_predicted_first_epoch(
        tmp_path, monkeypatch):
    """Trained apart (a K=1 variant), a network's seeds are groups of one run: once the first
    stops for the deadline, the next is not started (before, its first epoch was predicted to
    take no time, began, and was lost at the hard stop). The one that trains gets a deadline
    that predicts its first epoch from the self-check's measured step."""
    calls = []

    def train_stack(configs, device, sources=None, **options):
        calls.append(options["deadline"])
        return _fake_training([], lambda configs: [
            ("running", 1, "stopped cleanly after epoch 1 of 3 (deadline); resume to continue")])(configs, device)

    monkeypatch.setattr(training, "train_stack", train_stack)
    record = _check_record("eager-fp32-nchw-k1")
    record["variants"][0]["seconds_per_step"] = 0.25
    (tmp_path / campaign.STATE_DIR).mkdir()
    rundir.write_json(tmp_path / campaign.STATE_DIR / campaign.SELFCHECK_FILE,
                      {**record, "arch": "preact_resnet20", "batch_size": 8})
    logged = []
    rows = campaign.run_campaign(dataclasses.replace(PLAN, archs=("preact_resnet20",)), tmp_path,
                                 campaign.Options(budget=60, device="cpu", min_start=4), log=logged.append)
    assert [row["outcome"] for row in rows] == ["stopped", "waiting"]
    assert "a run stopped for the deadline" in rows[1]["detail"]
    assert len(calls) == 1 and (calls[0].step_seconds, calls[0].setup_seconds) == (0.25, 4)
    assert any("250.0 ms a step predicted" in line for line in logged)
    probed = json.loads((tmp_path / campaign.STATE_DIR / campaign.PROBE_FILE).read_text())  # first, bundled
    assert probed["skipped"].startswith("needs CUDA") and logged[1].startswith("probe: cpu: skipped")


def test_a_step_is_predicted_from_the_self_check_and_scaled_to_networks_it_did_not_time(tmp_path):
    from reproresnet.architectures import row
    from reproresnet.campaign import Variant
    record = {"arch": "preact_resnet110", "batch_size": 64,
              "variants": [{"variant": "graph-bf16-nhwc-k3", "seconds_per_step": 0.006},
                           {"variant": "eager-fp32-nchw-k1", "seconds_per_step": 0.02}],
              "networks": {"wrn_16_4": {"ok": True, "variant": "graph-bf16-nhwc-k3", "seconds_per_step": 0.009}}}
    configs = campaign.Plan(archs=("preact_resnet110", "preact_resnet164", "wrn_16_4", "resnet20")).configs(
        tmp_path, "cuda", "bf16")
    chosen = Variant.from_name("graph-bf16-nhwc-k3")
    step = lambda arch, variant=chosen: campaign.step_seconds(record, configs[arch][0], variant)  # noqa: E731
    assert step("preact_resnet110") == 0.006                      # timed there
    assert step("wrn_16_4") == 0.009                              # timed on that network too
    r110, r164, r20 = row("preact_resnet110"), row("preact_resnet164"), row("resnet20")
    # ResNet-164: batch 48 of a network of about ResNet-110's FLOPs, but 164 layers: its depth decides
    assert step("preact_resnet164") == pytest.approx(0.006 * 164 / 110)
    assert r164["gflops"] * 48 / (r110["gflops"] * 64) < 164 / 110
    assert step("resnet20") == pytest.approx(0.006 * max(r20["gflops"] / r110["gflops"], 20 / 110))
    assert step("preact_resnet110", Variant.from_name("eager-fp32-nchw-k1")) == 0.02
    assert step("preact_resnet110", Variant.from_name("graph-fp32-nhwc-k3")) is None  # not timed: no prediction


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
        rundir.write_json(Path(config.out) / records.RUN_FILE, _fake_record(config, done=1, planned=3))
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
    rundir.write_json(path, record)
    campaign.run_campaign(dataclasses.replace(PLAN, archs=("resnet20",)), tmp_path,
                          campaign.Options(budget=120, device="cpu", min_start=0), log=lambda line: None)
    checked = json.loads(path.read_text())["networks"]["resnet20"]
    assert checked["ok"] is False and "needs a CUDA device" in checked["error"]
    assert [(c.engine, len(configs)) for configs, _ in calls for c in configs[:1]] == [("eager", 1), ("eager", 1)]
    assert all(note.startswith("eager-fp32-nchw-k1: fallback, graph-fp32-nhwc-k2 failed the self-check on resnet20")
               for _, note in calls)


def test_a_check_cut_short_or_of_an_old_format_is_done_again_and_only_a_complete_one_is_reused(
        tmp_path, monkeypatch, capsys):
    """Defect: a check cut short by its budget was reused by every later call. Now only a
    complete record of this format whose choice passed is reused, and --status says which."""
    checks = []

    def check(plan, device, sources, **options):
        checks.append(list(plan))
        record = _check_record("eager-fp32-nchw-k2", f"call {len(checks)}", cut_short=len(checks) == 1)
        options["save"](record)
        return record

    monkeypatch.setattr(selfcheck, "selfcheck", check)
    monkeypatch.setattr(training, "train_stack", _fake_training([], lambda configs: [("running", 1, None)] * len(configs)))
    plan = dataclasses.replace(PLAN, archs=("preact_resnet20",))
    args = ["--out", str(tmp_path), "--archs", "preact_resnet20", "--seeds", "0", "1", "--dataset", "synthetic"]

    def call_and_status():
        campaign.run_campaign(plan, tmp_path, campaign.Options(budget=60, device="cpu", min_start=0),
                              log=lambda line: None)
        capsys.readouterr()
        assert campaign.main([*args, "--status"]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    assert "cut short, by its budget, 1 check(s) not run" in call_and_status() and len(checks) == 1
    assert call_and_status().startswith("self-check of call 2: complete, chose eager-fp32-nchw-k2") and len(checks) == 2
    assert call_and_status().startswith("self-check of call 2: complete") and len(checks) == 2  # reused
    path = tmp_path / campaign.STATE_DIR / campaign.SELFCHECK_FILE
    rundir.write_json(path, {**json.loads(path.read_text()), "format": "reproresnet-selfcheck/2"})
    assert campaign.selfcheck_line(tmp_path).startswith("self-check of call 2: old format")
    assert call_and_status().startswith("self-check of call 3: complete") and len(checks) == 3
    path.unlink()
    assert campaign.selfcheck_line(tmp_path) == "self-check: none yet (the next call checks first)"


def test_a_budget_leaves_two_deadlines_a_reserve_apart_and_counts_from_the_process_start():
    assert process.deadlines(100.0, 60.0) == (157.0, 154.0)  # the reserve: 5% of the budget,
    assert process.deadlines(0.0, 10.0) == (9.0, 8.0)  # at least 1 s
    assert process.deadlines(0.0, 1000.0) == (985.0, 970.0)  # and at most 15 s
    assert process.deadlines(0.0, 60.0, reserve=10.0) == (50.0, 40.0)
    assert process.seconds_left(time.time() + 100, kept=30) == pytest.approx(70, abs=5)
    assert process.seconds_left(time.time() - 1) == 0.0
    assert time.time() - 3600 < process.process_start_time() <= time.time()  # this test's own process


def test_a_second_campaign_on_the_same_directory_is_refused(tmp_path):
    options = campaign.Options(budget=30, device="cpu")
    with rundir.run_dir_lock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            campaign.run_campaign(campaign.Plan(archs=("preact_resnet20",), seeds=(0,)), tmp_path, options)


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
        assert records.read_run(ours).status == "complete"
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

    # The first call's check is reused only if it was complete; on a loaded machine its budget
    # (what the short first call left it) can cut it short, and then the second call checks again.
    check = tmp_path / campaign.STATE_DIR / campaign.SELFCHECK_FILE
    state = selfcheck_state(json.loads(check.read_text()))[0] if check.exists() else None
    second = _campaign(tmp_path, 900)
    output = second.communicate(timeout=960)[0]
    assert second.returncode == 0, output
    if state == "complete":
        assert "the self-check of" in output, output  # the first call's choice, reused
    elif state is not None:
        assert f"the earlier self-check is not reused: {state}" in output, output
    else:
        assert "the earlier self-check" not in output, output
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
                                *PLAN_ARGS, "--seeds", "0", "1", "2", "--stack", "3", "--selfcheck-budget", "600",
                                "--train-args", args],
                               cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.communicate(timeout=960)[0]
    assert process.returncode == 0, output
    for seed in (0, 1, 2):
        ours, theirs = (metrics_without_timing(d) for d in (out / f"preact_resnet20-fp32-seed{seed}",
                                                         tmp_path / "alone" / f"seed{seed}"))
        record = records.read_run(out / f"preact_resnet20-fp32-seed{seed}")
        assert record.status == "complete" and record.speed[-1].stacked == 3, output
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
def test_a_campaign_killed_at_any_file_operation_and_called_again_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """The campaign "dies" at its n-th file operation (tests/faults.py: half-way through a write,
    before a rename, before an unlink), for every n of an uninterrupted campaign, and is called
    again: every run then equals the uninterrupted campaign's, metrics and weights bit for bit,
    and no lock is left held (runs one by one, so that the same code runs either way)."""
    from faults import Faults, Killed
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread in every call, whatever the load: the same last bits
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
    assert all(records.read_run(whole / name).status == "complete" for name in names)
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
        outcomes = bundling.render_runs([run_dir, unfinished])
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
    from reproresnet import launch
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell('arch = "preact_resnet20"\nseed = 0\nrun_dir = ""',
                                                metadata={"tags": ["parameters"]})]
    nbformat.write(notebook, tmp_path / "thin.ipynb")
    for name, config in (("other-lr", {"lr": 0.05, "epochs": 200}), ("defaults", {"epochs": 200, "device": "cpu"})):
        (tmp_path / name).mkdir()
        rundir.write_json(tmp_path / name / records.RUN_FILE, fake_record(
            arch="preact_resnet20", status="complete", config={"arch": "preact_resnet20", "seed": 0, **config}))
    executed = []
    monkeypatch.setattr(launch, "execute_run", lambda notebook, run_dir, parameters, progress: executed.append(
        run_dir) or {"run": Path(run_dir).name, "status": "complete", "message": None})
    outcomes = bundling.render_runs([tmp_path / "other-lr", tmp_path / "defaults"], str(tmp_path / "thin.ipynb"))
    assert outcomes[0]["status"] == "failed" and outcomes[0]["message"].endswith("the recorded ['lr']")
    assert executed == [str(tmp_path / "defaults")]
