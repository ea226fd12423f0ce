"""The networks compute what the papers write: reference forwards and initialisation.

Each reference below is written from the papers' equations with plain functional calls
(He et al. 2015 and 2016, Zagoruyko & Komodakis 2016, Ioffe & Szegedy 2015 for batch
norm) and compared with our modules on the same weights, in float64 so that any
difference is a different computation and not rounding. Batch-norm affine parameters and
running statistics are randomised first: at their initial values (1, 0, 0, 1) a swapped
or missing batch norm would go unnoticed.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproresnet.architectures import ArchSpec
from reproresnet.models import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, create

TOL = dict(rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- the equations

def bn(x, layer, training):
    """Batch norm (Ioffe & Szegedy 2015): batch moments in training (biased variance),
    running moments in evaluation, then the affine gamma, beta."""
    if training:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = layer.running_mean, layer.running_var
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps) * layer.weight.view(shape) \
        + layer.bias.view(shape)


def conv3(x, layer, stride=1):
    return F.conv2d(x, layer.weight, None, stride, 1)


def conv1(x, layer, stride=1):
    return F.conv2d(x, layer.weight, None, stride, 0)


def zero_pad(x, out_channels, stride):
    """Option A (He et al. 2015): subsample by the stride, append zero channels."""
    x = x[:, :, ::stride, ::stride]
    return torch.cat([x, x.new_zeros(x.shape[0], out_channels - x.shape[1], *x.shape[2:])], 1)


def dropout(x, p, training):
    return F.dropout(x, p, training) if p else x


def randomise_(module, seed=0):
    """Random BN gamma, beta and running moments, so each BN leaves a trace in the output."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g, dtype=m.weight.dtype)
            m.bias.data = 0.3 * torch.randn(n, generator=g, dtype=m.bias.dtype)
            m.running_mean = 0.3 * torch.randn(n, generator=g, dtype=m.running_mean.dtype)
            m.running_var = 0.5 + torch.rand(n, generator=g, dtype=m.running_var.dtype)
    return module


def images(channels, size=8, batch=4, seed=1):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def compare(module, reference, x, training, seed=7):
    """Module and reference on the same input and the same dropout draws."""
    module.train(training)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = module(x)
    torch.manual_seed(seed)
    with torch.no_grad():
        expected = reference(x, training)
    torch.testing.assert_close(out, expected, **TOL)


# ---------------------------------------------------------------- one residual unit

def preact_shortcut(x, preact, unit, out_channels, stride, shortcut):
    """He et al. 2016 and the authors' code: a unit that keeps the shape adds its raw input;
    one that changes it shares one BN-ReLU before the split, so zero padding and the 1x1
    projection read the pre-activated tensor; the seed's input_projection read the raw input."""
    if stride == 1 and x.shape[1] == out_channels:
        return x
    if shortcut == "zero_pad":
        return zero_pad(preact, out_channels, stride)
    return conv1(x if shortcut == "input_projection" else preact, unit.shortcut, stride)


def preact_basic_reference(unit, planes, stride, shortcut, p=0.0):
    """x + conv(ReLU(BN(dropout? conv(ReLU(BN(x)))))): He et al. 2016 eq. (3) and fig. 4(e); Zagoruyko &
    Komodakis put dropout between the two 3x3 convolutions."""
    def forward(x, training):
        preact = F.relu(bn(x, unit.bn1, training))
        out = conv3(preact, unit.conv1, stride)
        out = F.relu(bn(out, unit.bn2, training))
        out = dropout(out, p, training)
        out = conv3(out, unit.conv2)
        return out + preact_shortcut(x, preact, unit, planes, stride, shortcut)
    return forward


def preact_bottleneck_reference(unit, planes, stride, shortcut, stride_on):
    """BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (4 planes) plus shortcut; the stride on the first 1x1
    (authors' code) or on the 3x3 (the seed's code)."""
    s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)

    def forward(x, training):
        preact = F.relu(bn(x, unit.bn1, training))
        out = conv1(preact, unit.conv1, s1)
        out = conv3(F.relu(bn(out, unit.bn2, training)), unit.conv2, s3)
        out = conv1(F.relu(bn(out, unit.bn3, training)), unit.conv3)
        return out + preact_shortcut(x, preact, unit, 4 * planes, stride, shortcut)
    return forward


