"""The training loop does what the recipe says: optimizer, schedule, evaluation, reported numbers.

Runs are built the way `train` builds them (`science_runs.run_for`), on the tiny CIFAR
fixture of conftest.py; expectations are computed by hand from the recipe's fields and
from the definitions (SGD with momentum as PyTorch and Torch7 state it, cross-entropy,
error rate), never by calling the function under test.
"""

import dataclasses
import math

from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproresnet import engine, records, train as training
from reproresnet.architectures import ArchSpec
from reproresnet.models import create
from reproresnet.recipes import RECIPES
from science_runs import run_for


# ---------------------------------------------------------------- optimizer

def warms_up(recipe, arch) -> bool:
    """The preset's own word on which networks warm up: None names every network."""
    return recipe.warmup_length > 0 and (recipe.warmup_archs is None or arch in recipe.warmup_archs)


def hand_lr(recipe, arch, iteration, per_epoch):
    """The recipe's schedule read by hand: warm-up lr for the networks it names, then lr times
    gamma for every milestone reached; epoch units are converted with the epoch's steps."""
    scale = per_epoch if recipe.unit == "epoch" else 1
    if warms_up(recipe, arch) and iteration < recipe.warmup_length * scale:
        return recipe.warmup_lr
    return recipe.lr * recipe.gamma ** sum(iteration >= m * scale for m in recipe.milestones)


def probes(recipe, per_epoch):
    """Epochs around every change of the learning rate, and the first and last."""
    scale = per_epoch if recipe.unit == "epoch" else 1
    edges = [0, recipe.length * scale - 1]
    for position in (*recipe.milestones, recipe.warmup_length):
        edges += [position * scale - 1, position * scale]
    return sorted({max(0, iteration) // per_epoch for iteration in edges})


def recorded_lrs(run, epochs):
    """The lr the optimizer holds at each step of those epochs (the step itself is skipped)."""
    seen = {}

    def step(model, optimizer, images, labels, precision):
        seen.setdefault("lrs", []).append({group["lr"] for group in optimizer.param_groups})
        return torch.zeros(()), torch.zeros((), dtype=torch.long)

    lrs = {}
    for epoch in epochs:
        seen.clear()
        with mock.patch.object(engine, "train_step", step):  # watch the steps, skip the SGD
            training.train_one_epoch(run, epoch, progress=False)
        first = epoch * run.schedule.iterations_per_epoch
        for index, groups in enumerate(seen["lrs"]):
            assert len(groups) == 1, "every parameter group must get the same lr"
            lrs[first + index] = groups.pop()
    return lrs


# A basic-block net for every preset, and a network the preset warms up alone where it names some.
PRESET_ARCHS = sorted({(name, arch) for name, recipe in RECIPES.items()
                       for arch in ("preact_resnet20", *(recipe.warmup_archs or ())[:1])})


@pytest.mark.parametrize("recipe_name, arch", PRESET_ARCHS)
def test_every_step_uses_the_recipe_learning_rate(tmp_path, cifar_root, monkeypatch, recipe_name, arch):
    """Protects the schedule reaching the optimizer: warm-up, every milestone, gamma, per-epoch units."""
    # batch 4 over the 15 fixture images: 4 steps an epoch, so epoch units must be converted
    run = run_for(tmp_path, cifar_root, monkeypatch, arch=arch, recipe=recipe_name, batch_size=4)
    recipe = RECIPES[recipe_name]
    assert run.schedule.iterations_per_epoch == 4
    lrs = recorded_lrs(run, probes(recipe, 4))
    assert len(lrs) >= 8
    for iteration, lr in lrs.items():
        assert lr == pytest.approx(hand_lr(recipe, arch, iteration, 4), rel=1e-12), iteration
    assert len(set(lrs.values())) >= len(recipe.milestones) + 1  # the probes did cross every milestone


@pytest.mark.parametrize("recipe_name", sorted(RECIPES))
def test_built_optimizer_carries_the_recipe(tmp_path, cifar_root, monkeypatch, recipe_name):
    """Protects momentum, Nesterov, weight decay and its scope reaching the optimizer of a run."""
    run = run_for(tmp_path, cifar_root, monkeypatch, recipe=recipe_name)
    recipe = RECIPES[recipe_name]
    assert isinstance(run.optimizer, torch.optim.SGD)
    for group in run.optimizer.param_groups:
        assert group["momentum"] == recipe.momentum
        assert group["nesterov"] is recipe.nesterov
        assert group["dampening"] == 0
    in_optimizer = [p for group in run.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in in_optimizer} == {id(p) for p in run.model.parameters()}
    assert len(in_optimizer) == len(list(run.model.parameters()))
    decay = {id(p): group["weight_decay"] for group in run.optimizer.param_groups for p in group["params"]}
    assert decay == {id(p): hand_decay(recipe, run.model, p) for p in run.model.parameters()}


def test_weight_decay_override_reaches_the_optimizer(tmp_path, cifar_root, monkeypatch):
    """Protects a --weight-decay override from being dropped on its way to the optimizer."""
    run = run_for(tmp_path, cifar_root, monkeypatch, recipe="seed", weight_decay=3e-3)
    assert {group["weight_decay"] for group in run.optimizer.param_groups} == {3e-3}


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.5, False, 3e-3), (0.7, True, 0.0)])
def test_make_optimizer_takes_every_value_from_the_recipe(momentum, nesterov, weight_decay):
    """Protects against hard-coded optimizer values that happen to equal the presets' (0.9, True, 1e-4)."""
    model = nn.Linear(3, 2)
    recipe = RECIPES["seed"].replace(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, lr=0.37)
    speedups = engine.Speedups(False, False, False)
    [group] = engine.make_optimizer(model, recipe, speedups).param_groups
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == \
        (0.37, momentum, nesterov, weight_decay)


