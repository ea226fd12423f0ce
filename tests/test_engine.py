"""The engines that run a training step (CPU).

The graph engine's CUDA capture cannot run here; everything around it does: with a stand-in
that "replays" by calling the captured function, the engine's warm-up, static input buffers,
lr tensor, eager smaller batch and outputs are the eager engine's, bit for bit, on the fused SGD
that both use on CUDA.
"""

import copy

import pytest
import torch

from reproresnet import records
from reproresnet.config import ConfigError, TrainConfig
from reproresnet.engine import (WARMUP_STEPS, EagerEngine, EngineError, GraphEngine, Speedups, make_optimizer,
                                resolve_engine, train_step)
from reproresnet.models import build_model
from reproresnet.recipes import get_recipe
from reproresnet.stacked import StackedResNet, stack_inputs

from conftest import ReplayByCalling

FUSED = Speedups(channels_last=False, compile=False, fused_optimizer=True)


def _networks(k: int):
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model("preact_resnet20"))
    return models[0] if k == 1 else StackedResNet.from_models(models)


def _batches(k: int, sizes):
    g = torch.Generator().manual_seed(0)
    return [(stack_inputs([torch.randn(n, 3, 32, 32, generator=g) for _ in range(k)]),
             torch.randint(0, 10, (k, n), generator=g)) for n in sizes]


def _engines(k: int, batch_size: int = 8):
    model = _networks(k)
    twin = copy.deepcopy(model)
    recipe = get_recipe("seed")
    eager = EagerEngine(model, make_optimizer(model, recipe, FUSED), FUSED, batch_size)
    graphs = ReplayByCalling()
    graph = GraphEngine(twin, make_optimizer(twin, recipe, FUSED), FUSED, batch_size, graphs=graphs)
    return eager, graph, graphs


def _run(engine, batches, lrs):
    outputs = []
    for (images, labels), lr in zip(batches, lrs):
        engine.set_lr(lr)
        loss, errors = engine.step(images, labels)
        outputs.append((loss.clone(), errors.clone()))
    return outputs


@pytest.mark.parametrize("k", [1, 2], ids=["one network", "a stack of 2"])
def test_the_graph_engine_replays_exactly_the_eager_step(k):
    """Warm-up steps, the capture, replays from static buffers, an lr changed after the capture
    and an eager smaller batch between replays: weights, momentum, BN statistics and every
    step's outputs equal the eager engine's bit for bit."""
    eager, graph, graphs = _engines(k)
    sizes = [8] * (WARMUP_STEPS + 2) + [5, 8, 8]
    lrs = [0.1] * (WARMUP_STEPS + 3) + [0.01] * 2
    batches = _batches(k, sizes)
    eager_out, graph_out = _run(eager, batches, lrs), _run(graph, batches, lrs)
    assert len(graphs.captured) == 1 and graph.warmed_up == WARMUP_STEPS
    for (a, b), (c, d) in zip(eager_out, graph_out):
        assert torch.equal(a, c) and torch.equal(b, d) and a.shape == (k,)
    for name, tensor in eager.model.state_dict().items():
        assert torch.equal(tensor, graph.model.state_dict()[name]), name
    for p, q in zip(eager.model.parameters(), graph.model.parameters()):
        assert torch.equal(eager.optimizer.state[p]["momentum_buffer"], graph.optimizer.state[q]["momentum_buffer"])


def test_the_graph_engine_captures_train_step_on_its_static_buffers(monkeypatch):
    """What is captured is `train_step` itself, called on the engine's static input buffers
    (not on the batch of the step that captures), and the lr is one tensor every group reads."""
    _, graph, graphs = _engines(1)
    calls = []
    monkeypatch.setattr("reproresnet.engine.train_step",
                        lambda *args: calls.append(args) or train_step(*args))
    batches = _batches(1, [8] * (WARMUP_STEPS + 2))
    _run(graph, batches, [0.1] * len(batches))
    images, labels = calls[WARMUP_STEPS][2:4]  # the capture's step
    assert images is graph.images and labels is graph.labels and images is not batches[WARMUP_STEPS][0]
    assert torch.equal(graph.images, batches[-1][0])  # each replay's batch copied in
    assert all(group["lr"] is graph.lr_tensor for group in graph.optimizer.param_groups)
    graph.set_lr(0.02)
    assert graph.lr_tensor.item() == pytest.approx(0.02)


