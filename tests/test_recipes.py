"""The presets as the papers state them, and the learning rate as a pure function of the step."""

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import torch

from reproresnet.cli import main
from reproresnet.config import ConfigError, TrainConfig
from reproresnet.models import build_model
from reproresnet.recipes import RECIPES, check_recipe, get_recipe, make_schedule
from reproresnet.train import Speedups, make_optimizer

CIFAR_TRAIN = 50_000


def lr_at_epoch(schedule, epoch):
    return schedule.lr_at(epoch * schedule.iterations_per_epoch)


def test_seed_recipe_as_the_seed_states_it():
    recipe = get_recipe("seed")
    assert (recipe.length, recipe.unit, recipe.batch_size) == (200, "epoch", 64)
    assert (recipe.momentum, recipe.nesterov, recipe.weight_decay) == (0.9, True, 1e-4)
    schedule = make_schedule(recipe, "preact_resnet110", CIFAR_TRAIN)
    assert schedule.iterations_per_epoch == 782 and schedule.epochs == 200
    expected = {0: 0.1, 9: 0.1, 10: 0.1, 79: 0.1, 80: 0.01, 119: 0.01, 120: 0.001, 199: 0.001}
    for epoch, lr in expected.items():
        assert lr_at_epoch(schedule, epoch) == pytest.approx(lr), epoch
    # within an epoch the rate does not move
    assert schedule.lr_at(80 * 782 - 1) == pytest.approx(0.1)


def test_seed_recipe_warms_up_the_bottleneck_network_only():
    recipe = get_recipe("seed")
    bottleneck = make_schedule(recipe, "preact_resnet164", CIFAR_TRAIN)
    assert lr_at_epoch(bottleneck, 0) == pytest.approx(0.01)
    assert lr_at_epoch(bottleneck, 9) == pytest.approx(0.01)
    assert bottleneck.lr_at(10 * 782 - 1) == pytest.approx(0.01)
    assert lr_at_epoch(bottleneck, 10) == pytest.approx(0.1)
    assert lr_at_epoch(bottleneck, 80) == pytest.approx(0.01)
    assert lr_at_epoch(make_schedule(recipe, "wrn_16_4", CIFAR_TRAIN), 0) == pytest.approx(0.1)


def test_seed_code_recipe_as_the_seeds_code_runs_it():
    """train_nn.py: LR_SCHEDULE = {0: 0.01, 10: 0.1, 80: 0.01, 120: 0.001} for every network,
    Lasagne's nesterov_momentum, raw 0-255 pixels minus the mean image (utils.py since 502ff96)."""
    for arch, batch in (("preact_resnet110", 64), ("preact_resnet164", 48), ("seed_wrn_n2_k4", 64)):
        config = TrainConfig(arch=arch, recipe="seed_code")
        recipe = config.resolved_recipe()
        assert (recipe.batch_size, recipe.weight_decay, recipe.weight_decay_on) == (batch, 2e-4, "lasagne")
        assert (recipe.augmentation, recipe.normalization, recipe.val_size) == (
            "per_batch", "per_pixel_mean_0_255", 5000)
        assert (recipe.momentum_form, recipe.padding) == ("lasagne", "zero")
        schedule = make_schedule(recipe, arch, CIFAR_TRAIN - 5000)
        for epoch, lr in {0: 0.01, 9: 0.01, 10: 0.1, 79: 0.1, 80: 0.01, 120: 0.001, 199: 0.001}.items():
            assert lr_at_epoch(schedule, epoch) == pytest.approx(lr), (arch, epoch)
    assert TrainConfig(arch="preact_resnet164", recipe="seed_code").model_options() == {
        "shortcut": "input_projection", "bottleneck_stride": "3x3", "layer_defaults": "lasagne"}
    # a network without a bottleneck takes the recipe's shortcut and layers only
    assert TrainConfig(arch="preact_resnet110", recipe="seed_code").model_options() == {
        "shortcut": "input_projection", "layer_defaults": "lasagne"}


