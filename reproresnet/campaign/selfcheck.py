"""Which way to train, judged step by step against the exact step and timed, in seconds, before
a campaign spends GPU time on it.

    python -m reproresnet selfcheck --device cuda --dataset folder:data/cifar10-jpeg --out selfcheck.json

A variant is an engine (`eager`, or `graph`: the step replayed as a CUDA graph), a precision
(fp32 with TF32 off, or bf16 autocast), a memory layout (NCHW or NHWC = channels_last) and a
stack size K (the plan's K seeds of one network trained as one stacked network, `stacked.py`).

**The rule.** A variant is judged by single steps, never by a trajectory: a 110-layer network
amplifies any change of summation order (two fp32 computations of ResNet-110 that differ only
in it were 0.9 % apart after one step and 140 % after nine). The reference (the K networks
apart, eager fp32, NCHW) takes `PREPARE_STEPS` steps at the recipe's lr from each run's seed:
that is the start state, with momentum and moved BN statistics. Every judged step of every
variant starts from an exact copy of it (weights, BN statistics and momentum buffers copied in
place into the variant's own tensors, which is what a captured CUDA graph reads) and takes one
SGD step through the Engine API and `train.set_step_lr`, as the loop does, on the same batch of
each run's own data; dropout is off (0) in the check's networks (a stack draws other masks
than K networks apart). Per network of the stack, three quantities are compared with the
exact step (the reference network in float64 from the same state on the same batch): the
step's loss, its gradient (read from the momentum buffer after the step, weight decay
included: `b' - momentum x b`) and the weights' update, each as a relative distance (|a - e|
/ |e|, L2 over all weights). The tolerance of each quantity is `TOLERANCE_FACTOR` x the floor
of the variant's precision measured in the same run: the largest distance from the exact step
of that precision's eager, unstacked steps, in either layout, at any judged step, never less
than the precision's unit roundoff. Both layouts and every step, because which of them lands
far from float64 varies: convolution algorithms differ in accuracy (ResNet-110's update, NCHW
and NHWC: 0.9 % and 8.7 % from float64 on a CPU), and on a CPU the same judged step of a
ResNet-20 (batch 8) had its gradient 1e-6 from float64 in one layout and 1.6e-3 in the other. So a
bf16 variant is judged against a bf16 floor, and it passes only if its fp32 twin (same
engine, layout and K) passes too: the machinery is judged where the floor is tight.

The judged steps (`JUDGED`) come after the events a graph engine can get wrong: the first
after the capture, with the lr changed since it and a new batch in the static inputs; an
epoch's smaller last batch (run eagerly); the full step after it; and a tenfold lr drop with
the momentum buffers rescaled in place (Lasagne's form; the tensors a graph reads). A graph
that baked in its lr, static inputs not refilled, a step after the smaller batch gone wrong,
a stacked loss that is a mean (lr/K), a run fed another run's batches, a skipped momentum
rescale: each moves a quantity of some judged step more than ten times past its tolerance
(tests/test_selfcheck.py plants each).

Each variant is then timed over further full steps (ms/step; images/s counts the K networks'
images; `seconds_per_step`, `images_per_second`, `stack` and `precision` are what the
campaign's scheduling reads). The choice: fp32 (the precision of every source) unless its
fastest passing variant takes more than `PRECISION_COST` times bf16's time per network-step;
then the fastest passing variant of that precision. Graph variants with K = 1 are candidates
too, so a slow grouped convolution leaves the graph engine to unstacked runs. The reference
always passes, so the eager fp32 path is the last fallback; where no other variant is tried
(one network per stack on a CPU) it is timed alone, not compared. The other networks of the
plan are then judged the same way with the chosen variant (floors of its precision; no
timing), and, where that trains the networks apart, with the fastest stacked variant that
passed too; one where the chosen variant fails is trained eagerly and unstacked at the chosen
precision. The device generator's augmentation statistics are checked last.

`--budget` is kept: a check still running when it is spent is interrupted (SIGALRM) and listed
as unchecked; "complete" (true only if nothing was cut) and the top-level "ok" are written
last. A campaign reuses only a complete record of this format whose chosen variant passed
(`variants.selfcheck_state`). On a CPU the graph engine and bf16 are not tried (CUDA only) and
the check's batch is 8 images per network unless `--batch-size` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import records, rundir
from ..config import ConfigError, TrainConfig, cpu_threads, distinct, select_device
from ..data import PAD, augment, device_splits, load_sources
from ..engine import WARMUP_STEPS, EagerEngine, exact_fp32, make_optimizer, synchronize
from ..reference import PLANNED_SEEDS, REPRODUCED
from ..stacked import merge_tensors, stacked_batch
from ..train import Stack, build_stack, epoch_seed, run_batches, set_step_lr
from .variants import SELFCHECK_FORMAT, Variant, reference_variant, selfcheck_state

FORMAT = SELFCHECK_FORMAT
TOLERANCE_FACTOR = 4.0  # a variant's distance from the exact step may be this many times its precision's floor
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "bf16": 2.0 ** -8}  # the least floor: one rounding of the format
PRECISION_COST = 1.5    # fp32 is kept unless its step takes more than this times bf16's
SIGMAS = 5.0            # augmentation frequencies: within 5 standard deviations of their expectation
PREPARE_STEPS = 2       # reference steps from the seeds' weights to the start state
CPU_BATCH = 8           # the check's images per network on a CPU, unless --batch-size
QUANTITIES = ("loss", "gradient", "update")


@dataclass(frozen=True)
class Judged:
    """One judged step: from the start state, at `lr` x the recipe's lr, the momentum buffers
    first multiplied by `momentum_scale`, on batch `batch` (cut to the smaller size if `smaller`)."""
    name: str
    batch: int
    lr: float
    momentum_scale: float = 1.0
    smaller: bool = False


# Batches 0 and 1 take the reference to the start state (and a variant through its warm-up
# and capture, at the recipe's lr); each judged step has a batch of its own.
JUDGED = (Judged("after capture", 2, 0.1),                      # lr changed since the capture; new inputs
          Judged("smaller batch", 3, 0.1, smaller=True),        # eager, between replays
          Judged("after smaller batch", 4, 0.1),                # the replay after it
          Judged("momentum rescaled", 5, 0.01, momentum_scale=10.0))  # tenfold lr drop, Lasagne's rescale
BATCHES = 2 + len(JUDGED)


def candidates(device: torch.device, k: int, precision: str | None = None) -> list[Variant]:
    """The variants worth judging and timing on `device`, most likely chosen first (a budget cut
    keeps them); a bf16 variant comes with its fp32 twin, which judges its machinery."""
    if device.type != "cuda":
        found = [Variant("eager", False, False, k)]
    else:
        found = [Variant("graph", False, True, k), Variant("graph", True, True, k),
                 Variant("graph", False, True, 1), Variant("graph", True, True, 1), Variant("eager", False, True, k),
                 Variant("graph", False, False, k), Variant("graph", True, False, k)]
    wanted = [v for v in found if precision in (None, v.precision)
              or (precision == "bf16" and dataclasses.replace(v, bf16=True) in found)]
    return [v for v in dict.fromkeys(wanted) if v != reference_variant()]


def floor_variants(precision: str) -> list[Variant]:
    """The eager, unstacked steps of `precision` in both layouts: their distances from the exact
    step are the floor (for fp32, the first is the reference)."""
    return [Variant("eager", precision == "bf16", layout, 1) for layout in (False, True)]


# ---------------------------------------------------------------- the start state and the batches


def check_configs(configs: list[TrainConfig]) -> list[TrainConfig]:
    """The runs as the check builds them: dropout off where the network has it."""
    return [dataclasses.replace(c, dropout=0.0) if c.network_options().get("dropout") else c for c in configs]


def _build(variant: Variant, configs: list[TrainConfig], device, splits: list) -> list[Stack]:
    """The variant's stacks (one of K networks, or K stacks of one) on the runs' `splits`."""
    return [build_stack(group, part, device)
            for group, part in zip(variant.groups(variant.configs(configs)), variant.groups(splits))]


def _batches(stacks: list[Stack], count: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The first `count` full batches of each run's own data (its data order, augmentation and
    normaliser, from epoch 0 on): [step][run] -> (images, labels)."""
    recipe = stacks[0].recipe

    def batches(stack, run):
        for epoch in itertools.count():
            epoch_batches = run_batches(stack, run, epoch_seed(run.config.seed, epoch))
            yield from ((images, labels) for images, labels in epoch_batches if len(labels) == recipe.batch_size)

    if len(stacks[0].runs[0].splits.train) < recipe.batch_size:
        raise ConfigError(f"the self-check needs a full batch of {recipe.batch_size} images; the training split "
                          f"has {len(stacks[0].runs[0].splits.train)}")
    return list(itertools.islice(zip(*(batches(stack, run) for stack in stacks for run in stack.runs)), count))


