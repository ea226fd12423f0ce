"""How one training step runs: the step (`train_step`) and the engines that run it.

A step trains K networks of one architecture at once (K = 1: a plain network; K > 1: a
`stacked.StackedResNet`): images `[B, 3K, H, W]`, labels `[K, B]`, and it returns the K
networks' summed losses and numbers of errors, left on the device. Two engines run it:

- `EagerEngine` calls `train_step` every step, optionally through torch.compile (for users with
  a warm compile cache; a cold compile of a 110-layer net takes minutes).
- `GraphEngine` (CUDA) runs the first steps eagerly on a side stream (cuDNN picks its kernels,
  the fused SGD creates its momentum buffers), then captures `train_step` once as a CUDA graph:
  forward, loss, backward and the fused SGD step, ~1,500 kernels launched by one call. Every
  later full batch is copied into the graph's static input buffers and the graph replayed. The
  learning rate lives in a device tensor that the captured SGD kernel reads at every replay
  (a Python float would be baked into the graph); BN running statistics, weights and momentum
  are updated in place. The epoch's last, smaller batch runs `train_step` eagerly on the same
  weights and optimizer (padding it would change batch norm's statistics).

On CUDA both engines use the fused SGD with that lr tensor, so a graph replays exactly the
kernels of an eager step. No inductor runs on the graph path: it starts in seconds.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import choice
from .config import ConfigError, TrainConfig
from .recipes import DECAYED_ROLES, Recipe
from .stacked import stacked_loss

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
WARMUP_STEPS = 3  # eager steps before the capture: cuDNN's autotuning, lazy CUDA and autograd set-up


class EngineError(RuntimeError):
    """An engine that cannot run here (the graph engine without CUDA, or a failed capture)."""


@dataclass(frozen=True)
class Speedups:
    """The fast path's layout and kernel switches, each on by default on CUDA only (compile: off
    unless asked for). They change how fast a step runs, not what it computes within rounding;
    the precision, which does, is the run's setting (`TrainConfig.precision`), beside them."""
    channels_last: bool
    compile: bool
    fused_optimizer: bool

    @classmethod
    def for_device(cls, config: TrainConfig, device: torch.device) -> "Speedups":
        cuda = device.type == "cuda"
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return cls(pick(config.channels_last, cuda), pick(config.compile, False), cuda)


def autocast(precision: str, device: torch.device):
    """The forward pass's precision: bf16 autocast, or fp32 as the weights are."""
    # cache_enabled=False: autocast's cache of cast weights must not live across a CUDA graph's
    # capture (torch's CUDA graph notes); each weight is cast once per forward anyway.
    return torch.autocast(device.type, torch.bfloat16, cache_enabled=False) if precision == "bf16" else nullcontext()


def precision_words(precision: str) -> str:
    """How records name a precision ("bf16 autocast" or "fp32")."""
    return "bf16 autocast" if precision == "bf16" else "fp32"


def switches(precision: str, speedups: Speedups) -> dict:
    """The precision and the speedups as checkpoints and records hold them, under "speedups"
    ({"bf16": ..., "channels_last": ..., ...}): what a resume must find again."""
    return {"bf16": precision == "bf16", **dataclasses.asdict(speedups)}


