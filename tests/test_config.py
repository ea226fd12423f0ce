"""Settings are checked before anything runs, with a message naming the bad value."""

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reproresnet.config import ConfigError, TrainConfig, cpu_threads, differences, recorded_key, select_device


def test_defaults_are_valid_and_round_trip_through_a_dict():
    config = TrainConfig(milestones=[1, 2], epochs=3)
    assert config.milestones == (1, 2)
    assert TrainConfig.from_dict(config.as_dict()) == config


@pytest.mark.parametrize("settings, named", [
    ({"arch": "resnet111"}, "resnet111"),
    ({"recipe": "fast"}, "recipe='fast'"),
    ({"epochs": 0}, "epochs=0"),
    ({"epochs": -1}, "epochs=-1"),
    ({"epochs": "3"}, "epochs='3'"),
    ({"epochs": 2.5}, "epochs=2.5"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"lr": -0.1}, "lr=-0.1"),
    ({"lr": "0.1"}, "lr='0.1'"),
    ({"weight_decay": -1.0}, "weight_decay=-1.0"),
    ({"weight_decay": float("inf")}, "weight_decay=inf"),
    ({"epochs": 10, "milestones": [8, 4]}, "milestones=(8, 4)"),
    ({"epochs": 10, "milestones": [4, 12]}, "milestones=(4, 12)"),
    ({"dataset": "imagenet"}, "dataset='imagenet'"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"normalization": "zca"}, "normalization='zca'"),
    ({"augmentation": "cutout"}, "augmentation='cutout'"),
    ({"limit_train": 0}, "limit_train=0"),
    ({"limit_test": -3}, "limit_test=-3"),
    ({"val_size": -1}, "val_size=-1"),
    ({"val_size": -5}, "val_size=-5"),
    ({"dropout": 1.5}, "dropout=1.5"),
    ({"seed": "zero"}, "seed='zero'"),
    ({"bf16": "yes"}, "bf16='yes'"),
    ({"weight_decay_on": "bn"}, "weight_decay_on='bn'"),
    ({"bn_batch": -1}, "bn_batch"),
    ({"val_size": 2.5}, "val_size=2.5"),
    ({"arch": "preact_resnet20", "bottleneck_stride": "3x3"}, "bottleneck_stride"),
    ({"arch": "preact_resnet110", "shortcut": "option_c"}, "option_c"),
])
def test_bad_settings_are_refused_with_their_value(settings, named):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**settings)
    assert named in str(error.value)


@pytest.mark.parametrize("name, value, accepted", [
    ("normalization", "zca", "'per_pixel_mean', 'per_pixel_mean_0_255', 'range_0_1', 'per_channel', 'gcn_zca'"),
    ("augmentation", "random", "'per_image', 'per_batch', 'none'"),
    ("padding", "edge", "'zero', 'reflect'"),
    ("dataset", "cifar", "'cifar10', 'cifar100', 'folder:PATH', 'synthetic'"),
    ("dataset", "folder:", "'cifar10', 'cifar100', 'folder:PATH', 'synthetic'"),
    ("dataset", "CIFAR10", "'cifar10', 'cifar100', 'folder:PATH', 'synthetic'"),
])
def test_a_preprocessing_or_data_setting_names_what_it_accepts(name, value, accepted):
    """Checked here, once: the data pipeline trusts what the config passed."""
    with pytest.raises(ConfigError, match=f"{name}={value!r} is not valid: expected one of \\[{accepted}\\]"):
        TrainConfig(**{name: value})


def test_the_experiment_key_holds_what_a_run_computes_however_it_was_asked_for():
    key = TrainConfig(arch="preact_resnet164").experiment_key()
    # the recipe's values, given or left to it, are one experiment
    assert TrainConfig(arch="preact_resnet164", epochs=200, batch_size=64, shortcut="projection",
                       bottleneck_stride="1x1").experiment_key() == key
    # where and how fast it runs, and the seed, are not in it
    assert TrainConfig(arch="preact_resnet164", seed=3, out="elsewhere", device="cpu", engine="eager", threads=1,
                       channels_last=True, compile=False, eval_batch_size=10, data_dir="d").experiment_key() == key
    assert "seed" not in key and "engine" not in key and "out" not in key
    # what it computes is
    for changed in ({"epochs": 100}, {"lr": 0.05}, {"bf16": True}, {"shortcut": "input_projection"},
                    {"dataset": "synthetic"}, {"limit_train": 100}, {"arch": "preact_resnet110"}):
        assert TrainConfig(**{"arch": "preact_resnet164", **changed}).experiment_key() != key, changed


