"""The fast path checked against fp32 eager before a campaign spends GPU time on it.

    python -m reproresnet selfcheck --device cuda --out selfcheck.json

For a network, from the same weights and the same batches: a few SGD steps in fp32 eager
(the reference) and on the fast path (bf16 autocast, channels_last, torch.compile). The
first step's loss (same weights, so only the numerics differ) must agree within
`LOSS_RTOL`, and the weights' total change after the steps within `UPDATE_RTOL` of the
reference's (a wrong gradient moves them elsewhere even when random labels keep the loss
flat). If the whole fast path fails, each part is tried alone; a failing part is switched
off for the campaign and recorded with its numbers, never silently.

The checks run in this order, so that a budget cut keeps what matters most: the first
network; on CUDA, CUDA graphs (compile mode `reduce-overhead`) timed against the default
mode on the same steps, the faster kept; the training path of `train_one_epoch` on an
odd-sized set (the epoch's last, smaller batch runs eagerly, so the second epoch must compile
nothing); the augmentation's statistics with the device's generator (flip rate and crop
offsets); the other networks.

On a CPU the same structure runs with tiny batches and compile alone (bf16 and
channels_last are CUDA speedups). `--budget` is kept: a check still running when it is spent
is interrupted, and checks not finished are recorded as unchecked and left as the device's
defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import records
from .config import TrainConfig, select_device
from .data import PAD, DataSplits, ImageSet, augment
from .models import build_model
from .recipes import get_recipe
from .train import (Speedups, build_run, compile_counter, compile_model, make_optimizer, synchronize,
                    train_one_epoch, train_step)

FORMAT = "reproresnet-selfcheck/1"
PARTS = ("bf16", "channels_last", "compile")
LOSS_RTOL = 0.02     # bf16 autocast moves a first-step cross-entropy of ~2.3 by well under 1%
UPDATE_RTOL = 0.10   # relative L2 distance between the fast path's and fp32's weight change
SIGMAS = 5.0         # augmentation frequencies: within 5 standard deviations of their expectation


def _batches(n_steps: int, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (batch_size,), generator=g).to(device)) for _ in range(n_steps)]


def _steps(arch: str, speedups: Speedups, batches, device, compile_mode: str = "default",
           backend: str = "inductor") -> dict:
    """SGD steps from the seed's initial weights: first loss, weight change, seconds per step."""
    torch.manual_seed(0)
    model = build_model(arch).to(device)
    start = [p.detach().float().clone() for p in model.parameters()]
    if speedups.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, get_recipe("seed"), speedups)
    if speedups.compile:
        torch._dynamo.reset()  # a fresh cache: dynamo's recompile limit is shared by every ResNet.forward
    before = compile_counter("stats", "unique_graphs")
    step_model = compile_model(model, compile_mode, backend=backend) if speedups.compile else model
    losses, times = [], []
    for images, labels in batches:
        if speedups.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        synchronize(device)
        began = time.perf_counter()
        loss, _ = train_step(step_model, optimizer, images, labels, speedups)
        losses.append(loss.item() / len(labels))
        times.append(time.perf_counter() - began)
    change = torch.cat([(p.detach().float() - s).flatten() for p, s in zip(model.parameters(), start)])
    finite = all(map(lambda x: x == x and abs(x) != float("inf"), losses))
    graphs = compile_counter("stats", "unique_graphs") - before
    if speedups.compile and graphs == 0:  # dynamo fell back to eager: the check would compare eager to eager
        finite = False
    return {"losses": losses, "change": change, "finite": finite, "graphs": graphs,
            "seconds_per_step": sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else None}


def compare(reference: dict, fast: dict) -> dict:
    loss_rel = abs(fast["losses"][0] - reference["losses"][0]) / abs(reference["losses"][0])
    update_rel = ((fast["change"] - reference["change"]).norm() / reference["change"].norm()).item()
    ok = fast["finite"] and loss_rel <= LOSS_RTOL and update_rel <= UPDATE_RTOL
    return {"ok": ok, "first_loss_rel_diff": loss_rel, "update_rel_diff": update_rel, "graphs": fast["graphs"],
            "losses": fast["losses"], "reference_losses": reference["losses"]}