def test_seed_code_2016_04_recipe_as_the_code_of_the_seeds_resnet110_result_reads():
    """7c4c997: BATCHSIZE = 32, LR_SCHEDULE = {0: 0.01, 80: 0.001, 120: 0.0001}, inputs / 255 with no
    mean subtracted, a 10 % hold-out, and every unit of stage 1 built with first=True."""
    config = TrainConfig(arch="preact_resnet110", recipe="seed_code_2016_04")
    recipe = config.resolved_recipe()
    assert (recipe.batch_size, recipe.length, recipe.warmup_length) == (32, 200, 0)
    assert (recipe.weight_decay, recipe.weight_decay_on, recipe.momentum_form) == (2e-4, "lasagne", "lasagne")
    assert (recipe.normalization, recipe.augmentation, recipe.padding, recipe.val_size) == (
        "range_0_1", "per_batch", "zero", 5000)
    schedule = make_schedule(recipe, "preact_resnet110", CIFAR_TRAIN - 5000)
    assert schedule.iterations_per_epoch == 1407  # 45,000 / 32, the last batch of 8 kept
    for epoch, lr in {0: 0.01, 79: 0.01, 80: 0.001, 119: 0.001, 120: 0.0001, 199: 0.0001}.items():
        assert lr_at_epoch(schedule, epoch) == pytest.approx(lr), epoch
    assert config.model_options() == {"shortcut": "input_projection", "preact_stage1": "first_unit",
                                      "layer_defaults": "lasagne"}


@pytest.mark.parametrize("recipe, normalization, bn_batch", [
    ("seed", "per_pixel_mean", None), ("seed_code", "per_pixel_mean_0_255", None),
    ("seed_code_2016_04", "range_0_1", None), ("he2016", "per_pixel_mean", 64), ("wrn2016", "per_channel", None)])
def test_each_recipe_owns_its_preprocessing_and_bn_batch(recipe, normalization, bn_batch):
    config = TrainConfig(arch="preact_resnet110", recipe=recipe)
    assert config.resolved_recipe().normalization == normalization
    assert config.model_options().get("bn_batch") == bn_batch
    # an explicit value still wins
    explicit = TrainConfig(arch="preact_resnet110", recipe=recipe, normalization="per_channel", bn_batch=32,
                           augmentation="none", val_size=100)
    resolved = explicit.resolved_recipe()
    assert (resolved.normalization, resolved.augmentation, resolved.val_size) == ("per_channel", "none", 100)
    assert explicit.model_options()["bn_batch"] == 32

def test_he2016_recipe_in_iterations():
    recipe = get_recipe("he2016")
    schedule = make_schedule(recipe, "preact_resnet110", CIFAR_TRAIN)
    assert schedule.total_iterations == 64_000
    assert schedule.iterations_per_epoch == 391 and schedule.epochs == 164  # last epoch stops at 64k
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01,
                48_000: 0.001, 63_999: 0.001}
    for iteration, lr in expected.items():
        assert schedule.lr_at(iteration) == pytest.approx(lr), iteration
    # "for all CIFAR experiments": the bottleneck nets warm up too
    assert make_schedule(recipe, "preact_resnet164", CIFAR_TRAIN).lr_at(399) == pytest.approx(0.01)
    assert make_schedule(recipe, "wrn_16_4", CIFAR_TRAIN).lr_at(400) == pytest.approx(0.1)
    assert (recipe.batch_size, recipe.bn_batch, recipe.momentum, recipe.nesterov) == (128, 64, 0.9, True)
    assert "appendix" in recipe.source and "fb.resnet.torch" in recipe.source


def test_wrn2016_recipe():
    """The authors' train.lua: `local epoch = state.epoch + 1` and the drop at `epoch_step` {60,120,160}
    in onStartEpoch, i.e. after 59, 119 and 159 epochs; reflection padding, momentum reset there."""
    recipe = get_recipe("wrn2016")
    assert (recipe.batch_size, recipe.weight_decay, recipe.gamma) == (128, 5e-4, 0.2)
    assert (recipe.padding, recipe.momentum_form, recipe.normalization) == ("reflect", "reset", "per_channel")
    schedule = make_schedule(recipe, "wrn_16_4", CIFAR_TRAIN)
    expected = {0: 0.1, 58: 0.1, 59: 0.02, 118: 0.02, 119: 0.004, 158: 0.004, 159: 0.0008, 199: 0.0008}
    for epoch, lr in expected.items():  # 0-based epochs: the 60th epoch already runs at 0.02
        assert lr_at_epoch(schedule, epoch) == pytest.approx(lr), epoch


