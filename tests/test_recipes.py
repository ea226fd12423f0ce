"""The presets as the papers state them, and the learning rate as a pure function of the step."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reproresnet.recipes import RECIPES, ConfigError, get_recipe, make_schedule

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


def test_he2016_recipe_in_iterations():
    recipe = get_recipe("he2016")
    schedule = make_schedule(recipe, "preact_resnet110", CIFAR_TRAIN)
    assert schedule.total_iterations == 64_000
    assert schedule.iterations_per_epoch == 391 and schedule.epochs == 164  # last epoch stops at 64k
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01,
                48_000: 0.001, 63_999: 0.001}
    for iteration, lr in expected.items():
        assert schedule.lr_at(iteration) == pytest.approx(lr), iteration
    assert make_schedule(recipe, "preact_resnet164", CIFAR_TRAIN).lr_at(0) == pytest.approx(0.1)


def test_wrn2016_recipe():
    recipe = get_recipe("wrn2016")
    assert (recipe.batch_size, recipe.weight_decay, recipe.gamma) == (128, 5e-4, 0.2)
    schedule = make_schedule(recipe, "wrn_16_4", CIFAR_TRAIN)
    expected = {0: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 159: 0.004, 160: 0.0008, 199: 0.0008}
    for epoch, lr in expected.items():
        assert lr_at_epoch(schedule, epoch) == pytest.approx(lr), epoch


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
    ({"milestones": (120, 80)}, "milestones=(120, 80)"),
    ({"milestones": (80, 250)}, "milestones=(80, 250)"),
    ({"epochs": 10, "milestones": (5, 10)}, "milestones=(5, 10)"),
    ({"momentum_typo": 0.9}, "momentum_typo"),
])
def test_bad_overrides_name_the_value(overrides, bad):
    with pytest.raises(ConfigError) as error:
        get_recipe("seed").replace(**overrides)
    assert bad in str(error.value) and "expected" in str(error.value)


def test_unknown_recipe_lists_the_presets():
    with pytest.raises(ConfigError, match="seed.*he2016.*wrn2016"):
        get_recipe("he2015")


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
        get_recipe("seed").replace(epochs=epochs, milestones=milestones)
    except ConfigError as error:
        assert not valid, error
    else:
        assert valid
