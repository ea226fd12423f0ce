"""The self-check: each variant judged by single steps from a common start state against the
exact (float64) step, with tolerances from floors measured in the same run; planted faults
fail it; the choice among the variants that pass (selfcheck.py)."""

import dataclasses
import json
import signal
import time

import pytest
import torch

from reproresnet import engine as engine_module
from reproresnet.campaign import selfcheck
from reproresnet import train as training
from reproresnet.campaign import selfcheck_state
from reproresnet.config import TrainConfig
from reproresnet.engine import EagerEngine, GraphEngine, Speedups

from conftest import ReplayByCalling

CPU = torch.device("cpu")


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
    # slow grouped convolutions: graphs of one network win by themselves
    assert selfcheck.choose(_results(graph_fp32_nhwc_k3=30, graph_fp32_nhwc_k1=6))[0] == "graph-fp32-nhwc-k1"


def test_candidates_hold_graphs_of_one_network_and_bf16_only_beside_its_fp32_twin():
    cuda = torch.device("cuda")
    names = [v.name for v in selfcheck.candidates(cuda, 3)]
    assert names[:4] == ["graph-fp32-nhwc-k3", "graph-bf16-nhwc-k3", "graph-fp32-nhwc-k1", "graph-bf16-nhwc-k1"]
    bf16 = [v.name for v in selfcheck.candidates(cuda, 3, "bf16")]
    assert all(name.replace("bf16", "fp32") in bf16 for name in bf16 if "bf16" in name)
    assert "eager-fp32-nhwc-k3" not in bf16 and all("bf16" not in v.name for v in selfcheck.candidates(cuda, 3, "fp32"))
    assert [v.name for v in selfcheck.candidates(CPU, 3)] == ["eager-fp32-nchw-k3"]
    results = _results(graph_fp32_nhwc_k3=None, graph_bf16_nhwc_k3=5, graph_fp32_nhwc_k1=9, graph_bf16_nhwc_k1=4)
    selfcheck.twin_rule(results)
    assert [r["ok"] for r in results] == [False, False, True, True]
    assert results[1]["why"] == "its fp32 twin graph-fp32-nhwc-k3 did not pass"


def test_a_network_where_the_chosen_variant_failed_trains_eagerly_unstacked():
    record = {"chosen": {"variant": "graph-bf16-nhwc-k3", "why": "fastest"},
              "networks": {"a": {"ok": True}, "c": {"ok": None},
                           "b": {"ok": False, "worst": {"ratio": 40.0, "quantity": "update", "step": "after capture"}}}}
    assert selfcheck.variant_for(record, "a")[0].name == "graph-bf16-nhwc-k3"
    variant, why = selfcheck.variant_for(record, "b")
    assert variant.name == "eager-bf16-nchw-k1" and "fallback, graph-bf16-nhwc-k3 failed the self-check on b" in why
    assert "40.0 x tolerance: update, after capture" in why
    assert selfcheck.variant_for(record, "c")[0].name == "graph-bf16-nhwc-k3"


def test_the_check_turns_dropout_off_where_the_network_has_it():
    configs = [TrainConfig(arch=arch, out="x", device="cpu") for arch in ("wrn_16_4", "preact_resnet20")]
    assert configs[0].network_options()["dropout"] == 0.3
    checked = selfcheck.check_configs(configs)
    assert checked[0].network_options()["dropout"] == 0.0 and checked[1] == configs[1]
    assert "wrn_16_4 0.3" in selfcheck._dropout_note({"wrn_16_4": configs[:1]})


# ---------------------------------------------------------------- judged steps on a CPU

def _configs(**changes):
    return [TrainConfig(arch="preact_resnet20", out=f"x/s{seed}", seed=seed, dataset="synthetic", limit_train=64,
                        batch_size=4, device="cpu", **changes) for seed in (0, 1)]


@pytest.fixture(scope="module")
def base():
    """Two ResNet-20s, batch 4: their start state, exact steps and fp32 floor, measured once."""
    return selfcheck.baseline(_configs(), CPU, {})