def test_momentum_scale_at_a_change_of_learning_rate():
    """Lasagne keeps v = -lr b, so b is rescaled by old/new where the lr changes; reset empties it;
    PyTorch keeps it. Between changes every form leaves the buffer alone."""
    schedule = make_schedule(get_recipe("seed_code").replace(epochs=20), "preact_resnet110", 400)  # 7 steps/epoch
    warm_end, first_decay = schedule.warmup_iterations, schedule.milestones[0]
    assert (schedule.lr_at(warm_end - 1), schedule.lr_at(warm_end)) == (0.01, 0.1)
    assert schedule.momentum_scale_at(warm_end, "lasagne") == pytest.approx(0.1)
    assert schedule.momentum_scale_at(first_decay, "lasagne") == pytest.approx(10.0)
    assert schedule.momentum_scale_at(first_decay, "reset") == 0.0
    for form in ("pytorch", "lasagne", "reset"):
        assert schedule.momentum_scale_at(0, form) == 1.0
        assert schedule.momentum_scale_at(first_decay + 1, form) == 1.0
        assert schedule.momentum_scale_at(warm_end, "pytorch") == 1.0


def test_shortened_run_keeps_the_schedule_shape():
    short = get_recipe("seed").replace(epochs=20)
    assert short.milestones == (8, 12) and short.warmup_length == 1
    he = get_recipe("he2016").replace(epochs=164)
    assert (he.unit, he.length) == ("epoch", 164) and he.milestones == (82, 123)


def test_explicit_milestones_are_taken_literally():
    assert get_recipe("seed").replace(epochs=10, milestones=[3, 7]).milestones == (3, 7)


