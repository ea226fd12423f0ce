import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from reproresnet.architectures import ARCHITECTURES, BOTTLENECK_STRIDES, SHORTCUTS, ArchSpec
from reproresnet import models
from reproresnet.models import (
    GhostBatchNorm2d,
    UnknownArchitectureError,
    ZeroPadShortcut,
    build_model,
    count_parameters,
    create,
    describe_architectures,
    preact_resnet20,
    preact_resnet110,
    preact_resnet164,
    resnet20,
    seed_wrn_n2_k4,
    wrn_16_4,
)

EXPECTED_NAMES = [
    "preact_resnet20", "preact_resnet32", "preact_resnet44", "preact_resnet56",
    "preact_resnet110", "preact_resnet1202", "preact_resnet164", "preact_resnet1001",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "resnet164", "resnet1001",
    "wrn_16_4", "wrn_16_8", "wrn_28_10", "wrn_40_4", "seed_wrn_n2_k4",
]


def _slow_if_large(names):
    """`names` as test parameters; the 1001/1202-layer nets and the wide nets beyond WRN-16-4
    (WRN-16-8, -28-10, -40-4: 9 to 36 million parameters) are slow to run on a CPU, and each
    shares its code with a smaller net that stays in the fast tier."""
    large = {name for name, spec in ARCHITECTURES.items()
             if spec.depth >= 1000 or (spec.family == "wide" and (spec.depth, spec.width) != (16, 4))}
    return [pytest.param(name, marks=pytest.mark.slow) if name in large else name for name in names]


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

def test_registry_names_follow_their_specs():
    assert sorted(ARCHITECTURES) == sorted(EXPECTED_NAMES)
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name
        assert spec.family in ("preact", "original", "wide", "seed_wide")
        assert spec.block in ("basic", "bottleneck")
        assert (spec.width > 1) == ("wide" in spec.family)


@pytest.mark.parametrize("name", _slow_if_large(ARCHITECTURES))
def test_forward_backward(name):
    torch.manual_seed(0)
    _forward_backward(build_model(name), 10)


@pytest.mark.parametrize("name", ["preact_resnet20", "preact_resnet164", "resnet20", "wrn_16_4"])
def test_forward_backward_cifar100(name):
    torch.manual_seed(0)
    _forward_backward(build_model(name, num_classes=100), 100)


# --- exact parameter counts ---------------------------------------------------------------

# Exact counts, each against its source. ResNet-110 defaults to He 2015's option A (zero
# padding, no shortcut weights); the projection adds 16*32 + 32*64 weights. The seed's wide
# network, built as ResNet_FullPre_Wide(n=2, k=4) builds it: 2/4/4 units of widths 64/128/256,
# a bias on each unit's second convolution (64*2 + 128*4 + 256*4 = 1,664), 1x1 projections
# 16->64, 64->128, 128->256 without bias: 5,702,746, which is what Lasagne's
# count_params(trainable=True) gives (BN's running mean and inv_std are not parameters).
PARAMETER_COUNTS = [
    ("preact_resnet110", {}, 1_727_962),
    ("preact_resnet110", {"shortcut": "projection"}, 1_730_522),
    ("preact_resnet164", {}, 1_703_258),  # the authors' log (WRN repo, resnet-pre-act)
    ("wrn_16_4", {}, 2_748_890),
    ("seed_wrn_n2_k4", {}, 5_702_746),
]


@pytest.mark.parametrize("name, options, expected", PARAMETER_COUNTS)
def test_parameter_counts(name, options, expected):
    assert count_parameters(build_model(name, **options)) == expected


@pytest.mark.slow  # builds every registered net, the 1001- and 1202-layer ones too (seconds on a CPU)
def test_describe_architectures():
    rows = describe_architectures()
    assert [row["name"] for row in rows] == list(ARCHITECTURES)
    by_name = {row["name"]: row for row in rows}
    for name, options, expected in PARAMETER_COUNTS:
        if not options:
            assert by_name[name]["params"] == expected
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


