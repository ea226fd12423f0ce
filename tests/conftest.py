"""Shared test fixtures, and the helpers of the tests that train through the command line
(import them with `from conftest import ...`)."""

import csv
import hashlib
import pickle
import struct
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image
from torchvision import datasets

# CI shares 2 cores with other work: judge hypothesis tests by their assertions, not their speed.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def pytest_runtest_setup(item):
    """Each test and its fixtures compute in one CPU thread, as its tiny runs train (`--threads 1`):
    on the shared 2-core machine a second thread spins against the other work, at several times
    the CPU time (config.cpu_threads), and a test would otherwise inherit whatever count the test
    before it left."""
    torch.set_num_threads(1)


# ---------------------------------------------------------------- the graph engine on a CPU


class ReplayByCalling:
    """Stands in for CUDA graphs on a CPU: warm-up runs the step, `capture` records the
    function (without running it) and each replay calls it again."""

    def __init__(self):
        self.captured = []

    def warm_up(self, step):
        return step()

    def capture(self, step):
        self.captured.append(step)
        return step


# ---------------------------------------------------------------- training through the command line

# The tiny run every process-level test trains: preact_resnet20 on 64 synthetic images, on the CPU,
# in one thread (on a CPU the thread count sets the last bits: runs compared bit for bit share it).
BASE = {"--arch": "preact_resnet20", "--dataset": "synthetic", "--limit-train": "64", "--limit-test": "32",
        "--batch-size": "16", "--epochs": "3", "--device": "cpu", "--threads": "1", "--quiet": True}
# metrics.csv columns that measure time or memory: the only ones a resumed run may change.
TIMING_COLUMNS = {"seconds", "images_per_second", "peak_memory_mb"}


def argv(out, changes: dict | None = None, resume: bool = False) -> list[str]:
    """`train` arguments: BASE with `changes` (a value of None drops the flag)."""
    merged = {**BASE, "--out": str(out), **(changes or {})}
    args = ["train"]
    for flag, value in merged.items():
        if value is True:
            args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args + (["--resume"] if resume else [])


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    """Exit code and stderr of `python -m reproresnet ARGS`, run in-process."""
    from reproresnet import cli
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    except Exception:  # what the interpreter would do: a traceback and exit status 1
        print(traceback.format_exc(), file=sys.stderr)
        code = 1
    return code, capsys.readouterr().err


def without_timing(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in rows]


# ---------------------------------------------------------------- training in this process

# The tiny run the in-process training tests train (test_train, test_campaign): preact_resnet20
# on 24 synthetic images (3 steps of 8 an epoch), on the CPU, in one thread.
TINY = dict(arch="preact_resnet20", dataset="synthetic", limit_train=24, limit_test=8, batch_size=8,
            device="cpu", epochs=3, threads=1)


def tiny(tmp_path, name="run", **changes):
    from reproresnet.config import TrainConfig
    return TrainConfig(out=str(tmp_path / name), **{**TINY, **changes})


def weights(run_dir) -> dict:
    """The network in the run's checkpoint."""
    from reproresnet import records, rundir
    return rundir.read_checkpoint(Path(run_dir) / records.CHECKPOINT_FILE)["model"]


def metrics_without_timing(run_dir) -> list[dict]:
    from reproresnet import records
    with open(Path(run_dir) / records.METRICS_FILE) as file:
        return without_timing(list(csv.DictReader(file)))


def same_run(a, b) -> bool:
    """The two runs' metrics, time aside, and their networks are equal, bit for bit."""
    wa, wb = weights(a), weights(b)
    return metrics_without_timing(a) == metrics_without_timing(b) and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- run directories written by hand

def fake_record(**fields) -> dict:
    """A run record with the fields every reader requires, and the given ones."""
    from reproresnet import records
    return {"format": records.RUN_FORMAT, "arch": "wrn_16_4", "status": "running", "config": {}, "data": {},
            "epochs_planned": 2, "epochs_done": 1, **fields}


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- data fixtures


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str`, the opcodes of the real CIFAR pickles.

    torchvision reads those files with `pickle.load(f, encoding="latin1")`, which turns
    Python 2 strings (keys such as b"data", the numpy buffer) into `str`; Python 3 `bytes`
    would stay bytes and torchvision's `entry["data"]` would not find them.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _write_batch(path: Path, rng: np.random.Generator, n: int, n_classes: int, label_key: bytes):
    """A CIFAR batch: N x 3072 uint8 rows, each row the R, G, B 32x32 planes one after another."""
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=n).tolist()
    _write_pickle(path, {b"batch_label": b"fixture", b"data": images.reshape(n, 3072), label_key: labels})
    return torch.from_numpy(images), torch.tensor(labels)


@pytest.fixture
def cifar_files(tmp_path):
    """Tiny CIFAR-10 and CIFAR-100 in torchvision's on-disk format; md5s differ from the real ones.

    Returns (root, expected) with expected[name] = {"train": (images NCHW, labels),
    "test": (...), "classes": [...]}.
    """
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar"
    expected = {}

    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    batches = [_write_batch(folder / f"data_batch_{i}", rng, 3, 10, b"labels") for i in range(1, 6)]
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in classes], b"num_vis": 3072})
    expected["cifar10"] = {
        "train": (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])),
        "test": _write_batch(folder / "test_batch", rng, 4, 10, b"labels"),
        "classes": classes,
    }

    folder = root / datasets.CIFAR100.base_folder
    folder.mkdir(parents=True)
    classes = [f"fine{i:02d}" for i in range(100)]
    _write_pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in classes],
                                    b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    expected["cifar100"] = {
        "train": _write_batch(folder / "train", rng, 6, 100, b"fine_labels"),
        "test": _write_batch(folder / "test", rng, 3, 100, b"fine_labels"),
        "classes": classes,
    }
    return root, expected


@pytest.fixture
def cifar_root(cifar_files, monkeypatch):
    """cifar_files with torchvision's expected md5s patched to the fixture files' own."""
    root, expected = cifar_files

    def md5(cls, name):
        return hashlib.md5((root / cls.base_folder / name).read_bytes()).hexdigest()

    for cls in (datasets.CIFAR10, datasets.CIFAR100):
        monkeypatch.setattr(cls, "train_list", [[name, md5(cls, name)] for name, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[name, md5(cls, name)] for name, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls, cls.meta["filename"])})
    return root, expected


@pytest.fixture
def make_image_folder(tmp_path):
    """Factory: an ImageFolder tree of random images; returns (root, {split: [(path, class, CHW uint8)]})."""

    def make(name="tiny", train_classes=("cat", "dog"), test_classes=None, per_class=3, ext=".png"):
        rng = np.random.default_rng(len(tmp_path.name))
        root = tmp_path / name
        written = {}
        for split, classes in (("train", train_classes), ("test", test_classes or train_classes)):
            written[split] = []
            for cls in sorted(classes):
                (root / split / cls).mkdir(parents=True)
                for i in range(per_class):
                    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    path = root / split / cls / f"{i:04d}{ext}"
                    Image.fromarray(pixels).save(path)
                    written[split].append((path, cls, torch.from_numpy(pixels).permute(2, 0, 1)))
        return root, written

    return make
