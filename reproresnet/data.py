"""Data sets as whole uint8 tensors, plus normalisation, augmentation and batching on the device.

CIFAR-10/100 is small enough (150 MB as uint8) to live on the accelerator in one piece, so
there is no DataLoader: an epoch is a permutation, a gather, and a few batched tensor ops
(as the fastest CIFAR trainers do). Loading goes through torchvision; its errors are
turned into `DataError`s that say what is wrong and how to fix it. The settings (data set,
limits, validation split, normalisation, augmentation, padding, batch sizes) arrive checked
(`config.TrainConfig`); what only the data can tell (a limit larger than its split, a missing
or corrupt file) is checked here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.datasets.utils import check_integrity
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.functional import pil_to_tensor

from .config import CIFAR10, DATASETS, JPEG_MIRROR, TrainConfig

DATA_DIR_ENV = "REPRORESNET_DATA"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
_CIFAR = {"cifar10": (datasets.CIFAR10, CIFAR10), "cifar100": (datasets.CIFAR100, "CIFAR-100")}
IMAGE_SIZE = 32
PAD = 4  # pixels of padding before the random 32x32 crop (He et al.)
# pylearn2's make_cifar10_gcn_whitened.py, which the WRN authors' README names for their whitened
# CIFAR: CIFAR10(gcn=55.) then preprocessing.ZCA() with its default filter_bias=0.1.
GCN_SCALE, ZCA_FILTER_BIAS = 55.0, 0.1
SYNTHETIC_SIZES = {"train": 5000, "test": 1000}


class DataError(Exception):
    """A data set that cannot be loaded; the message names the problem and the fix."""


@dataclass
class ImageSet:
    """One split: uint8 images N x 3 x 32 x 32 and int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices])

    def to(self, device) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device))


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    classes: list[str]
    label: str  # how the book names the data; a mirror or a stand-in is never called "CIFAR-10"
    dataset: str = ""  # the spec given to load_splits, e.g. "cifar10" or "folder:/data/x"

    @classmethod
    def one_set(cls, data: ImageSet) -> DataSplits:
        """`data` as both training and test split, ten classes: random images for timing and checks."""
        return cls(data, None, data, [str(c) for c in range(10)], "synthetic", "synthetic")

    def to(self, device) -> DataSplits:
        val = self.val.to(device) if self.val is not None else None
        return dataclasses.replace(self, train=self.train.to(device), val=val, test=self.test.to(device))

    def describe(self) -> dict:
        return {
            "dataset": self.dataset,
            "label": self.label,
            "n_train": len(self.train),
            "n_val": 0 if self.val is None else len(self.val),
            "n_test": len(self.test),
            "classes": list(self.classes),
        }


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "reproresnet" / "data").expanduser()


def load_source(dataset: str, data_dir=None, *, download: bool = False, seed: int = 0) -> DataSplits:
    """The data set's whole training and test splits (no validation split): read once, then
    each run's splits are taken from it (`load_splits(source=...)`) without reading again.
    `seed` matters to the synthetic set only, which it generates."""
    return load_splits(dataset, data_dir, download=download, seed=seed)