def hand_decay(recipe, model, parameter) -> float:
    """Weight decay by the recipe's scope: "all" decays every parameter (the authors' Torch code,
    PyTorch's default); "weights" only conv and linear weights; "lasagne" what Lasagne's
    regularize_layer_params collects, the parameters tagged regularizable=True: a layer's W (its b
    is added with regularizable=False) and BatchNormLayer's gamma (beta is not regularizable)."""
    if recipe.weight_decay_on == "all":
        return recipe.weight_decay
    decayed = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if recipe.weight_decay_on == "lasagne":
        decayed += [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return recipe.weight_decay if any(parameter is p for p in decayed) else 0.0


def hand_sgd(params, grads_per_step, lr, momentum, nesterov, weight_decay):
    """SGD with momentum as PyTorch and Torch7's optim.sgd define it (dampening 0):
    d = g + wd p;  b = d on the first step, else momentum b + d;  p -= lr (d + momentum b) with
    Nesterov, p -= lr b without."""
    params = [p.clone() for p in params]
    buffers = [None] * len(params)
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + weight_decay[i] * p
            buffers[i] = d.clone() if buffers[i] is None else momentum * buffers[i] + d
            params[i] = p - lr * (d + momentum * buffers[i] if nesterov else buffers[i])
    return params


@pytest.mark.parametrize("recipe_name", sorted(RECIPES))
def test_one_step_moves_each_parameter_as_sgd_prescribes(tmp_path, cifar_root, monkeypatch, recipe_name):
    """Protects the update itself: two steps on known gradients move every parameter by exactly
    what SGD with the recipe's lr, momentum, Nesterov flag and weight decay gives."""
    run = run_for(tmp_path, cifar_root, monkeypatch, recipe=recipe_name)
    recipe = RECIPES[recipe_name]
    params = list(run.model.parameters())
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(2)]
    expected = hand_sgd([p.detach() for p in params], grads, recipe.lr, recipe.momentum, recipe.nesterov,
                        [hand_decay(recipe, run.model, p) for p in params])
    assert {group["lr"] for group in run.optimizer.param_groups} == {recipe.lr}
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        run.optimizer.step()
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- evaluation