def test_classifier_bias_starts_at_zero_as_in_every_source():
    for name in ("preact_resnet20", "resnet20", "wrn_16_4", "seed_wrn_n2_k4"):
        fc = build_model(name).fc
        assert torch.all(fc.bias == 0) and fc.weight.abs().max() > 0


# --- the first unit and scale invariance (He 2016, appendix) ---------------------------------

@pytest.mark.parametrize("name", _slow_if_large(name for name, spec in ARCHITECTURES.items()
                                                if spec.family != "original"))
def test_logits_are_invariant_to_input_scale_in_training_mode(name):
    """Every path out of the bare stem conv passes a batch norm first ("the first activation
    right after conv1 and before splitting into two paths"), so in training mode, where BN uses
    the batch's statistics, scaling the input by a positive constant changes nothing."""
    torch.manual_seed(0)
    model = build_model(name).double().train()
    for m in model.modules():  # BN's eps is the only scale in the network
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-12
    x = _images(batch=2).double()
    outputs = []
    with torch.no_grad():
        for scale in (1.0, 0.25, 3.0):
            torch.manual_seed(1)  # the same dropout masks for every pass
            outputs.append(model(x * scale))
    for scaled in outputs[1:]:
        torch.testing.assert_close(scaled, outputs[0], rtol=1e-6, atol=1e-7)


def test_first_unit_splits_after_the_activation():
    """fb.resnet.torch's stem conv-BN-ReLU with a 'first' unit that skips its own BN-ReLU is
    the same function as our bare stem plus the first unit's BN-ReLU feeding both paths."""
    torch.manual_seed(0)
    model = preact_resnet20().train()
    unit = model.stage1[0]
    assert unit.shortcut_reads_preact and not model.stage1[1].shortcut_reads_preact
    x = _images(batch=4)
    stem = F.relu(unit.bn1(model.stem(x)))
    out = unit.conv2(F.relu(unit.bn2(unit.conv1(stem)))) + stem
    unit.bn1.reset_running_stats()
    torch.testing.assert_close(model.stage1[0](model.stem(x)), out)


# --- the seed's wide network ------------------------------------------------------------------