def load_splits(dataset: str, data_dir=None, *, download: bool = False,
                limit_train: int | None = None, limit_test: int | None = None,
                val_size: int = 0, seed: int = 0, source: DataSplits | None = None) -> DataSplits:
    """Load a data set whole; optionally a seeded subset of each split and a held-out val split.

    dataset: "cifar10", "cifar100", "folder:PATH" (PATH/train/<class>/*, PATH/test/<class>/*)
    or "synthetic". val_size > 0 holds out that many training images (the seed used 5,000).
    source: the data set as `load_source` read it (the same `dataset`, and for "synthetic" the
    same seed); the subsets are then taken from it, the same images a fresh load would keep.
    A split without a limit is `source`'s own tensor, not a copy.
    """
    limits = {"train": limit_train, "test": limit_test}

    def choose(n: int, split: str) -> torch.Tensor:
        """Indices kept of a split of n images: all, or a seeded subset in the original order."""
        limit = limits[split]
        if limit is None:
            return torch.arange(n)
        if limit > n:
            raise DataError(f"limit_{split}={limit} is larger than the {split} split of {dataset!r} ({n} images); "
                            f"lower it or leave it out to use the whole split")
        return torch.randperm(n, generator=_rng(seed, split))[:limit].sort().values

    if source is not None:
        if source.dataset != dataset:
            raise DataError(f"the data loaded once is {source.dataset!r}, not {dataset!r}")
        train, test = ((split if limits[name] is None else split.subset(choose(len(split), name)))
                       for name, split in (("train", source.train), ("test", source.test)))
        classes, label = source.classes, source.label
    elif dataset in _CIFAR:
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        train, test, classes, label = _load_cifar(dataset, root, download, choose)
    elif dataset.startswith("folder:") and dataset != "folder:":
        train, test, classes, label = _load_folder(Path(dataset[len("folder:"):]).expanduser(), choose)
    elif dataset == "synthetic":
        train, test, classes, label = _synthetic(seed, choose)
    else:
        raise DataError(f"unknown dataset {dataset!r}; accepted forms: {', '.join(DATASETS)} "
                        f"(folder:PATH reads PATH/train/<class>/* and PATH/test/<class>/*)")

    val = None
    if val_size:
        if val_size >= len(train):
            raise DataError(f"val_size={val_size} leaves no training images: the train split has {len(train)}; "
                            f"use a smaller val_size")
        order = torch.randperm(len(train), generator=_rng(seed, "val"))
        val = train.subset(order[:val_size].sort().values)
        train = train.subset(order[val_size:].sort().values)
    return DataSplits(train, val, test, list(classes), label, dataset)


def load_device_splits(config: TrainConfig, device, source: DataSplits | None = None) -> DataSplits:
    """The run's data, resident on `device` as uint8 (taken from `source` if given: see `load_source`)."""
    splits = load_splits(config.dataset, config.data_dir, download=config.download,
                         limit_train=config.limit_train, limit_test=config.limit_test,
                         val_size=config.resolved_recipe().val_size, seed=config.seed, source=source)
    return splits.to(device)


def check_batch(config: TrainConfig, splits: DataSplits) -> None:
    """The run's batch no larger than its training split: a larger one would train on the split
    as one smaller batch, while the record says otherwise."""
    batch_size, train_size = config.resolved_recipe().batch_size, len(splits.train)
    if batch_size > train_size:
        raise DataError(f"batch_size={batch_size} is larger than the training split ({train_size} images); "
                        f"pass --batch-size {train_size} or less, or train on more images")


def source_key(config: TrainConfig) -> tuple:
    """What identifies the data a run reads whole (`load_source`): the synthetic set is
    generated from the seed."""
    return config.dataset, config.data_dir, config.seed if config.dataset == "synthetic" else None


def device_splits(configs: list[TrainConfig], device, sources: dict) -> list[DataSplits]:
    """Each run's data on `device` (`load_device_splits`), taken from `sources`, the data sets
    already read by `source_key`, where they hold its set."""
    return [load_device_splits(config, device, sources.get(source_key(config))) for config in configs]


def load_sources(configs: list[TrainConfig], device, sources: dict | None = None) -> dict:
    """`sources` (by `source_key`) with every data set the runs of `configs` read, each read
    once (`load_source`) and put on `device`."""
    sources = {} if sources is None else sources
    for config in configs:
        key = source_key(config)
        if key not in sources:
            sources[key] = load_source(config.dataset, config.data_dir, download=config.download,
                                       seed=config.seed).to(device)
    return sources


def _rng(seed: int, stream: str) -> torch.Generator:
    # One independent stream per use, so that e.g. changing limit_test leaves the train subset alone.
    return torch.Generator().manual_seed(3 * seed + ("train", "test", "val").index(stream))