@pytest.fixture
def graphs(monkeypatch):
    """The graph engine on a CPU (tests/test_engine.py's stand-in, with the fused SGD it needs);
    `graphs["class"]` is the stand-in a test may replace with a faulty one, which gets its engine."""
    holder = {"class": ReplayByCalling}
    for_device = Speedups.for_device.__func__
    monkeypatch.setattr(Speedups, "for_device", classmethod(
        lambda cls, config, device: dataclasses.replace(for_device(cls, config, device), fused_optimizer=True)))
    monkeypatch.setattr(training, "resolve_engine", lambda config, device, distributed: config.engine or "eager")

    def build(name, model, optimizer, speedups, batch_size, step_model=None, partial_through_step_model=False,
              precision="fp32"):
        if name != "graph":
            return EagerEngine(model, optimizer, speedups, batch_size, step_model, partial_through_step_model, precision)
        stand_in = holder["class"]()
        engine = stand_in.engine = GraphEngine(model, optimizer, speedups, batch_size, graphs=stand_in,
                                               precision=precision)
        return engine

    monkeypatch.setattr(training, "build_engine", build)
    return holder


def test_the_start_state_has_momentum_and_moved_bn_statistics_and_every_judged_step_starts_from_it(base):
    assert len(base.start) == 2 and len(base.exact) == len(selfcheck.JUDGED)
    state = base.start[0]
    assert all(buffer.abs().sum() > 0 for buffer in state["momentum"].values())
    assert not torch.equal(state["model"]["stage1.0.bn1.running_mean"], torch.zeros(16))
    assert set(base.floors) == {"fp32"} and all(base.floors["fp32"][q] >= selfcheck.UNIT_ROUNDOFF["fp32"]
                                                for q in selfcheck.QUANTITIES)
    # the reference, judged against its own floor, is within it
    assert base.reference["ok"] and base.reference["worst"]["ratio"] <= 1 / selfcheck.TOLERANCE_FACTOR


@pytest.mark.parametrize("name", ["eager-fp32-nchw-k2", "graph-fp32-nchw-k2", "graph-fp32-nhwc-k2",
                                  "graph-fp32-nhwc-k1"])
def test_correct_variants_pass(base, graphs, name):
    """Stacked or apart, eager or replayed after warm-up and capture, NCHW or NHWC: every
    quantity of every judged step stays within its tolerance."""
    result = selfcheck.judge(selfcheck.Variant.from_name(name), base, CPU)
    print(f"{name}: worst {result['worst']}")
    assert result["ok"] and result["finite"] and result["worst"]["ratio"] <= 1.0, result["worst"]


class BakedLr(ReplayByCalling):
    """A graph that baked in the learning rate it was captured at."""

    def capture(self, step):
        engine, captured = self.engine, self.engine.lr_tensor.clone()

        def replay():
            now = engine.lr_tensor.clone()
            engine.lr_tensor.copy_(captured)
            try:
                return step()
            finally:
                engine.lr_tensor.copy_(now)
        return replay


class StaleInputs(ReplayByCalling):
    """A graph that reads its first replay's inputs forever: the refills go elsewhere."""

    def capture(self, step):
        engine, kept = self.engine, []

        def replay():
            if not kept:
                kept.extend((engine.images.clone(), engine.labels.clone()))
            engine.images.copy_(kept[0])
            engine.labels.copy_(kept[1])
            return step()
        return replay


class LostAfterSmallerBatch(ReplayByCalling):
    """The first replay after an eager smaller batch does not step."""

    def capture(self, step):
        engine, eager, smaller, last = self.engine, self.engine.eager_step, [], []

        def eager_step(images, labels):
            if labels.shape[1] != engine.batch_size:
                smaller.append(True)
            return eager(images, labels)

        def replay():
            if smaller:
                smaller.clear()
                return last[-1]
            last.append(step())
            return last[-1]
        engine.eager_step = eager_step
        return replay


def _mean_loss(monkeypatch):
    real = engine_module.stacked_loss

    def mean(logits, labels):
        loss, losses, errors = real(logits, labels)
        return losses.mean(), losses, errors
    monkeypatch.setattr(engine_module, "stacked_loss", mean)


def _swapped_batches(monkeypatch):
    real = selfcheck.stacked_batch
    monkeypatch.setattr(selfcheck, "stacked_batch", lambda batches, channels_last: real(batches[::-1], channels_last))


def _rescale_skipped(monkeypatch):
    real = selfcheck.set_step_lr
    monkeypatch.setattr(selfcheck, "set_step_lr", lambda stack, lr, scale=1.0: real(stack, lr, 1.0 if stack.k > 1
                                                                                     else scale))


