"""The benchmark's baseline: a plain PyTorch CIFAR training loop, as most public repositories
write it (kuangliu/pytorch-cifar and its many descendants).

PIL images through torchvision's RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and
Normalize in a shuffling DataLoader (pinned memory on CUDA, persistent workers); an eager
model at PyTorch's default precision (TF32 convolutions on a GPU that allows them); SGD;
``.item()`` on the loss and the correct count every step. `reproresnet.bench.measure` times it
against the library's own training loop.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..data import ImageSet
from ..engine import synchronize
from ..models import build_model

# The constants most public CIFAR code bases normalise with (kuangliu/pytorch-cifar).
BASELINE_MEAN, BASELINE_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class PILImageDataset(Dataset):
    """CIFAR as torchvision's `datasets.CIFAR10` serves it: HWC uint8 rows, a PIL image per item."""

    def __init__(self, data: ImageSet, transform):
        self.images, self.labels = data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class BaselinePath:
    """A plain PyTorch CIFAR training loop, as most public repositories write it: one of the paths
    `bench.TimedPath` describes."""

    name, networks, engine = "baseline", 1, "eager"

    def __init__(self, arch: str, data: ImageSet, device: torch.device, batch_size: int, num_workers: int,
                 seed: int):
        from torchvision import transforms
        transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                        transforms.ToTensor(), transforms.Normalize(BASELINE_MEAN, BASELINE_STD)])
        self.loader = DataLoader(PILImageDataset(data, transform), batch_size=batch_size, shuffle=True,
                                 num_workers=num_workers, pin_memory=device.type == "cuda",
                                 persistent_workers=num_workers > 0, drop_last=True)
        self.device, self.data_warmup_batches = device, queued_batches(num_workers)
        torch.manual_seed(seed)
        self.model = build_model(arch).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.batches = (batch for _ in iter(int, 1) for batch in self.loader)  # epoch after epoch
        self.losses, self.correct = [], 0
        tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
        self.precision = "fp32, TF32 convolutions" if tf32 else "fp32"

    def steps(self, count: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(count):
            images, labels = (tensor.to(self.device, non_blocking=True) for tensor in next(self.batches))
            self.optimizer.zero_grad()
            outputs = self.model(images)
            loss = F.cross_entropy(outputs, labels)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.item())
            self.correct += outputs.max(1)[1].eq(labels).sum().item()
        synchronize(self.device)
        return time.perf_counter() - start

    def new_epoch(self) -> Iterator:
        return iter(self.loader)

    def close(self) -> None:
        self.batches = self.loader = None  # ends its worker processes


def queued_batches(num_workers: int) -> int:
    """The batches a DataLoader's workers queue at once: untimed before its pipeline is timed alone."""
    return max(1, 2 * num_workers)