def randomise_bn_(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = 0.2 * torch.randn(m.num_features, generator=g)
            m.running_var = 0.5 + torch.rand(m.num_features, generator=g)
            m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
    return model


@pytest.fixture
def wide_run(tmp_path, cifar_root, monkeypatch):
    """A run whose network is a small wide ResNet with dropout 0.3, in training mode, evaluated
    in batches of 3 (so the loss is summed across batches)."""
    run = run_for(tmp_path, cifar_root, monkeypatch, eval_batch_size=3)
    torch.manual_seed(0)
    model = randomise_bn_(create(ArchSpec("wide", "basic", 10, 1), dropout=0.3)).train()
    return dataclasses.replace(run, model=model)


def hand_evaluation(model, data, train_images):
    """Mean cross-entropy and error (%) of the network in inference mode (running BN moments,
    no dropout) on the images minus the training split's mean image, unaugmented."""
    mean_image = train_images.double().mean(0) / 255
    inputs = (data.images.double() / 255 - mean_image).float()
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
    model.train()
    loss = F.cross_entropy(logits, data.labels).item()
    error = 100.0 * (logits.argmax(1) != data.labels).double().mean().item()
    return loss, error


def test_evaluation_is_inference_on_the_unaugmented_images(wide_run):
    """Protects the reported test error: evaluation is the eval-mode network (running BN statistics,
    no dropout) on normalised, unaugmented test images, loss averaged over every image."""
    test = wide_run.runs[0].splits.test
    loss, error = training.evaluate(wide_run, [test])[0]
    want_loss, want_error = hand_evaluation(wide_run.model, test, wide_run.runs[0].splits.train.images)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert error == pytest.approx(want_error)


def test_evaluation_error_counts_images_whose_top_class_is_not_the_label(wide_run):
    """Protects the error rate: labels set to the network's own top class for half the images give 50%."""
    test = wide_run.runs[0].splits.test
    mean_image = wide_run.runs[0].splits.train.images.double().mean(0) / 255
    wide_run.model.eval()
    with torch.no_grad():
        top = wide_run.model((test.images.double() / 255 - mean_image).float()).argmax(1)
    wide_run.model.train()
    wrong = torch.arange(len(top)) % 2 == 0
    labels = torch.where(wrong, (top + 1) % 10, top)
    _, error = training.evaluate(wide_run, [dataclasses.replace(test, labels=labels)])[0]
    assert error == pytest.approx(100.0 * wrong.double().mean().item())


def test_evaluation_changes_nothing_and_repeats_exactly(wide_run):
    """Protects the network from evaluation: every BN running statistic and parameter unchanged,
    training mode restored, and two evaluations give the same numbers (no dropout)."""
    before = {name: tensor.clone() for name, tensor in wide_run.model.state_dict().items()}
    first = training.evaluate(wide_run, [wide_run.runs[0].splits.test])
    second = training.evaluate(wide_run, [wide_run.runs[0].splits.test])
    assert first == second
    after = wide_run.model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), f"evaluation changed {name}"
    assert wide_run.model.training


def test_evaluation_of_a_network_in_eval_mode_leaves_it_in_eval_mode(wide_run):
    """Protects the mode a caller set: evaluate restores it rather than forcing training mode."""
    wide_run.model.eval()
    training.evaluate(wide_run, [wide_run.runs[0].splits.test])
    assert not wide_run.model.training


# ---------------------------------------------------------------- the reported numbers

def epoch_rows():
    """Five epochs where the final epoch (5), the best-validation epoch (2) and the best-test
    epoch (4) all differ; epoch 3 ties the best validation error (the first one counts);
    epoch 1 is slow (it compiles)."""
    val = [9.0, 4.0, 4.0, 6.0, 7.0]
    test = [8.0, 6.5, 7.0, 5.0, 6.0]
    seconds = [100.0, 3.0, 1.0, 2.0, 50.0]
    return [{"epoch": i + 1, "val_error": v, "test_error": t, "seconds": s, "images_per_second": 1000.0 / s}
            for i, (v, t, s) in enumerate(zip(val, test, seconds))]


def test_summary_with_validation_reports_the_best_validation_epoch():
    """Protects the seed's protocol: the test error of the first best-validation epoch, not the final
    or best-test one."""
    summary = records.summarize(epoch_rows(), val_size=5000)
    assert (summary["epoch"], summary["test_error"], summary["selected_by"]) == (2, 6.5, "best_validation")


def test_summary_without_validation_reports_the_final_epoch():
    """Protects He et al.'s protocol: the final epoch's test error, never the best test error."""
    summary = records.summarize(epoch_rows(), val_size=0)
    assert (summary["epoch"], summary["test_error"], summary["selected_by"]) == (5, 6.0, "final_epoch")