def test_seed_wrn_is_built_as_the_seeds_code_builds_it():
    model = seed_wrn_n2_k4()
    assert [len(stage) for stage in (model.stage1, model.stage2, model.stage3)] == [2, 4, 4]
    units = _all_units(model)
    assert all(unit.conv2.bias is not None and unit.conv1.bias is None for unit in units)
    assert all(isinstance(unit.dropout, nn.Dropout) and unit.dropout.p == 0.3 for unit in units)
    first, down = model.stage1[0], [model.stage2[0], model.stage3[0]]
    # `elif first: projection = ConvLayer(l, ...)`: a 1x1 projection of the activated stem ...
    assert first.shortcut.kernel_size == (1, 1) and first.shortcut_reads_preact
    # ... and `if increase_dim: projection = ConvLayer(l, ...)` on the raw input elsewhere.
    assert all(u.shortcut.stride == (2, 2) and not u.shortcut_reads_preact for u in down)
    assert all(m.eps == 1e-4 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_seed_wrn_uses_lasagne_init():
    torch.manual_seed(0)
    model = seed_wrn_n2_k4()
    conv = model.stage3[1].conv1  # HeNormal(gain='relu'): std sqrt(2 / fan_in), fan_in = 256*9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    assert torch.all(model.stage3[1].conv2.bias == 0)
    projection = model.stage3[0].shortcut.weight  # GlorotUniform: bound sqrt(6 / (in + out))
    assert projection.abs().max().item() <= math.sqrt(6 / (128 + 256))
    assert model.fc.weight.std().item() == pytest.approx(math.sqrt(1 / 256), rel=0.1)


# --- the seed's ResNet-110 as its code read on 2016-04-24 (7c4c997) -----------------------------

def _seed_2016_04_resnet110():
    return preact_resnet110(shortcut="input_projection", preact_stage1="first_unit", layer_defaults="lasagne")


def test_seed_2016_04_resnet110_is_built_as_its_code_builds_it():
    """models.py at 7c4c997: `for _ in range(n): l = residual_block(l, first=True)` in stage 1, and
    `if first: bn_pre_relu = l`; a bias on each `conv_2 = ConvLayer(...)`; projections of `l`."""
    model = _seed_2016_04_resnet110()
    assert model.stage1[0].bn1 is not None  # the stem's batch_norm(ConvLayer(...)), activated before the split
    assert all(unit.bn1 is None for unit in model.stage1[1:])
    assert all(unit.bn1 is not None for unit in (*model.stage2, *model.stage3))
    assert all(unit.conv2.bias is not None and unit.conv1.bias is None for unit in _all_units(model))
    assert all(not unit.shortcut_reads_preact for unit in (model.stage2[0], model.stage3[0]))
    assert all(m.eps == 1e-4 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # Counted from that code, trainable parameters: stem conv 432 + its BN 32; stage 1, 18 x (2,304 +
    # 32 + 2,304 + 16); stage 2, 32 + 4,608 + 64 + 9,248 + 512 (projection), then 17 x (64 + 9,216 +
    # 64 + 9,248); stage 3, 64 + 18,432 + 128 + 36,928 + 2,048, then 17 x (128 + 36,864 + 128 +
    # 36,928); final BN 128; dense 650.
    assert count_parameters(model) == 1_731_994


def test_stage1_units_after_the_first_start_with_their_convolution_on_the_raw_sum():
    torch.manual_seed(0)
    model = _seed_2016_04_resnet110().train()
    unit, x = model.stage1[1], torch.randn(4, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = x + unit.conv2(F.relu(unit.bn2(unit.conv1(x))))
    torch.testing.assert_close(unit(x), expected)
    every = preact_resnet110().train().stage1[1]  # He et al.: BN-ReLU first, identity of the raw sum
    assert every.bn1 is not None and not torch.allclose(every(x), x + every.conv2(F.relu(every.bn2(every.conv1(x)))))


def test_lasagne_layer_defaults_on_the_bottleneck_network():
    torch.manual_seed(0)
    lasagne, torch_layers = preact_resnet164(layer_defaults="lasagne"), preact_resnet164()
    assert all(unit.conv3.bias is not None for unit in _all_units(lasagne))
    assert all(unit.conv3.bias is None for unit in _all_units(torch_layers))
    conv = lasagne.stage3[1].conv2  # HeNormal(gain='relu') over the fan-in, 64 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert count_parameters(lasagne) == count_parameters(torch_layers) + 18 * (64 + 128 + 256)


def test_stage1_option_only_on_pre_activation_networks():
    with pytest.raises(ValueError, match="preact_stage1 do not apply to wide"):
        wrn_16_4(preact_stage1="first_unit")
    with pytest.raises(ValueError, match="layer_defaults do not apply to original"):
        resnet20(layer_defaults="lasagne")


# --- default shortcuts ------------------------------------------------------------------------

@pytest.mark.parametrize("name, shortcut", [
    ("preact_resnet110", "zero_pad"), ("preact_resnet20", "zero_pad"), ("resnet110", "zero_pad"),
    ("preact_resnet164", "projection"), ("resnet164", "projection"), ("wrn_16_4", "projection"),
    ("seed_wrn_n2_k4", "input_projection"),
])
def test_default_shortcut_follows_each_networks_paper(name, shortcut):
    model = build_model(name)
    changing = [u for u in _all_units(model) if not isinstance(u.shortcut, nn.Identity)]
    assert changing
    if shortcut == "zero_pad":
        assert all(isinstance(u.shortcut, ZeroPadShortcut) for u in changing)
    else:
        assert all(count_parameters(u.shortcut) > 0 for u in changing)


# --- ghost batch norm (bn_batch) ------------------------------------------------------------

def test_ghost_batch_norm_normalises_equal_shares_and_averages_the_running_update():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3, momentum=0.1)
    ghost = GhostBatchNorm2d.convert(nn.BatchNorm2d(3, momentum=0.1), ghost_batch=4)
    x = torch.randn(10, 3, 5, 5) * torch.tensor([1.0, 2.0, 5.0]).view(1, 3, 1, 1) + 3
    out = ghost(x)
    shares = x.split([4, 3, 3])  # ceil(10 / 4) = 3 equal shares of at most 4 images
    for share, got in zip(shares, out.split([4, 3, 3])):
        torch.testing.assert_close(got, F.batch_norm(share, None, None, training=True, eps=plain.eps))
    mean = torch.stack([c.mean((0, 2, 3)) for c in shares]).mean(0)
    var = torch.stack([c.var((0, 2, 3), unbiased=True) for c in shares]).mean(0)
    torch.testing.assert_close(ghost.running_mean, 0.1 * mean)
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * var)
    assert ghost.num_batches_tracked.item() == 1
    # evaluation mode is plain batch norm with the running statistics
    plain.load_state_dict(ghost.state_dict())
    plain.eval(), ghost.eval()
    torch.testing.assert_close(ghost(x), plain(x))


def _last_batch(data, rank, processes):
    """The epoch's last batch as process `rank` of `processes` gets it (train_batches' slices)."""
    from reproresnet.data import Normalizer, train_batches
    batches = train_batches(data, 128, normalizer=Normalizer.fit(data.images, "per_pixel_mean"),
                            augmentation="none", generator=torch.Generator().manual_seed(0), device="cpu",
                            part=(rank, processes))
    return list(batches)[-1][0]


def test_ghost_batch_norm_splits_a_partial_batch_as_two_processes_do():
    """He et al.'s 2 x 64: for the epoch's last 80 images (208 mod 128, as 50,000 mod 128) one
    process with bn_batch=64 normalises the same two halves of 40 that two processes get."""
    from reproresnet.data import ImageSet
    data = ImageSet(torch.randint(0, 256, (208, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                                  dtype=torch.uint8), torch.arange(208))
    whole = _last_batch(data, 0, 1)
    halves = [_last_batch(data, rank, 2) for rank in (0, 1)]
    assert len(whole) == 80 and [len(h) for h in halves] == [40, 40]
    ghost = GhostBatchNorm2d(3, ghost_batch=64)
    two_processes = torch.cat([F.batch_norm(h, None, None, training=True, eps=ghost.eps) for h in halves])
    torch.testing.assert_close(ghost(whole), two_processes)
    # ... and a last batch of bn_batch images or fewer is one share, where two processes would split it
    torch.testing.assert_close(ghost(whole[:48]), F.batch_norm(whole[:48], None, None, training=True, eps=ghost.eps))


def test_ghost_batch_norm_is_plain_batch_norm_for_one_chunk():
    torch.manual_seed(0)
    plain, ghost = nn.BatchNorm2d(3), GhostBatchNorm2d(3, ghost_batch=8)
    x = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(ghost(x), plain(x))
    torch.testing.assert_close(ghost.running_var, plain.running_var)


def test_ghost_batch_norm_in_float64_keeps_the_dtype_and_mode_of_what_it_converts():
    source = nn.BatchNorm2d(3).double().eval()
    source.running_mean.fill_(0.5)
    ghost = GhostBatchNorm2d.convert(source, ghost_batch=2)
    assert ghost.weight.dtype == ghost.running_mean.dtype == torch.float64 and not ghost.training
    assert ghost.running_mean.device == source.running_mean.device
    torch.testing.assert_close(ghost.running_mean, source.running_mean)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ghost.train()(x)  # three shares of 2; statistics land in float64 buffers
    expected = torch.stack([c.mean((0, 2, 3)) for c in x.split(2)]).mean(0)
    torch.testing.assert_close(ghost.running_mean, 0.9 * 0.5 + 0.1 * expected)


def test_bn_batch_option_converts_every_batch_norm_and_keeps_parameters():
    model = build_model("preact_resnet20", bn_batch=64)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, GhostBatchNorm2d) and m.ghost_batch == 64 for m in norms)
    assert count_parameters(model) == count_parameters(build_model("preact_resnet20"))
    with pytest.raises(ValueError, match="bn_batch.*int >= 1"):
        build_model("preact_resnet20", bn_batch=0)


