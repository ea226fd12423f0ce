"""What only the device can tell, measured in a GPU slot's first seconds: the campaign runs
`probe` first, in its own process (torch imported once), and keeps the record in
`_campaign/probe.json`, which travels in the bundle. bench/README.md says how to read it.

- `capture`: a training step with a dropout mask, warmed up, captured as a CUDA graph by the
  graph engine's own capture (`engine.CudaGraphs`, SIGALRM held) and replayed with the
  learning rate changed after the capture through the engine's lr tensor (`Engine.set_lr`).
  Its loss is `sum(dropout(x) * w)` on x = 1, so each replay's update (momentum 0.9, fused
  SGD) gives back the lr it read and the mask it drew: every replay must read the lr set
  before it (`lr_read`) and draw a fresh mask (`mask_changed`, the fraction of positions whose
  mask differs from the replay before: 2p(1-p) = 0.5 when fresh, 0 when baked in).
  `first_capture_seconds`: that first capture of the process.
- `convolutions`: the plan's networks' convolutions, stage by stage (3x3 at each stage's width;
  bottleneck networks also their 1x1 from four times it), at the plan's batch, NHWC, in fp32
  (TF32 off) and bf16: a forward and backward pass of K networks' convolutions as one grouped
  convolution (how `stacked.py` trains K networks) and as K separate ones, each timed as a CUDA
  graph of `REPS` passes, replayed (the graph engine's launch cost): `grouped_ms`,
  `separate_ms` and `speedup` = separate / grouped (above 1: stacking pays).
  `autotune_seconds`: each shape's first pass with cuDNN's benchmark mode (its autotuning)
  less a later one, summed in `autotune_seconds_total`.

Within `budget` seconds (default 20; what is left unmeasured is listed in `unmeasured`). On a
CPU the record says it needs CUDA, in well under a second; the functions themselves run on a
CPU with a stand-in for the graphs (tests/test_slot.py).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..architectures import ARCHITECTURES
from ..engine import CudaGraphs, Engine, Speedups, alarm_held, exact_fp32, synchronize

FORMAT = "reproresnet-probe/1"
BUDGET = 20.0
REPS = 10          # passes per timed graph
DROPOUT = 0.5
LRS = (0.1, 0.1, 0.01, 0.01)  # one per replay: the lr falls tenfold after two replays
MOMENTUM = 0.9


# ---------------------------------------------------------------- capture and replay


class _Dropped(torch.nn.Module):
    """loss = sum(dropout(x) * weight): its gradient is the dropped input itself."""

    def __init__(self, n: int, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n, device=device))

    def forward(self, x):
        dropped = F.dropout(x, DROPOUT, training=True)
        return dropped, (dropped * self.weight).sum()


def capture_check(device, graphs=CudaGraphs, n: int = 1 << 16) -> dict:
    """A dropout step captured and replayed with the lr changed after the capture (see the
    module's docstring); `graphs`: CUDA graphs, or a stand-in on a CPU."""
    torch.manual_seed(0)
    model = _Dropped(n, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LRS[0], momentum=MOMENTUM, fused=True)
    engine = Engine(model, optimizer, Speedups(channels_last=False, compile=False, fused_optimizer=True), n)
    x = torch.ones(n, device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        dropped, loss = model(x)
        loss.backward()
        optimizer.step()
        return dropped.detach()

    engine.set_lr(LRS[0])
    momentum = graphs.warm_up(step).clone()  # SGD's first step: its momentum is the gradient
    synchronize(device)
    began = time.perf_counter()
    with alarm_held():
        replay = graphs.capture(step)
    synchronize(device)
    first_capture = time.perf_counter() - began
    lr_read, changed, previous = [], [], momentum != 0
    for lr in LRS:
        engine.set_lr(lr)
        before = model.weight.detach().clone()
        dropped = replay().clone()
        momentum = MOMENTUM * momentum + dropped
        update = before - model.weight.detach()                    # lr x momentum
        lr_read.append((update @ momentum / (momentum @ momentum)).item())
        changed.append(((dropped != 0) != previous).float().mean().item())
        previous = dropped != 0
    lr_ok = all(abs(read - lr) <= 1e-3 * lr for read, lr in zip(lr_read, LRS))
    fresh = all(fraction > 0.25 for fraction in changed)
    return {"ok": lr_ok and fresh, "lr_set": list(LRS), "lr_read": lr_read, "lr_ok": lr_ok,
            "mask_changed": changed, "fresh_masks": fresh, "dropout": DROPOUT,
            "first_capture_seconds": round(first_capture, 4)}


# ---------------------------------------------------------------- grouped against separate convolutions


def conv_shapes(batches: dict[str, int]) -> list[dict]:
    """The convolutions each network (name -> its batch) spends its steps in, one per stage and
    kind, each shape once."""
    shapes = {}
    for arch, batch in batches.items():
        spec = ARCHITECTURES[arch]
        for width, size in zip(spec.widths, (32, 16, 8)):
            kinds = [(width, 3)] + ([(4 * width, 1)] if spec.block == "bottleneck" else [])
            for inputs, kernel in kinds:
                key = (inputs, width, kernel, size, batch)
                shapes.setdefault(key, {"network": arch, "in": inputs, "out": width, "kernel": kernel,
                                        "size": size, "batch": batch})
    return list(shapes.values())


def _passes(shape: dict, k: int, grouped: bool, dtype, device):
    """A forward and backward pass of k networks' convolution of `shape`, grouped or apart."""
    def tensor(*size, grad=True):
        return torch.randn(*size, device=device, dtype=dtype).to(memory_format=torch.channels_last) \
            .requires_grad_(grad)
    b, c, o, s, kernel = shape["batch"], shape["in"], shape["out"], shape["size"], shape["kernel"]
    n = 1 if grouped else k
    group = k if grouped else 1
    xs = [tensor(b, c * group, s, s) for _ in range(n)]
    ws = [tensor(o * group, c, kernel, kernel) for _ in range(n)]
    grads = [tensor(b, o * group, s, s, grad=False) for _ in range(n)]

    def run():
        for x, w, grad in zip(xs, ws, grads):
            F.conv2d(x, w, padding=kernel // 2, groups=group).backward(grad)
    return run


def _seconds(run, device) -> float:
    synchronize(device)
    began = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - began


def _ms_per_pass(run, device, reps: int = REPS) -> float:
    """One pass's milliseconds: on CUDA, `reps` passes captured as one graph and replayed (the
    median of 3 replays, by CUDA events); on a CPU, `reps` passes as called."""
    if device.type != "cuda":
        return 1e3 * _seconds(lambda: [run() for _ in range(reps)], device) / reps
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # torch's capture recipe: a warm-up pass on a side stream
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with alarm_held(), torch.cuda.graph(graph):
        for _ in range(reps):
            run()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def conv_timing(shape: dict, precision: str, device, k: int = 3, reps: int = REPS) -> dict:
    """`shape`'s pass for k networks, grouped and apart, in `precision` (fp32: TF32 off)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    row = {**shape, "precision": precision, "k": k}
    tuning = 0.0
    with exact_fp32():
        for name, grouped in (("grouped", True), ("separate", False)):
            run = _passes(shape, k, grouped, dtype, device)
            first = _seconds(run, device)  # cuDNN autotunes the shape here (benchmark mode)
            tuning += max(0.0, first - _seconds(run, device))
            row[f"{name}_ms"] = _ms_per_pass(run, device, reps)
    row["speedup"] = row["separate_ms"] / row["grouped_ms"]
    row["autotune_seconds"] = round(tuning, 4)
    return row


# ---------------------------------------------------------------- the probe


def probe(device, batches: dict[str, int], budget: float = BUDGET, k: int = 3) -> dict:
    """The record: `capture` and `convolutions` on CUDA within `budget` seconds; on another
    device, that it needs CUDA. `batches`: the plan's networks and their batch sizes. Never
    raises: what failed is the finding (`error`), and the slot goes on."""
    device = torch.device(device)
    record = {"format": FORMAT, "device": str(device), "torch": torch.__version__, "budget": budget}
    if device.type != "cuda":
        return {**record, "gpu": None, "ok": None,
                "skipped": "needs CUDA: graph capture and replay, cuDNN's convolutions and autotuning"}
    began = time.perf_counter()
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True  # as training runs (train.build_stack)
        record["gpu"] = torch.cuda.get_device_name(device)
        record["capture"] = _attempt(capture_check, device)
        record["convolutions"], record["unmeasured"] = [], []
        for shape in conv_shapes(batches):
            for precision in ("fp32", "bf16"):
                if time.perf_counter() - began > budget:
                    record["unmeasured"].append({**shape, "precision": precision})
                    continue
                record["convolutions"].append({**shape, "precision": precision,
                                               **_attempt(conv_timing, shape, precision, device, k)})
        record["autotune_seconds_total"] = round(sum(r.get("autotune_seconds", 0) for r in record["convolutions"]),
                                                 3)
        record["ok"] = record["capture"].get("ok", False)
    except Exception as error:  # noqa: BLE001 (outside the parts: the device itself, say)
        record.update(ok=False, error=f"{type(error).__name__}: {error}"[:300])
    finally:
        torch.backends.cudnn.benchmark = saved
    record["seconds"] = round(time.perf_counter() - began, 2)
    return record


def _attempt(function, *args) -> dict:
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 (what failed is the finding; the slot goes on)
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}


def format_probe(record: dict) -> str:
    """The record in a few lines: capture and replay, then grouped against separate."""
    if record.get("skipped"):
        return f"probe: {record['device']}: skipped ({record['skipped']})"
    if record.get("error"):
        return f"probe: {record['device']}: FAILED after {record['seconds']} s ({record['error']})"
    capture = record["capture"]
    lines = [f"probe: {record['gpu']}, torch {record['torch']}, {record['seconds']} s; capture "
             f"{'ok' if capture.get('ok') else 'FAILED'}: " + (capture["error"] if "error" in capture else
             f"first capture {capture['first_capture_seconds']:.3f} s, lr read {capture['lr_read']} for "
             f"{capture['lr_set']}, masks changed {[round(x, 2) for x in capture['mask_changed']]}"),
             f"{'network':<18} {'conv':>14} {'batch':>5} {'prec':>5} {'grouped ms':>10} {'separate ms':>11} "
             f"{'speedup':>7} {'autotune s':>10}"]
    for r in record["convolutions"]:
        conv = f"{r['in']}->{r['out']} {r['kernel']}x{r['kernel']} @{r['size']}"
        if "error" in r:
            lines.append(f"{r['network']:<18} {conv:>14} {r['batch']:>5} {r['precision']:>5}  {r['error']}")
            continue
        lines.append(f"{r['network']:<18} {conv:>14} {r['batch']:>5} {r['precision']:>5} {r['grouped_ms']:>10.3f} "
                     f"{r['separate_ms']:>11.3f} {r['speedup']:>7.2f} {r['autotune_seconds']:>10.3f}")
    lines.append(f"autotuning {record['autotune_seconds_total']} s in all; "
                 f"{len(record['unmeasured'])} shape(s) left unmeasured (budget {record['budget']:g} s)")
    return "\n".join(lines)