# ---------------------------------------------------------------- CIFAR through torchvision

def _load_cifar(name: str, root: Path, download: bool, choose: Callable):
    cls, label = _CIFAR[name]
    if download:
        try:  # torchvision fetches the archive and checks its md5; the test split is the cheap one to build
            cls(root, train=False, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(f"downloading {label} into {root} failed ({err}); check the internet connection, "
                            f"or copy {cls.base_folder} into {root} by hand") from err
    _check_cifar_files(cls, label, root)
    splits = []
    for train in (True, False):
        ds = cls(root, train=train)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        full = ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64))
        splits.append(full.subset(choose(len(full), "train" if train else "test")))
    return splits[0], splits[1], ds.classes, label


def _check_cifar_files(cls, label: str, root: Path) -> None:
    """torchvision only says "not found or corrupted"; say which file and what to do."""
    folder = root / cls.base_folder
    files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if len(missing) == len(files):
        raise DataError(f"{label} not found in {root}; pass --download (needs internet) or set "
                        f"--data-dir/{DATA_DIR_ENV} to a folder that holds {cls.base_folder}")
    if missing:
        raise DataError(f"{label} in {folder} is incomplete: {', '.join(missing)} missing; "
                        f"delete {folder} and pass --download (needs internet) to fetch it again")
    for name, md5 in files:
        if not check_integrity(str(folder / name), md5):
            raise DataError(f"{folder / name} does not match its md5 checksum: the copy is corrupt or truncated; "
                            f"delete {folder} and re-download it with --download")


# ---------------------------------------------------------------- image folders (ImageFolder layout)

_TORCHVISION_DECODES = (".jpg", ".jpeg", ".png")  # decode_image is ~3x faster than PIL on these


def _load_folder(root: Path, choose: Callable):
    layout = f"expected {root}/train/<class>/*.png|jpg and {root}/test/<class>/* (torchvision ImageFolder layout)"
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; {layout}")
    samples, classes = {}, {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"image folder {root} has no {split}/ folder; {layout}")
        try:
            classes[split], class_to_idx = find_classes(root / split)
        except FileNotFoundError as err:
            raise DataError(f"no class folders in {root / split}; {layout}") from err
        samples[split] = make_dataset(root / split, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        empty = sorted(set(classes[split]) - {classes[split][i] for _, i in samples[split]})
        if empty:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {root / split} for class(es) "
                            f"{', '.join(empty)}; add images or remove those folders from both splits")
    if len(classes["train"]) < 2:
        raise DataError(f"image folder {root}/train has one class folder ({classes['train'][0]}): a classifier "
                        f"needs at least 2; add class folders to both splits")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"])) or "none"
        only_test = sorted(set(classes["test"]) - set(classes["train"])) or "none"
        raise DataError(f"class folders differ between {root}/train and {root}/test: only in train: {only_train}; "
                        f"only in test: {only_test}; both splits need the same class folders")

    is_jpeg = all(Path(p).suffix.lower() in (".jpg", ".jpeg") for split in samples.values() for p, _ in split)
    mirror = tuple(classes["train"]) == CIFAR10_CLASSES and is_jpeg
    label = JPEG_MIRROR if mirror else f"image folder {root.resolve().name}"
    train, test = (_decode_samples([samples[s][i] for i in choose(len(samples[s]), s).tolist()])
                   for s in ("train", "test"))
    return train, test, classes["train"], label


def _decode_samples(samples: list[tuple[str, int]]) -> ImageSet:
    # A plain loop: a 32x32 decode takes ~0.1 ms, too little for a thread pool to win back its
    # overhead (measured slower on 2 cores). Only the kept files are ever read.
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders (for TorchCodec) and warns on every call;
        # they are still ~2x faster than PIL here, and pyproject pins torchvision < 0.30.
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
        images = [_read_image(path) for path, _ in samples]
    return ImageSet(torch.stack(images), torch.tensor([label for _, label in samples], dtype=torch.int64))