# --- options --------------------------------------------------------------------------------

def _all_units(model):
    return [unit for stage in (model.stage1, model.stage2, model.stage3) for unit in stage]


@pytest.mark.parametrize("build", [
    lambda **o: create(ArchSpec("preact", "basic", 8), **o),
    lambda **o: create(ArchSpec("preact", "bottleneck", 11), **o),
    lambda **o: create(ArchSpec("original", "basic", 8), **o),
    lambda **o: create(ArchSpec("original", "bottleneck", 11), **o),
    lambda **o: create(ArchSpec("wide", "basic", 10, 2), **o),
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
    assert count_parameters(preact_resnet110(shortcut="projection")) - count_parameters(preact_resnet110()) \
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


@pytest.mark.parametrize("family", ["preact", "original"])
@pytest.mark.parametrize("bottleneck_stride", BOTTLENECK_STRIDES)
def test_bottleneck_stride_moves_the_stride(family, bottleneck_stride):
    model = create(ArchSpec(family, "bottleneck", 11), bottleneck_stride=bottleneck_stride)
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
    model = create(ArchSpec("wide", "basic", 10, 1), dropout=0.5)
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        plain = create(ArchSpec("wide", "basic", 10, 1), dropout=0.0).train()
        torch.testing.assert_close(plain(x), plain(x))


def test_generic_builders_accept_any_valid_depth():
    assert len(_all_units(create(ArchSpec("preact", "basic", 14)))) == 6
    assert len(_all_units(create(ArchSpec("preact", "bottleneck", 29)))) == 9
    assert len(_all_units(create(ArchSpec("wide", "basic", 22, 1)))) == 9


# --- bad inputs -----------------------------------------------------------------------------

def test_every_registered_network_has_its_factory_by_name_and_build_model_goes_through_it(monkeypatch):
    assert list(models.MODELS) == list(ARCHITECTURES)
    assert all(getattr(models, name) is factory and factory.__name__ == name for name, factory in models.MODELS.items())
    built = []
    monkeypatch.setitem(models.MODELS, "preact_resnet20", lambda **options: built.append(options) or "net")
    assert build_model("preact_resnet20", num_classes=100, dropout=0.0) == "net"
    assert built == [{"num_classes": 100, "dropout": 0.0}]

    def resnet19(**options):
        return create(ArchSpec("original", "basic", 20), **options)
    with pytest.raises(UnknownArchitectureError, match="'resnet19' names no registered network"):
        models.register(resnet19)


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
    (lambda: create(ArchSpec("preact", "bottleneck", 111)), r"depth 111 is not 9n\+2"),
    (lambda: create(ArchSpec("preact", "basic", 21)), r"depth 21 is not 6n\+2"),
    (lambda: create(ArchSpec("original", "basic", 2)), r"depth 2 is not 6n\+2"),
    (lambda: create(ArchSpec("wide", "basic", 17, 4)), r"depth 17 is not 6n\+4"),
    (lambda: create(ArchSpec("preact", "wide", 20)), "block 'wide'"),
    (lambda: create(ArchSpec("wide", "basic", 16, 0)), "k must be an int >= 1"),
])
def test_bad_depth_or_block(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("preact_resnet20", num_classes=num_classes)