# (fault, variant, how it is planted, the judged steps and quantity it must fail)
FAULTS = [
    ("graph baked in its lr", "graph-fp32-nchw-k2", BakedLr, {("after capture", "update")}),
    ("static inputs not refilled", "graph-fp32-nchw-k2", StaleInputs, {("after capture", "loss")}),
    ("replay after the eager smaller batch lost", "graph-fp32-nchw-k2", LostAfterSmallerBatch,
     {("after smaller batch", "update")}),
    ("stacked loss a mean (lr/K)", "eager-fp32-nchw-k2", _mean_loss,
     {(judged.name, "gradient") for judged in selfcheck.JUDGED}),
    ("runs fed each other's batches", "eager-fp32-nchw-k2", _swapped_batches,
     {(judged.name, "loss") for judged in selfcheck.JUDGED}),
    ("momentum rescale skipped at an lr change", "eager-fp32-nchw-k2", _rescale_skipped,
     {("momentum rescaled", "gradient"), ("momentum rescaled", "update")}),
]


@pytest.mark.parametrize("fault, name, plant, failing", FAULTS, ids=[fault for fault, *_ in FAULTS])
def test_the_check_fails_each_planted_fault(base, graphs, monkeypatch, fault, name, plant, failing):
    """Each fault moves a quantity of the judged step that exposes it more than ten times past
    its tolerance (the floor times TOLERANCE_FACTOR), and the variant fails."""
    if isinstance(plant, type):
        graphs["class"] = plant
    else:
        plant(monkeypatch)
    result = selfcheck.judge(selfcheck.Variant.from_name(name), base, CPU)
    tolerance = {q: selfcheck.TOLERANCE_FACTOR * base.floors["fp32"][q] for q in selfcheck.QUANTITIES}
    ratios = {(step, q): result["distances"][step][q] / tolerance[q] for step in result["distances"] for q in tolerance}
    print(f"{fault}: " + ", ".join(f"{step}/{q} {ratios[step, q]:.3g}" for step, q in sorted(failing)))
    assert not result["ok"] and result["worst"]["ratio"] > 10
    assert all(ratios[where] > 10 for where in failing), ratios


def test_the_check_passes_a_right_stack_records_its_rule_and_is_complete():
    """The whole check on a CPU: the reference, its floors and the stack of two, each network
    judged with a stacked variant (as chosen, or beside a choice that trains apart)."""
    plan = {arch: [dataclasses.replace(c, arch=arch) for c in _configs()] for arch in ("preact_resnet20", "resnet20")}
    record = selfcheck.selfcheck(plan, "cpu", budget=300, timed_steps=1, log=lambda line: None)
    (reference, stacked) = record["variants"]
    assert reference["variant"] == "eager-fp32-nchw-k1" and stacked["variant"] == "eager-fp32-nchw-k2"
    assert stacked["ok"] and record["ok"] and record["complete"] and selfcheck_state(record)[0] == "complete"
    assert set(record["floors"]["fp32"]) == set(selfcheck.QUANTITIES) and "float64" in record["rule"]
    other = record["networks"]["resnet20"]
    judged = [other["variant"]] + ([other["stacked"]["variant"]] if "stacked" in other else [])
    assert other["ok"] and "eager-fp32-nchw-k2" in judged and (other.get("stacked") or other)["ok"]
    assert json.loads(json.dumps(selfcheck.jsonable(record)))["format"] == selfcheck.FORMAT
    assert "tolerance" in selfcheck.format_variants(record)


