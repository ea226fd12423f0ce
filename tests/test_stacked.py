"""A channel-stacked network computes exactly what its K separate networks compute.

For every network family, in float64 on the CPU, three separately seeded networks are
compared with their stack on each model's own batch: logits (train and eval mode), the
gradient of every parameter, two SGD steps with the recipe's Nesterov momentum and its
weight-decay scope (weights, momentum buffers, BN running statistics, eval logits after
them), to 1e-11 relative (the largest error over a tensor over its largest value). The
stack's state splits into what separate runs would write, bit for bit, and back.
"""

import copy
import io
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproresnet.architectures import ArchSpec
from reproresnet.models import ResNet, build_model, create
from reproresnet.recipes import get_recipe
from reproresnet.stacked import (DIFFERS_FROM_SEPARATE_RUNS, StackedResNet, merge_optimizer_states,
                                 split_optimizer_state, stack_inputs, stacked_loss)
from reproresnet.engine import Speedups, make_optimizer

K, BATCH, SIZE = 3, 8, 8
TOLERANCE = 1e-11
PLAIN = Speedups(channels_last=False, compile=False, fused_optimizer=False)

# Every family at its smallest depth, with each shortcut and batch-norm variant.
FAMILIES = {
    "preact_resnet20": (lambda **o: build_model("preact_resnet20", **o), {}),  # zero-pad shortcuts
    "preact-basic-projection": (partial(create, ArchSpec("preact", "basic", 8, 1)), {"shortcut": "projection"}),
    "preact-basic-input_projection": (partial(create, ArchSpec("preact", "basic", 8, 1)), {"shortcut": "input_projection"}),
    "preact-basic-ghost-bn": (partial(create, ArchSpec("preact", "basic", 8, 1)), {"bn_batch": 4}),
    "preact-bottleneck": (partial(create, ArchSpec("preact", "bottleneck", 11, 1)), {}),
    "preact-bottleneck-3x3-zero_pad": (partial(create, ArchSpec("preact", "bottleneck", 11, 1)),
                                       {"bottleneck_stride": "3x3", "shortcut": "zero_pad"}),
    "resnet20": (lambda **o: build_model("resnet20", **o), {}),  # zero-pad shortcuts
    "original-basic-projection": (partial(create, ArchSpec("original", "basic", 8, 1)), {"shortcut": "projection"}),
    "original-bottleneck-ghost-bn": (partial(create, ArchSpec("original", "bottleneck", 11, 1)), {"bn_batch": 4}),
    "wide": (partial(create, ArchSpec("wide", "basic", 10, 2)), {"dropout": 0.0}),
    "seed_wide": (partial(create, ArchSpec("seed_wide", "basic", 16, 1)), {"dropout": 0.0}),  # conv biases, eps 1e-4
}
SCOPES = {"all": get_recipe("seed"), "lasagne": get_recipe("seed_code"),
          "weights": get_recipe("seed_code").replace(weight_decay_on="weights")}
# Every family with the scopes the recipes use; "weights" (no recipe's) on two families.
SGD_CASES = [(family, scope) for family in FAMILIES for scope in ("all", "lasagne")] + [
    ("preact_resnet20", "weights"), ("seed_wide", "weights")]


def _models(family: str, k: int = K, **options) -> list[ResNet]:
    build, defaults = FAMILIES[family]
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build(**{**defaults, **options}).double())
    return models