def original_shortcut(x, unit, out_channels, stride, shortcut, training):
    """He et al. 2015: identity, option A (zero padding) or option B (1x1 conv + BN) on the input."""
    if stride == 1 and x.shape[1] == out_channels:
        return x
    if shortcut == "zero_pad":
        return zero_pad(x, out_channels, stride)
    projection, norm = unit.shortcut
    return bn(conv1(x, projection, stride), norm, training)


def original_basic_reference(unit, planes, stride, shortcut):
    """ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)): He et al. 2015, fig. 2."""
    def forward(x, training):
        out = F.relu(bn(conv3(x, unit.conv1, stride), unit.bn1, training))
        out = bn(conv3(out, unit.conv2), unit.bn2, training)
        return F.relu(out + original_shortcut(x, unit, planes, stride, shortcut, training))
    return forward


def original_bottleneck_reference(unit, planes, stride, shortcut, stride_on):
    """1x1, 3x3, 1x1 (4 planes), each conv-BN, ReLU between, ReLU after the addition: He et al. 2015, fig. 5."""
    s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)

    def forward(x, training):
        out = F.relu(bn(conv1(x, unit.conv1, s1), unit.bn1, training))
        out = F.relu(bn(conv3(out, unit.conv2, s3), unit.bn2, training))
        out = bn(conv1(out, unit.conv3), unit.bn3, training)
        return F.relu(out + original_shortcut(x, unit, 4 * planes, stride, shortcut, training))
    return forward


BASIC_CASES = [(16, 16, 1, "projection"), (16, 32, 2, "projection"), (16, 32, 2, "input_projection"),
               (16, 32, 2, "zero_pad"), (16, 32, 1, "projection")]
BOTTLENECK_CASES = [(64, 16, 1, "projection", "1x1"), (16, 16, 1, "projection", "1x1"),
                    (64, 32, 2, "projection", "1x1"), (64, 32, 2, "projection", "3x3"),
                    (64, 32, 2, "input_projection", "3x3"), (64, 32, 2, "zero_pad", "1x1")]
MODES = pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])


@MODES
@pytest.mark.parametrize("in_planes, planes, stride, shortcut", BASIC_CASES)
def test_preact_basic_unit_follows_he2016(in_planes, planes, stride, shortcut, training):
    """Protects the pre-activation basic unit: both BN-ReLUs, both convs, the stride, the shortcut."""
    torch.manual_seed(0)
    unit = randomise_(PreActBasicBlock(in_planes, planes, stride, shortcut=shortcut)).double()
    compare(unit, preact_basic_reference(unit, planes, stride, shortcut), images(in_planes), training)


@MODES
@pytest.mark.parametrize("in_planes, planes, stride, shortcut, stride_on", BOTTLENECK_CASES)
def test_preact_bottleneck_unit_follows_he2016(in_planes, planes, stride, shortcut, stride_on, training):
    """Protects the pre-activation bottleneck unit: three BN-ReLU-convs, where the stride sits, the shortcut."""
    torch.manual_seed(0)
    unit = randomise_(PreActBottleneck(in_planes, planes, stride, shortcut=shortcut,
                                       bottleneck_stride=stride_on)).double()
    compare(unit, preact_bottleneck_reference(unit, planes, stride, shortcut, stride_on), images(in_planes),
            training)


@MODES
@pytest.mark.parametrize("in_planes, planes, stride, shortcut", [c for c in BASIC_CASES if c[3] != "input_projection"])
def test_original_basic_unit_follows_he2015(in_planes, planes, stride, shortcut, training):
    """Protects the original unit: conv-BN-ReLU-conv-BN, the addition, then the ReLU after it."""
    torch.manual_seed(0)
    unit = randomise_(BasicBlock(in_planes, planes, stride, shortcut=shortcut)).double()
    compare(unit, original_basic_reference(unit, planes, stride, shortcut), images(in_planes), training)


@MODES
@pytest.mark.parametrize("in_planes, planes, stride, shortcut, stride_on",
                         [c for c in BOTTLENECK_CASES if c[3] != "input_projection"])
def test_original_bottleneck_unit_follows_he2015(in_planes, planes, stride, shortcut, stride_on, training):
    """Protects the original bottleneck: three conv-BNs, ReLUs between and after the addition."""
    torch.manual_seed(0)
    unit = randomise_(Bottleneck(in_planes, planes, stride, shortcut=shortcut, bottleneck_stride=stride_on)).double()
    compare(unit, original_bottleneck_reference(unit, planes, stride, shortcut, stride_on), images(in_planes),
            training)


