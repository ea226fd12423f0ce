import math

import pytest
import torch
import torch.nn as nn

from reproresnet.models import (
    ARCHITECTURES,
    BOTTLENECK_STRIDES,
    SHORTCUTS,
    UnknownArchitectureError,
    ZeroPadShortcut,
    build_model,
    count_parameters,
    describe_architectures,
    preact_resnet,
    preact_resnet20,
    preact_resnet110,
    preact_resnet164,
    resnet,
    resnet20,
    wide_resnet,
    wrn_16_4,
)

EXPECTED_NAMES = [
    "preact_resnet20", "preact_resnet32", "preact_resnet44", "preact_resnet56",
    "preact_resnet110", "preact_resnet1202", "preact_resnet164", "preact_resnet1001",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "resnet164", "resnet1001",
    "wrn_16_4", "wrn_16_8", "wrn_28_10", "wrn_40_4",
]


def _registry_params():
    """Every registered name; the 1001/1202-layer nets are slow to run on a CPU."""
    return [pytest.param(name, marks=pytest.mark.slow) if spec.depth >= 1000 else name
            for name, spec in ARCHITECTURES.items()]


def _images(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _forward_backward(model, num_classes):
    out = model(_images())
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


# --- every registered network -------------------------------------------------------------

def test_registry_names_and_order():
    assert list(ARCHITECTURES) == EXPECTED_NAMES
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name
        assert spec.family in ("preact", "original", "wide")
        assert spec.block in ("basic", "bottleneck")
        assert (spec.width > 1) == (spec.family == "wide")


@pytest.mark.parametrize("name", _registry_params())
def test_forward_backward(name):
    torch.manual_seed(0)
    _forward_backward(build_model(name), 10)


@pytest.mark.parametrize("name", ["preact_resnet20", "preact_resnet164", "resnet20", "wrn_16_4"])
def test_forward_backward_cifar100(name):
    torch.manual_seed(0)
    _forward_backward(build_model(name, num_classes=100), 100)


# --- exact parameter counts ---------------------------------------------------------------

def test_parameter_counts():
    assert count_parameters(preact_resnet164()) == 1_703_258  # the authors' log
    assert count_parameters(wrn_16_4()) == 2_748_890
    assert count_parameters(preact_resnet110()) == 1_730_522
    assert count_parameters(preact_resnet110(shortcut="zero_pad")) == 1_727_962


def test_describe_architectures():
    rows = describe_architectures()
    assert [row["name"] for row in rows] == EXPECTED_NAMES
    by_name = {row["name"]: row for row in rows}
    assert by_name["preact_resnet164"]["params"] == 1_703_258
    assert by_name["wrn_16_4"]["params"] == 2_748_890
    assert by_name["preact_resnet110"]["params"] == 1_730_522
    for row in rows:
        spec = ARCHITECTURES[row["name"]]
        assert (row["family"], row["block"], row["depth"], row["width"]) == (
            spec.family, spec.block, spec.depth, spec.width)
        assert isinstance(row["params"], int) and row["params"] > 0


# --- structure and init ---------------------------------------------------------------------

def test_preact_ends_with_bn_relu_and_original_stem_has_bn():
    pre, post = preact_resnet20(), resnet20()
    assert isinstance(pre.stem, nn.Conv2d)
    assert [type(m) for m in pre.final_act] == [nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in post.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert isinstance(post.final_act, nn.Identity)
    assert pre.fc.bias is not None


def test_he_init():
    torch.manual_seed(0)
    model = wrn_16_4()
    conv = model.stage3[1].conv2  # 256 -> 256, 3x3: 589,824 weights
    expected_std = math.sqrt(2 / (3 * 3 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


# --- options --------------------------------------------------------------------------------

def _all_units(model):
    return [unit for stage in (model.stage1, model.stage2, model.stage3) for unit in stage]


@pytest.mark.parametrize("build", [
    lambda **o: preact_resnet(8, "basic", **o),
    lambda **o: preact_resnet(11, "bottleneck", **o),
    lambda **o: resnet(8, "basic", **o),
    lambda **o: resnet(11, "bottleneck", **o),
    lambda **o: wide_resnet(10, 2, **o),
], ids=["preact-basic", "preact-bottleneck", "original-basic", "original-bottleneck", "wide"])
@pytest.mark.parametrize("shortcut", SHORTCUTS)
def test_every_shortcut_runs_on_every_family(build, shortcut):
    torch.manual_seed(0)
    model = build(shortcut=shortcut)
    _forward_backward(model, 10)
    shortcuts = [unit.shortcut for unit in _all_units(model) if not isinstance(unit.shortcut, nn.Identity)]
    assert shortcuts, "the network should have shape-changing units"
    if shortcut == "zero_pad":
        assert all(isinstance(s, ZeroPadShortcut) for s in shortcuts)
        assert sum(count_parameters(s) for s in shortcuts) == 0
    else:
        assert all(count_parameters(s) > 0 for s in shortcuts)


def test_zero_pad_removes_exactly_the_projections():
    # preact_resnet110 has two projections: 16 -> 32 and 32 -> 64, 1x1, no BN
    assert count_parameters(preact_resnet110()) - count_parameters(preact_resnet110(shortcut="zero_pad")) \
        == 16 * 32 + 32 * 64


def _outputs_with_shared_weights(build, shortcut_a, shortcut_b):
    torch.manual_seed(0)
    a, b = build(shortcut=shortcut_a).eval(), build(shortcut=shortcut_b).eval()
    b.load_state_dict(a.state_dict())
    x = _images()
    with torch.no_grad():
        return a(x), b(x)


def test_input_projection_reads_the_raw_input_in_preact_nets():
    out_pre, out_raw = _outputs_with_shared_weights(preact_resnet20, "projection", "input_projection")
    assert not torch.allclose(out_pre, out_raw)
    unit = preact_resnet20(shortcut="input_projection").stage2[0]
    assert not unit.shortcut_reads_preact


def test_input_projection_is_projection_in_original_nets():
    out_a, out_b = _outputs_with_shared_weights(resnet20, "projection", "input_projection")
    torch.testing.assert_close(out_a, out_b)


@pytest.mark.parametrize("family_builder", [preact_resnet, resnet])
@pytest.mark.parametrize("bottleneck_stride", BOTTLENECK_STRIDES)
def test_bottleneck_stride_moves_the_stride(family_builder, bottleneck_stride):
    model = family_builder(11, "bottleneck", bottleneck_stride=bottleneck_stride)
    unit = model.stage2[0]
    expected = {"1x1": ((2, 2), (1, 1)), "3x3": ((1, 1), (2, 2))}[bottleneck_stride]
    assert (unit.conv1.stride, unit.conv2.stride) == expected
    assert unit.conv3.stride == (1, 1)


def test_default_bottleneck_stride_is_on_the_1x1():
    unit = preact_resnet164().stage3[0]
    assert unit.conv1.stride == (2, 2) and unit.conv2.stride == (1, 1)


def test_dropout_present_only_when_asked():
    dropouts = [m for m in wrn_16_4().modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 6 and all(m.p == 0.3 for m in dropouts)
    assert not any(isinstance(m, nn.Dropout) for m in wrn_16_4(dropout=0).modules())
    assert count_parameters(wrn_16_4(dropout=0)) == count_parameters(wrn_16_4())


def test_dropout_active_only_in_train_mode():
    x = _images()
    model = wide_resnet(10, 1, dropout=0.5)
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        plain = wide_resnet(10, 1, dropout=0.0).train()
        torch.testing.assert_close(plain(x), plain(x))


def test_generic_builders_accept_any_valid_depth():
    assert len(_all_units(preact_resnet(14))) == 6
    assert len(_all_units(preact_resnet(29, "bottleneck"))) == 9
    assert len(_all_units(wide_resnet(22, 1))) == 9


# --- bad inputs -----------------------------------------------------------------------------

def test_unknown_architecture():
    with pytest.raises(UnknownArchitectureError, match="preact_resnet110") as info:
        build_model("preact_resnet111")
    assert isinstance(info.value, ValueError)
    assert all(name in str(info.value) for name in ARCHITECTURES)


def test_bad_shortcut():
    with pytest.raises(ValueError, match="option_c.*projection"):
        build_model("preact_resnet20", shortcut="option_c")


def test_bad_bottleneck_stride_value():
    with pytest.raises(ValueError, match="2x2.*1x1"):
        preact_resnet164(bottleneck_stride="2x2")


@pytest.mark.parametrize("call", [
    lambda: build_model("preact_resnet20", bottleneck_stride="3x3"),
    lambda: preact_resnet20(bottleneck_stride="1x1"),
    lambda: build_model("wrn_16_4", bottleneck_stride="3x3"),
])
def test_bottleneck_stride_on_a_basic_net(call):
    with pytest.raises(ValueError, match="bottleneck_stride.*accepted: num_classes, shortcut"):
        call()


@pytest.mark.parametrize("name", ["preact_resnet110", "preact_resnet164", "resnet20"])
def test_dropout_on_a_non_wide_net(name):
    with pytest.raises(ValueError, match="dropout"):
        build_model(name, dropout=0.3)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, "0.3", True])
def test_bad_dropout_value(dropout):
    with pytest.raises(ValueError, match=r"dropout.*\[0, 1\)"):
        wrn_16_4(dropout=dropout)


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(ValueError, match="width_multiplier.*num_classes, shortcut, dropout"):
        build_model("wrn_16_4", width_multiplier=2)


@pytest.mark.parametrize("call, pattern", [
    (lambda: preact_resnet(111, "bottleneck"), r"depth 111 is not 9n\+2"),
    (lambda: preact_resnet(21), r"depth 21 is not 6n\+2"),
    (lambda: resnet(2), r"depth 2 is not 6n\+2"),
    (lambda: wide_resnet(17, 4), r"depth 17 is not 6n\+4"),
    (lambda: preact_resnet(20, "wide"), "block 'wide'"),
    (lambda: wide_resnet(16, 0), "k must be an int >= 1"),
])
def test_bad_depth_or_block(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("preact_resnet20", num_classes=num_classes)
