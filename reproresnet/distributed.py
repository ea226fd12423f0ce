"""One run on several processes with DistributedDataParallel, as `torchrun` starts them.

    torchrun --nproc-per-node 2 -m reproresnet train --arch preact_resnet110 --recipe he2016 --out ...

Every process builds the same model from the same seed and draws the same global batches
from the same seeded generator; process r trains on the r-th of N equal slices of each batch,
gathered and augmented on its own device. The recipe's batch is the global batch, and batch
norm normalises over each process's slice: with 2 processes and batch 128, He et al.'s
2 GPUs x 64 images. DDP averages the gradients, which with equal slices is the gradient of the
global batch. The running BN statistics are averaged over the processes after each epoch:
their updates are linear, so this equals averaging them at every step, which is what one
process with `bn_batch` equal to the slice does. Process 0 alone writes the run directory;
all processes resume from its checkpoint. The same seed gives the same run for a fixed
number of processes (the record says how many, and the backend: NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError
from .rundir import RunDirError


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (one process: rank 0 of 1)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_environment(cls) -> "World":
        """What torchrun says (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
        size = int(os.environ.get("WORLD_SIZE", 1))
        if size == 1:
            return cls()
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self, batch_size: int) -> dict:
        return {"world_size": self.size, "backend": self.backend, "batch_per_process": batch_size // self.size,
                "note": "the same seed gives the same run for the same world size"}


def device_for(world: World, device: torch.device) -> torch.device:
    """Each process of a CUDA run on its own GPU, the one torchrun's LOCAL_RANK names."""
    if world.size == 1 or device.type != "cuda":
        return device
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


@contextmanager
def joined(world: World, device: torch.device):
    """The process group for the run's lifetime; yields `world` with its backend."""
    if world.size == 1:
        yield world
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)  # torchrun's MASTER_ADDR/PORT, RANK, WORLD_SIZE
    try:
        yield dataclasses.replace(world, backend=backend)
    finally:
        dist.destroy_process_group()


def check_deadline(world: World, deadline) -> None:
    """A deadline stops a single-process run: each process would time its own epochs and might
    stop at a different one."""
    if deadline is not None and world.size > 1:
        raise ConfigError("--stop-after/--stop-at stop single-process runs; under torchrun, stop the job "
                          "and rerun it with --resume")


def check_batches(world: World, batch_size: int, train_size: int) -> None:
    """Every batch, the epoch's last one included, must split evenly over the processes."""
    last = train_size % batch_size
    for what, size in (("batch size", batch_size), ("epoch's last batch", last)):
        if size % world.size:
            raise ConfigError(f"the {what} of {size} images does not split evenly over {world.size} processes; "
                              f"choose a batch size (and --limit-train) divisible by {world.size}")


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DDP over `model`; buffers are not broadcast, so BN statistics stay per process."""
    if world.size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def process_seed(world: World, seed: int) -> int:
    """The seed of this process's own draws (dropout): distinct per process."""
    return seed * world.size + world.rank


def all_sum(world: World, *tensors: torch.Tensor) -> None:
    """Sums each tensor over the processes, in place."""
    if world.size > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


def average_buffers(world: World, model: torch.nn.Module) -> None:
    """The processes' running BN statistics, averaged (the step counters are equal)."""
    if world.size == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world.size)


def check_resume(world: World, checkpoint: dict, run_dir) -> None:
    saved = checkpoint.get("world_size", 1)
    if saved != world.size:
        raise RunDirError(f"cannot resume {run_dir} with {world.size} process(es): it was trained with {saved} "
                          f"(batch norm and random draws depend on it); use --nproc-per-node {saved}")