def test_a_recorded_config_is_compared_by_its_effective_values_and_its_seed():
    recorded = TrainConfig(epochs=200, seed=1).as_dict()
    assert differences(recorded, TrainConfig(seed=1, device="cpu")) == {}
    assert differences(recorded, TrainConfig(seed=2)) == {"seed": (1, 2)}
    assert differences(recorded, TrainConfig(seed=1, lr=0.05)) == {"lr": (0.1, 0.05)}
    # a config this version cannot read is compared as it was written
    foreign = {**recorded, "retired_setting": 1}
    assert recorded_key(foreign) == {**{k: v for k, v in recorded.items() if k in TrainConfig().experiment_key()},
                                     "retired_setting": 1}


def test_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="unknown setting.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3})


def test_recipe_owned_values_stay_none_until_resolved():
    config = TrainConfig(recipe="he2016")
    assert (config.batch_size, config.normalization, config.val_size, config.bn_batch) == (None,) * 4
    assert config.as_dict()["batch_size"] is None  # the record keeps what was asked ...
    assert config.resolved_recipe().batch_size == 128  # ... and the recipe what it resolved to


def test_config_error_lives_in_config():
    from reproresnet import cli, train
    assert train.ConfigError is ConfigError and cli.ConfigError is ConfigError


def test_network_options_reach_the_model_only_when_set():
    assert TrainConfig().model_options() == {}
    config = TrainConfig(arch="preact_resnet164", bottleneck_stride="3x3", shortcut="input_projection")
    assert config.model_options() == {"bottleneck_stride": "3x3", "shortcut": "input_projection"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="device='cuda' but no CUDA GPU is visible"):
        select_device("cuda")
    assert select_device("auto").type == "cpu"


@given(st.dictionaries(st.sampled_from(["epochs", "batch_size", "lr", "weight_decay", "seed",
                                        "limit_train", "val_size"]),
                       st.one_of(st.integers(-3, 300), st.floats(allow_nan=True), st.text(max_size=3),
                                 st.none(), st.booleans()),
                       max_size=4))
def test_any_settings_either_validate_or_raise_config_error(settings):
    """No combination of values crashes with anything but a ConfigError, and what is accepted
    yields a recipe whose values are the ones given."""
    try:
        config = TrainConfig(**settings)
    except ConfigError as error:
        assert "expected" in str(error)
        return
    recipe = config.resolved_recipe()
    for field in ("batch_size", "lr", "weight_decay"):
        if settings.get(field) is not None:
            assert getattr(recipe, field) == settings[field]
    if settings.get("epochs") is not None:
        assert recipe.length == settings["epochs"]


def test_train_notebook_takes_every_setting_and_leaves_the_recipes_to_the_recipe():
    """Every TrainConfig field can be passed through papermill, and a recipe-owned value is
    None in the parameters cell, so that no notebook default overrides a recipe."""
    import dataclasses
    from pathlib import Path

    import nbformat

    from reproresnet.config import RECIPE_OWNED

    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "train.ipynb", as_version=4)
    names = {}
    for line in nb.cells[1].source.splitlines():
        name, _, value = line.partition("#")[0].partition("=")
        if value.strip():
            names[name.strip()] = eval(value, {})
    fields = {field.name for field in dataclasses.fields(TrainConfig)} - {"out"}
    assert fields <= set(names), sorted(fields - set(names))
    assert all(names[name] is None for name in RECIPE_OWNED if name != "epochs"), \
        {name: names[name] for name in RECIPE_OWNED if names[name] is not None}


@pytest.fixture
def four_cores(monkeypatch):
    """A 4-core machine at load `load[0]`, without OMP_NUM_THREADS."""
    load = [0.0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return load


def test_cpu_threads_divide_the_free_cores_among_the_jobs_sharing_them(four_cores, monkeypatch):
    assert cpu_threads() == (4, "4 cores, 1 job(s) sharing them, load 0.0")
    assert cpu_threads(jobs=2)[0] == 2 and cpu_threads(jobs=3)[0] == 1 and cpu_threads(jobs=8)[0] == 1
    four_cores[0] = 2.6  # two cores busy with other work: never more threads than the free ones
    assert cpu_threads()[0] == 2
    four_cores[0] = 9.0
    assert cpu_threads()[0] == 1
    assert cpu_threads(3) == (3, "requested")  # a choice given is kept, whatever the load
    assert cpu_threads(resumed=3) == (3, "as the run last trained")  # a resume keeps its threads
    assert cpu_threads(resumed=8)[0] == 4 and cpu_threads(2, resumed=3)[0] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert cpu_threads() == (4, "OMP_NUM_THREADS")  # capped at the cores
    assert cpu_threads(resumed=3) == (4, "OMP_NUM_THREADS")
    with pytest.raises(ConfigError, match=r"threads=5 is not valid: expected an integer from 1 to 4"):
        cpu_threads(5)
    with pytest.raises(ConfigError, match="threads=0"):
        TrainConfig(threads=0)
