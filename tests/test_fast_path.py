"""The fast path computes the same training step as the plain one.

Each speedup is compared with plain eager fp32 on the SAME batch (built by the library's own
`train_batches`) from the SAME initial weights, through the library's `train_step`. The
device augmentation is compared, statistically, with the torchvision transforms that the
benchmark's baseline uses.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from reproresnet.bench import measure as bench
from reproresnet.data import PAD, Normalizer, augment, train_batches
from reproresnet.architectures import ArchSpec
from reproresnet.models import build_model, create
from reproresnet.recipes import get_recipe
from reproresnet.engine import Speedups, compile_model, make_optimizer, train_step

REPO = Path(__file__).resolve().parents[1]
PLAIN = Speedups(channels_last=False, compile=False, fused_optimizer=False)

# Small members of each block family, so that the checks stay fast on a CPU.
NETWORKS = {
    "preact_basic": lambda: build_model("preact_resnet20"),
    "preact_bottleneck": lambda: create(ArchSpec("preact", "bottleneck", 29)),
    "wide": lambda: create(ArchSpec("wide", "basic", 10, 2), dropout=0.0),  # no dropout: its draws would differ between runs
}


def _batch(batch_size=16, seed=0):
    """One normalised, augmented batch from the library's data path."""
    data = bench.synthetic_train_set(256, seed)
    normalizer = Normalizer.fit(data.images, "per_pixel_mean")
    generator = torch.Generator().manual_seed(seed)
    return next(train_batches(data, batch_size, normalizer=normalizer, augmentation="per_image",
                              generator=generator, device="cpu"))


def _loss_and_grads(model, images, labels, speedups, precision="fp32"):
    """Mean loss and the gradients of one `train_step`; lr=0 leaves the weights as they were."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    if speedups.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    loss_sum, _ = train_step(model, optimizer, images, labels.unsqueeze(0), precision)  # one network: labels [1, B]
    return loss_sum.item() / len(labels), [p.grad.detach().float().clone() for p in model.parameters()]


def _twin_runs(name, speedups, precision="fp32"):
    torch.manual_seed(0)
    model = NETWORKS[name]()
    twin = copy.deepcopy(model)
    images, labels = _batch()
    return _loss_and_grads(model, images, labels, PLAIN), _loss_and_grads(twin, images, labels, speedups, precision)


def _relative(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def _cosine(grads, reference):
    flat = lambda tensors: torch.cat([t.double().flatten() for t in tensors])  # noqa: E731
    return torch.nn.functional.cosine_similarity(flat(grads), flat(reference), dim=0).item()


# Why the gradient checks below are split. The gradient of a ReLU network is discontinuous in
# its forward values: a pre-activation within rounding of zero switches side between two fp32
# evaluation orders, and behind the global average pool every active unit of a channel carries
# the same gradient, so one switched unit in ~30,000 moves the whole gradient by ~1% (seen here:
# channels_last fp32 vs NCHW fp32, 2 of 65,536 final units switched, every conv gradient off by
# ~1e-2 while the loss agreed to 1e-7). So: an exact equivalence in float64, where nothing
# switches; in fp32 and bf16, tight bounds on the loss and on the classifier's gradient (after
# the last ReLU) and a cosine on the whole gradient.

@pytest.mark.parametrize("name", NETWORKS)
def test_channels_last_fp32_matches_plain(name):
    """channels_last in fp32: loss and the classifier's gradient within 1e-4 relative; the whole
    gradient's cosine similarity > 0.9999 (switched ReLUs, above)."""
    (loss, grads), (fast_loss, fast_grads) = _twin_runs(name, Speedups(True, False, False))
    assert abs(fast_loss - loss) <= 1e-4 * abs(loss)
    for fast, plain in zip(fast_grads[-2:], grads[-2:]):  # fc weight and bias
        assert _relative(fast, plain) <= 1e-4
    assert _cosine(fast_grads, grads) > 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_channels_last_is_exact_in_float64(name):
    """channels_last in float64: loss and every gradient tensor within 1e-9 relative of NCHW; a
    wrong stride or index anywhere would show as an error of order one."""
    torch.manual_seed(0)
    model = NETWORKS[name]().double()
    twin = copy.deepcopy(model)
    images, labels = _batch()
    loss, grads = _loss_and_grads(model, images.double(), labels, PLAIN)
    fast_loss, fast_grads = _loss_and_grads(twin, images.double(), labels, Speedups(True, False, False))
    assert abs(fast_loss - loss) <= 1e-9 * abs(loss)
    errors = [_relative(fast, plain) for fast, plain in zip(fast_grads, grads)]
    assert max(errors) <= 1e-9, f"largest gradient error {max(errors):.2e} (tensor {errors.index(max(errors))})"


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bf16_autocast_close_to_plain(name, channels_last):
    """bf16 autocast vs fp32: loss within 2e-2 relative; the classifier's gradient (after the last
    ReLU) cosine > 0.99; the whole gradient cosine > 0.9 and no more than 0.05 below that of an
    fp32 step on inputs and weights merely rounded to bf16 (0.96-0.998 on these networks, so bf16
    costs no more than its rounding must). A cosine > 0.99 on the whole gradient is out of reach
    for any bf16 step here: the rounding alone switches ReLUs (above)."""
    (loss, grads), (fast_loss, fast_grads) = _twin_runs(name, Speedups(channels_last, False, False), "bf16")
    assert abs(fast_loss - loss) <= 2e-2 * abs(loss)
    assert _cosine(fast_grads[-2:], grads[-2:]) > 0.99
    torch.manual_seed(0)
    rounded = NETWORKS[name]()
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.bfloat16().float())
    images, labels = _batch()
    _, rounded_grads = _loss_and_grads(rounded, images.bfloat16().float(), labels, PLAIN)
    whole = _cosine(fast_grads, grads)
    assert whole > 0.9
    assert whole >= _cosine(rounded_grads, grads) - 0.05


