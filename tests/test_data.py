import os
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.datasets import cifar

from reproresnet import data
from reproresnet.data import (
    CIFAR10_CLASSES, DATA_DIR_ENV, DataError, ImageSet, Normalizer, augment,
    default_data_dir, eval_batches, load_splits, train_batches,
)

REPO = Path(__file__).resolve().parents[1]


def as_bytes(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if anything tries to reach the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")
    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)


# ---------------------------------------------------------------- CIFAR (torchvision format)

@pytest.mark.parametrize("name, label", [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_cifar_loads_pixels_labels_and_classes(cifar_root, name, label, no_download):
    root, expected = cifar_root
    splits = load_splits(name, root)
    for split in ("train", "test"):
        images, labels = expected[name][split]
        got = getattr(splits, split)
        assert got.images.dtype == torch.uint8 and got.images.shape == (len(images), 3, 32, 32)
        assert torch.equal(got.images, images)  # the channel-planar rows came back as NCHW
        assert got.labels.dtype == torch.int64 and torch.equal(got.labels, labels)
    assert splits.classes == expected[name]["classes"]
    assert splits.label == label and splits.val is None
    assert splits.describe() == {"dataset": name, "label": label, "n_train": len(expected[name]["train"][0]),
                                 "n_val": 0, "n_test": len(expected[name]["test"][0]),
                                 "classes": expected[name]["classes"]}


def test_cifar_download_true_keeps_a_verified_copy(cifar_root, no_download):
    root, expected = cifar_root
    assert torch.equal(load_splits("cifar10", root, download=True).test.images, expected["cifar10"]["test"][0])


def test_cifar_wrong_md5_names_the_file(cifar_files):
    root, _ = cifar_files  # md5s not patched: every file mismatches, the first checked is named
    with pytest.raises(DataError, match=r"data_batch_1 does not match its md5.*corrupt or truncated"):
        load_splits("cifar10", root)


def test_cifar_flipped_byte_names_the_file(cifar_root):
    root, _ = cifar_root
    path = root / "cifar-10-batches-py" / "test_batch"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch does not match.*--download"):
        load_splits("cifar10", root)


def test_cifar_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100 not found in .*--download.*REPRORESNET_DATA"):
        load_splits("cifar100", tmp_path)


def test_cifar_partly_missing_names_the_files(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"incomplete: data_batch_3 missing"):
        load_splits("cifar10", root)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv(DATA_DIR_ENV)
    assert default_data_dir() == Path.home() / ".cache" / "reproresnet" / "data"


@pytest.mark.parametrize("spec", ["cifar", "imagenet", "folder:", "CIFAR10"])
def test_unknown_dataset_lists_accepted_forms(spec):
    with pytest.raises(DataError, match=r"accepted forms: cifar10, cifar100, folder:PATH, synthetic"):
        load_splits(spec)


# ---------------------------------------------------------------- image folders

def test_folder_loads_in_imagefolder_order(make_image_folder):
    root, written = make_image_folder(train_classes=("dog", "cat", "emu"), per_class=2)
    splits = load_splits(f"folder:{root}")
    assert splits.classes == ["cat", "dog", "emu"] and splits.label == "image folder tiny"
    for split in ("train", "test"):
        got = getattr(splits, split)
        assert torch.equal(got.images, torch.stack([pixels for _, _, pixels in written[split]]))  # PNG is lossless
        assert got.labels.tolist() == [splits.classes.index(cls) for _, cls, _ in written[split]]


def test_folder_with_cifar10_classes_in_jpeg_is_the_mirror(make_image_folder):
    root, _ = make_image_folder(train_classes=CIFAR10_CLASSES, per_class=1, ext=".jpg")
    assert load_splits(f"folder:{root}").label == "CIFAR-10 (JPEG mirror)"
    root, _ = make_image_folder(name="png", train_classes=CIFAR10_CLASSES, per_class=1, ext=".png")
    assert load_splits(f"folder:{root}").label == "image folder png"


def test_folder_decodes_only_the_kept_files(make_image_folder):
    """A subset reads its own files only: every other file may be unreadable, and the same
    images load."""
    root, written = make_image_folder(per_class=5)
    splits = load_splits(f"folder:{root}", limit_train=3, limit_test=2)
    assert len(splits.train) == 3 and len(splits.test) == 2
    broken = 0
    for split in ("train", "test"):
        for path, _, pixels in written[split]:
            if not any(torch.equal(pixels, image) for image in getattr(splits, split).images):
                path.write_bytes(b"not an image")
                broken += 1
    again = load_splits(f"folder:{root}", limit_train=3, limit_test=2)
    assert broken == 15 and torch.equal(again.train.images, splits.train.images)
    assert torch.equal(again.test.images, splits.test.images)


def _break(root: Path, what: str) -> str:
    """Damage a fresh folder; return a regex the error must match."""
    victim = root / "train" / "dog" / "0001.png"
    if what == "wrong size":
        Image.new("RGB", (33, 30)).save(victim)
        return r"0001\.png is 33x30 pixels"
    if what == "truncated":
        victim.write_bytes(victim.read_bytes()[:60])
        return r"cannot decode image .*dog.0001\.png.*truncated"
    if what == "no images":
        for path in (root / "test" / "cat").iterdir():
            path.unlink()
        return r"no images .* for class\(es\) cat"
    if what == "classes differ":
        (root / "test" / "cat").rename(root / "test" / "cow")
        (root / "train" / "dog").rename(root / "train" / "ant")
        return r"only in train: \['ant', 'cat'\]; only in test: \['cow', 'dog'\]"
    if what == "no test split":
        (root / "test").rename(root / "val")
        return r"has no test/ folder"
    if what == "no class folders":
        for path in (root / "train").rglob("*.png"):
            path.unlink()
        for cls in ("cat", "dog"):
            (root / "train" / cls).rmdir()
        return r"no class folders in .*train"
    raise ValueError(what)


@pytest.mark.parametrize("what", ["wrong size", "truncated", "no images", "classes differ",
                                  "no test split", "no class folders"])
def test_folder_errors_name_the_problem(make_image_folder, what):
    root, _ = make_image_folder()
    pattern = _break(root, what)
    with pytest.raises(DataError, match=pattern):
        load_splits(f"folder:{root}")


def test_folder_missing(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist.*ImageFolder layout"):
        load_splits(f"folder:{tmp_path / 'nowhere'}")


# The project's lossy JPEG copy of CIFAR-10: beside the clone in shared/ (as in CI here), or
# where $REPRORESNET_MIRROR_ARCHIVE says; a user's machine has none.
MIRROR_ARCHIVE = Path(os.environ.get("REPRORESNET_MIRROR_ARCHIVE",
                                     REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))


def _extract_some(archive: Path, dest: Path, per_class: dict[str, int]) -> None:
    """The first `per_class[split]` images of every class of each split, in ImageFolder layout."""
    taken: dict[tuple, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) == 3 and taken.get(parts[:2], 0) < per_class.get(parts[0], 0):
                taken[parts[:2]] = taken.get(parts[:2], 0) + 1
                tar.extract(member, dest, filter="data")
                if sum(taken.values()) == len(CIFAR10_CLASSES) * sum(per_class.values()):
                    break  # the rest of the archive is not needed


@pytest.mark.skipif(not MIRROR_ARCHIVE.is_file(), reason=f"no JPEG mirror archive at {MIRROR_ARCHIVE}")
def test_jpeg_mirror_subset(tmp_path):
    _extract_some(MIRROR_ARCHIVE, tmp_path, {"train": 60, "test": 12})
    splits = load_splits(f"folder:{tmp_path}", limit_train=500, limit_test=100)
    assert splits.classes == list(CIFAR10_CLASSES) and splits.label == "CIFAR-10 (JPEG mirror)"
    assert splits.train.images.shape == (500, 3, 32, 32) and len(splits.test) == 100


# ---------------------------------------------------------------- synthetic stand-in, limits, val split

@pytest.fixture(scope="module")
def synthetic():
    return load_splits("synthetic")


def test_synthetic_shapes_balance_and_label(synthetic):
    s = synthetic
    assert s.train.images.shape == (5000, 3, 32, 32) and s.test.images.shape == (1000, 3, 32, 32)
    assert s.train.images.dtype == torch.uint8 and s.train.labels.dtype == torch.int64
    assert len(s.classes) == 10 and s.label == "synthetic" and "CIFAR" not in s.label
    counts = s.train.labels.bincount(minlength=10)
    assert counts.min() >= 400 and counts.max() <= 600
    assert s.train.images.float().std() > 20  # not a blank image


def test_synthetic_is_deterministic_per_seed(synthetic):
    data._synthetic_set.cache_clear()  # made again, not the fixture's images kept for the process
    again = load_splits("synthetic", limit_train=5000)
    assert torch.equal(again.train.images, synthetic.train.images)
    assert torch.equal(again.test.labels, synthetic.test.labels)
    other = load_splits("synthetic", seed=1)
    assert not torch.equal(other.train.images, synthetic.train.images)


def test_a_split_is_its_callers_own_copy_of_the_synthetic_set_made_once():
    """A subset and a whole split (the test split here) alike: writing into them changes no later load."""
    first = load_splits("synthetic", limit_train=10)
    kept = first.train.images.clone(), first.test.images.clone()
    first.train.images.zero_()
    first.test.images.zero_()
    first.test.labels.fill_(-1)
    again = load_splits("synthetic", limit_train=10)
    assert torch.equal(again.train.images, kept[0]) and torch.equal(again.test.images, kept[1])
    assert again.test.labels.min() >= 0


def test_limits_are_seeded_subsets(synthetic):
    a = load_splits("synthetic", limit_train=100, limit_test=50)
    b = load_splits("synthetic", limit_train=100, limit_test=50)
    assert len(a.train) == 100 and len(a.test) == 50
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert set(as_bytes(a.train.images)) <= set(as_bytes(synthetic.train.images))
    assert set(as_bytes(a.test.images)) <= set(as_bytes(synthetic.test.images))


def test_limits_pick_a_different_subset_for_another_seed(cifar_root):
    root, expected = cifar_root
    picks = [load_splits("cifar10", root, limit_train=5, seed=seed).train.labels for seed in range(4)]
    assert any(not torch.equal(picks[0], other) for other in picks[1:])


def test_limits_on_cifar(cifar_root):
    root, expected = cifar_root
    splits = load_splits("cifar10", root, limit_train=4, limit_test=2, seed=1)
    assert set(as_bytes(splits.train.images)) <= set(as_bytes(expected["cifar10"]["train"][0]))
    with pytest.raises(DataError, match=r"limit_train=16 is larger than the train split .*\(15 images\)"):
        load_splits("cifar10", root, limit_train=16)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"limit_train": 5001}, r"limit_train=5001 is larger than the train split .*5000 images"),
    ({"limit_test": 1001}, r"limit_test=1001 is larger than the test split .*1000 images"),
    ({"limit_train": 50, "val_size": 50}, r"val_size=50 leaves no training images: the train split has 50"),
])
def test_bad_limits(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        load_splits("synthetic", **kwargs)


def test_val_split_is_held_out_of_the_kept_train_images():
    kept = load_splits("synthetic", limit_train=300, seed=2)
    splits = load_splits("synthetic", limit_train=300, val_size=50, seed=2)
    assert len(splits.train) == 250 and len(splits.val) == 50
    assert splits.describe()["n_val"] == 50 and splits.describe()["n_train"] == 250
    train, val = as_bytes(splits.train.images), as_bytes(splits.val.images)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(as_bytes(kept.train.images))
    again = load_splits("synthetic", limit_train=300, val_size=50, seed=2)
    assert torch.equal(again.val.images, splits.val.images)


# ---------------------------------------------------------------- normalisation

def test_per_pixel_mean_subtracts_the_mean_image():
    images = torch.randint(0, 256, (20, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    norm = Normalizer.fit(images, "per_pixel_mean")
    mean_image = images.double().mean(0) / 255
    assert norm.mean.shape == (3, 32, 32)
    assert torch.allclose(norm(images).double(), images.double() / 255 - mean_image, atol=1e-6)
    assert norm(images).dtype == torch.float32


def test_per_channel_gives_zero_mean_unit_std(synthetic):
    norm = Normalizer.fit(synthetic.train.images, "per_channel")
    out = norm(synthetic.train.images)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std((0, 2, 3)), torch.ones(3), atol=1e-4)


def test_seeds_code_scalings():
    """utils.py since 502ff96: raw 0-255 floats minus `pixel_mean`; at 7c4c997: `/ 255.`, nothing subtracted."""
    images = torch.randint(0, 256, (20, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    raw = Normalizer.fit(images, "per_pixel_mean_0_255")(images).double()
    torch.testing.assert_close(raw, images.double() - images.double().mean(0), rtol=0, atol=1e-4)
    scaled = Normalizer.fit(images, "range_0_1")(images).double()
    torch.testing.assert_close(scaled, images.double() / 255, rtol=0, atol=1e-7)


def pylearn2_gcn_zca(train, test):
    """make_cifar10_gcn_whitened.py by hand in float64: global_contrast_normalize(X, scale=55.) on
    raw pixel values (each image minus its mean, divided by its norm / 55), then ZCA(filter_bias=0.1)
    fitted on the training images: P = V diag(1 / sqrt(e)) V^T of cov + 0.1 I, applied as (x - mean) P."""
    def gcn(images):
        x = images.double().flatten(1)
        x = x - x.mean(1, keepdim=True)
        return x / (x.pow(2).sum(1, keepdim=True).sqrt() / 55)
    x = gcn(train)
    mean = x.mean(0)
    covariance = (x - mean).T @ (x - mean) / len(x) + 0.1 * torch.eye(x.shape[1], dtype=torch.float64)
    e, v = torch.linalg.eigh(covariance)
    return (gcn(test) - mean) @ (v @ torch.diag(e ** -0.5) @ v.T)


def test_gcn_zca_is_pylearn2s_and_whitens_the_training_images():
    """WRN v1's preprocessing (the authors' README: pylearn2's make_cifar10_gcn_whitened.py),
    on 4x4 images so that the 48x48 covariance is well estimated from 3,000 images."""
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (3000, 3, 4, 4), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (50, 3, 4, 4), generator=g, dtype=torch.uint8)
    norm = Normalizer.fit(train, "gcn_zca")
    torch.testing.assert_close(norm(test).double().flatten(1), pylearn2_gcn_zca(train, test), rtol=0, atol=1e-4)
    # Whitened training images: identity covariance, except along the direction GCN removes (every
    # image's pixels sum to zero) and the shrinkage by filter_bias 0.1 of eigenvalues near 60.
    x = norm(train).double().flatten(1)
    covariance = (x - x.mean(0)).T @ (x - x.mean(0)) / len(x)
    ones = torch.full((48, 1), 48 ** -0.5, dtype=torch.float64)
    torch.testing.assert_close(covariance, torch.eye(48, dtype=torch.float64) - ones @ ones.T, rtol=0, atol=5e-3)
    torch.testing.assert_close(x.mean(0), torch.zeros(48, dtype=torch.float64), rtol=0, atol=1e-5)


def test_gcn_zca_is_fitted_on_the_images_given_only():
    g = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (500, 3, 4, 4), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 128, (500, 3, 4, 4), generator=g, dtype=torch.uint8)
    norm = Normalizer.fit(train, "gcn_zca")
    again = Normalizer.fit(train.clone(), "gcn_zca")
    assert torch.equal(norm.whitening, again.whitening) and torch.equal(norm.mean, again.mean)
    assert not torch.allclose(Normalizer.fit(other, "gcn_zca").whitening, norm.whitening, atol=1e-3)
    assert norm(other).dtype == torch.float32 and norm(other).shape == other.shape


def test_normalizer_rejects_images_already_normalized():
    norm = Normalizer.fit(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "per_pixel_mean")
    with pytest.raises(ValueError, match="uint8"):
        norm(torch.zeros(2, 3, 32, 32))


# ---------------------------------------------------------------- augmentation

def coded_images(n: int) -> torch.Tensor:
    """Every pixel holds 1 + 10000 c + 100 y + x, so a crop reveals where it came from."""
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    return (1 + 10000 * c + 100 * y + x).float().expand(n, 3, 32, 32).contiguous()


def reflect_padded(images: torch.Tensor) -> torch.Tensor:
    """The images padded by 4 pixels of their mirror image, edge row and column not repeated:
    padded row 4 - k is image row k, padded row 35 + k is image row 31 - k (k = 1..4)."""
    source = [abs(j - 4) if j < 4 else 62 - (j - 4) if j - 4 > 31 else j - 4 for j in range(40)]
    index = torch.tensor(source)
    return images[:, :, index][:, :, :, index]


def recover(images: torch.Tensor, out: torch.Tensor, padded: torch.Tensor | None = None):
    """(row offset, column offset, flipped) of each crop; asserts each crop IS that window of
    `padded` (default: the images with a 4-pixel zero border)."""
    centre = out[:, 0, 16, 16].long() - 1          # inside the image for every offset 0..8
    flipped = out[:, 0, 16, 17] < out[:, 0, 16, 16]
    rows = centre // 100 - 12                       # crop row 16 = padded row oy + 16 = image row oy + 12
    cols = centre % 100 - 12 + flipped.long()       # flipped: crop col 16 = padded col ox + 15
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4)) if padded is None else padded
    for i in range(len(out)):
        window = padded[i, :, rows[i]:rows[i] + 32, cols[i]:cols[i] + 32]
        assert torch.equal(out[i], window.flip(-1) if flipped[i] else window)
    return rows, cols, flipped