@contextmanager
def exact_fp32():
    """fp32 that is fp32 on CUDA: TF32 off for cuDNN convolutions (on by PyTorch's default) and
    for matrix products, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def resolve_engine(config: TrainConfig, device: torch.device, distributed: bool) -> str:
    """The engine a run uses: the config's, else the graph engine on a single CUDA device without
    torch.compile, else eager. One asked for that cannot run here is a ConfigError."""
    if config.engine is None:
        return "graph" if device.type == "cuda" and not distributed and not config.compile else "eager"
    if config.engine == "graph":
        problem = ("needs a CUDA device (CUDA graphs)" if device.type != "cuda" else
                   "does not run under torchrun (DDP's gradient all-reduce)" if distributed else
                   "captures the eager step, not a compiled one: leave out --compile" if config.compile else None)
        if problem:
            raise ConfigError(f"engine='graph' {problem}; this run is on {device}: use --engine eager")
    return config.engine


def check_compile_mode(mode: str) -> None:
    choice("compile_mode", mode, COMPILE_MODES)


def compile_model(model: torch.nn.Module, mode: str = "default", backend="inductor"):
    """torch.compile for training. dynamic=False keeps the full-batch graph static: with torch's
    default (dynamic=None) the epoch's smaller last batch makes torch recompile with a symbolic
    batch size, and every later full batch then runs that dynamic graph instead. With
    dynamic=False the last batch gets a second static graph, compiled once per process; CUDA
    graphs (mode "reduce-overhead") then also record one graph per batch size."""
    check_compile_mode(mode)
    return torch.compile(model, mode=None if mode == "default" else mode,
                         dynamic=False, backend=backend)


def compile_counter(group: str, name: str) -> int:
    """A torch.compile counter of this process: ("stats", "unique_graphs") graphs built,
    ("inductor", "cudagraph_skips") CUDA graphs skipped."""
    from torch._dynamo.utils import counters
    return int(counters[group][name])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (on CUDA): what a wall-clock time must include."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parameter_roles(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, str]]:
    """Each parameter of `model`, in `model.parameters()` order, with its role
    (recipes.PARAMETER_ROLES): a batch norm's weight and bias are its gamma and beta, any other
    module's a conv or linear weight and bias. Chosen by the parameter's name in its module, not
    by its shape (gamma is 1-d like a bias) nor the module's type (a stack's classifier is a
    StackedLinear), so that a stacked network (stacked.py keeps every name) gives each of its
    networks' parameters the role it has in that network alone."""
    roles = {}
    for module in model.modules():
        batch_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for name, parameter in module.named_parameters(recurse=False):
            if name not in ("weight", "bias"):
                raise TypeError(f"{type(module).__name__}.{name} has no weight-decay role: "
                                f"expected parameters named weight or bias")
            roles[parameter] = {"weight": "bn_gamma", "bias": "bn_beta"}[name] if batch_norm else name
    return [(parameter, roles[parameter]) for parameter in model.parameters()]


def make_optimizer(model: torch.nn.Module, recipe: Recipe, speedups: Speedups) -> torch.optim.SGD:
    """SGD whose weight decay reaches only the parameter roles that the recipe's scope names
    (recipes.DECAYED_ROLES); the other parameters form a second group, without decay."""
    decayed = DECAYED_ROLES[recipe.weight_decay_on]
    roles = parameter_roles(model)
    groups = [{"params": [p for p, role in roles if role in decayed]},
              {"params": [p for p, role in roles if role not in decayed], "weight_decay": 0.0}]
    return torch.optim.SGD([group for group in groups if group["params"]], lr=recipe.lr,
                           momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
                           fused=speedups.fused_optimizer or None)


