"""Which way to train, checked against eager fp32 and timed, in seconds, before a campaign
spends GPU time on it.

    python -m reproresnet selfcheck --device cuda --dataset folder:data/cifar10-jpeg --out selfcheck.json

A variant is an engine (`eager`, or `graph`: the step replayed as a CUDA graph), a precision
(fp32 with TF32 off, or bf16 autocast), a memory layout (NCHW or NHWC = channels_last) and a
stack size K (the plan's K seeds of one network trained as one stacked network, `stacked.py`).
On the plan's first network each variant takes the same steps, on the same batches of the
real data (each run's own data pipeline), through the Engine API the training loop uses, as
the reference: the K networks apart, eager fp32, NCHW. The steps include a tenfold drop of the
learning rate and an epoch's smaller last batch between full ones, so that a graph that baked
in its learning rate, or broke after an eager step, moves the weights elsewhere. Per network,
the first step's loss (same weights: only the numerics differ) must agree within `LOSS_RTOL`
and the weights' total change within `UPDATE_RTOL` of the reference's (relative L2). A
variant's failure, crash included, is recorded with its numbers.

Each variant is then timed over further full steps (ms/step; images/s counts the K networks'
images). The choice: fp32 (the precision of every source) unless its fastest passing variant
takes more than `PRECISION_COST` times the step time of bf16's; then the fastest passing
variant of that precision. The reference always passes, so the eager fp32 path is the last
fallback. The other networks of the plan are then checked with the chosen variant (no timing);
one where it fails is trained eagerly and unstacked at the chosen precision. The device
generator's augmentation statistics are checked last.

`--budget` is kept: a check still running when it is spent is interrupted (SIGALRM) and listed
as unchecked; the record's top-level "ok" is written last, so a record without it was cut
short from outside. On a CPU the graph engine and bf16 are not tried (CUDA only): the
reference and the eager stacked variant run, with tiny steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import records, rundir
from .config import ConfigError, TrainConfig, Variant, distinct, reference_variant, select_device
from .data import PAD, augment, device_splits
from .engine import WARMUP_STEPS, exact_fp32, synchronize
from .reference import REPRODUCED
from .stacked import stacked_batch
from .train import Stack, build_stack, epoch_seed, run_batches

FORMAT = "reproresnet-selfcheck/2"
LOSS_RTOL = 0.02       # bf16 autocast moves a first-step cross-entropy of ~2.3 by well under 1%
UPDATE_RTOL = 0.10     # relative L2 distance between a variant's and the reference's weight change
PRECISION_COST = 1.5   # fp32 is kept unless its step takes more than this times bf16's
SIGMAS = 5.0           # augmentation frequencies: within 5 standard deviations of their expectation


def candidates(device: torch.device, k: int, precision: str | None = None) -> list[Variant]:
    """The variants worth timing on `device`, most likely chosen first (a budget cut keeps them)."""
    if device.type != "cuda":
        found = [Variant("eager", False, False, k)]
    else:
        found = [Variant("graph", False, True, k), Variant("graph", True, True, k), Variant("eager", False, True, k),
                 Variant("graph", False, False, k), Variant("graph", True, False, k)]
    return [v for v in dict.fromkeys(found) if precision in (None, v.precision) and v != reference_variant()]


# ---------------------------------------------------------------- one variant's steps


def _build(variant: Variant, configs: list[TrainConfig], device, sources: dict) -> list[Stack]:
    """The variant's stacks: one of K networks, or K stacks of one."""
    return [build_stack(group, device_splits(group, device, sources), device)
            for group in variant.groups(variant.configs(configs))]


