"""K separately initialised networks of one architecture trained as one channel-stacked network.

`StackedResNet.from_models(models)` copies K networks into one: every convolution becomes a
grouped convolution (K times the groups, model k's filters are rows k*out:(k+1)*out), every
batch norm covers K*C channels (its statistics are per channel, so the models stay
independent), each zero-padding shortcut pads each model's channel block, and the classifier
holds K separate matrices. The input is the K models' own batches side by side on the channel
axis (`stack_inputs`); the output is `[B, K, classes]`. A step of the stack is the K networks'
steps in about as many kernel launches as one network's step.

Every name of a parameter or buffer is the single network's, and every tensor is its K
single-model tensors concatenated on dim 0 (`num_batches_tracked`, a scalar that counts steps,
is shared): one rule, `split_tensor`/`merge_tensors`, turns the stack's model and SGD state
into K separate runs' and back, exactly what those runs would have written.
"""
from __future__ import annotations

import copy
from itertools import chain
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import ResNet, ZeroPadShortcut

# The one way a stack's training differs from K separate runs, for the records that train one.
DIFFERS_FROM_SEPARATE_RUNS = ("dropout masks are drawn from one random generator for the whole stack, "
                              "not from each run's own seed")


class StackedLinear(nn.Module):
    """K separate linear layers over a `[B, K*in]` input, `weight` `[K*out, in]` and `bias`
    `[K*out]`, computed as one batched matmul; returns `[B, K, out]`. (A dense block-diagonal
    layer would compute the same forward, but give the zero blocks gradients from the other
    models' features, which weight decay and momentum would then carry across.)"""

    def __init__(self, k: int, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k * out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(k * out_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.unflatten(1, (self.k, self.in_features)).transpose(0, 1)  # [K, B, in]
        weights = self.weight.unflatten(0, (self.k, self.out_features)).transpose(1, 2)  # [K, in, out]
        biases = self.bias.unflatten(0, (self.k, 1, self.out_features))
        # baddbmm, as F.linear, runs in bf16 under autocast (einsum would add the bias in fp32)
        return torch.baddbmm(biases, features, weights).transpose(0, 1)


class StackedZeroPadShortcut(ZeroPadShortcut):
    """Option A for K stacked models: each model's channel block is subsampled and zero-padded."""

    def __init__(self, k: int, extra_channels: int, stride: int):
        super().__init__(extra_channels, stride)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = super().forward
        return torch.cat([pad(block) for block in x.chunk(self.k, 1)], 1)


class StackedResNet(ResNet):
    """K networks of `models.ResNet` as one; build it with `StackedResNet.from_models`.

    `forward` takes `[B, K*3, H, W]` (see `stack_inputs`) and returns logits `[B, K, classes]`."""

    k: int

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> "StackedResNet":
        """One network holding copies of `models`' parameters and buffers (the models are left
        as they are). They must be the same network with the same options, each seeded on its
        own: a stack is initialised only by copying, never by drawing."""
        models = list(models)
        _check_stackable(models)
        k = len(models)
        stack = copy.deepcopy(models[0])  # the module tree, settings and train/eval mode of model 0
        stack.__class__ = cls
        stack.k = k
        # A single network's tree on the meta device, from which `unstack` builds the K networks.
        # Kept out of the module tree (as a submodule its tensors would join the stack's).
        vars(stack)["_single"] = copy.deepcopy(models[0]).to("meta")
        for name, module in list(stack.named_modules()):
            stacked = _stacked_module(module, k)
            if stacked is not module:
                stack.set_submodule(name, stacked)
        states = [model.state_dict() for model in models]
        for name in states[0]:
            owner_name, _, attr = name.rpartition(".")
            owner = stack.get_submodule(owner_name)
            merged = merge_tensors(name, [state[name] for state in states])
            setattr(owner, attr, nn.Parameter(merged) if isinstance(getattr(owner, attr), nn.Parameter) else merged)
        return stack

    def model_state_dicts(self) -> list[dict]:
        """The K networks' `state_dict()`s: same keys, shapes and dtypes as a single network's,
        each tensor its own copy (a saved view would write the whole stacked tensor)."""
        state = self.state_dict()
        parts = {name: split_tensor(name, tensor, self.k) for name, tensor in state.items()}
        singles = [type(state)((name, parts[name][i]) for name in state) for i in range(self.k)]
        for single in singles:
            single._metadata = copy.deepcopy(state._metadata)  # module versions, as a network's own
        return singles

    def load_model_state_dicts(self, states: Sequence[dict]) -> None:
        """Load K single networks' states, in place (the stack's tensors keep their storage)."""
        if len(states) != self.k:
            raise ValueError(f"got {len(states)} model states for a stack of {self.k}")
        names = list(self.state_dict())
        for i, state in enumerate(states):
            if set(state) != set(names):
                missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
                raise ValueError(f"model state {i} does not fit this stack: missing {missing}, "
                                 f"unexpected {unexpected}")
        self.load_state_dict({name: merge_tensors(name, [state[name] for state in states]) for name in names})

    def unstack(self) -> list[ResNet]:
        """K single networks (built like the originals) holding copies of the stack's current
        parameters and buffers, in the stack's train/eval mode."""
        singles = []
        for state in self.model_state_dicts():
            single = copy.deepcopy(self._single)
            single.load_state_dict(state, assign=True)
            singles.append(single.train(self.training))
        return singles


def _stacked_module(module: nn.Module, k: int) -> nn.Module:
    """The stack's module standing for `module` of each network; its tensors are set afterwards."""
    if isinstance(module, nn.Conv2d):
        module.in_channels, module.out_channels, module.groups = (k * module.in_channels, k * module.out_channels,
                                                                  k * module.groups)
    elif isinstance(module, nn.BatchNorm2d):  # GhostBatchNorm2d too: its chunks split the batch, not the channels
        module.num_features *= k
    elif isinstance(module, nn.Linear):
        return StackedLinear(k, module.in_features, module.out_features, device="meta")
    elif isinstance(module, ZeroPadShortcut):
        return StackedZeroPadShortcut(k, module.extra_channels, module.stride)
    elif next(chain(module.parameters(recurse=False), module.buffers(recurse=False)), None) is not None:
        raise TypeError(f"cannot stack a {type(module).__name__}: StackedResNet stacks Conv2d, BatchNorm2d, "
                        f"Linear and ZeroPadShortcut, and modules without tensors of their own")
    return module


def _architecture(model: nn.Module) -> list[tuple]:
    """What networks must share to be stacked: each module's type and settings, each tensor's
    shape, dtype and device."""
    modules = [(name, type(module).__name__, {key: value for key, value in vars(module).items()
                                              if not key.startswith("_") and key != "training"})
               for name, module in model.named_modules()]
    tensors = [(name, tuple(tensor.shape), tensor.dtype, tensor.device)
               for name, tensor in model.state_dict().items()]
    return modules + tensors


def _check_stackable(models: list[nn.Module]) -> None:
    if not models:
        raise ValueError("StackedResNet.from_models needs at least one network, got none")
    for i, model in enumerate(models):
        if type(model) is not ResNet:
            raise TypeError(f"model {i} is a {type(model).__name__}; StackedResNet stacks networks of "
                            f"models.ResNet (as models.build_model builds them)")
    reference = _architecture(models[0])
    for i, model in enumerate(models[1:], 1):
        architecture = _architecture(model)
        if architecture != reference:
            where = next((a for a, b in zip(architecture, reference) if a != b), architecture[len(reference):])
            raise ValueError(f"model {i} is not the same network as model 0: it differs at {where}")


def split_tensor(name: str, value, k: int) -> list:
    """A stacked value's K single-model parts: dim-0 chunks (each its own copy) of a tensor,
    K copies of a scalar shared by the stack (`num_batches_tracked`, any non-tensor)."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return [copy.deepcopy(value) for _ in range(k)]
    if value.shape[0] % k:
        raise ValueError(f"{name} has {value.shape[0]} rows, not a multiple of the stack's {k} models")
    return [part.clone() for part in value.chunk(k)]


def merge_tensors(name: str, values: Sequence) -> torch.Tensor:
    """The stacked value of K single-model values: tensors concatenated on dim 0; a scalar must
    be the same in every model (a stack trains its models in step)."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.ndim > 0:
        return torch.cat(list(values))
    for i, value in enumerate(values[1:], 1):
        if not _same(value, first):
            raise ValueError(f"{name} is {value!r} in model {i} but {first!r} in model 0; a stack holds "
                             f"models at the same step")
    return copy.deepcopy(first)


def _same(a, b) -> bool:
    """Equality of state values, tensors (a tensor learning rate) included."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def stack_inputs(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """K batches `[B, 3, H, W]`, one per model, as the stack's input `[B, K*3, H, W]`."""
    shapes = {tuple(batch.shape) for batch in batches}
    if len(shapes) != 1:
        raise ValueError(f"the stacked models' batches must have one shape, got {sorted(shapes)}")
    return torch.cat(list(batches), 1)


def stacked_batch(batches, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The K runs' (images, labels) as the stack's input `[B, 3K, H, W]` and labels `[K, B]`."""
    if len(batches) == 1:  # one run: its own tensors, not copies
        images, labels = batches[0][0], batches[0][1].unsqueeze(0)
    else:
        images = stack_inputs([images for images, _ in batches])
        labels = torch.stack([labels for _, labels in batches])
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def stacked_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, losses, errors) of logits `[B, K, classes]` against labels `[K, B]`: `loss` is the
    SUM of the K models' mean cross-entropies, so each model's gradient is its own (a mean would
    divide every learning rate by K); `losses` `[K]` the models' mean losses, `errors` `[K]` their
    numbers of wrong predictions; all left on the device."""
    batch, k = logits.shape[:2]
    if tuple(labels.shape) != (k, batch):
        raise ValueError(f"labels have shape {tuple(labels.shape)}; logits {tuple(logits.shape)} need [{k}, {batch}]")
    targets = labels.T
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(0)
    errors = (logits.argmax(2) != targets).sum(0)
    return losses.sum(), losses, errors


def split_optimizer_state(state_dict: dict, k: int) -> list[dict]:
    """A stack's `torch.optim.SGD` state as K separate runs' optimizer states (per-parameter
    tensors such as `momentum_buffer` chunked on dim 0; `param_groups` copied). Exact when the
    stack's optimizer groups its parameters as a single network's would (`engine.make_optimizer`
    chooses by each parameter's name in its module, which the stack keeps)."""
    parts = [{"state": {}, "param_groups": copy.deepcopy(state_dict["param_groups"])} for _ in range(k)]
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            for part, piece in zip(parts, split_tensor(f"state[{index}][{name!r}]", value, k)):
                part["state"].setdefault(index, {})[name] = piece
    return parts


def merge_optimizer_states(states: Sequence[dict]) -> dict:
    """K separate runs' `torch.optim.SGD` states as the state of their stack's optimizer."""
    first = states[0]
    for i, state in enumerate(states[1:], 1):
        if not _same(state["param_groups"], first["param_groups"]):
            raise ValueError(f"optimizer state {i}'s param_groups differ from state 0's: {state['param_groups']} "
                             f"vs {first['param_groups']}")
        if state["state"].keys() != first["state"].keys():
            raise ValueError(f"optimizer state {i} holds state for other parameters than state 0")
    merged = {}
    for index, values in first["state"].items():
        parts = [state["state"][index] for state in states]
        merged[index] = {name: merge_tensors(f"state[{index}][{name!r}]", [part[name] for part in parts])
                         for name in values}
    return {"state": merged, "param_groups": copy.deepcopy(first["param_groups"])}


def member_states(model: nn.Module, optimizer: torch.optim.Optimizer, k: int) -> tuple[list[dict], list[dict]]:
    """Each of the K networks' model and optimizer state as a network trained alone holds them
    (K = 1: a plain network's; a tensor lr, the engine's, as the number a separate run saves)."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["lr"] = float(group["lr"])
    if k == 1:
        return [model.state_dict()], [state]
    return model.model_state_dicts(), split_optimizer_state(state, k)


def nonfinite(model: nn.Module, k: int) -> list[list[str] | None]:
    """For each of the K networks: None if its weights and buffers are finite, else the names of
    those that are not; all K checked on the device at once, with one synchronisation."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    flat = torch.cat([tensor.reshape(k, -1).float() for tensor in state.values()], 1)
    finite = torch.isfinite(flat).all(1).tolist()
    return [None if ok else [name for name, tensor in state.items()
                             if not torch.isfinite(tensor.reshape(k, -1)[index]).all()]
            for index, ok in enumerate(finite)]