def check_network(arch: str, device: torch.device, steps: int, batch_size: int, wanted: Speedups,
                  backend: str = "inductor") -> dict:
    """The fast path (the parts `wanted` switches on) against fp32 eager; parts that fail
    alone are listed in "disabled"."""
    batches = _batches(steps, batch_size, device)
    plain = Speedups(False, False, False, wanted.fused_optimizer)
    reference = _steps(arch, plain, batches, device)
    parts_on = [part for part in PARTS if getattr(wanted, part)]
    result = {"arch": arch, "parts": parts_on, "disabled": {}}
    if not parts_on:
        result["fast_path"] = {"ok": True, "note": "no speedup switched on for this device"}
        return result
    result["fast_path"] = compare(reference, _steps(arch, wanted, batches, device, backend=backend))
    if not result["fast_path"]["ok"]:
        for part in parts_on:
            alone = dataclasses.replace(plain, **{part: True})
            outcome = compare(reference, _steps(arch, alone, batches, device, backend=backend))
            result[f"{part}_alone"] = outcome
            if not outcome["ok"]:
                result["disabled"][part] = (f"{arch}: first-loss diff {outcome['first_loss_rel_diff']:.3g}, "
                                            f"update diff {outcome['update_rel_diff']:.3g}")
        if not result["disabled"]:  # each part passes alone, together they fail: drop compile
            result["disabled"]["compile"] = f"{arch}: the parts pass alone but fail together"
    return result


def check_epochs(device: torch.device, speedups: Speedups, batch_size: int, backend: str = "inductor") -> dict:
    """Two epochs of the real training loop over 2 full batches + an odd one: the second
    epoch compiles nothing (the odd batch and evaluation run eagerly)."""
    n = 2 * batch_size + 3
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device),
                    torch.randint(0, 10, (n,), generator=g).to(device))
    config = TrainConfig(arch="preact_resnet20", out="selfcheck", batch_size=batch_size, epochs=2,
                         device=device.type, bf16=speedups.bf16, channels_last=speedups.channels_last,
                         compile=False)
    run = build_run(config, DataSplits.one_set(data), device)  # the run training builds, compiled here
    step_model = compile_model(run.model, backend=backend) if speedups.compile else run.model
    run = dataclasses.replace(run, step_model=step_model, speedups=speedups)
    torch._dynamo.reset()
    graphs = []
    for epoch in range(2):
        before = compile_counter("stats", "unique_graphs")
        row = train_one_epoch(run, epoch, progress=False)
        graphs.append(compile_counter("stats", "unique_graphs") - before)
    ok = graphs[1] == 0 and (graphs[0] > 0 or not speedups.compile) and row["train_loss"] == row["train_loss"]
    return {"ok": ok, "graphs_compiled_per_epoch": graphs, "last_batch": 3,
            "note": "the first epoch compiles the full batch, the second nothing"}


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


def time_compile_modes(arch: str, device: torch.device, speedups: Speedups, steps: int, batch_size: int) -> dict:
    """Seconds per step in each compile mode (CUDA graphs = reduce-overhead), same steps."""
    batches = _batches(steps, batch_size, device)
    before = compile_counter("inductor", "cudagraph_skips")
    timed = {mode: _steps(arch, speedups, batches, device, mode)["seconds_per_step"]
             for mode in ("default", "reduce-overhead")}
    # CUDA graphs fall back to plain execution with only a log line: then their time is not theirs
    skips = compile_counter("inductor", "cudagraph_skips") - before
    faster = "default" if skips else min(timed, key=lambda m: timed[m] or float("inf"))
    return {"arch": arch, "seconds_per_step": timed, "cudagraph_skips": skips, "faster": faster}