@MODES
@pytest.mark.parametrize("in_planes, planes, stride", [(32, 32, 1), (16, 32, 2)])
def test_wide_unit_drops_out_between_its_convolutions(in_planes, planes, stride, training):
    """Protects the wide unit's dropout: between the two 3x3 convs (Zagoruyko & Komodakis), off in evaluation."""
    torch.manual_seed(0)
    unit = randomise_(PreActBasicBlock(in_planes, planes, stride, shortcut="projection", dropout=0.3)).double()
    compare(unit, preact_basic_reference(unit, planes, stride, "projection", p=0.3), images(in_planes), training)


def test_dropout_is_active_in_training_and_the_reference_would_see_it_missing():
    """Protects the wide unit's dropout from being dropped: in training it changes the output."""
    torch.manual_seed(0)
    unit = randomise_(PreActBasicBlock(32, 32, 1, dropout=0.3)).double().train()
    without = preact_basic_reference(unit, 32, 1, "projection", p=0.0)
    torch.manual_seed(7)
    with torch.no_grad():
        out = unit(images(32))
    assert not torch.allclose(out, without(images(32), True))


# ---------------------------------------------------------------- whole networks end to end

def layers_in_order(model):
    """The network's convs, BNs and classifier in the order they are declared: a unit's
    residual branch first, then its projection. The references consume them in that order,
    so they do not depend on how our modules group layers into stem and units."""
    return iter([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))])


def preact_net_reference(model, units, widths, block, shortcut, p=0.0):
    """He et al. 2016 (appendix) for CIFAR: conv3x3 stem; the first unit takes its BN-ReLU
    right after it, before the split, so its identity path carries the activated stem;
    every other unit is BN-ReLU-conv...; a final BN-ReLU, global average pool, linear."""
    def forward(x, training):
        layers = layers_in_order(model)
        x = conv3(x, next(layers))
        channels = x.shape[1]
        for stage, width in enumerate(widths):
            for i in range(units):
                stride = 2 if stage > 0 and i == 0 else 1
                out_channels = width * (4 if block == "bottleneck" else 1)
                first = stage == 0 and i == 0
                changes = first or stride != 1 or channels != out_channels
                preact = F.relu(bn(x, next(layers), training))
                if block == "basic":
                    out = F.relu(bn(conv3(preact, next(layers), stride), next(layers), training))
                    out = conv3(dropout(out, p, training), next(layers))
                else:
                    out = F.relu(bn(conv1(preact, next(layers), stride), next(layers), training))
                    out = F.relu(bn(conv3(out, next(layers)), next(layers), training))
                    out = conv1(out, next(layers))
                if not changes:
                    identity = x
                elif channels == out_channels and stride == 1:
                    identity = preact  # the activated stem
                elif shortcut == "zero_pad":
                    identity = zero_pad(preact, out_channels, stride)
                else:
                    identity = conv1(preact, next(layers), stride)
                x, channels = out + identity, out_channels
        x = F.relu(bn(x, next(layers), training))
        fc = next(layers)
        assert next(layers, None) is None, "the reference did not use every layer"
        return F.linear(x.mean((2, 3)), fc.weight, fc.bias)
    return forward


def original_net_reference(model, units, shortcut):
    """He et al. 2015, section 4.2: conv3x3-BN-ReLU stem, three stages of basic units at
    16/32/64 channels (strides 1/2/2), global average pool, linear."""
    def forward(x, training):
        layers = layers_in_order(model)
        x = F.relu(bn(conv3(x, next(layers)), next(layers), training))
        for stage, width in enumerate((16, 32, 64)):
            for i in range(units):
                stride = 2 if stage > 0 and i == 0 else 1
                out = F.relu(bn(conv3(x, next(layers), stride), next(layers), training))
                out = bn(conv3(out, next(layers)), next(layers), training)
                if x.shape[1] == width:
                    identity = x
                elif shortcut == "zero_pad":
                    identity = zero_pad(x, width, stride)
                else:
                    identity = bn(conv1(x, next(layers), stride), next(layers), training)
                x = F.relu(out + identity)
        fc = next(layers)
        assert next(layers, None) is None, "the reference did not use every layer"
        return F.linear(x.mean((2, 3)), fc.weight, fc.bias)
    return forward