def test_the_graph_engine_needs_cuda_and_the_fused_sgd_and_names_a_failed_capture():
    model = _networks(1)
    recipe = get_recipe("seed")
    with pytest.raises(EngineError, match="CUDA device and the fused SGD"):
        GraphEngine(model, make_optimizer(model, recipe, FUSED), FUSED, 8)  # real CUDA graphs, CPU model
    plain = Speedups(False, False, False)
    with pytest.raises(EngineError, match="fused SGD"):
        GraphEngine(model, make_optimizer(model, recipe, plain), plain, 8, graphs=ReplayByCalling())

    class Broken(ReplayByCalling):
        def capture(self, step):
            raise RuntimeError("operation not permitted when stream is capturing")

    engine = GraphEngine(model, make_optimizer(model, recipe, FUSED), FUSED, 8, graphs=Broken())
    batches = _batches(1, [8] * (WARMUP_STEPS + 1))
    with pytest.raises(EngineError, match="capturing the training step as a CUDA graph failed: RuntimeError: "
                                          "operation not permitted"):
        _run(engine, batches, [0.1] * len(batches))


def test_an_engine_is_chosen_for_the_device_and_one_that_cannot_run_is_refused():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    config = TrainConfig(out="x")
    assert resolve_engine(config, cpu, distributed=False) == "eager"
    assert resolve_engine(config, cuda, distributed=False) == "graph"
    assert resolve_engine(config, cuda, distributed=True) == "eager"
    assert resolve_engine(TrainConfig(out="x", compile=True), cuda, distributed=False) == "eager"
    for config, device, words in [(TrainConfig(out="x", engine="graph"), cpu, "needs a CUDA device"),
                                  (TrainConfig(out="x", engine="graph"), cuda, "torchrun"),
                                  (TrainConfig(out="x", engine="graph", compile=True), cuda, "--compile")]:
        with pytest.raises(ConfigError, match=f"engine='graph' .*{words}.*use --engine eager"):
            resolve_engine(config, device, distributed=words == "torchrun")
    with pytest.raises(ConfigError, match=r"engine='jit' is not valid: expected one of \['eager', 'graph'\]"):
        TrainConfig(out="x", engine="jit")


def test_train_with_the_graph_engine_on_a_cpu_stops_with_one_line(tmp_path, capsys):
    from conftest import argv, run_cli
    code, err = run_cli(capsys, argv(tmp_path / "run", {"--engine": "graph"}))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "engine='graph' needs a CUDA device" in err
    assert not (tmp_path / "run" / records.RUN_FILE).exists()


class AlarmDuringCapture(ReplayByCalling):
    """A capture during which SIGALRM arrives: sent to this thread (`raise_signal`, as an
    interval timer's alarm lands on the main thread) and to the process while another thread
    could take it (`os.kill`), with Python instructions after each, where a handler would run."""

    def __init__(self):
        super().__init__()
        self.capturing = False

    def capture(self, step):
        import os
        import signal
        import time
        self.capturing = True
        signal.raise_signal(signal.SIGALRM)
        os.kill(os.getpid(), signal.SIGALRM)
        time.sleep(0.05)
        sum(range(10_000))
        self.capturing = False
        return super().capture(step)


class BudgetSpent(Exception):
    pass


def test_an_alarm_during_the_capture_is_raised_right_after_it_not_inside(monkeypatch):
    """The self-check's budget alarm raises from its SIGALRM handler; raised inside
    `torch.cuda.graph`'s enter or exit it would leave the capture stream current. It must
    come once, after the capture, with the captured step in place, and not as a failed capture."""
    import signal
    import threading
    model = _networks(1)
    graphs = AlarmDuringCapture()
    engine = GraphEngine(model, make_optimizer(model, get_recipe("seed"), FUSED), FUSED, 8, graphs=graphs)
    rang = []

    def ring(signum, frame):
        rang.append(graphs.capturing)
        raise BudgetSpent("budget spent")

    other = threading.Thread(target=threading.Event().wait, args=(2,), daemon=True)
    other.start()  # a thread that does not block SIGALRM: the kernel may hand it the os.kill
    previous = signal.signal(signal.SIGALRM, ring)
    try:
        batches = _batches(1, [8] * (WARMUP_STEPS + 1))
        with pytest.raises(BudgetSpent):  # not an EngineError: the capture itself succeeded
            _run(engine, batches, [0.1] * len(batches))
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert rang == [False]  # once, after the capture
    assert engine.replay is not None and len(graphs.captured) == 1
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGALRM}  # unblocked again


def test_precision_is_the_runs_setting_not_a_speedup_and_the_engine_steps_in_it():
    """bf16 changes what a run computes: the config says it (on by default on CUDA only), the
    record keeps it beside the speedups, and an engine's every step runs its forward pass in it."""
    assert (TrainConfig().precision("cuda"), TrainConfig().precision("cpu")) == ("bf16", "fp32")
    assert (TrainConfig(bf16=False).precision("cuda"), TrainConfig(bf16=True).precision("cpu")) == ("fp32", "bf16")
    assert "bf16" not in Speedups.__dataclass_fields__
    plain = Speedups(False, False, False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    seen = []
    model[1].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    images, labels = torch.randn(4, 3, 4, 4), torch.randint(0, 10, (1, 4))
    for precision in ("bf16", "fp32"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        EagerEngine(model, optimizer, plain, 4, precision=precision).step(images, labels)
    assert seen == [torch.bfloat16, torch.float32]
