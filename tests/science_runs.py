"""A run as `train` sets it up (a stack of one run), for the science tests (tests/test_science_*.py)."""

from reproresnet import train as training
from reproresnet.architectures import ArchSpec
from reproresnet.config import TrainConfig, select_device
from reproresnet.data import load_device_splits
from reproresnet.models import create


def run_for(tmp_path, cifar_root, monkeypatch, **settings):
    """Data, normaliser, schedule, model and optimizer as `train` builds them, on the tiny CIFAR-10
    fixture of conftest.py. The network is an 8-layer stand-in under the config's name: these
    tests need only the name (for the warm-up), and the registered networks take seconds to
    build and count on a CPU."""
    root, _ = cifar_root
    settings.setdefault("val_size", 0)  # 15 fixture images leave no room for a recipe's 5,000-image hold-out
    monkeypatch.setattr(training, "build_model", lambda name, num_classes, **options:
                        create(ArchSpec("preact", "basic", 8), num_classes=num_classes))
    config = TrainConfig(**{"arch": "preact_resnet20", "out": str(tmp_path / "run"), "dataset": "cifar10",
                            "data_dir": str(root), "device": "cpu", **settings})
    device = select_device(config.device)
    return training.build_stack([config], [load_device_splits(config, device)], device)