def test_summary_speed_leaves_out_the_first_epoch():
    """Protects the reported speed: the median over epochs 2.. (the first one compiles and warms up)."""
    summary = records.summarize(epoch_rows(), val_size=0)
    assert summary["seconds_per_epoch"] == pytest.approx(2.5)          # median of 3, 1, 2, 50
    assert summary["images_per_second"] == pytest.approx((1000 / 3 + 1000 / 2) / 2)
    assert not math.isclose(summary["seconds_per_epoch"], 3.0)          # what the first epoch would give


# ---------------------------------------------------------------- momentum at a change of learning rate

def lasagne_nesterov(params, grads_per_step, lrs, momentum, weight_decay):
    """Lasagne's nesterov_momentum, from lasagne/updates.py (sgd, then apply_nesterov_momentum):
    velocity := momentum * velocity - learning_rate * gradient;
    param := param + momentum * velocity - learning_rate * gradient. The gradient is that of the loss
    with the seed's L2 term (1e-4 * sum w^2 adds 2e-4 * w: `weight_decay`); velocity starts at zero."""
    params, velocity = [p.clone() for p in params], [torch.zeros_like(p) for p in params]
    for lr, grads in zip(lrs, grads_per_step):
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + weight_decay[i] * p
            velocity[i] = momentum * velocity[i] - lr * d
            params[i] = p + momentum * velocity[i] - lr * d
    return params


def torch_sgd_reset_at_each_drop(params, grads_per_step, lrs, momentum, weight_decay):
    """Torch's optim.sgd with Nesterov (dampening 0): dfdx = g + wd p; state.dfdx = dfdx on a state's
    first call, else momentum state.dfdx + dfdx; p -= lr (dfdx + momentum state.dfdx). The WRN
    authors' train.lua gives it a fresh state (`state.optim = tablex.deepcopy(opt)`) where the lr drops."""
    params, state = [p.clone() for p in params], [None] * len(params)
    for step, (lr, grads) in enumerate(zip(lrs, grads_per_step)):
        if step and lr != lrs[step - 1]:
            state = [None] * len(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + weight_decay[i] * p
            state[i] = d.clone() if state[i] is None else momentum * state[i] + d
            params[i] = p - lr * (d + momentum * state[i])
    return params


def pytorch_nesterov(params, grads_per_step, lrs, momentum, weight_decay):
    """PyTorch's SGD (hand_sgd) with the learning rate of each step: b = momentum b + d, kept across
    every change of lr; p -= lr (d + momentum b)."""
    params, buffers = [p.clone() for p in params], [torch.zeros_like(p) for p in params]
    for lr, grads in zip(lrs, grads_per_step):
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + weight_decay[i] * p
            buffers[i] = momentum * buffers[i] + d
            params[i] = p - lr * (d + momentum * buffers[i])
    return params


def train_on_known_gradients(run, epochs, grads):
    """Whole epochs of `train_one_epoch` in which each step takes the next of `grads` as its gradient."""
    def step(model, optimizer, images, labels, precision):
        for p, g in zip(model.parameters(), next(grads)):
            p.grad = g.clone()
        optimizer.step()
        return torch.zeros(()), torch.zeros((), dtype=torch.long)

    with mock.patch.object(engine, "train_step", step):
        for epoch in epochs:
            training.train_one_epoch(run, epoch, progress=False)


@pytest.mark.parametrize("recipe_name, rule", [("seed_code", lasagne_nesterov),
                                               ("wrn2016", torch_sgd_reset_at_each_drop)])
def test_momentum_across_learning_rate_changes_follows_the_recipes_code(tmp_path, cifar_root, monkeypatch,
                                                                        recipe_name, rule):
    """Protects the momentum form: over a warm-up (0.01 -> 0.1) and decays, the loop's SGD moves every
    parameter as the update rule written from the source's own code, also when the run is resumed
    from a checkpoint just before a decay; PyTorch's rule, which keeps its buffer, would not."""
    epochs = 10  # 4 steps an epoch; seed_code: warm-up 2 steps, decays at 16 and 24; wrn2016: 12, 24, 32
    settings = dict(recipe=recipe_name, batch_size=4, epochs=epochs)
    run = run_for(tmp_path / "whole", cifar_root, monkeypatch, **settings)
    recipe = RECIPES[recipe_name].replace(epochs=epochs)
    steps = epochs * 4
    lrs = [hand_lr(recipe, "preact_resnet20", i, 4) for i in range(steps)]
    assert len(set(lrs)) >= 3
    params = list(run.model.parameters())
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(steps)]
    decay = [hand_decay(recipe, run.model, p) for p in params]
    expected = rule([p.detach() for p in params], grads, lrs, recipe.momentum, decay)
    kept = pytorch_nesterov([p.detach() for p in params], grads, lrs, recipe.momentum, decay)
    assert max((a - b).abs().max().item() for a, b in zip(kept, expected)) > 1e-3  # the forms differ here
    train_on_known_gradients(run, range(epochs), iter(grads))
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-4, atol=1e-5)  # float32 over 40 steps
    # Resumed: epochs 0-3 in one run, its model and optimizer state loaded into a fresh one for 4-9.
    first = run_for(tmp_path / "first", cifar_root, monkeypatch, **settings)
    stream = iter(grads)
    train_on_known_gradients(first, range(4), stream)
    second = run_for(tmp_path / "second", cifar_root, monkeypatch, **settings)
    second.model.load_state_dict(first.model.state_dict())
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    train_on_known_gradients(second, range(4, epochs), stream)
    for p, want in zip(second.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-4, atol=1e-5)  # float32 over 40 steps