def scale_momentum_(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every momentum buffer times `factor`, in place: fused SGD and a captured CUDA graph keep
    reading the same tensors (recipes.Schedule.momentum_scale_at says when and by how much)."""
    for state in optimizer.state.values():
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"].mul_(factor)


def train_step(model, optimizer, images, labels, precision: str = "fp32"):
    """One SGD step of the K networks in `model` on images `[B, 3K, H, W]` and labels `[K, B]`,
    its forward pass in `precision` ("fp32" or "bf16"); returns their summed losses `[K]` and
    numbers of errors `[K]`, left on the device. The loss minimised is the sum of the K mean
    losses, so that each network's gradient is its own."""
    with autocast(precision, images.device):
        logits = model(images)
        loss, losses, errors = stacked_loss(logits.view(len(images), len(labels), -1), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return losses.detach() * labels.shape[1], errors


class Engine:
    """Runs `train_step` on one model and optimizer; `set_lr` before each step. With the fused
    SGD (CUDA) the learning rate is a 0-d fp32 tensor on the device, which the fused kernel
    reads when it runs: the same for an eager step and a graph replay. Its steps run in
    `precision` (`train_step`)."""

    name = "engine"

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, speedups: Speedups,
                 batch_size: int, precision: str = "fp32"):
        self.model, self.optimizer, self.speedups, self.batch_size = model, optimizer, speedups, batch_size
        self.precision = precision
        self.lr_tensor = None
        if speedups.fused_optimizer:
            device = next(model.parameters()).device
            self.lr_tensor = torch.tensor(float(optimizer.param_groups[0]["lr"]), dtype=torch.float32,
                                          device=device)
            for group in optimizer.param_groups:
                group["lr"] = self.lr_tensor
        self.lr = None

    def set_lr(self, lr: float) -> None:
        if lr == self.lr:
            return
        self.lr = lr
        if self.lr_tensor is not None:
            self.lr_tensor.fill_(lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def eager_step(self, images, labels):
        return train_step(self.model, self.optimizer, images, labels, self.precision)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class EagerEngine(Engine):
    """`train_step` every step; full batches through `step_model` (torch.compile or DDP's
    wrapper), a smaller last batch through the plain model unless `partial_through_step_model`
    (DDP: every batch must go through its gradient averaging)."""

    name = "eager"

    def __init__(self, model, optimizer, speedups: Speedups, batch_size: int, step_model=None,
                 partial_through_step_model: bool = False, precision: str = "fp32"):
        super().__init__(model, optimizer, speedups, batch_size, precision)
        self.step_model = step_model if step_model is not None else model
        self.partial_through_step_model = partial_through_step_model

    def step(self, images, labels):
        full = labels.shape[1] == self.batch_size or self.partial_through_step_model
        return train_step(self.step_model if full else self.model, self.optimizer, images, labels, self.precision)


@contextmanager
def alarm_held():
    """SIGALRM (the self-check's budget alarm, any budget alarm) held back for the block and
    handled right after it: a handler that raised inside `torch.cuda.graph`'s enter or exit
    would leave the capture stream current, and every later kernel would fail. The signal is
    blocked in this thread (no system call of the capture is interrupted), and an alarm that
    another thread receives meanwhile (Python runs its handler in the main thread, between any
    two instructions) is only noted; either way the handler runs once, after the block."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGALRM) is None:
        yield  # handlers run in the main thread only; None: one installed outside Python, left alone
        return
    noted = []
    handler = signal.signal(signal.SIGALRM, lambda signum, frame: noted.append(signum))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # one pending here is noted now
        signal.signal(signal.SIGALRM, handler)  # (signal.signal first runs the pending handlers)
        if noted:
            signal.raise_signal(signal.SIGALRM)


class CudaGraphs:
    """How the graph engine warms up and captures on CUDA (tests stand in a plain caller on a CPU)."""

    @staticmethod
    def warm_up(step: Callable[[], tuple]) -> tuple:
        """A real training step, eager, on a side stream, as torch's whole-network capture
        recipe warms up: kernel choices and lazy initialisation happen here, not in the capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            outputs = step()
        torch.cuda.current_stream().wait_stream(side)
        return outputs

    @staticmethod
    def capture(step: Callable[[], tuple]) -> Callable[[], tuple]:
        """`step` recorded (not run) as a CUDA graph; returns what replays it and gives its outputs."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step()

        def replay():
            graph.replay()
            return outputs
        return replay


class GraphEngine(Engine):
    """`train_step` captured once (after `WARMUP_STEPS` eager steps) and replayed for every full
    batch from static input buffers; a smaller batch runs `train_step` eagerly."""

    name = "graph"

    def __init__(self, model, optimizer, speedups: Speedups, batch_size: int, graphs=CudaGraphs,
                 precision: str = "fp32"):
        fused = all(group.get("fused") for group in optimizer.param_groups)
        if not fused or (graphs is CudaGraphs and next(model.parameters()).device.type != "cuda"):
            raise EngineError("the graph engine needs a model on a CUDA device and the fused SGD")
        super().__init__(model, optimizer, speedups, batch_size, precision)
        self.graphs, self.warmed_up = graphs, 0
        self.images = self.labels = self.replay = None

    def step(self, images, labels):
        if labels.shape[1] != self.batch_size:
            return self.eager_step(images, labels)
        if self.warmed_up < WARMUP_STEPS:
            self.warmed_up += 1
            return self.graphs.warm_up(lambda: self.eager_step(images, labels))
        if self.replay is None:
            self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
            with alarm_held():  # an alarm due during the capture is raised after it, as the engine's own
                try:
                    self.replay = self.graphs.capture(lambda: self.eager_step(self.images, self.labels))
                except Exception as error:
                    raise EngineError(f"capturing the training step as a CUDA graph failed: "
                                      f"{type(error).__name__}: {error}") from error
        self.images.copy_(images)
        self.labels.copy_(labels)
        return self.replay()


def build_engine(name: str, model, optimizer, speedups: Speedups, batch_size: int, step_model=None,
                 partial_through_step_model: bool = False, precision: str = "fp32") -> Engine:
    if name == "graph":
        return GraphEngine(model, optimizer, speedups, batch_size, precision=precision)
    return EagerEngine(model, optimizer, speedups, batch_size, step_model, partial_through_step_model, precision)