def _state(stack: Stack) -> dict:
    """A network's (K = 1) weights, BN statistics and momentum buffers, by name, copied."""
    momentum = {name: stack.optimizer.state[p]["momentum_buffer"].clone()
                for name, p in stack.model.named_parameters()}
    return {"model": {name: t.detach().clone() for name, t in stack.model.state_dict().items()}, "momentum": momentum}


def _merged(states: list[dict]) -> dict:
    """K networks' states as their stack's (`stacked.merge_tensors`; K = 1: the network's)."""
    return {part: {name: merge_tensors(name, [state[part][name] for state in states]) for name in states[0][part]}
            for part in ("model", "momentum")}


@torch.no_grad()
def _load(stack: Stack, state: dict) -> None:
    """`state` copied into the stack's own tensors, in place: what a captured graph reads."""
    for name, tensor in stack.model.state_dict().items():
        tensor.copy_(state["model"][name])
    for name, p in stack.model.named_parameters():
        stack.optimizer.state[p]["momentum_buffer"].copy_(state["momentum"][name])


def _flat(tensors, k: int) -> torch.Tensor:
    """[K, N] float64: each network's tensors flattened, in a single network's order."""
    return torch.cat([t.detach().reshape(k, -1).double() for t in tensors], 1)


# ---------------------------------------------------------------- judged steps