def _batches(k: int = K, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each model's own images `[B, 3, H, W]` and the labels `[K, B]`."""
    generator = torch.Generator().manual_seed(seed)
    images = [torch.randn(BATCH, 3, SIZE, SIZE, generator=generator, dtype=torch.float64) for _ in range(k)]
    return images, torch.randint(0, 10, (k, BATCH), generator=generator)


def _relative(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    scale = max(float(b.abs().max()), floor)
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())


def _assert_close(stacked: torch.Tensor, separate: torch.Tensor, what: str, floor: float = 0.0) -> None:
    assert stacked.shape == separate.shape and stacked.dtype == separate.dtype, what
    error = _relative(stacked.detach(), separate.detach(), floor)
    assert error <= TOLERANCE, f"{what}: relative error {error:.1e}"


def _assert_all_close(stacked: dict, separate: dict, what: str) -> None:
    """Each tensor relative to its largest value, or to a thousandth of the largest value of
    them all if that is more: a bias followed by batch norm (the seed's wide network) has a
    gradient of 0 in exact arithmetic, i.e. rounding noise of about 1e-17 in both."""
    assert list(stacked) == list(separate), what
    floats = [tensor for tensor in separate.values() if tensor.is_floating_point()]
    floor = 1e-3 * max(float(tensor.abs().max()) for tensor in floats)
    for name, tensor in separate.items():
        if tensor.is_floating_point():
            _assert_close(stacked[name], tensor, f"{what} {name}", floor)
        else:
            assert torch.equal(stacked[name], tensor), f"{what} {name}"


def _assert_states_close(stack: StackedResNet, models: list[nn.Module]) -> None:
    """Every parameter and buffer (BN running statistics, step counters) of each model."""
    for k, (state, model) in enumerate(zip(stack.model_state_dicts(), models)):
        _assert_all_close(state, model.state_dict(), f"model {k}")


def _assert_gradients_close(stack: StackedResNet, models: list[nn.Module], indices=range(K)) -> None:
    """The stack's gradient chunks against the separate networks' gradients."""
    chunks = {name: parameter.grad.chunk(stack.k) for name, parameter in stack.named_parameters()}
    for k, model in zip(indices, models):
        separate = {name: parameter.grad for name, parameter in model.named_parameters()}
        _assert_all_close({name: parts[k] for name, parts in chunks.items()}, separate, f"model {k} gradient")


def _separate_logits(models, images) -> torch.Tensor:
    return torch.stack([model(x) for model, x in zip(models, images)], 1)


def _separate_step(models, optimizers, images, labels) -> torch.Tensor:
    logits = []
    for model, optimizer, x, y in zip(models, optimizers, images, labels):
        optimizer.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        optimizer.step()
        logits.append(out.detach())
    return torch.stack(logits, 1)


def _stacked_step(stack, optimizer, images, labels) -> torch.Tensor:
    optimizer.zero_grad()
    logits = stack(stack_inputs(images))
    stacked_loss(logits, labels)[0].backward()
    optimizer.step()
    return logits.detach()


def _same_state(a: dict, b: dict) -> bool:
    """Equal keys, and every tensor equal in shape, dtype and every bit."""
    return list(a) == list(b) and all(
        a[key].shape == b[key].shape and a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------- one network, K models

@pytest.mark.parametrize("family", FAMILIES)
def test_a_stack_holds_its_models_bit_for_bit(family):
    models = _models(family)
    generator_state = torch.get_rng_state()
    stack = StackedResNet.from_models(models)
    assert torch.equal(torch.get_rng_state(), generator_state)  # copied, never drawn: no K-times fan
    assert stack.k == K and isinstance(stack, StackedResNet)
    assert [name for name, _ in stack.named_parameters()] == [name for name, _ in models[0].named_parameters()]
    for name, tensor in stack.state_dict().items():  # one rule: K tensors on dim 0, or one shared counter
        parts = [model.state_dict()[name] for model in models]
        assert torch.equal(tensor, torch.cat(parts) if tensor.ndim else parts[0]), name
    states = stack.model_state_dicts()
    for state, model in zip(states, models):
        assert _same_state(state, model.state_dict())
        assert state._metadata == model.state_dict()._metadata
    singles = stack.unstack()
    for single, model in zip(singles, models):
        assert type(single) is ResNet and repr(single) == repr(model) and single.training == model.training
        assert _same_state(single.state_dict(), model.state_dict())
    first = next(name for name, _ in stack.named_parameters())
    with torch.no_grad():  # copies, not views: the stack trains on without changing them
        stack.get_parameter(first).add_(1.0)
    assert torch.equal(singles[0].get_parameter(first), models[0].get_parameter(first))
    assert torch.equal(states[0][first], models[0].get_parameter(first))


def test_checkpoint_files_are_those_of_separate_runs():
    """torch.save of a model state split from a stack writes the bytes a separate run writes
    (a saved view would write the whole stacked tensor)."""
    models = _models("preact-bottleneck")
    stack = StackedResNet.from_models(models)
    for state, model in zip(stack.model_state_dicts(), models):
        mine, theirs = io.BytesIO(), io.BytesIO()
        torch.save(state, mine)
        torch.save(model.state_dict(), theirs)
        assert mine.getvalue() == theirs.getvalue()


@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_logits_and_gradients_match_separate_networks(family):
    models = _models(family)
    stack = StackedResNet.from_models(models)
    images, labels = _batches()
    logits = stack(stack_inputs(images))
    separate = _separate_logits(models, images)
    _assert_close(logits, separate, "train-mode logits")
    stacked_loss(logits, labels)[0].backward()
    sum(F.cross_entropy(separate[:, k], labels[k]) for k in range(K)).backward()  # each model's own gradient
    _assert_gradients_close(stack, models)
    _assert_states_close(stack, models)  # the batch's BN running statistics
    stack.eval()
    for model in models:
        model.eval()
    with torch.no_grad():
        _assert_close(stack(stack_inputs(images)), _separate_logits(models, images), "eval-mode logits")


@pytest.mark.parametrize(("family", "scope"), SGD_CASES)
def test_stacked_sgd_steps_match_separate_runs(family, scope):
    """Two steps of the recipe's Nesterov SGD with its weight-decay scope, on new batches each."""
    recipe = SCOPES[scope]
    assert recipe.nesterov and recipe.weight_decay_on == scope
    models = _models(family)
    stack = StackedResNet.from_models(models)
    optimizers = [make_optimizer(model, recipe, PLAIN) for model in models]
    stack_optimizer = make_optimizer(stack, recipe, PLAIN)
    for step in range(2):
        images, labels = _batches(seed=step)
        _assert_close(_stacked_step(stack, stack_optimizer, images, labels),
                      _separate_step(models, optimizers, images, labels), f"logits of step {step}")
    _assert_states_close(stack, models)  # weights and BN running statistics
    for k, (state, optimizer) in enumerate(zip(split_optimizer_state(stack_optimizer.state_dict(), K), optimizers)):
        separate = optimizer.state_dict()
        assert state["param_groups"] == separate["param_groups"]
        momentum = {index: values["momentum_buffer"] for index, values in separate["state"].items()}
        assert len(momentum) == len(list(stack.parameters()))
        _assert_all_close({index: values["momentum_buffer"] for index, values in state["state"].items()}, momentum,
                          f"model {k} momentum of parameter")
    stack.eval()
    for model in models:
        model.eval()
    images, _ = _batches(seed=2)
    with torch.no_grad():
        _assert_close(stack(stack_inputs(images)), _separate_logits(models, images), "eval logits after the steps")


def test_seed_code_decays_each_stacked_networks_bn_gamma_as_alone():
    """seed_code's scope, Lasagne's regularizable parameters, in a stack of K=2 networks built as
    the recipe builds them: one step at a large weight decay against the same step at none, from
    the same state. Each network's every BN gamma and weight moves by what it moves alone; no BN
    beta and no bias moves at all."""
    k, recipe = 2, SCOPES["lasagne"]
    models = _models("preact-basic-input_projection", k=k, layer_defaults="lasagne")  # conv biases too
    images, labels = _batches(k=k)
    after = {}
    for decay in (0.0, 0.5):
        stepped = recipe.replace(weight_decay=decay)
        stack, separate = StackedResNet.from_models(models), [copy.deepcopy(model) for model in models]
        _stacked_step(stack, make_optimizer(stack, stepped, PLAIN), images, labels)
        _separate_step(separate, [make_optimizer(model, stepped, PLAIN) for model in separate], images, labels)
        after[decay] = stack.model_state_dicts(), [model.state_dict() for model in separate]
    modules = dict(models[0].named_modules())
    roles = {}
    for name, _ in models[0].named_parameters():
        owner, _, attr = name.rpartition(".")
        roles[name] = ("gamma" if attr == "weight" else "beta") if isinstance(modules[owner], nn.BatchNorm2d) else attr
    assert set(roles.values()) == {"gamma", "beta", "weight", "bias"}
    for i in range(k):
        for name, role in roles.items():
            stacked = after[0.5][0][i][name] - after[0.0][0][i][name]
            alone = after[0.5][1][i][name] - after[0.0][1][i][name]
            if role in ("gamma", "weight"):
                assert stacked.abs().min() > 0, f"model {i} {name}"
                _assert_close(stacked, alone, f"model {i} {name}'s decay")
            else:
                assert not stacked.any() and not alone.any(), f"model {i} {name}"


@pytest.mark.parametrize("family", ["preact_resnet20", "original-bottleneck-ghost-bn"])
def test_channels_last_stack_matches_separate_networks(family):
    models = _models(family)
    stack = StackedResNet.from_models(models).to(memory_format=torch.channels_last)
    images, labels = _batches()
    inputs = stack_inputs(images).contiguous(memory_format=torch.channels_last)
    logits = stack(inputs)
    separate = _separate_logits(models, images)
    _assert_close(logits, separate, "channels_last logits")
    stacked_loss(logits, labels)[0].backward()
    sum(F.cross_entropy(separate[:, k], labels[k]) for k in range(K)).backward()  # each model's own gradient
    _assert_gradients_close(stack, models)


# ---------------------------------------------------------------- loss, inputs, divergence

def test_stacked_loss_is_the_sum_of_the_models_mean_losses():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, K, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (K, BATCH), generator=generator)
    loss, losses, errors = stacked_loss(logits, labels)
    separate = torch.stack([F.cross_entropy(logits[:, k], labels[k]) for k in range(K)])
    _assert_close(losses, separate, "per-model losses")
    _assert_close(loss, separate.sum(), "loss")
    assert errors.tolist() == [int((logits[:, k].argmax(1) != labels[k]).sum()) for k in range(K)]
    with pytest.raises(ValueError, match=r"labels have shape \(8, 3\)"):
        stacked_loss(logits, labels.T)


def test_stack_inputs_puts_each_models_batch_in_its_channel_block():
    images, _ = _batches()
    stacked = stack_inputs(images)
    assert stacked.shape == (BATCH, 3 * K, SIZE, SIZE)
    assert all(torch.equal(stacked[:, 3 * k:3 * k + 3], images[k]) for k in range(K))
    with pytest.raises(ValueError, match="one shape"):
        stack_inputs([images[0], images[1][:4]])


def test_a_nan_in_one_model_leaves_the_others_untouched():
    """Divergence is per model: a NaN in model 1's input poisons model 1 only; the others'
    logits, gradients and step are those of their separate runs."""
    models = _models("preact_resnet20")
    stack = StackedResNet.from_models(models)
    images, labels = _batches()
    images[1][0, 0, 0, 0] = float("nan")
    optimizer = make_optimizer(stack, SCOPES["all"], PLAIN)
    logits = stack(stack_inputs(images))
    loss, losses, _ = stacked_loss(logits, labels)
    loss.backward()
    optimizer.step()
    assert losses[1].isnan() and losses[[0, 2]].isfinite().all()
    assert not logits[:, 1].isfinite().any()
    healthy = [0, 2]
    separate = [models[k] for k in healthy]
    separate_logits = _separate_step(separate, [make_optimizer(m, SCOPES["all"], PLAIN) for m in separate],
                                     [images[k] for k in healthy], labels[healthy])
    _assert_close(logits[:, healthy], separate_logits, "healthy models' logits")
    _assert_gradients_close(stack, separate, healthy)
    states = stack.model_state_dicts()
    for k, model in zip(healthy, separate):
        assert all(tensor.isfinite().all() for tensor in states[k].values() if tensor.is_floating_point())
        _assert_all_close(states[k], model.state_dict(), f"model {k} after the step")
    assert not states[1]["stem.weight"].isfinite().all()


# ---------------------------------------------------------------- dropout

def test_dropout_masks_come_from_one_generator_and_the_stack_trains():
    """With dropout the stack is no longer K separate runs, as the note says: its masks are the
    draws of one Dropout over the stacked tensor from the global generator, each model's block
    a different mask. It still trains: each model's loss falls on a batch it repeats."""
    assert "dropout" in DIFFERS_FROM_SEPARATE_RUNS and "\n" not in DIFFERS_FROM_SEPARATE_RUNS
    stack = StackedResNet.from_models(_models("wide", dropout=0.3))
    seen = []
    hooks = [module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
             for module in stack.modules() if isinstance(module, nn.Dropout)]
    images, labels = _batches()
    torch.manual_seed(7)
    with torch.no_grad():
        first = stack(stack_inputs(images))
    torch.manual_seed(7)
    masks = [F.dropout(torch.ones_like(x), 0.3, training=True) != 0 for x, _ in seen]
    assert len(masks) == 3
    for (x, out), mask in zip(seen, masks):
        torch.testing.assert_close(out, torch.where(mask, x / 0.7, torch.zeros_like(x)), rtol=1e-12, atol=0)
        blocks = mask.chunk(K, 1)
        assert not torch.equal(blocks[0], blocks[1]) and not torch.equal(blocks[1], blocks[2])
    for hook in hooks:
        hook.remove()
    torch.manual_seed(7)
    with torch.no_grad():
        assert torch.equal(stack(stack_inputs(images)), first)
    optimizer = make_optimizer(stack, SCOPES["all"], PLAIN)
    losses = [stacked_loss(_stacked_step(stack, optimizer, images, labels), labels)[1] for _ in range(8)]
    assert losses[-1].isfinite().all() and (losses[-1] < losses[0]).all(), losses


# ---------------------------------------------------------------- resuming across the two kinds of run

def test_optimizer_state_splits_and_merges_exactly():
    models = _models("preact-bottleneck")
    stack = StackedResNet.from_models(models)
    optimizer = make_optimizer(stack, SCOPES["weights"], PLAIN)
    for step in range(2):
        _stacked_step(stack, optimizer, *_batches(seed=step))
    state = optimizer.state_dict()
    parts = split_optimizer_state(state, K)
    merged = merge_optimizer_states(parts)
    assert merged["param_groups"] == state["param_groups"] and merged["state"].keys() == state["state"].keys()
    for index, values in state["state"].items():
        assert torch.equal(merged["state"][index]["momentum_buffer"], values["momentum_buffer"])
    buffer = parts[0]["state"][0]["momentum_buffer"]
    assert buffer.untyped_storage().nbytes() == buffer.numel() * buffer.element_size()  # its own copy
    parts[1]["param_groups"][0]["lr"] = 0.5
    with pytest.raises(ValueError, match="optimizer state 1's param_groups differ"):
        merge_optimizer_states(parts)


@pytest.mark.parametrize("scope", ["all", "lasagne"])
def test_a_stacked_run_continues_as_separate_runs_and_back(scope):
    """After a stacked step, the split model and optimizer states continue as separate runs
    whose next step is the stack's; and separate runs' states merged into a new stack continue
    as those runs do."""
    recipe = SCOPES[scope]
    stack = StackedResNet.from_models(_models("original-bottleneck-ghost-bn"))
    stack_optimizer = make_optimizer(stack, recipe, PLAIN)
    _stacked_step(stack, stack_optimizer, *_batches(seed=0))
    singles = _models("original-bottleneck-ghost-bn")
    for single, state in zip(singles, stack.model_state_dicts()):
        single.load_state_dict(state)
    optimizers = [make_optimizer(single, recipe, PLAIN) for single in singles]
    for optimizer, state in zip(optimizers, split_optimizer_state(stack_optimizer.state_dict(), K)):
        optimizer.load_state_dict(state)
    images, labels = _batches(seed=1)
    _assert_close(_stacked_step(stack, stack_optimizer, images, labels),
                  _separate_step(singles, optimizers, images, labels), "logits after resuming as separate runs")
    _assert_states_close(stack, singles)

    restacked = StackedResNet.from_models(singles)
    restacked_optimizer = make_optimizer(restacked, recipe, PLAIN)
    restacked_optimizer.load_state_dict(merge_optimizer_states([o.state_dict() for o in optimizers]))
    images, labels = _batches(seed=2)
    _assert_close(_stacked_step(restacked, restacked_optimizer, images, labels),
                  _separate_step(singles, optimizers, images, labels), "logits after resuming as a stack")
    _assert_states_close(restacked, singles)


def test_load_model_state_dicts_writes_in_place():
    stack = StackedResNet.from_models(_models("preact-basic-ghost-bn"))
    others = _models("preact-basic-ghost-bn", k=K)
    for model in others:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(2.0)
    pointers = [tensor.data_ptr() for tensor in stack.state_dict().values()]
    stack.load_model_state_dicts([model.state_dict() for model in others])
    assert [tensor.data_ptr() for tensor in stack.state_dict().values()] == pointers
    for state, model in zip(stack.model_state_dicts(), others):
        assert _same_state(state, model.state_dict())
    with pytest.raises(ValueError, match="got 2 model states for a stack of 3"):
        stack.load_model_state_dicts([model.state_dict() for model in others[:2]])
    wrong = dict(others[0].state_dict())
    del wrong["fc.bias"]
    with pytest.raises(ValueError, match=r"model state 1 does not fit this stack: missing \['fc.bias'\]"):
        stack.load_model_state_dicts([others[0].state_dict(), wrong, others[2].state_dict()])


# ---------------------------------------------------------------- what cannot be stacked

def test_from_models_refuses_networks_that_differ():
    with pytest.raises(ValueError, match="at least one network"):
        StackedResNet.from_models([])
    with pytest.raises(TypeError, match="model 1 is a Sequential"):
        StackedResNet.from_models([build_model("preact_resnet20"), nn.Sequential()])
    for other in (build_model("preact_resnet32"), build_model("preact_resnet20", shortcut="projection"),
                  build_model("preact_resnet20", bn_batch=32), build_model("preact_resnet20").double()):
        with pytest.raises(ValueError, match="model 1 is not the same network as model 0"):
            StackedResNet.from_models([build_model("preact_resnet20"), other])
    stepped = build_model("preact_resnet20")
    stepped(torch.randn(2, 3, SIZE, SIZE))  # one training forward: its BN counters move on
    with pytest.raises(ValueError, match="num_batches_tracked is tensor\\(1\\) in model 1 but tensor\\(0\\)"):
        StackedResNet.from_models([build_model("preact_resnet20"), stepped])
    dropout = StackedResNet.from_models(_models("wide", dropout=0.3))  # dropout is noted, not refused
    assert dropout.k == K