def test_fused_sgd_matches_plain_sgd():
    """make_optimizer with fused=True gives the plain SGD update (momentum, nesterov, weight
    decay) over three steps: parameters within 1e-6 relative, 1e-7 absolute."""
    recipe = get_recipe("he2016")
    torch.manual_seed(0)
    model = build_model("preact_resnet20")
    twin = copy.deepcopy(model)
    try:
        fused = make_optimizer(twin, recipe, Speedups(False, False, fused_optimizer=True))
    except RuntimeError as error:
        pytest.skip(f"fused SGD is not available on this device with torch {torch.__version__}: {error}")
    plain = make_optimizer(model, recipe, PLAIN)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    initial = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        plain.step()
        fused.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters()))


@pytest.mark.slow
def test_compiled_model_keeps_its_full_batch_graph_after_a_partial_batch():
    """compile_model (dynamic=False): the epoch's smaller last batch gets its own graph, and
    full batches keep running the first, static one; torch's default would switch them to
    the dynamic-shape graph it builds for the second size."""
    calls = []

    def counting_backend(graph_module, example_inputs):
        index = len(calls)
        calls.append([])

        def run(*args):
            images = [a for a in args if isinstance(a, torch.Tensor) and a.shape[1:] == (3, 32, 32)]
            calls[index].append(images[0].shape[0])
            return graph_module.forward(*args)
        return run

    torch._dynamo.reset()
    model = build_model("preact_resnet20")
    compiled = compile_model(model, backend=counting_backend)
    for batch in (8, 5, 8, 5, 8):
        compiled(torch.randn(batch, 3, 32, 32))
    torch._dynamo.reset()
    assert len(calls) == 2, f"{len(calls)} graphs for two batch sizes"
    assert calls[0] == [8, 8, 8] and calls[1] == [5, 5]