def test_the_check_steps_and_times_fp32_without_tf32(monkeypatch, base):
    """The variants are judged and timed as the loop trains: fp32 with TF32 off (on CUDA, cuDNN
    would use TF32 by default, and an fp32 variant would look faster than its training runs)."""
    def flags():
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    seen, real_step, saved = [], engine_module.train_step, flags()
    monkeypatch.setattr(engine_module, "train_step", lambda *args: seen.append(flags()) or real_step(*args))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        result = selfcheck.judge(selfcheck.Variant.from_name("eager-fp32-nchw-k2"), base, CPU, timed=2)
        assert result["seconds_per_step"] > 0 and len(seen) == 1 + len(selfcheck.JUDGED) + 2
        assert set(seen) == {(False, False)} and flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_check_keeps_its_budget_and_a_check_cut_short_is_not_complete(monkeypatch):
    """A check still running when the budget is spent is interrupted and recorded as unchecked,
    even where the interruption surfaces as another error; then the eager unstacked reference
    is the choice, "complete" is false, and it is written last with "ok"."""
    def slow(*args, **kwargs):
        try:
            time.sleep(30)
        except BaseException as error:
            raise RuntimeError("cuDNN autotuning ...") from error
    monkeypatch.setattr(selfcheck, "baseline", slow)
    saved = []
    plan = {"preact_resnet110": [TrainConfig(arch="preact_resnet110", out="x", seed=seed, device="cpu")
                                 for seed in (0, 1)]}
    began = time.perf_counter()
    record = selfcheck.selfcheck(plan, "cpu", budget=0.5, log=lambda line: None,
                                 save=lambda record: saved.append(json.loads(json.dumps(selfcheck.jsonable(record)))))
    assert time.perf_counter() - began < 5
    assert record["unchecked"] == ["preact_resnet110 eager-fp32-nchw-k1 (reference, exact step and floors)",
                                   "augmentation statistics"]
    assert record["chosen"]["variant"] == "eager-fp32-nchw-k1" and record["ok"] is False
    assert record["complete"] is False and selfcheck_state(record)[0] == "cut short"
    assert all(key in saved[-1] for key in ("ok", "complete"))
    assert all("ok" not in partial and "complete" not in partial for partial in saved[:-1])
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_check_with_nothing_to_judge_times_the_reference_alone(monkeypatch):
    """--stack 1 on a CPU leaves no variant but the reference, which defines the floor: it is
    timed, not compared, and the check is complete in seconds."""
    monkeypatch.setattr(selfcheck, "baseline", lambda *args, **kwargs: pytest.fail("nothing to judge"))
    plan = {arch: [dataclasses.replace(c, arch=arch) for c in _configs()] for arch in ("preact_resnet20", "resnet20")}
    record = selfcheck.selfcheck(plan, "cpu", budget=300, stack=1, timed_steps=1, log=lambda line: None)
    [reference] = record["variants"]
    assert reference["ok"] and reference["seconds_per_step"] > 0 and reference["note"].endswith("timed only")
    assert record["networks"]["resnet20"]["ok"] and selfcheck_state(record)[0] == "complete"


def test_a_record_is_reusable_only_if_complete_of_this_format_and_its_choice_passed():
    good = {"format": selfcheck.FORMAT, "complete": True, "unchecked": [],
            "chosen": {"variant": "eager-fp32-nchw-k2", "why": "fastest"},
            "variants": [{"variant": "eager-fp32-nchw-k2", "ok": True}]}
    assert selfcheck_state(good)[0] == "complete"
    assert selfcheck_state({**good, "format": "reproresnet-selfcheck/2"})[0] == "old format"
    assert selfcheck_state({**good, "complete": False, "unchecked": ["x"]}) == \
        ("cut short", "by its budget, 1 check(s) not run (x): checked again on the next call")
    assert selfcheck_state({k: v for k, v in good.items() if k != "complete"})[0] == "cut short"
    assert selfcheck_state({**good, "variants": [{"variant": "eager-fp32-nchw-k2", "ok": False}]})[0] == "failed"
    assert selfcheck_state({"format": selfcheck.FORMAT})[0] == "unreadable" == selfcheck_state(None)[0]


def test_selfcheck_augmentation_statistics_on_cpu():
    augmentation = selfcheck.check_augmentation(CPU, n=9000)
    assert augmentation["ok"] and abs(augmentation["flip_rate"] - 0.5) < 0.03
    assert sum(augmentation["row_offset_freq"]) == pytest.approx(1.0)


def test_the_checks_batches_are_the_training_batches_reflect_padding_included():
    """The self-check steps on the batches training draws: each run's order, augmentation and
    padding (a reflect-padding recipe's crops are reflect-padded there too)."""
    from reproresnet.data import device_splits, train_batches
    from reproresnet.train import epoch_seed
    configs = _configs(padding="reflect")
    stacks = selfcheck._build(selfcheck.reference_variant(), configs, CPU, device_splits(configs, CPU, {}))
    steps = selfcheck._batches(stacks, 4)

    def drawn(run, padding):
        recipe = stacks[0].recipe
        return list(train_batches(run.splits.train, recipe.batch_size, normalizer=run.normalizer,
                                  augmentation=recipe.augmentation, padding=padding, device="cpu",
                                  generator=torch.Generator("cpu").manual_seed(epoch_seed(run.config.seed, 0))))

    runs = [run for stack in stacks for run in stack.runs]
    assert stacks[0].recipe.padding == "reflect" and len(runs) == 2
    for index, run in enumerate(runs):
        reflect, zero = drawn(run, "reflect"), drawn(run, "zero")
        for step in range(4):
            images, labels = steps[step][index]
            assert torch.equal(images, reflect[step][0]) and torch.equal(labels, reflect[step][1])
        assert not all(torch.equal(steps[step][index][0], zero[step][0]) for step in range(4))