def _batches(stacks: list[Stack], full: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """`full` batches of each run's own data (its data order, augmentation and normaliser, from
    epoch 0 on), then a smaller one, then two full ones: [step][run] -> (images, labels)."""
    recipe = stacks[0].recipe

    def batches(stack, run):
        for epoch in itertools.count():
            epoch_batches = run_batches(stack, run, epoch_seed(run.config.seed, epoch))
            yield from ((images, labels) for images, labels in epoch_batches if len(labels) == recipe.batch_size)

    if len(stacks[0].runs[0].splits.train) < recipe.batch_size:
        raise ConfigError(f"the self-check needs a full batch of {recipe.batch_size} images; the training split "
                          f"has {len(stacks[0].runs[0].splits.train)}")
    steps = list(itertools.islice(zip(*(batches(stack, run) for stack in stacks for run in stack.runs)), full + 3))
    smaller = recipe.batch_size - max(1, recipe.batch_size // 4)
    steps[full] = tuple((images[:smaller], labels[:smaller]) for images, labels in steps[full])
    return steps


def _lrs(stack: Stack, count: int) -> list[float]:
    """A hundredth of the recipe's lr, then a tenfold drop three steps before the smaller batch
    (on CUDA, after the first graph replays). The check compares computations, not training:
    at the recipe's lr, fp32 rounding alone moved two identical computations' weights 20-30%
    apart within six steps (ReLUs near zero switch, and each switch changes every later step);
    at a hundredth, 0.4-1% (a ResNet-20, batch 32)."""
    drop = count - 4
    return [stack.recipe.lr / 100 * (0.1 if index >= drop else 1.0) for index in range(count)]


def _flat_weights(stack: Stack) -> torch.Tensor:
    """[K, N]: each network's parameters, flattened in the order of a single network's."""
    return torch.cat([p.detach().float().reshape(stack.k, -1) for p in stack.model.parameters()], 1)


def _steps(stack: Stack, batches, first_run: int, timed: int) -> dict:
    """The compared steps on this stack's runs' batches, then `timed` full steps timed; as the
    loop runs them, fp32 with TF32 off."""
    with exact_fp32():
        return _steps_exact(stack, batches, first_run, timed)


def _steps_exact(stack: Stack, batches, first_run: int, timed: int) -> dict:
    runs = range(first_run, first_run + stack.k)
    stacked = [stacked_batch([step[index] for index in runs], stack.speedups.channels_last) for step in batches]
    before = _flat_weights(stack).clone()
    losses = []
    for (images, labels), lr in zip(stacked, _lrs(stack, len(stacked))):
        stack.engine.set_lr(lr)
        loss, _ = stack.engine.step(images, labels)
        losses.append(loss / labels.shape[1])
    change = _flat_weights(stack) - before
    losses = torch.stack(losses).tolist()  # one synchronisation
    seconds = None
    if timed:
        images, labels = stacked[0]
        synchronize(stack.device)
        began = time.perf_counter()
        for _ in range(timed):
            stack.engine.step(images, labels)
        synchronize(stack.device)
        seconds = (time.perf_counter() - began) / timed
    return {"first_losses": losses[0], "change": change, "seconds_per_step": seconds,
            "finite": all(x == x and abs(x) != float("inf") for step in losses for x in step)
            and bool(torch.isfinite(change).all())}


def trial(variant: Variant, stacks: list[Stack], batches, timed: int, began: float) -> dict:
    """A variant's steps on `batches`, timed, and its set-up and step times."""
    results, offset = [], 0
    for stack in stacks:
        results.append(_steps(stack, batches, offset, timed if offset == 0 else 0))
        offset += stack.k
    step = results[0]["seconds_per_step"]
    images = stacks[0].k * stacks[0].recipe.batch_size
    return {**variant_fields(variant), "first_losses": [x for r in results for x in r["first_losses"]],
            "change": torch.cat([r["change"] for r in results]), "finite": all(r["finite"] for r in results),
            "seconds_per_step": step, "images_per_second": images / step if step else None,
            "setup_and_steps_seconds": round(time.perf_counter() - began, 2)}


def measure(variant: Variant, configs: list[TrainConfig], device, sources: dict, full: int, timed: int,
            batches=None) -> tuple[dict, list]:
    """(the variant's trial, the batches): on `batches`, or on the first steps of its runs' data."""
    began = time.perf_counter()
    stacks = _build(variant, configs, device, sources)
    batches = batches or _batches(stacks, full)
    return trial(variant, stacks, batches, timed, began), batches


def compare(reference: dict, result: dict) -> dict:
    """Per network: first-step loss and total weight change against the reference's."""
    losses = [abs(a - b) / abs(b) for a, b in zip(result["first_losses"], reference["first_losses"])]
    updates = ((result["change"] - reference["change"]).norm(dim=1) / reference["change"].norm(dim=1)).tolist()
    ok = result["finite"] and max(losses) <= LOSS_RTOL and max(updates) <= UPDATE_RTOL
    return {**{k: v for k, v in result.items() if k != "change"}, "ok": ok,
            "first_loss_rel_diff": max(losses), "update_rel_diff": max(updates)}


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
    configs of each network's runs (seeds apart; the first network's are compared and timed).
    `precision` ("fp32" or "bf16") and `stack` (networks per stack; default: all the seeds,
    or apart if that is faster) restrict the choice; `sources`: data sets already read."""
    device, sources = torch.device(device), sources or {}
    cuda = device.type == "cuda"
    timed = timed_steps if timed_steps is not None else (30 if cuda else 2)
    full = compared_steps(device)
    archs = list(plan)
    k = stack or len(plan[archs[0]])
    deadline = time.time() + budget
    record = {"format": FORMAT, "created": records.now(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
              "arch": archs[0], "stack": k, "batch_size": plan[archs[0]][0].resolved_recipe().batch_size,
              "compared_steps": full + 3, "timed_steps": timed,
              "tolerances": {"first_loss_rel": LOSS_RTOL, "update_rel": UPDATE_RTOL, "precision_cost": PRECISION_COST},
              "variants": [], "not_tried": [] if cuda else ["graph engine and bf16: CUDA only"],
              "networks": {}, "unchecked": []}

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
            + (f" {result['error']}" if "error" in result else ""))
        save(record)
        return result

    first, measured = plan[archs[0]], {}

    def reference():
        measured["reference"], measured["batches"] = measure(reference_variant(), first, device, sources, full, timed)
        return compare(measured["reference"], measured["reference"])

    def variant_trial(variant):
        return compare(measured["reference"], measure(variant, first, device, sources, full, timed,
                                                      measured["batches"])[0])

    result = attempt(f"{archs[0]} {reference_variant().name} (reference)", reference)
    if result is not None:
        record["variants"].append({**variant_fields(reference_variant()), **result})
    for variant in candidates(device, k, precision) if "reference" in measured else ():
        result = attempt(f"{archs[0]} {variant.name}", variant_trial, variant)
        if result is not None:
            record["variants"].append({**variant_fields(variant), **result})
    chosen, why = choose(record["variants"], precision, stack)
    record["chosen"] = {"variant": chosen, "why": why}
    tried = {r["variant"]: r for r in record["variants"]}
    record["networks"][archs[0]] = {"ok": tried[chosen]["ok"] if chosen in tried else None, "variant": chosen}
    for arch in archs[1:]:
        record["networks"][arch] = attempt(f"{arch} {chosen}", check_network, plan[arch][:k], device, sources,
                                           Variant.from_name(chosen), full) or {"ok": None, "note": "unchecked"}
    record["augmentation"] = attempt("augmentation statistics", check_augmentation, device)
    record["ok"] = all(r.get("ok") for r in record["variants"]) and not record["unchecked"] and \
        all(n.get("ok") for n in record["networks"].values()) and (record["augmentation"] or {}).get("ok", False)
    log(f"selfcheck: chosen {chosen}: {why}")
    save(record)
    return record


def compared_steps(device: torch.device) -> int:
    """Full steps before the smaller batch: on CUDA the warm-up steps, the capture, then replays."""
    return WARMUP_STEPS + 3 if device.type == "cuda" else 2


def variant_fields(variant: Variant) -> dict:
    return {"variant": variant.name, "engine": variant.engine, "precision": variant.precision,
            "channels_last": variant.channels_last, "stack": variant.stack}


def check_network(configs: list[TrainConfig], device, sources: dict, variant: Variant, full: int) -> dict:
    """`variant` against the reference on one more network (compared, not timed)."""
    reference, batches = measure(reference_variant(), configs, device, sources, full, 0)
    result = compare(reference, measure(variant, configs, device, sources, full, 0, batches)[0])
    return {"ok": result["ok"], "variant": variant.name, "first_loss_rel_diff": result["first_loss_rel_diff"],
            "update_rel_diff": result["update_rel_diff"]}


def variant_for(record: dict, arch: str) -> tuple[Variant, str]:
    """How the campaign trains `arch` after the check `record`: the chosen variant, or, where it
    failed on this network, eagerly and unstacked at the chosen precision; and why."""
    chosen = Variant.from_name(record["chosen"]["variant"])
    network = record["networks"].get(arch) or {}
    if network.get("ok") is False:  # None: not checked on this network (the budget), used as chosen
        fallback = dataclasses.replace(reference_variant(), bf16=chosen.bf16)
        return fallback, (f"{fallback.name}: fallback, {chosen.name} failed the self-check on {arch} "
                          f"(update diff {network.get('update_rel_diff')}, {network.get('error', '')})")
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
    from .cli import positive_integer, positive_number
    parser = argparse.ArgumentParser(prog="python -m reproresnet selfcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(REPRODUCED),
                        metavar="NAME", help="networks to check; the first is timed (default: the three of the report)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="K",
                        help="seeds of each network; their number is the stack size (default: 0 1 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dataset", default="synthetic", help="cifar10 | cifar100 | folder:PATH | synthetic "
                                                               "(default: synthetic)")
    parser.add_argument("--recipe", default="seed", help="the campaign's recipe (default: seed)")
    parser.add_argument("--batch-size", type=int, help="images per step and network (default: the recipe's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="only variants of this precision")
    parser.add_argument("--timed-steps", type=positive_integer, help="default: 30 on CUDA, 2 on a CPU")
    parser.add_argument("--budget", type=positive_number, default=60.0,
                        help="seconds; later checks are skipped (default 60)")
    parser.add_argument("--out", default="selfcheck.json", help="the record (default: selfcheck.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        distinct("--seeds", args.seeds)
        distinct("--archs", args.archs)
        device = select_device(args.device)
        plan = {arch: [TrainConfig(arch=arch, out=f"selfcheck/{arch}-seed{seed}", seed=seed, recipe=args.recipe,
                                   dataset=args.dataset, batch_size=args.batch_size, device=device.type)
                       for seed in args.seeds] for arch in args.archs}
    except ConfigError as error:
        print(f"reproresnet selfcheck: error: {error}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    record = selfcheck(plan, device, budget=args.budget, precision=args.precision, timed_steps=args.timed_steps,
                       log=lambda line: print(line, flush=True),
                       save=lambda record: rundir.write_json(out, jsonable(record)))
    print(format_variants(record))
    print(f"selfcheck: {'all passed' if record['ok'] else 'not all passed (see above)'}; record in {out}")
    return 0


def format_variants(record: dict) -> str:
    """The variant table: ms/step, images/s (K networks' images), the checks' numbers."""
    lines = [f"{'variant':<24} {'ok':>5} {'ms/step':>8} {'img/s':>8} {'loss diff':>10} {'update diff':>11}"]
    for r in record["variants"]:
        step = r.get("seconds_per_step")
        lines.append(f"{r['variant']:<24} {str(r.get('ok')):>5} {1e3 * step if step else float('nan'):>8.2f} "
                     f"{r.get('images_per_second') or float('nan'):>8.0f} {r.get('first_loss_rel_diff', float('nan')):>10.2e} "
                     f"{r.get('update_rel_diff', float('nan')):>11.2e}" + (f"  {r['error']}" if "error" in r else ""))
    lines.append(f"chosen: {record['chosen']['variant']} ({record['chosen']['why']})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
