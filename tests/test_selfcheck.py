"""The self-check: which way to train, chosen by comparing variants against eager fp32 on real
steps, and timing them (selfcheck.py)."""

import json
import signal
import time

import pytest
import torch

from reproresnet import engine as engine_module
from reproresnet import selfcheck
from reproresnet.config import TrainConfig


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


def test_the_checks_batches_are_the_training_batches_reflect_padding_included():
    """The self-check steps on the batches training draws: each run's order, augmentation and
    padding (a reflect-padding recipe's crops are reflect-padded there too)."""
    from reproresnet.data import train_batches
    from reproresnet.train import epoch_seed
    configs = [TrainConfig(arch="preact_resnet20", out=f"x/s{seed}", seed=seed, dataset="synthetic", limit_train=64,
                           batch_size=8, device="cpu", padding="reflect") for seed in (0, 1)]
    variant = selfcheck.Variant("eager", False, False, 1)
    stacks = selfcheck._build(variant, configs, torch.device("cpu"), {})
    steps = selfcheck._batches(stacks, full=2)

    def drawn(run, padding):
        recipe = stacks[0].recipe
        return list(train_batches(run.splits.train, recipe.batch_size, normalizer=run.normalizer,
                                  augmentation=recipe.augmentation, padding=padding, device="cpu",
                                  generator=torch.Generator("cpu").manual_seed(epoch_seed(run.config.seed, 0))))

    runs = [run for stack in stacks for run in stack.runs]
    assert stacks[0].recipe.padding == "reflect" and len(runs) == 2
    for index, run in enumerate(runs):
        reflect, zero = drawn(run, "reflect"), drawn(run, "zero")
        for step in (0, 1, 3):  # step 2 is the smaller batch: the first images of the third
            images, labels = steps[step][index]
            assert torch.equal(images, reflect[step][0]) and torch.equal(labels, reflect[step][1])
        assert not all(torch.equal(steps[step][index][0], zero[step][0]) for step in (0, 1, 3))
        smaller_images, _ = steps[2][index]
        assert torch.equal(smaller_images, reflect[2][0][:len(smaller_images)])