def selfcheck(archs, device="auto", steps: int | None = None, batch_size: int | None = None,
              budget: float = 60.0, modes: bool | None = None, backend: str = "inductor", log=print,
              save=lambda record: None, recipe: str = "seed") -> dict:
    """Every check in turn within `budget` seconds (a check still running then is interrupted
    and listed as unchecked), `save(record)` after each; "ok" is written last, so a record
    without it was cut short from outside."""
    device = select_device(device)
    cuda = device.type == "cuda"
    steps = steps or (6 if cuda else 3)
    # On CUDA each network steps at its batch size in the campaign's recipe: the same shapes as
    # the runs, whose compiles then find the kernels this check compiled in inductor's cache.
    batches = {arch: batch_size or (get_recipe(recipe).for_arch(arch).batch_size if cuda else 8)
               for arch in [*archs, "preact_resnet20"]}
    wanted = Speedups.for_device(TrainConfig(compile=True), device)  # on a CPU: compile alone
    deadline = time.time() + budget
    record = {"format": FORMAT, "created": records.now(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
              "steps": steps, "batch_size": batches, "tolerances": {"first_loss_rel": LOSS_RTOL,
                                                                       "update_rel": UPDATE_RTOL},
              "networks": [], "unchecked": [], "disabled": {}, "compile_mode": "default",
              "compile_backend": backend}

    def attempt(name, function, *args):
        began = time.time()
        with _alarm(deadline - began) as expired:
            try:
                result = None if expired() else function(*args)
            except Exception as error:  # a crash is a failed check, recorded with its message
                result = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        if expired():  # cut by the budget (perhaps inside a compile, which then wraps the error)
            record["unchecked"].append(name)
            log(f"selfcheck {name}: not checked (budget spent)")
            save(record)
            return None
        result["seconds"] = round(time.time() - began, 1)
        log(f"selfcheck {name}: {'ok' if result.get('ok', True) else 'FAILED'} ({result['seconds']} s)"
            + (f" {result['error']}" if "error" in result else ""))
        record.setdefault("checks", []).append(name)
        save(record)
        return result

    def check(arch):
        result = attempt(f"network {arch}", check_network, arch, device, steps, batches[arch], wanted, backend)
        if result is None:
            return
        record["networks"].append(result)
        if "error" in result:  # the fast path crashed: switch off compile, the usual culprit
            result.update(arch=arch, disabled={"compile": f"{arch}: {result['error']}"})
        record["disabled"].update({k: v for k, v in result.get("disabled", {}).items() if k not in record["disabled"]})
        save(record)

    # The first network, then what decides the campaign's speed (CUDA graphs or not) while its
    # default-mode compile is cached, then the cheap checks, then the other networks.
    for arch in archs[:1]:
        check(arch)
    kept = dataclasses.replace(wanted, **{part: False for part in record["disabled"]})
    if (cuda if modes is None else modes) and kept.compile and archs:
        record["compile_modes"] = attempt(f"CUDA graphs on {archs[0]}", time_compile_modes, archs[0], device,
                                          kept, max(steps, 20), batches[archs[0]])
        if record["compile_modes"] and "faster" in record["compile_modes"]:
            record["compile_mode"] = record["compile_modes"]["faster"]
    record["epochs"] = attempt("training loop (odd last batch)", check_epochs, device, kept,
                              batches["preact_resnet20"], backend)
    if record["epochs"] is not None and not record["epochs"]["ok"] and kept.compile:
        record["disabled"].setdefault("compile", f"the training loop: {record['epochs']}")
    record["augmentation"] = attempt("augmentation statistics", check_augmentation, device)
    for arch in archs[1:]:
        check(arch)
    record["ok"] = not record["disabled"] and all(
        part is None or part.get("ok", True) for part in (record["epochs"], record["augmentation"]))
    save(record)
    return record


class _BudgetSpent(Exception):
    pass


@contextmanager
def _alarm(seconds: float):
    """Interrupt the block when `seconds` pass (SIGALRM, main thread): a cold compile of a deep
    network can take minutes, and a check that overruns the budget is killed with the slot's
    other work. Yields `expired()`: did the alarm fire, whatever exception it became."""
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


def train_flags(path) -> list[str]:
    """The `train` flags a selfcheck record asks for: its switched-off parts, its compile mode."""
    record = json.loads(Path(path).read_text())
    flags = [f"--no-{part.replace('_', '-')}" for part in PARTS if part in record.get("disabled", {})]
    return flags + ["--compile-mode", record.get("compile_mode", "default")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproresnet selfcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["preact_resnet110", "preact_resnet164", "wrn_16_4"],
                        metavar="NAME", help="networks to check (default: the three of the report)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--steps", type=int, help="training steps compared per check (default: per device)")
    parser.add_argument("--batch-size", type=int, help="default: on CUDA, each network's in --recipe; 8 on a CPU")
    parser.add_argument("--recipe", default="seed", help="the campaign's recipe (default: seed)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds; later checks are skipped (default 60)")
    parser.add_argument("--compile-modes", action=argparse.BooleanOptionalAction,
                        help="time CUDA graphs against the default compile mode (default: on CUDA)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default: inductor, what training uses; aot_eager "
                             "checks dynamo and autograd without code generation, for a quick CPU try)")
    parser.add_argument("--out", default="selfcheck.json", help="the record (default: selfcheck.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = selfcheck(args.archs, args.device, args.steps, args.batch_size, args.budget, args.compile_modes,
                       args.compile_backend, log=lambda line: print(line, flush=True),
                       save=lambda record: records.write_json(out, _jsonable(record)), recipe=args.recipe)
    verdict = "FAILED parts" if not record["ok"] else "passed, but not checked: " + ", ".join(
        record["unchecked"]) if record["unchecked"] else "all passed"
    print(f"selfcheck: {verdict}; switched off: {record['disabled'] or 'nothing'}; "
          f"compile mode {record['compile_mode']}; record in {out}")
    return 0


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