def _read_image(path: str) -> torch.Tensor:
    try:
        if os.path.splitext(path)[1].lower() in _TORCHVISION_DECODES:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        else:
            with Image.open(path) as pil:
                image = pil_to_tensor(pil.convert("RGB"))
    except (RuntimeError, OSError, ValueError) as err:
        raise DataError(f"cannot decode image {path} ({err}); the file is truncated or not an image: "
                        f"replace or delete it") from err
    if image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"image {path} is {image.shape[2]}x{image.shape[1]} pixels (width x height); "
                        f"every image must be {IMAGE_SIZE}x{IMAGE_SIZE}: resize the folder first")
    return image


# ---------------------------------------------------------------- synthetic stand-in

def _synthetic(seed: int, choose: Callable):
    """The synthetic set's kept images (`choose`'s subsets of `_synthetic_set`, copies)."""
    images, labels = _synthetic_set(seed)
    n_train = SYNTHETIC_SIZES["train"]
    train, test = ImageSet(images[:n_train], labels[:n_train]), ImageSet(images[n_train:], labels[n_train:])
    classes = [f"grating_{c * 18:03d}deg" for c in range(10)]
    return train.subset(choose(len(train), "train")), test.subset(choose(len(test), "test")), classes, "synthetic"


# Made once per seed in a process: 6,000 images cost ~0.4 CPU-seconds, which each run of a stack,
# the self-check and every test that trains would pay again. Callers get subsets (copies) only.
@functools.lru_cache(maxsize=4)
def _synthetic_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes of noisy, translated Gabor patches: learnable, but not trivially.

    Class c fixes the grating's orientation (c * 18 degrees) and frequency (3, 4 or 5 cycles
    per image) and leans the tint towards one hue; phase, position, size, contrast,
    background and pixel noise are random, and the orientation is jittered, so neighbouring
    classes overlap a little. The tint rides on the zero-mean grating, so an image's average
    colour says nothing about its class. A 6-layer CNN reached 51% test accuracy after one
    epoch and 87% after four (per_image augmentation, batch 64).
    """
    g = torch.Generator().manual_seed(seed)
    n = sum(SYNTHETIC_SIZES.values())
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]  # exactly balanced, in random order

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    theta = labels * math.pi / 10 + 0.12 * torch.randn(n, generator=g)
    cycles = 3.0 + (labels % 3).float() + uniform(-0.4, 0.4)
    phase = uniform(0, 2 * math.pi)
    centre = uniform(10, 22, 2)
    sigma = uniform(6, 11)
    contrast = uniform(0.5, 1.0)

    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)
    along = x * theta.cos().view(-1, 1, 1) + y * theta.sin().view(-1, 1, 1)
    grating = torch.cos(2 * math.pi * cycles.view(-1, 1, 1) * along / IMAGE_SIZE + phase.view(-1, 1, 1))
    dist2 = (x - centre[:, 0].view(-1, 1, 1)) ** 2 + (y - centre[:, 1].view(-1, 1, 1)) ** 2
    patch = contrast.view(-1, 1, 1) * grating * torch.exp(-dist2 / (2 * sigma.view(-1, 1, 1) ** 2))

    hue = 2 * math.pi * labels / 10
    class_tint = torch.stack([torch.cos(hue + k * 2 * math.pi / 3) for k in range(3)], dim=1)
    tint = 0.5 + 0.25 * class_tint + 0.25 * (2 * torch.rand(n, 3, generator=g) - 1)  # half class, half random
    background = uniform(0.3, 0.7, 3)
    noise = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    images = noise.mul_(0.12).add_(background.view(n, 3, 1, 1))  # in place: 18M floats
    images.addcmul_(0.4 * tint.view(n, 3, 1, 1), patch.unsqueeze(1))
    return images.clamp_(0, 1).mul_(255).round_().to(torch.uint8), labels


# ---------------------------------------------------------------- normalisation, augmentation, batching

class Normalizer:
    """uint8 images -> float32 network inputs, with statistics of the training split only.

    per_pixel_mean: pixels in [0, 1] minus the 3x32x32 mean image (He et al., the seed's text).
    per_pixel_mean_0_255: raw 0-255 pixels minus the mean image (the seed's code since 502ff96).
    range_0_1: pixels divided by 255, nothing subtracted (the seed's code at 7c4c997).
    per_channel: one mean and std per colour channel (the authors' Torch code, WRN v2).
    gcn_zca: global contrast normalisation then ZCA whitening as pylearn2 does them (WRN v1).
    Each is (x / 255 - mean) / std, or for gcn_zca (gcn(x) - mean) @ whitening.
    """

    def __init__(self, mode: str, mean: torch.Tensor, std: torch.Tensor, whitening: torch.Tensor | None = None):
        self.mode, self.mean, self.std, self.whitening = mode, mean, std, whitening

    @classmethod
    def fit(cls, train_images: torch.Tensor, mode: str) -> Normalizer:
        n = len(train_images)
        one = torch.ones(1, 1, 1, dtype=torch.float64)
        if mode == "gcn_zca":
            mean, whitening = _fit_zca(train_images)
            return cls(mode, mean.float(), one.float(), whitening.float())
        if mode == "range_0_1":
            mean, std = torch.zeros_like(one), one
        elif mode in ("per_pixel_mean", "per_pixel_mean_0_255"):
            # Summing uint8 in float64 avoids a 600 MB float copy of the training set.
            mean = train_images.sum(0, dtype=torch.float64) / (255 * n)
            std = one / 255 if mode == "per_pixel_mean_0_255" else one  # x/255 - m over 1/255 = x - 255 m
        else:  # per_channel
            # Exact moments from each channel's 256-bin histogram, again without a float copy.
            values = torch.arange(256, dtype=torch.float64, device=train_images.device) / 255
            hists = torch.stack([torch.bincount(train_images[:, c].flatten(), minlength=256) for c in range(3)])
            hists = hists.double() / hists[0].sum()
            mean = (hists * values).sum(1)
            std = (hists * (values - mean[:, None]) ** 2).sum(1).sqrt()  # population std
            mean, std = mean.view(3, 1, 1), std.view(3, 1, 1)
        return cls(mode, mean.float(), std.float())

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.dtype != torch.uint8:
            raise ValueError(f"Normalizer expects uint8 images, got {images_uint8.dtype} (already normalized?)")
        mean, std = self.mean.to(images_uint8.device), self.std.to(images_uint8.device)
        if self.whitening is not None:
            centred = (global_contrast_normalize(images_uint8.float()) - mean).flatten(1)
            return (centred @ self.whitening.to(images_uint8.device)).view(images_uint8.shape)
        return (images_uint8.float() / 255 - mean) / std

    def to(self, device) -> Normalizer:
        whitening = None if self.whitening is None else self.whitening.to(device)
        return Normalizer(self.mode, self.mean.to(device), self.std.to(device), whitening)


def global_contrast_normalize(images: torch.Tensor) -> torch.Tensor:
    """pylearn2's global_contrast_normalize(X, scale=55.): each image minus its own mean, scaled
    to an L2 norm of 55 (a norm under 1e-8 is left alone); on pixel values 0-255 as pylearn2 loads them."""
    flat = images.flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    norm = flat.norm(dim=1, keepdim=True) / GCN_SCALE
    return (flat / torch.where(norm < 1e-8, torch.ones_like(norm), norm)).view(images.shape)


def _fit_zca(train_images: torch.Tensor, chunk: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """pylearn2's ZCA().fit on the contrast-normalised training images, in float64: the mean image
    and P = V diag(1 / sqrt(e)) V^T, where V, e are the eigenvectors and eigenvalues of the
    (population) covariance plus filter_bias times the identity."""
    features = train_images[0].numel()
    total = torch.zeros(features, dtype=torch.float64, device=train_images.device)
    gram = torch.zeros(features, features, dtype=torch.float64, device=train_images.device)
    for part in train_images.split(chunk):  # float64 copies of 5,000 images at a time (123 MB)
        x = global_contrast_normalize(part.double()).flatten(1)
        total += x.sum(0)
        gram += x.T @ x
    mean = total / len(train_images)
    covariance = gram / len(train_images) - torch.outer(mean, mean)
    covariance += ZCA_FILTER_BIAS * torch.eye(features, dtype=torch.float64, device=train_images.device)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return mean.view(train_images.shape[1:]), (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T


def augment(images: torch.Tensor, mode: str, generator: torch.Generator,
            within: tuple[int, int] | None = None, padding: str = "zero") -> torch.Tensor:
    """Random 32x32 crop of the images padded by 4 pixels, and a horizontal flip with p=0.5.

    images are already normalized, so "zero" padding is 0 after normalisation: the mean colour
    where the mean is subtracted (as in the seed), black for range_0_1. "reflect" mirrors the
    image across its border row or column without repeating it (torch's "reflect", which is
    Torch's SpatialReflectionPadding: WRN's randomcrop_type=reflection): padded row 4 - k is row k.
    per_image draws an offset and a flip for each image; per_batch one for the whole batch
    (the seed's code). Crop and flip are one gather; all draws come from `generator`.
    within=(start, size): `images` are images start... of a batch of `size`; the draws are the
    whole batch's, so each process of a distributed run draws what a single process would.
    """
    if mode == "none":
        return images
    n, size = len(images), images.shape[-1]
    start, batch = within or (0, n)
    draws = batch if mode == "per_image" else 1
    # Draw on the generator's device, then move: a CPU generator can drive CUDA tensors.
    offsets = torch.randint(0, 2 * PAD + 1, (2, draws), generator=generator, device=generator.device)
    flips = torch.randint(0, 2, (draws,), generator=generator, device=generator.device).bool()
    if mode == "per_image":
        offsets, flips, draws = offsets[:, start:start + n], flips[start:start + n], n
    offsets, flips = offsets.to(images.device), flips.to(images.device)
    steps = torch.arange(size, device=images.device)
    rows = offsets[0, :, None] + steps                                      # draws x 32
    cols = offsets[1, :, None] + torch.where(flips[:, None], size - 1 - steps, steps)
    padded = F.pad(images, (PAD, PAD, PAD, PAD), mode="reflect" if padding == "reflect" else "constant")
    # One gather over the flattened padded image: twice as fast as 4-tensor advanced indexing.
    index = rows[:, :, None] * (size + 2 * PAD) + cols[:, None, :]          # draws x 32 x 32
    index = index.view(draws, 1, -1).expand(n, images.shape[1], -1)
    return padded.flatten(2).gather(2, index).view(n, -1, size, size)


def train_batches(data: ImageSet, batch_size: int, *, normalizer: Normalizer, augmentation: str,
                  generator: torch.Generator, device, padding: str = "zero",
                  part: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch in a random order (from `generator`); the last, smaller batch is kept.

    part=(r, n): the r-th of n equal slices of every batch, gathered and augmented alone."""
    order = torch.randperm(len(data), generator=generator, device=generator.device)
    rank, parts = part
    for indices in order.split(batch_size):
        share = len(indices) // parts
        images, labels = _gather(data, indices[rank * share:(rank + 1) * share], device)
        yield augment(normalizer(images), augmentation, generator, within=(rank * share, len(indices)),
                      padding=padding), labels


def eval_batches(data: ImageSet, batch_size: int, *, normalizer: Normalizer,
                 device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in its stored order, normalized, without augmentation."""
    for indices in torch.arange(len(data)).split(batch_size):
        images, labels = _gather(data, indices, device)
        yield normalizer(images), labels


def _gather(data: ImageSet, indices: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    # The data normally already lives on `device`; then both moves are no-ops.
    indices = indices.to(data.images.device)
    return data.images[indices].to(device), data.labels[indices].to(device)