_COMPILE_CHECK = textwrap.dedent("""
    import json, torch
    from reproresnet.bench import measure as bench
    from reproresnet.models import build_model
    from reproresnet.engine import compile_model, train_step
    torch.manual_seed(0)
    eager = build_model("preact_resnet20")
    twin = build_model("preact_resnet20")
    twin.load_state_dict(eager.state_dict())
    compiled = compile_model(twin)
    data = bench.synthetic_train_set(64)
    images = (data.images[:16].float() / 255 - 0.5)
    labels = data.labels[:16]
    results = []
    for model in (eager, compiled):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        loss, _ = train_step(model, optimizer, images, labels.unsqueeze(0), "fp32")
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (loss, grads), (closs, cgrads) = results
    flat = lambda tensors: torch.cat([t.flatten() for t in tensors])
    print(json.dumps({"loss": abs(closs - loss) / abs(loss),
                      "fc_grad": max(((c - g).norm() / g.norm()).item() for c, g in zip(cgrads[-2:], grads[-2:])),
                      "cosine": torch.nn.functional.cosine_similarity(flat(cgrads), flat(grads), dim=0).item()}))
""")


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """torch.compile (inductor) vs eager, fp32 on the CPU: loss and the classifier's gradient
    within 1e-4 relative, whole-gradient cosine > 0.9999 (switched ReLUs, above). A compile
    that fails, or takes longer than REPRORESNET_COMPILE_TEST_TIMEOUT seconds (default 600; a
    cold compile of preact_resnet20 took 103 s on a loaded 2-core CPU here), fails the test."""
    timeout = float(os.environ.get("REPRORESNET_COMPILE_TEST_TIMEOUT", 600))
    try:
        done = subprocess.run([sys.executable, "-c", _COMPILE_CHECK], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torch.compile of preact_resnet20 took over {timeout:.0f} s on this CPU")
    assert done.returncode == 0, f"torch.compile failed:\n{done.stderr[-3000:]}"
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert errors["loss"] <= 1e-4 and errors["fc_grad"] <= 1e-4 and errors["cosine"] > 0.9999, errors


# ---------------------------------------------------------------- augmentation distribution

N_DRAWS = 3000
CHI2_8_DOF_P001 = 26.12  # chi-square critical value, 8 degrees of freedom, p = 0.001


def _probe():
    """Channel 0 holds row + 1, channel 1 column + 1, so a crop and a flip can be read back."""
    steps = torch.arange(1, 33, dtype=torch.float32)
    return torch.stack([steps.view(32, 1).expand(32, 32), steps.view(1, 32).expand(32, 32),
                        torch.zeros(32, 32)])


def _read_back(crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row offset, column offset, flipped) of each 3x32x32 crop of the 4-pixel-padded probe."""
    centre_row = crops[:, 0, 16, 16]
    flipped = crops[:, 1, 16, 15] > crops[:, 1, 16, 16]
    row_offset = centre_row - 16 - 1 + PAD
    col_offset = crops[:, 1, 16, 16] - 1 + PAD - torch.where(flipped, 31 - 16, 16)
    return row_offset.long().numpy(), col_offset.long().numpy(), flipped.numpy()


def _device_draws():
    images = _probe().expand(N_DRAWS, 3, 32, 32).contiguous()
    return _read_back(augment(images, "per_image", torch.Generator().manual_seed(0)))


def _torchvision_draws():
    pipeline = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
    pil = Image.fromarray(_probe().permute(1, 2, 0).to(torch.uint8).numpy())
    torch.manual_seed(0)  # torchvision draws from torch's global generator
    crops = np.stack([np.asarray(pipeline(pil)) for _ in range(N_DRAWS)])
    return _read_back(torch.from_numpy(crops).permute(0, 3, 1, 2).float())


def _chi2_uniform(values: np.ndarray) -> float:
    counts = np.bincount(values, minlength=2 * PAD + 1)
    expected = len(values) / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def _chi2_two_samples(a: np.ndarray, b: np.ndarray) -> float:
    table = np.stack([np.bincount(a, minlength=2 * PAD + 1), np.bincount(b, minlength=2 * PAD + 1)])
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def test_device_augmentation_draws_the_torchvision_distribution():
    """Crop offsets uniform over 0..8 on each axis and flips with p = 0.5, in both the device
    path and torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip; 3000 fixed-seed
    draws each. Chi-square tests at p = 0.001 (uniformity, and the two samples alike), and the
    flip rate within 4 standard deviations of one half."""
    ours, theirs = _device_draws(), _torchvision_draws()
    for name, (rows, cols, flips) in (("device", ours), ("torchvision", theirs)):
        assert rows.min() >= 0 and rows.max() <= 2 * PAD and cols.min() >= 0 and cols.max() <= 2 * PAD, name
        assert _chi2_uniform(rows) < CHI2_8_DOF_P001, f"{name}: row offsets not uniform"
        assert _chi2_uniform(cols) < CHI2_8_DOF_P001, f"{name}: column offsets not uniform"
        assert abs(flips.mean() - 0.5) < 4 * np.sqrt(0.25 / N_DRAWS), f"{name}: flip rate {flips.mean():.3f}"
        # Each axis reaches every offset: a test of the read-back as much as of the draws.
        assert set(rows) == set(cols) == set(range(2 * PAD + 1)), name
    for axis in (0, 1):
        assert _chi2_two_samples(ours[axis], theirs[axis]) < CHI2_8_DOF_P001
    # The row and column offsets are drawn independently (not one offset for both axes).
    assert (ours[0] != ours[1]).mean() > 0.8 and (theirs[0] != theirs[1]).mean() > 0.8