@pytest.mark.parametrize("overrides, bad", [
    ({"epochs": 0}, "epochs=0"),
    ({"epochs": -3}, "epochs=-3"),
    ({"epochs": "ten"}, "epochs='ten'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"lr": 0.0}, "lr=0.0"),
    ({"lr": float("nan")}, "lr=nan"),
    ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
    ({"weight_decay_on": "bn"}, "weight_decay_on='bn'"),
    ({"bn_batch": 0}, "bn_batch"),
    ({"milestones": (120, 80)}, "milestones=(120, 80)"),
    ({"milestones": (80, 250)}, "milestones=(80, 250)"),
    ({"epochs": 10, "milestones": (5, 10)}, "milestones=(5, 10)"),
    ({"momentum_typo": 0.9}, "momentum_typo"),
    ({"momentum_form": "keras"}, "momentum_form='keras'"),
    ({"padding": "mirror"}, "padding='mirror'"),
    ({"normalization": "zca"}, "normalization='zca'"),
    ({"preact_stage1": "none", "arch": "preact_resnet20"}, "preact_stage1='none'"),
    ({"layer_defaults": "caffe", "arch": "preact_resnet20"}, "layer_defaults='caffe'"),
])
def test_bad_overrides_name_the_value(overrides, bad):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_dict({"recipe": "seed", **overrides})
    assert bad in str(error.value) and "expected" in str(error.value)


def test_unknown_recipe_lists_the_presets():
    with pytest.raises(ConfigError, match="seed.*seed_code.*seed_code_2016_04.*he2016.*wrn2016"):
        TrainConfig(recipe="he2015")


@given(name=st.sampled_from(sorted(RECIPES)), epochs=st.integers(1, 400),
       train_size=st.integers(1, 60_000), arch=st.sampled_from(["preact_resnet110", "preact_resnet164"]))
def test_schedule_properties(name, epochs, train_size, arch):
    """For any length: the rate never increases after warm-up, takes only the recipe's
    values, and the run covers the planned iterations."""
    recipe = get_recipe(name).replace(epochs=epochs)
    schedule = make_schedule(recipe, arch, train_size)
    assert schedule.epochs == epochs
    allowed = {recipe.lr * recipe.gamma ** k for k in range(len(recipe.milestones) + 1)} | {recipe.warmup_lr}
    positions = sorted({0, schedule.total_iterations - 1, schedule.warmup_iterations,
                        *schedule.milestones, *(m - 1 for m in schedule.milestones)})
    rates = [schedule.lr_at(i) for i in positions if 0 <= i < schedule.total_iterations]
    assert all(any(math.isclose(r, a) for a in allowed) for r in rates)
    after_warmup = [schedule.lr_at(i) for i in positions if schedule.warmup_iterations <= i]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


@given(milestones=st.lists(st.integers(-5, 300), max_size=4), epochs=st.integers(1, 250))
def test_milestone_validation_accepts_exactly_increasing_in_range(milestones, epochs):
    valid = all(0 < m < epochs for m in milestones) and all(a < b for a, b in zip(milestones, milestones[1:]))
    try:
        check_recipe(get_recipe("seed").replace(epochs=epochs, milestones=milestones))
    except ConfigError as error:
        assert not valid, error
    else:
        assert valid


@given(name=st.sampled_from(sorted(RECIPES)), epochs=st.integers(1, 400),
       arch=st.sampled_from(["preact_resnet110", "preact_resnet164"]))
def test_short_runs_keep_every_decay_and_the_warm_up(name, epochs, arch):
    """On the full training set a shortened recipe keeps each milestone as its own decay and
    a stated warm-up stays at least one iteration (the old rounding to epochs merged them)."""
    recipe = get_recipe(name).for_arch(arch)
    schedule = make_schedule(recipe.replace(epochs=epochs), arch, CIFAR_TRAIN)
    assert len(schedule.milestones) == len(recipe.milestones) and not schedule.lost
    assert (schedule.warmup_iterations > 0) == (recipe.warmup_length > 0)
    final = schedule.lr_at(schedule.total_iterations - 1)
    assert final == pytest.approx(recipe.lr * recipe.gamma ** len(recipe.milestones))


def test_a_run_too_short_for_its_milestones_says_so():
    schedule = make_schedule(get_recipe("seed").replace(epochs=1), "preact_resnet110", 64)  # one iteration
    assert schedule.total_iterations == 1 and schedule.milestones == ()
    assert len(schedule.lost) == 2 and all("milestone" in line for line in schedule.lost)
    assert schedule.as_dict()["lost"] == list(schedule.lost)


def test_two_epoch_run_keeps_both_decays():
    schedule = make_schedule(get_recipe("seed").replace(epochs=2), "preact_resnet20", 5000)
    assert schedule.milestones == (round(0.8 * 79), round(1.2 * 79))


def _role(model, name: str) -> str:
    """A parameter's role, written from Lasagne's tags: a conv or dense layer's W and b, batch
    norm's gamma and beta (BatchNorm2d's weight and bias)."""
    module, _, attr = name.rpartition(".")
    batch_norm = isinstance(model.get_submodule(module), torch.nn.BatchNorm2d)
    return {("weight", False): "W", ("bias", False): "b", ("weight", True): "gamma", ("bias", True): "beta"}[
        attr, batch_norm]


# What each scope decays: "lasagne" as lasagne.regularization.regularize_layer_params collects it, the
# parameters tagged regularizable=True: W (conv.py, dense.py add b with regularizable=False) and
# BatchNormLayer's gamma (normalization.py: beta, mean, inv_std regularizable=False).
SCOPE_DECAYS = {"all": {"W", "b", "gamma", "beta"}, "weights": {"W"}, "lasagne": {"W", "gamma"}}


@pytest.mark.parametrize("scope", SCOPE_DECAYS)
def test_weight_decay_applies_only_where_the_scope_says(scope):
    torch.manual_seed(0)
    model = build_model("preact_resnet20", layer_defaults="lasagne")  # a bias on each unit's last conv too
    for p in model.parameters():  # non-zero BN shift and biases, so decay would show
        torch.nn.init.normal_(p)
    recipe = get_recipe("seed").replace(weight_decay=0.1, weight_decay_on=scope, momentum=0.0, nesterov=False)
    optimizer = make_optimizer(model, recipe, Speedups(False, False, False))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert {_role(model, name) for name in before} == SCOPE_DECAYS["all"]
    for name, p in model.named_parameters():
        decayed = _role(model, name) in SCOPE_DECAYS[scope]
        expected = before[name] * (1 - recipe.lr * 0.1) if decayed else before[name]
        torch.testing.assert_close(p.detach(), expected, msg=name)


def test_a_parameter_without_a_role_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.register_parameter("scale", torch.nn.Parameter(torch.ones(1)))
    with pytest.raises(TypeError, match="Sequential.scale has no weight-decay role"):
        make_optimizer(model, get_recipe("seed"), Speedups(False, False, False))


def test_each_recipe_keeps_its_weight_decay_scope():
    """Only the seed's code decays Lasagne's scope. A scope's name is part of the experiment key
    (records store it), so seed_code runs made while it decayed "weights" stay another experiment."""
    assert {name: recipe.weight_decay_on for name, recipe in RECIPES.items()} == {
        "seed": "all", "seed_code": "lasagne", "seed_code_2016_04": "lasagne", "he2016": "all", "wrn2016": "all"}
    config = TrainConfig(arch="preact_resnet110", recipe="seed_code")
    assert config.experiment_key()["weight_decay_on"] == "lasagne"
    assert config.experiment_key() != TrainConfig(arch="preact_resnet110", recipe="seed_code",
                                                  weight_decay_on="weights").experiment_key()


@pytest.mark.parametrize("recipe_name", ["seed_code", "seed_code_2016_04"])
def test_seed_code_step_decays_every_bn_gamma_and_no_beta_nor_bias(recipe_name):
    """One step of the network as `train` builds it, at a large weight decay against the same step
    at none, from the same state and batch: every W and every BN gamma moves by exactly the decay's
    share of Nesterov's first step, lr (1 + momentum) wd p; no bias and no BN beta moves at all."""
    config = TrainConfig(arch="preact_resnet20", recipe=recipe_name)
    recipe = config.resolved_recipe()
    torch.manual_seed(0)
    start = build_model(config.arch, **config.model_options())
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    after = {}
    for decay in (0.0, 0.5):
        model = copy.deepcopy(start)
        optimizer = make_optimizer(model, recipe.replace(weight_decay=decay), Speedups(False, False, False))
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        after[decay] = dict(model.named_parameters())
    roles = {name: _role(start, name) for name, _ in start.named_parameters()}
    counts = {role: list(roles.values()).count(role) for role in SCOPE_DECAYS["all"]}
    assert counts["gamma"] == counts["beta"] == sum(isinstance(m, torch.nn.BatchNorm2d) for m in start.modules())
    assert counts["b"] > 1  # the classifier's bias and each unit's last convolution's (Lasagne's layers)
    for name, p in start.named_parameters():
        moved, alone = after[0.5][name].detach(), after[0.0][name].detach()
        if roles[name] in ("W", "gamma"):
            assert not torch.equal(moved, alone), name
            torch.testing.assert_close(alone - moved, recipe.lr * (1 + recipe.momentum) * 0.5 * p.detach(),
                                       rtol=1e-4, atol=1e-6, msg=name)
        else:
            assert torch.equal(moved, alone), name


def test_recipe_command_prints_every_resolved_value(capsys):
    assert main(["recipe", "he2016", "--arch", "preact_resnet164", "--json"]) == 0
    resolved = __import__("json").loads(capsys.readouterr().out)
    assert resolved["batch_size"] == 128 and resolved["bn_batch"] == 64 and resolved["gamma"] == 0.1
    assert resolved["milestones_iterations"] == [32_000, 48_000] and resolved["warmup_iterations"] == 400
    assert (resolved["shortcut"], resolved["bottleneck_stride"], resolved["dropout"]) == ("projection", "1x1", None)
    assert (resolved["weight_decay_on"], resolved["normalization"], resolved["val_size"]) == (
        "all", "per_pixel_mean", 0)
    assert resolved["weight_decay_reaches"] == "every parameter"
    assert main(["recipe", "seed_code", "--arch", "preact_resnet110", "--json"]) == 0
    resolved = __import__("json").loads(capsys.readouterr().out)
    assert (resolved["weight_decay_on"], resolved["weight_decay_reaches"]) == (
        "lasagne", "conv and linear weights, batch norm's gamma; not conv and linear biases, batch norm's beta")
    assert main(["recipe", "seed_code", "--arch", "seed_wrn_n2_k4", "--train-size", "45000"]) == 0
    text = capsys.readouterr().out
    assert "input_projection" in text and "per_batch" in text and "0.3" in text
    assert main(["recipe", "nope", "--arch", "preact_resnet20"]) == 2
    assert "recipe='nope'" in capsys.readouterr().err


def test_recipe_command_prints_the_code_state_of_the_seeds_resnet110(capsys):
    assert main(["recipe", "seed_code_2016_04", "--arch", "preact_resnet110", "--json"]) == 0
    resolved = __import__("json").loads(capsys.readouterr().out)
    assert (resolved["batch_size"], resolved["lr"], resolved["milestones"], resolved["gamma"]) == (
        32, 0.01, [80, 120], 0.1)
    assert (resolved["train_size"], resolved["iterations_per_epoch"], resolved["warmup_iterations"]) == (
        45_000, 1407, 0)
    assert (resolved["momentum_form"], resolved["normalization"], resolved["augmentation"]) == (
        "lasagne", "range_0_1", "per_batch")
    assert (resolved["shortcut"], resolved["preact_stage1"], resolved["layer_defaults"]) == (
        "input_projection", "first_unit", "lasagne")
