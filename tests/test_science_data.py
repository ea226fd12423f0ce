"""The data a run learns from and is judged on: normaliser, validation hold-out, augmentation.

Checked on runs set up as `train` sets them up (on the tiny CIFAR-10 fixture of
conftest.py); the statistics are recomputed by hand from the images, in float64.
"""

from unittest import mock

import pytest
import torch

from reproresnet import engine, train as training
from reproresnet.data import Normalizer, eval_batches, load_splits
from science_runs import run_for


def as_bytes(images):
    return [image.numpy().tobytes() for image in images]


def hand_statistics(images, mode):
    """He et al.: the mean image of the training split; authors' code: per-channel mean and
    (population) standard deviation; both on pixels scaled to [0, 1]."""
    x = images.double() / 255
    if mode == "per_pixel_mean":
        return x.mean(0), torch.ones(1, 1, 1, dtype=torch.float64)
    return x.mean((0, 2, 3)).view(3, 1, 1), x.std((0, 2, 3), unbiased=False).view(3, 1, 1)


@pytest.mark.parametrize("mode", ["per_pixel_mean", "per_channel"])
def test_normaliser_is_fitted_on_the_training_split_after_the_hold_out(tmp_path, cifar_root, monkeypatch, mode):
    """Protects the input statistics: those of the images trained on, without the validation or test images."""
    run = run_for(tmp_path, cifar_root, monkeypatch, val_size=5, normalization=mode)
    assert len(run.runs[0].splits.train) == 10 and len(run.runs[0].splits.val) == 5
    mean, std = hand_statistics(run.runs[0].splits.train.images, mode)
    torch.testing.assert_close(run.runs[0].normalizer.mean.double().expand_as(mean), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(run.runs[0].normalizer.std.double().expand_as(std), std, rtol=0, atol=1e-6)
    # The fixture's splits differ enough that fitting on any other set of images would show.
    _, expected = cifar_root
    for other in (expected["cifar10"]["train"][0], torch.cat([run.runs[0].splits.train.images, run.runs[0].splits.test.images])):
        assert not torch.allclose(hand_statistics(other, mode)[0], mean, atol=1e-3)


@pytest.mark.parametrize("mode", ["per_pixel_mean", "per_channel"])
def test_normaliser_does_not_depend_on_the_test_images(tmp_path, cifar_root, monkeypatch, mode):
    """Protects the test split from leaking into training: another test split, the same normaliser."""
    full = run_for(tmp_path / "a", cifar_root, monkeypatch, normalization=mode)
    fewer = run_for(tmp_path / "b", cifar_root, monkeypatch, normalization=mode, limit_test=2)
    assert len(fewer.runs[0].splits.test) == 2 and len(full.runs[0].splits.test) == 4
    assert torch.equal(full.runs[0].normalizer.mean, fewer.runs[0].normalizer.mean)
    assert torch.equal(full.runs[0].normalizer.std, fewer.runs[0].normalizer.std)


@pytest.mark.slow  # three 3072 x 3072 eigendecompositions: about 10 s each on one CPU core
def test_gcn_zca_of_a_run_is_fitted_on_its_training_split_only(tmp_path, cifar_root, monkeypatch):
    """Protects WRN v1's whitening from the held-out and test images: fitted on the images trained on."""
    full = run_for(tmp_path / "a", cifar_root, monkeypatch, normalization="gcn_zca", val_size=5)
    fewer = run_for(tmp_path / "b", cifar_root, monkeypatch, normalization="gcn_zca", val_size=5, limit_test=2)
    assert torch.equal(full.runs[0].normalizer.whitening, fewer.runs[0].normalizer.whitening)
    assert torch.equal(full.runs[0].normalizer.mean, fewer.runs[0].normalizer.mean)
    alone = Normalizer.fit(full.runs[0].splits.train.images, "gcn_zca")
    assert torch.equal(alone.whitening, full.runs[0].normalizer.whitening)


def test_validation_split_is_disjoint_from_training_and_from_test(tmp_path, cifar_root, monkeypatch):
    """Protects model selection: validation images are held out of the training split, none lost."""
    run = run_for(tmp_path, cifar_root, monkeypatch, val_size=5)
    _, expected = cifar_root
    train, val, test = (as_bytes(split.images) for split in (run.runs[0].splits.train, run.runs[0].splits.val, run.runs[0].splits.test))
    assert not set(train) & set(val)
    assert not set(val) & set(test)
    assert sorted(train + val) == sorted(as_bytes(expected["cifar10"]["train"][0]))
    # Labels travel with their images.
    by_image = dict(zip(as_bytes(expected["cifar10"]["train"][0]), expected["cifar10"]["train"][1].tolist()))
    for split in (run.runs[0].splits.train, run.runs[0].splits.val):
        assert split.labels.tolist() == [by_image[b] for b in as_bytes(split.images)]


def test_training_batches_never_hold_a_validation_image(tmp_path, cifar_root, monkeypatch):
    """Protects model selection in the loop: an epoch's batches draw on the training split only,
    each image once."""
    run = run_for(tmp_path, cifar_root, monkeypatch, val_size=5, augmentation="none", batch_size=4)
    seen = []

    def step(model, optimizer, images, labels, precision):
        seen.append(images)
        return torch.zeros(()), torch.zeros((), dtype=torch.long)

    with mock.patch.object(engine, "train_step", step):  # watch the steps, skip the SGD

        training.train_one_epoch(run, 0, progress=False)
    fed = as_bytes(torch.cat(seen))
    normalised = lambda split: as_bytes(run.runs[0].normalizer(split.images))  # noqa: E731
    assert sorted(fed) == sorted(normalised(run.runs[0].splits.train))
    assert not set(fed) & set(normalised(run.runs[0].splits.val))


def test_evaluation_batches_are_the_normalised_images_untouched(tmp_path, cifar_root, monkeypatch):
    """Protects evaluation data from augmentation: with augmentation on for training, the
    evaluation batches are still exactly the normalised images, in order."""
    run = run_for(tmp_path, cifar_root, monkeypatch, augmentation="per_image", eval_batch_size=3)
    test = run.runs[0].splits.test
    batches = list(eval_batches(test, 3, normalizer=run.runs[0].normalizer, device="cpu"))
    images = torch.cat([b[0] for b in batches])
    mean, _ = hand_statistics(run.runs[0].splits.train.images, "per_pixel_mean")
    torch.testing.assert_close(images.double(), test.images.double() / 255 - mean, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in batches]), test.labels)


def test_hold_out_is_seeded_and_differs_between_seeds(cifar_root):
    """Protects reproducibility of the split: one seed, one validation split; another seed, another."""
    root, _ = cifar_root
    a, b = (load_splits("cifar10", root, val_size=5, seed=s) for s in (0, 0))
    c = load_splits("cifar10", root, val_size=5, seed=1)
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