def _judged_steps(stack: Stack, batches, first_run: int, start: list[dict], setup: int) -> list[dict]:
    """`setup` full steps (a graph engine's warm-up and capture), then each judged step from the
    start state: per step, the K networks' loss [K], gradient and update [K, N] (float64)."""
    runs = range(first_run, first_run + stack.k)
    recipe, k = stack.recipe, stack.k
    dtype = next(stack.model.parameters()).dtype  # float64 for the exact step
    smaller = recipe.batch_size - max(1, recipe.batch_size // 4)

    def batch(index, cut=False):
        images, labels = stacked_batch([(images[:smaller], labels[:smaller]) if cut else (images, labels)
                                        for images, labels in (batches[index][run] for run in runs)],
                                       stack.speedups.channels_last)
        return images.to(dtype), labels

    for index in range(setup):
        set_step_lr(stack, recipe.lr)
        stack.engine.step(*batch(index % 2))
    state = _merged(start[first_run:first_run + k])
    names = [name for name, _ in stack.model.named_parameters()]
    weights0, momentum0 = (_flat([state[part][name] for name in names], k) for part in ("model", "momentum"))
    results = []
    for judged in JUDGED:
        _load(stack, state)
        set_step_lr(stack, recipe.lr * judged.lr, judged.momentum_scale)
        images, labels = batch(judged.batch, judged.smaller)
        loss, _ = stack.engine.step(images, labels)
        parameters = list(stack.model.parameters())
        results.append({"loss": loss.double() / labels.shape[1], "update": _flat(parameters, k) - weights0,
                        "gradient": _flat([stack.optimizer.state[p]["momentum_buffer"] for p in parameters], k)
                        - recipe.momentum * judged.momentum_scale * momentum0})
    return results


def _time(stack: Stack, batches, timed: int) -> float | None:
    """Seconds per full step of `stack` over `timed` steps (its first runs' first judged batch)."""
    if not timed:
        return None
    images, labels = stacked_batch([batches[JUDGED[0].batch][run] for run in range(stack.k)],
                                   stack.speedups.channels_last)
    synchronize(stack.device)
    began = time.perf_counter()
    for _ in range(timed):
        stack.engine.step(images, labels)
    synchronize(stack.device)
    return (time.perf_counter() - began) / timed


def _distances(results: list[dict], exact: list[dict], rows: slice) -> list[dict]:
    """Per judged step and quantity, each network's relative distance from the exact step [K]."""
    out = []
    for result, truth in zip(results, exact):
        loss, exact_loss = result["loss"], truth["loss"][rows]
        out.append({"loss": ((loss - exact_loss).abs() / exact_loss.abs()).cpu(),
                    **{q: ((result[q] - truth[q][rows]).norm(dim=1) / truth[q][rows].norm(dim=1)).cpu()
                       for q in ("gradient", "update")}})
    return out


def _steps_of(variant: Variant, stacks: list[Stack], batches, start: list[dict], exact: list[dict] | None,
              timed: int) -> tuple[list[dict], float | None]:
    """The variant's judged steps on every stack: (distances per step [all K], seconds per step);
    without `exact`, the raw results (the exact step itself)."""
    setup = WARMUP_STEPS + 1 if variant.engine == "graph" else 1
    parts, seconds, offset = [], None, 0
    with exact_fp32():
        for stack in stacks:
            results = _judged_steps(stack, batches, offset, start, setup)
            parts.append(results if exact is None else _distances(results, exact, slice(offset, offset + stack.k)))
            if offset == 0:
                seconds = _time(stack, batches, timed)
            offset += stack.k
    joined = [{q: torch.cat([part[step][q] for part in parts]) for q in parts[0][step]} for step in range(len(JUDGED))]
    return joined, seconds


# ---------------------------------------------------------------- the baseline and a variant's verdict


@dataclass
class Baseline:
    """What every variant of one network is judged against, measured once: the runs' configs
    (dropout off), their batches, the start state of each network, the exact step's results,
    the floors of each precision measured, and the distances behind them."""
    configs: list[TrainConfig]
    splits: list            # each run's data on the device
    batches: list
    start: list[dict]
    exact: list[dict]
    floors: dict            # precision -> quantity -> floor
    floor_distances: dict   # variant name -> judged step -> quantity -> largest distance over the networks
    reference: dict         # the reference's own verdict, timed


def baseline(configs: list[TrainConfig], device, sources: dict, precisions=("fp32",), timed: int = 0) -> Baseline:
    """The start state (reference steps), the exact step (float64) from it, and each precision's
    floor from its eager unstacked steps in both layouts."""
    configs = check_configs(configs)
    began = time.perf_counter()
    reference = reference_variant()
    splits = device_splits(configs, device, load_sources(configs, device, sources))
    stacks = _build(reference, configs, device, splits)
    batches = _batches(stacks, BATCHES)
    with exact_fp32():
        for index, stack in enumerate(stacks):
            for step in range(PREPARE_STEPS):
                set_step_lr(stack, stack.recipe.lr)
                stack.engine.step(*stacked_batch([batches[step][index]], False))
    start = [_state(stack) for stack in stacks]
    exact, _ = _steps_of(reference, [_in_float64(stack) for stack in _build(reference, configs, device, splits)],
                         batches, start, None, 0)
    distances, seconds = {}, None
    for precision in precisions:
        for variant in floor_variants(precision):
            timed_here = timed if variant == reference else 0
            built = stacks if variant == reference else _build(variant, configs, device, splits)
            distances[variant.name], step_seconds = _steps_of(variant, built, batches, start, exact, timed_here)
            seconds = step_seconds if variant == reference else seconds
    floors = {precision: {q: max(UNIT_ROUNDOFF[precision], *(float(step[q].max()) for v in floor_variants(precision)
                                                             for step in distances[v.name])) for q in QUANTITIES}
              for precision in precisions}
    result = Baseline(configs, splits, batches, start, exact, floors, {}, {})
    result.floor_distances = {name: _largest(steps) for name, steps in distances.items()}
    result.reference = verdict(reference, distances[reference.name], result, seconds, began)
    return result


def _in_float64(stack: Stack) -> Stack:
    """The reference stack in float64, with an unfused SGD (the exact step)."""
    model = stack.model.double()
    speedups = dataclasses.replace(stack.speedups, fused_optimizer=False)
    optimizer = make_optimizer(model, stack.recipe, speedups)
    engine = EagerEngine(model, optimizer, speedups, stack.recipe.batch_size, precision=stack.precision)
    return dataclasses.replace(stack, model=model, optimizer=optimizer, engine=engine, speedups=speedups)


def _largest(steps: list[dict]) -> dict:
    """Per judged step and quantity, the largest distance over the networks."""
    return {judged.name: {q: float(step[q].max()) for q in QUANTITIES} for judged, step in zip(JUDGED, steps)}


def verdict(variant: Variant, distances: list[dict], base: Baseline, seconds: float | None, began: float) -> dict:
    """A variant's record: per judged step and quantity its largest distance, and the worst ratio
    of a distance to its tolerance; ok if every quantity is finite and within tolerance."""
    floors = base.floors[variant.precision]
    finite = all(bool(torch.isfinite(step[q]).all()) for step in distances for q in QUANTITIES)
    ratios = [(float(step[q].max()) / (TOLERANCE_FACTOR * floors[q]), judged.name, q)
              for judged, step in zip(JUDGED, distances) for q in QUANTITIES]
    worst = max(ratios, key=lambda item: item[0] if item[0] == item[0] else float("inf"))
    images = variant.stack * base.configs[0].resolved_recipe().batch_size
    return {**variant_fields(variant), "ok": finite and worst[0] <= 1.0, "finite": finite,
            "worst": {"ratio": worst[0], "step": worst[1], "quantity": worst[2]},
            "ratios": {q: max(r for r, _, quantity in ratios if quantity == q) for q in QUANTITIES},
            "distances": _largest(distances), "seconds_per_step": seconds,
            "images_per_second": images / seconds if seconds else None,
            "setup_and_steps_seconds": round(time.perf_counter() - began, 2)}


def judge(variant: Variant, base: Baseline, device, timed: int = 0) -> dict:
    """The variant's judged steps against the exact step, timed over `timed` further steps."""
    began = time.perf_counter()
    stacks = _build(variant, base.configs, device, base.splits)
    distances, seconds = _steps_of(variant, stacks, base.batches, base.start, base.exact, timed)
    return verdict(variant, distances, base, seconds, began)


def twin_rule(results: list[dict]) -> None:
    """A bf16 variant passes only if its fp32 twin (same engine, layout, K) passed: the
    machinery is judged where the floor is tight."""
    tried = {r["variant"]: r for r in results}
    for result in results:
        if result.get("precision") == "bf16" and result.get("ok"):
            twin = dataclasses.replace(Variant.from_name(result["variant"]), bf16=False).name
            if not (tried.get(twin) or {}).get("ok"):
                result.update(ok=False, why=f"its fp32 twin {twin} did not pass")


def choose(results: list[dict], precision: str | None = None, stack: int | None = None) -> tuple[str, str]:
    """(variant name, why): by the time one network's step takes (a step of a stack of K trains
    K networks), fp32 unless it costs more than PRECISION_COST x bf16's (or `precision` if
    given), then the fastest variant of that precision (and of `stack` networks, if given)
    that passed."""
    def cost(result):
        return result["seconds_per_step"] / result["stack"]

    passed = [r for r in results if r.get("ok") and r.get("seconds_per_step") and stack in (None, r["stack"])]
    fastest = {p: min((r for r in passed if r["precision"] == p), key=cost, default=None)
               for p in ("fp32", "bf16") if precision in (None, p)}
    fp32, bf16 = fastest.get("fp32"), fastest.get("bf16")
    if fp32 is None and bf16 is None:
        fallback = dataclasses.replace(reference_variant(), bf16=precision == "bf16")
        return fallback.name, f"no variant{f' of {stack} networks' if stack else ''} passed and was timed: " \
                              f"eager, unstacked"
    if precision is not None:
        return (fp32 or bf16)["variant"], f"the fastest {precision} variant that passed ({precision} asked for)"
    if bf16 is None:
        return fp32["variant"], "the fastest fp32 variant that passed (bf16 not measured or not passed)"
    ratio = cost(fp32) / cost(bf16)
    numbers = (f"{fp32['variant']} {1e3 * cost(fp32):.2f} ms per network-step against {bf16['variant']} "
               f"{1e3 * cost(bf16):.2f}: fp32 costs {ratio:.2f}x")
    if ratio > PRECISION_COST:
        return bf16["variant"], f"bf16, the fastest that passed: {numbers}, over {PRECISION_COST}x"
    return fp32["variant"], f"fp32 (the sources' precision), the fastest that passed: {numbers}, " \
                            f"within {PRECISION_COST}x"


def check_augmentation(device: torch.device, n: int = 20000) -> dict:
    """Flip rate and crop offsets drawn by the device's generator, read back from images
    whose channels encode each pixel's row and column."""
    grid = torch.arange(1, 33, dtype=torch.float32, device=device)
    images = torch.stack([grid[:, None].expand(32, 32), grid[None, :].expand(32, 32),
                          torch.zeros(32, 32, device=device)]).expand(n, 3, 32, 32).contiguous()
    out = augment(images, "per_image", torch.Generator(device).manual_seed(0))
    flipped = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    rows = (out[:, 0, 16, 16] - 13).long()                        # the row offset, 0..8
    cols = torch.where(flipped, out[:, 1, 16, 16] - 12, out[:, 1, 16, 16] - 13).long()
    choices = 2 * PAD + 1
    p = 1 / choices
    sigma_offset, sigma_flip = (p * (1 - p) / n) ** 0.5, (0.25 / n) ** 0.5
    row_freq = torch.bincount(rows.clamp(0, choices), minlength=choices + 1)[:choices].float() / n
    col_freq = torch.bincount(cols.clamp(0, choices), minlength=choices + 1)[:choices].float() / n
    flip_rate = flipped.float().mean().item()
    worst = max((row_freq - p).abs().max().item(), (col_freq - p).abs().max().item())
    ok = (abs(flip_rate - 0.5) <= SIGMAS * sigma_flip and worst <= SIGMAS * sigma_offset
          and abs(row_freq.sum().item() - 1) < 1e-6 and abs(col_freq.sum().item() - 1) < 1e-6)
    return {"ok": ok, "images": n, "flip_rate": flip_rate, "row_offset_freq": row_freq.tolist(),
            "col_offset_freq": col_freq.tolist(), "tolerance": f"{SIGMAS:g} standard deviations"}


# ---------------------------------------------------------------- the whole check


def selfcheck(plan: dict[str, list[TrainConfig]], device, sources: dict | None = None, *, budget: float = 60.0,
              precision: str | None = None, stack: int | None = None, timed_steps: int | None = None, log=print,
              save=lambda record: None) -> dict:
    """Every check in turn within `budget` seconds, `save(record)` after each. `plan`: the
    configs of each network's runs (seeds apart; the first network's variants are judged and
    timed). `precision` ("fp32" or "bf16") and `stack` (networks per stack; default: all the
    seeds, or apart if that is faster) restrict the choice; `sources`: data sets already read."""
    device, sources = torch.device(device), sources or {}
    cuda = device.type == "cuda"
    timed = timed_steps if timed_steps is not None else (20 if cuda else 2)
    archs = list(plan)
    k = stack or len(plan[archs[0]])
    variants = candidates(device, k, precision)
    precisions = [p for p in ("fp32", "bf16") if p == "fp32" or any(v.precision == p for v in variants)]
    deadline = time.time() + budget
    first = plan[archs[0]]
    record = {"format": FORMAT, "created": records.now(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
              "arch": archs[0], "stack": k, "batch_size": first[0].resolved_recipe().batch_size,
              "rule": f"one step from a common start state ({PREPARE_STEPS} reference steps), per judged step: "
                      f"loss, gradient and update within {TOLERANCE_FACTOR:g} x the floor of the variant's "
                      f"precision (the largest distance from float64 of its eager unstacked steps, both layouts, "
                      f"every judged step; at least its unit roundoff); bf16 only beside a passing fp32 twin",
              "judged_steps": [dataclasses.asdict(judged) for judged in JUDGED], "timed_steps": timed,
              "tolerance_factor": TOLERANCE_FACTOR, "unit_roundoff": UNIT_ROUNDOFF, "precision_cost": PRECISION_COST,
              "dropout": _dropout_note(plan), "floors": {}, "floor_distances": {}, "variants": [],
              "not_tried": [] if cuda else ["graph engine and bf16: CUDA only"], "networks": {}, "unchecked": []}

    def attempt(name, function, *args):
        began = time.time()
        with _alarm(deadline - began) as expired:
            try:
                result = None if expired() else function(*args)
            except Exception as error:  # a crash is a failed check, recorded with its message
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        if expired():  # cut by the budget
            record["unchecked"].append(name)
            log(f"selfcheck {name}: not checked (budget spent)")
            save(record)
            return None
        result["seconds"] = round(time.time() - began, 1)
        log(f"selfcheck {name}: {'ok' if result.get('ok', True) else 'FAILED'} ({result['seconds']} s)"
            + (f" {1e3 * result['seconds_per_step']:.2f} ms/step" if result.get("seconds_per_step") else "")
            + (f" worst {result['worst']['ratio']:.2g} x tolerance ({result['worst']['quantity']}, "
               f"{result['worst']['step']})" if "worst" in result else "")
            + (f" {result['error']}" if "error" in result else ""))
        save(record)
        return result

    measured = {}

    def reference():
        if not variants:  # nothing to judge against it: the reference alone, timed
            return reference_alone(first, device, sources, timed)
        measured["base"] = baseline(first, device, sources, precisions, timed)
        record.update(floors=measured["base"].floors, floor_distances=measured["base"].floor_distances)
        return measured["base"].reference

    result = attempt(f"{archs[0]} {reference_variant().name} (reference" +
                     (", exact step and floors)" if variants else ", timed)"), reference)
    if result is not None:
        record["variants"].append({**variant_fields(reference_variant()), **result})
    for variant in variants if "base" in measured else ():
        result = attempt(f"{archs[0]} {variant.name}", judge, variant, measured["base"], device, timed)
        if result is not None:
            record["variants"].append({**variant_fields(variant), **result})
    twin_rule(record["variants"])
    chosen, why = choose(record["variants"], precision, stack)
    record["chosen"] = {"variant": chosen, "why": why}
    tried = {r["variant"]: r for r in record["variants"]}
    record["networks"][archs[0]] = {"ok": tried[chosen]["ok"] if chosen in tried else None, "variant": chosen}
    stacked = _stacked_alternative(record["variants"], Variant.from_name(chosen), k)
    for arch in archs[1:]:
        record["networks"][arch] = attempt(f"{arch} {chosen}" + (f" and {stacked.name}" if stacked else ""),
                                           check_network, plan[arch][:k], device, sources, Variant.from_name(chosen),
                                           stacked) or {"ok": None, "note": "unchecked"}
    record["augmentation"] = attempt("augmentation statistics", check_augmentation, device)
    record["complete"] = not record["unchecked"]
    record["ok"] = all(r.get("ok") for r in record["variants"]) and record["complete"] and \
        all(n.get("ok") for n in record["networks"].values()) and (record["augmentation"] or {}).get("ok", False)
    log(f"selfcheck: chosen {chosen}: {why}")
    save(record)
    return record


def _stacked_alternative(results: list[dict], chosen: Variant, k: int) -> Variant | None:
    """Where `chosen` trains the networks apart, the fastest variant of K = `k` and its precision
    that passed: the other networks are judged with it too."""
    if chosen.stack >= k:
        return None
    name, _ = choose(results, chosen.precision, k)
    return Variant.from_name(name) if any(r["variant"] == name and r.get("ok") for r in results) else None


def _dropout_note(plan: dict[str, list[TrainConfig]]) -> str:
    trained = {arch: configs[0].network_options().get("dropout") for arch, configs in plan.items()}
    with_dropout = [f"{arch} {p:g}" for arch, p in trained.items() if p]
    return "off (0) in the check's networks" + (f"; trained with dropout: {', '.join(with_dropout)} (a stack "
                                                f"draws other masks than K networks apart)" if with_dropout else "")


def variant_fields(variant: Variant) -> dict:
    return {"variant": variant.name, "engine": variant.engine, "precision": variant.precision,
            "channels_last": variant.channels_last, "stack": variant.stack}


def reference_alone(configs: list[TrainConfig], device, sources: dict, timed: int) -> dict:
    """The reference's record where no variant is judged against it: timed, not compared (it
    defines the fp32 floor, so it would pass by construction)."""
    began = time.perf_counter()
    configs = check_configs(configs)
    stacks = _build(reference_variant(), configs, device, device_splits(configs, device,
                                                                        load_sources(configs, device, sources)))
    with exact_fp32():
        seconds = _time(stacks[0], _batches(stacks, JUDGED[0].batch + 1), timed)
    images = configs[0].resolved_recipe().batch_size
    return {**variant_fields(reference_variant()), "ok": True, "note": "nothing judged against it: timed only",
            "seconds_per_step": seconds, "images_per_second": images / seconds if seconds else None,
            "setup_and_steps_seconds": round(time.perf_counter() - began, 2)}


def check_network(configs: list[TrainConfig], device, sources: dict, variant: Variant,
                  stacked: Variant | None = None) -> dict:
    """`variant` judged on one more network (floors of its precision; not timed); and `stacked`,
    of the same precision, under "stacked" where given (the plan's stack, when `variant` trains
    the networks apart: whether this network could train stacked). The reference alone is
    not measured: it defines the floor."""
    if variant == reference_variant() and stacked is None:
        return {"ok": True, "variant": variant.name, "note": "the reference: nothing judged against it"}
    began = time.perf_counter()
    base = baseline(configs, device, sources, (variant.precision,))

    def judged(v):
        result = judge(v, base, device) if v != reference_variant() else base.reference
        return {key: result[key] for key in ("ok", "variant", "finite", "worst", "ratios", "distances")}

    return {**judged(variant), **({"stacked": judged(stacked)} if stacked else {}), "floors": base.floors,
            "seconds_measured": round(time.perf_counter() - began, 1)}


def variant_for(record: dict, arch: str) -> tuple[Variant, str]:
    """How the campaign trains `arch` after the check `record`: the chosen variant, or, where it
    failed on this network, eagerly and unstacked at the chosen precision; and why."""
    chosen = Variant.from_name(record["chosen"]["variant"])
    network = record["networks"].get(arch) or {}
    if network.get("ok") is False:  # None: not checked on this network (the budget), used as chosen
        fallback = dataclasses.replace(reference_variant(), bf16=chosen.bf16)
        worst = network.get("worst") or {}
        return fallback, (f"{fallback.name}: fallback, {chosen.name} failed the self-check on {arch} "
                          f"({worst.get('ratio', '?')} x tolerance: {worst.get('quantity', '?')}, "
                          f"{worst.get('step', '?')}{'; ' + network['error'] if 'error' in network else ''})")
    return chosen, f"{chosen.name}: {record['chosen']['why']}"


class _BudgetSpent(Exception):
    pass


@contextmanager
def _alarm(seconds: float):
    """Interrupt the block when `seconds` pass (SIGALRM, main thread): a check that overruns
    the budget would be killed with the slot's other work. Yields `expired()`: did the alarm
    fire, whatever exception it became."""
    fired = []
    if seconds <= 0:
        yield lambda: True
        return

    def ring(signum, frame):
        fired.append(True)
        raise _BudgetSpent(f"budget spent after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield lambda: bool(fired)
    except _BudgetSpent:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    from ..arguments import integer, positive_integer, positive_number
    parser = argparse.ArgumentParser(prog="python -m reproresnet selfcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(REPRODUCED),
                        metavar="NAME", help="networks to check; the first is timed (default: the three of the report)")
    parser.add_argument("--seeds", nargs="+", type=integer, default=list(PLANNED_SEEDS), metavar="K",
                        help=f"seeds of each network; their number is the stack size (default: the plan's, "
                             f"{' '.join(map(str, PLANNED_SEEDS))})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dataset", default="synthetic", help="cifar10 | cifar100 | folder:PATH | synthetic "
                                                               "(default: synthetic)")
    parser.add_argument("--recipe", default="seed", help="the campaign's recipe (default: seed)")
    parser.add_argument("--batch-size", type=integer, help=f"images per step and network (default: the recipe's on "
                                                       f"CUDA, {CPU_BATCH} on a CPU)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="only variants of this precision")
    parser.add_argument("--timed-steps", type=positive_integer, help="default: 20 on CUDA, 2 on a CPU")
    parser.add_argument("--budget", type=positive_number, help="seconds; later checks are skipped (default: 60 on "
                                                               "CUDA, 600 on a CPU)")
    parser.add_argument("--out", default="selfcheck.json", help="the record (default: selfcheck.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        distinct("--seeds", args.seeds)
        distinct("--archs", args.archs)
        device = select_device(args.device)
        batch_size = args.batch_size if args.batch_size is not None else None if device.type == "cuda" else CPU_BATCH
        plan = {arch: [TrainConfig(arch=arch, out=f"selfcheck/{arch}-seed{seed}", seed=seed, recipe=args.recipe,
                                   dataset=args.dataset, batch_size=batch_size, device=device.type)
                       for seed in args.seeds] for arch in args.archs}
    except ConfigError as error:
        print(f"reproresnet selfcheck: error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(cpu_threads()[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget is not None else (60.0 if device.type == "cuda" else 600.0)
    record = selfcheck(plan, device, budget=budget, precision=args.precision, timed_steps=args.timed_steps,
                       log=lambda line: print(line, flush=True),
                       save=lambda record: rundir.write_json(out, jsonable(record)))
    print(format_variants(record))
    state, why = selfcheck_state(record)
    print(f"selfcheck: {'all passed' if record['ok'] else 'not all passed (see above)'}; {state}: {why}; "
          f"record in {out}")
    return 0


def format_variants(record: dict) -> str:
    """The floors and tolerances, then the variant table: ms/step, images/s (K networks'
    images), each quantity's worst distance as a multiple of its tolerance, per network checked."""
    factor = record.get("tolerance_factor", TOLERANCE_FACTOR)
    lines = [f"floors: the largest distance from float64 of eager unstacked steps (both layouts, every judged "
             f"step); tolerance = {factor:g} x floor", f"{'precision':<10}"
             + "".join(f" {q + ' floor':>14} {'tolerance':>10}" for q in QUANTITIES)]
    for precision, floors in record.get("floors", {}).items():
        lines.append(f"{precision:<10}" + "".join(f" {floors[q]:>14.2e} {factor * floors[q]:>10.2e}" for q in QUANTITIES))
    lines.append(f"{'variant':<24} {'ok':>5} {'ms/step':>9} {'img/s':>7}"
                 + "".join(f" {q + '/tol':>13}" for q in QUANTITIES))
    rows = [(r, "") for r in record["variants"]] + [
        ({**n, "variant": n.get("variant", "?")}, f"  ({arch})") for arch, network in list(record["networks"].items())[1:]
        for n in (network, network.get("stacked")) if n]
    for r, where in rows:
        step, ratios, rate = r.get("seconds_per_step"), r.get("ratios") or {}, r.get("images_per_second")
        lines.append(f"{r['variant']:<24} {str(r.get('ok')):>5} {f'{1e3 * step:.2f}' if step else 'not timed':>9} "
                     f"{f'{rate:.0f}' if rate else '—':>7}"
                     + "".join(f" {ratios.get(q, float('nan')):>13.3g}" for q in QUANTITIES) + where
                     + (f"  {r['error']}" if "error" in r else "") + (f"  {r['why']}" if "why" in r else "")
                     + (f"  {r['note']}" if "note" in r else ""))
    lines.append(f"chosen: {record['chosen']['variant']} ({record['chosen']['why']})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