def test_a_training_step_descends_the_mean_cross_entropy():
    """Protects the loss: the plain cross-entropy of the softmax, averaged over the batch (no label
    smoothing, no sum), as every source trains with it. One step of SGD with lr 1 and no momentum
    moves a linear classifier by minus the hand-derived gradient (softmax - one-hot)^T x / n."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, labels = torch.randn(6, 3, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    model = model.double()
    weight, bias = (t.detach().clone() for t in model[1].parameters())
    logits = x.flatten(1) @ weight.T + bias
    probabilities = logits.softmax(1)
    hand_loss = -probabilities[torch.arange(6), labels].log().mean()
    residual = (probabilities - F.one_hot(labels, 5).double()) / 6
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss_sum, errors = engine.train_step(model, optimizer, x, labels.unsqueeze(0),  # one network: labels [1, B]
                                         engine.Speedups(False, False, False))
    assert loss_sum.item() == pytest.approx(6 * hand_loss.item(), rel=1e-12)
    assert errors.item() == (logits.argmax(1) != labels).sum().item()
    torch.testing.assert_close(model[1].weight.detach(), weight - residual.T @ x.flatten(1))
    torch.testing.assert_close(model[1].bias.detach(), bias - residual.sum(0))


def test_each_recipes_padding_reaches_the_training_batches(tmp_path, cifar_root, monkeypatch):
    """Protects reflection padding (wrn2016) from stopping at the recipe: the loop's batches are padded
    as the recipe says."""
    for recipe_name, padding in (("wrn2016", "reflect"), ("seed", "zero")):
        run = run_for(tmp_path / recipe_name, cifar_root, monkeypatch, recipe=recipe_name, batch_size=4)
        no_step = lambda *args: (torch.zeros(()), torch.zeros((), dtype=torch.long))  # noqa: E731
        with mock.patch.object(training, "train_batches", wraps=training.train_batches) as batches, \
                mock.patch.object(engine, "train_step", no_step):
            training.train_one_epoch(run, 0, progress=False)
        assert batches.call_args.kwargs["padding"] == padding


def test_evaluation_runs_in_fp32_without_tf32_and_restores_the_settings(wide_run, monkeypatch):
    """Protects "evaluation in fp32": cuDNN convolutions and matmuls may not use TF32 while the network
    evaluates (on CUDA cuDNN allows it by default), and the caller's settings come back afterwards,
    also when evaluation fails."""
    def flags():
        return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32

    seen, forward, saved = [], wide_run.model.forward, flags()

    def watched(images):
        seen.append(flags())
        return forward(images)

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        monkeypatch.setattr(wide_run.model, "forward", watched)
        training.evaluate(wide_run, [wide_run.runs[0].splits.test])
        assert seen and set(seen) == {(False, False)}
        assert flags() == (True, True)
        monkeypatch.setattr(wide_run.model, "forward", mock.Mock(side_effect=RuntimeError("out of memory")))
        with pytest.raises(RuntimeError):
            training.evaluate(wide_run, [wide_run.runs[0].splits.test])
        assert flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