def test_per_image_crops_are_padded_windows_with_fair_flips():
    images = coded_images(2000)
    out = augment(images, "per_image", torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    rows, cols, flipped = recover(images, out)
    for offsets in (rows, cols):
        assert offsets.min() == 0 and offsets.max() == 8  # both edge offsets occur
        assert len(offsets.unique()) == 9
    assert 0.4 < flipped.float().mean() < 0.6
    assert (out == 0).any()  # some crops reach into the zero padding


def test_reflect_padding_mirrors_the_image_into_the_border():
    """WRN's randomcrop_type=reflection (Torch's SpatialReflectionPadding): the crops are windows of
    the image mirrored across its edges, never of a zero or constant border."""
    images = coded_images(2000)
    out = augment(images, "per_image", torch.Generator().manual_seed(0), padding="reflect")
    rows, cols, _ = recover(images, out, reflect_padded(images))
    assert {0, 8} <= set(rows.tolist()) and {0, 8} <= set(cols.tolist())  # crops reach both borders
    assert (out > 0).all()  # no zero: every pixel code is at least 1
    corner = reflect_padded(images[:1])[0, 0]
    assert corner[0, 0] == images[0, 0, 4, 4] and corner[3, 39] == images[0, 0, 1, 27]  # by hand


def test_per_batch_shares_one_offset_and_flip():
    images = coded_images(64)
    draws = set()
    for seed in range(40):
        rows, cols, flipped = recover(images, augment(images, "per_batch", torch.Generator().manual_seed(seed)))
        assert len(set(zip(rows.tolist(), cols.tolist(), flipped.tolist()))) == 1
        draws.add((rows[0].item(), cols[0].item(), flipped[0].item()))
    assert len(draws) > 10 and {d[2] for d in draws} == {True, False}
    rows, cols, flipped = recover(images, augment(images, "per_image", torch.Generator().manual_seed(0)))
    assert len(set(zip(rows.tolist(), cols.tolist(), flipped.tolist()))) > 1


def test_augment_is_reproducible_from_the_generator():
    images = torch.randn(32, 3, 32, 32)

    def run(mode, seed):  # five batches: one per_batch draw alone repeats across seeds 1 time in 162
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([augment(images, mode, generator) for _ in range(5)])

    for mode in ("per_image", "per_batch"):
        assert torch.equal(run(mode, 7), run(mode, 7)) and not torch.equal(run(mode, 7), run(mode, 8))
    assert augment(images, "none", torch.Generator()) is images


# ---------------------------------------------------------------- batching

def indexed_set(n: int) -> ImageSet:
    """Image i is filled with i % 256 and labelled i, so a batch says which images it holds."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    return ImageSet(images, torch.arange(n))


@pytest.mark.parametrize("augmentation", ["none", "per_image"])
def test_train_batches_cover_every_image_once(augmentation):
    data = indexed_set(103)
    norm = Normalizer.fit(data.images, "per_pixel_mean")
    generator = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        batches = list(train_batches(data, 16, normalizer=norm, augmentation=augmentation,
                                     generator=generator, device="cpu"))
        assert [len(y) for _, y in batches] == [16] * 6 + [7]
        assert all(x.shape == (len(y), 3, 32, 32) and x.dtype == torch.float32 for x, y in batches)
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == list(range(103))
        if augmentation == "none":
            assert torch.equal(torch.cat([x for x, _ in batches]), norm(data.images[labels]))
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1])  # a fresh order each epoch


def test_eval_batches_in_order_without_augmentation():
    data = indexed_set(50)
    norm = Normalizer.fit(data.images, "per_channel")
    batches = list(eval_batches(data, 16, normalizer=norm, device="cpu"))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(50))
    assert torch.equal(torch.cat([x for x, _ in batches]), norm(data.images))