def net_images(seed=3):
    return images(3, size=16, batch=3, seed=seed)  # 16x16 keeps it fast; pooling is global


@MODES
def test_preact_basic_network_end_to_end(training):
    """Protects the whole pre-activation basic-block network: activated stem on the first unit's identity
    path (He 2016 appendix), stages, final BN-ReLU, pooling, classifier."""
    torch.manual_seed(0)
    model = randomise_(create(ArchSpec("preact", "basic", 14), shortcut="zero_pad")).double()
    compare(model, preact_net_reference(model, 2, (16, 32, 64), "basic", "zero_pad"), net_images(), training)


@MODES
def test_preact_bottleneck_network_end_to_end(training):
    """Protects the whole pre-activation bottleneck network: shared BN-ReLU before each reshaping split,
    projections, final BN-ReLU, pooling, classifier."""
    torch.manual_seed(0)
    model = randomise_(create(ArchSpec("preact", "bottleneck", 11), shortcut="projection")).double()
    compare(model, preact_net_reference(model, 1, (16, 32, 64), "bottleneck", "projection"), net_images(),
            training)


@MODES
def test_wide_network_end_to_end(training):
    """Protects the whole wide network: widths 16k/32k/64k, seeded dropout in every unit, final BN-ReLU."""
    torch.manual_seed(0)
    model = randomise_(create(ArchSpec("wide", "basic", 16, 2), shortcut="projection", dropout=0.3)).double()
    compare(model, preact_net_reference(model, 2, (32, 64, 128), "basic", "projection", p=0.3), net_images(),
            training)


@MODES
@pytest.mark.parametrize("shortcut", ["zero_pad", "projection"])
def test_original_network_end_to_end(shortcut, training):
    """Protects the whole original ResNet: conv-BN-ReLU stem, post-activation units, pooling, classifier."""
    torch.manual_seed(0)
    model = randomise_(create(ArchSpec("original", "basic", 14), shortcut=shortcut)).double()
    compare(model, original_net_reference(model, 2, shortcut), net_images(), training)


# ---------------------------------------------------------------- initialisation

def he_std(conv):
    """He et al. 2015 (sec. 2.2) as the authors' Torch code applies it: N(0, sqrt(2 / (k*k*out_channels)))."""
    k = conv.kernel_size[0]
    return math.sqrt(2.0 / (k * k * conv.out_channels))


INIT_NETWORKS = {
    "wide": lambda: create(ArchSpec("wide", "basic", 10, 2), dropout=0.0),                 # 3->16, 16->32, 32->64, 64->128
    "bottleneck": lambda: create(ArchSpec("preact", "bottleneck", 11)),           # 1x1 convs 16->64, 64->32, 32->128
    "original": lambda: create(ArchSpec("original", "basic", 8), shortcut="projection"),  # 1x1 projections 16->32, 32->64
}


@pytest.mark.parametrize("network", sorted(INIT_NETWORKS))
def test_every_conv_starts_at_he_normal_by_fan_out(network):
    """Protects the initialisation: each conv's weight variance is 2/(k*k*out), so convs whose
    fan-in and fan-out differ tell the two fans apart; BN starts at gamma 1, beta 0."""
    torch.manual_seed(0)
    model = INIT_NETWORKS[network]()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(c.in_channels != c.out_channels for c in convs)
    standardised = []
    for conv in convs:
        w = conv.weight.detach().double()
        n = w.numel()
        ratio = (w.pow(2).mean() / he_std(conv) ** 2).item()
        # The sample variance of n normal draws is within 6 standard errors (sqrt(2/n)) of the truth.
        assert abs(ratio - 1) < 6 * math.sqrt(2 / n), (conv, ratio)
        assert abs(w.mean().item()) < 6 * he_std(conv) / math.sqrt(n), conv
        standardised.append(w.flatten() / he_std(conv))
    # Normal, not uniform with the same variance: the pooled kurtosis of a normal is 3 (uniform: 1.8).
    z = torch.cat(standardised)
    assert abs(z.pow(4).mean().item() - 3) < 0.3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
        if isinstance(m, nn.Conv2d):
            assert m.bias is None  # no conv bias: BN follows (He et al. 2015)
