"""CIFAR ResNets: pre-activation (He et al. 2016), original (He et al. 2015) and wide
(Zagoruyko & Komodakis 2016); where the sources differ, the choice is a named option."""
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

SHORTCUTS = ("projection", "input_projection", "zero_pad")
BOTTLENECK_STRIDES = ("1x1", "3x3")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. 2015: subsample by the stride, append zero channels."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(in_planes: int, out_planes: int, stride: int, kind: str, with_bn: bool) -> nn.Module:
    """Identity where the shape is kept, else zero padding or a 1x1 projection (option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "zero_pad":
        return ZeroPadShortcut(out_planes - in_planes, stride)
    if with_bn:
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    return conv1x1(in_planes, out_planes, stride)


class _PreActBlock(nn.Module):
    """Shared shortcut logic of the pre-activation units."""

    def _init_shortcut(self, in_planes: int, out_planes: int, stride: int, shortcut: str) -> None:
        self.shortcut = make_shortcut(in_planes, out_planes, stride, shortcut, with_bn=False)
        # Authors' code: a unit that changes shape applies one BN-ReLU before the split, so its
        # shortcut reads the pre-activated tensor; the seed's projection read the raw input.
        changes_shape = not isinstance(self.shortcut, nn.Identity)
        self.shortcut_reads_preact = changes_shape and shortcut != "input_projection"


class PreActBasicBlock(_PreActBlock):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus shortcut (also the wide ResNet unit)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "projection",
                 dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self._init_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.bn1(x))
        identity = self.shortcut(preact if self.shortcut_reads_preact else x)
        out = self.conv1(preact)
        out = F.relu(self.bn2(out))
        out = self.dropout(out)
        out = self.conv2(out)
        return out + identity


class PreActBottleneck(_PreActBlock):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (x4 channels) plus shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "projection",
                 bottleneck_stride: str = "1x1"):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if bottleneck_stride == "1x1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self._init_shortcut(in_planes, planes * self.expansion, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.bn1(x))
        identity = self.shortcut(preact if self.shortcut_reads_preact else x)
        out = self.conv1(preact)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + identity


class BasicBlock(nn.Module):
    """Original (post-activation) unit: conv-BN-ReLU-conv-BN, add shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "projection"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut, with_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """Original (post-activation) bottleneck: 1x1, 3x3, 1x1 (x4), add shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "projection",
                 bottleneck_stride: str = "1x1"):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if bottleneck_stride == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = make_shortcut(in_planes, planes * self.expansion, stride, shortcut, with_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, three stages at strides 1/2/2, global average pool, linear classifier."""

    def __init__(self, block: type[nn.Module], units_per_stage: int, widths=(16, 32, 64),
                 num_classes: int = 10, **block_options):
        super().__init__()
        preact = issubclass(block, _PreActBlock)
        self.in_planes = 16
        conv = conv3x3(3, 16)
        # Pre-activation nets start each unit with BN-ReLU, so their stem is a bare conv.
        self.stem = conv if preact else nn.Sequential(conv, nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = self._make_stage(block, widths[0], units_per_stage, 1, block_options)
        self.stage2 = self._make_stage(block, widths[1], units_per_stage, 2, block_options)
        self.stage3 = self._make_stage(block, widths[2], units_per_stage, 2, block_options)
        # ... and end with a BN-ReLU before pooling, since their last unit ends with a conv.
        self.final_act = nn.Sequential(nn.BatchNorm2d(self.in_planes), nn.ReLU()) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

        # He et al. 2015 ("Delving deep"), as in the authors' Torch code: N(0, sqrt(2/(k*k*out))),
        # BN gamma 1, beta 0. The Linear layer keeps PyTorch's default init, as torchvision's
        # resnet.py does: neither paper specifies it, and any PyTorch user expects that default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(self, block, planes: int, units: int, stride: int, block_options) -> nn.Sequential:
        layers = []
        for i in range(units):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1, **block_options))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.final_act(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


_BLOCKS = {("preact", "basic"): PreActBasicBlock, ("preact", "bottleneck"): PreActBottleneck,
           ("original", "basic"): BasicBlock, ("original", "bottleneck"): Bottleneck,
           ("wide", "basic"): PreActBasicBlock}


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _create(family: str, block: str, depth: int, k: int, options: dict) -> ResNet:
    """Validate the architecture and every option, then build the network."""
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block {block!r} is not one of 'basic', 'bottleneck'")
    defaults = {"num_classes": 10, "shortcut": "projection"}
    if block == "bottleneck":
        defaults["bottleneck_stride"] = "1x1"
    if family == "wide":
        defaults["dropout"] = 0.3  # the report's WRN-16-4 is the dropout variant
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"option(s) {', '.join(unknown)} do not apply to {family} {block}-block "
                         f"networks; accepted: {', '.join(defaults)}")
    opts = {**defaults, **options}
    num_classes, dropout = opts.pop("num_classes"), opts.get("dropout", 0.0)
    if not _is_int(num_classes, 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if opts["shortcut"] not in SHORTCUTS:
        raise ValueError(f"shortcut {opts['shortcut']!r} is not one of {SHORTCUTS}")
    if opts.get("bottleneck_stride", "1x1") not in BOTTLENECK_STRIDES:
        raise ValueError(f"bottleneck_stride {opts['bottleneck_stride']!r} is not one of "
                         f"{BOTTLENECK_STRIDES}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    if not _is_int(k, 1):
        raise ValueError(f"widening factor k must be an int >= 1, got {k!r}")
    per_unit, extra = (6, 4) if family == "wide" else (9, 2) if block == "bottleneck" else (6, 2)
    if not _is_int(depth, per_unit + extra) or (depth - extra) % per_unit:
        valid = ", ".join(str(per_unit * n + extra) for n in (1, 2, 3))
        kind = "wide networks" if family == "wide" else f"{block} blocks"
        raise ValueError(f"depth {depth!r} is not {per_unit}n+{extra} for {kind}; valid: {valid}, ...")
    widths = (16 * k, 32 * k, 64 * k)
    return ResNet(_BLOCKS[family, block], (depth - extra) // per_unit, widths, num_classes, **opts)


def preact_resnet(depth: int, block: str = "basic", **options) -> ResNet:
    """Pre-activation ResNet; options: num_classes, shortcut, bottleneck_stride (bottleneck only)."""
    return _create("preact", block, depth, 1, options)


def resnet(depth: int, block: str = "basic", **options) -> ResNet:
    """Original post-activation ResNet; options as for `preact_resnet`. Here "projection" and
    "input_projection" are the same thing: 1x1 conv + BN on the unit's input (option B)."""
    return _create("original", block, depth, 1, options)


def wide_resnet(depth: int, k: int, **options) -> ResNet:
    """WRN-depth-k; options: num_classes, shortcut, dropout (default 0.3)."""
    return _create("wide", "basic", depth, k, options)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # "preact" | "original" | "wide"
    block: str  # "basic" | "bottleneck"
    depth: int
    width: int  # widening factor k; 1 unless wide
    factory: Callable[..., nn.Module]


ARCHITECTURES: dict[str, ArchSpec] = {}


class UnknownArchitectureError(ValueError):
    pass


def _register(family: str, block: str, depth: int, width: int = 1):
    def add(factory):
        ARCHITECTURES[factory.__name__] = ArchSpec(factory.__name__, family, block, depth, width, factory)
        return factory
    return add


# Pre-activation ResNets (He et al. 2016), basic then bottleneck blocks.
@_register("preact", "basic", 20)
def preact_resnet20(**options): return preact_resnet(20, "basic", **options)
@_register("preact", "basic", 32)
def preact_resnet32(**options): return preact_resnet(32, "basic", **options)
@_register("preact", "basic", 44)
def preact_resnet44(**options): return preact_resnet(44, "basic", **options)
@_register("preact", "basic", 56)
def preact_resnet56(**options): return preact_resnet(56, "basic", **options)
@_register("preact", "basic", 110)
def preact_resnet110(**options): return preact_resnet(110, "basic", **options)
@_register("preact", "basic", 1202)
def preact_resnet1202(**options): return preact_resnet(1202, "basic", **options)
@_register("preact", "bottleneck", 164)
def preact_resnet164(**options): return preact_resnet(164, "bottleneck", **options)
@_register("preact", "bottleneck", 1001)
def preact_resnet1001(**options): return preact_resnet(1001, "bottleneck", **options)

# Original post-activation ResNets (He et al. 2015).
@_register("original", "basic", 20)
def resnet20(**options): return resnet(20, "basic", **options)
@_register("original", "basic", 32)
def resnet32(**options): return resnet(32, "basic", **options)
@_register("original", "basic", 44)
def resnet44(**options): return resnet(44, "basic", **options)
@_register("original", "basic", 56)
def resnet56(**options): return resnet(56, "basic", **options)
@_register("original", "basic", 110)
def resnet110(**options): return resnet(110, "basic", **options)
@_register("original", "basic", 1202)
def resnet1202(**options): return resnet(1202, "basic", **options)
@_register("original", "bottleneck", 164)
def resnet164(**options): return resnet(164, "bottleneck", **options)
@_register("original", "bottleneck", 1001)
def resnet1001(**options): return resnet(1001, "bottleneck", **options)

# Wide ResNets (Zagoruyko & Komodakis 2016); WRN-16-4 is the seed's network.
@_register("wide", "basic", 16, 4)
def wrn_16_4(**options): return wide_resnet(16, 4, **options)
@_register("wide", "basic", 16, 8)
def wrn_16_8(**options): return wide_resnet(16, 8, **options)
@_register("wide", "basic", 28, 10)
def wrn_28_10(**options): return wide_resnet(28, 10, **options)
@_register("wide", "basic", 40, 4)
def wrn_40_4(**options): return wide_resnet(40, 4, **options)


def build_model(name: str, num_classes: int = 10, **options) -> nn.Module:
    """Build a registered network by name; options as for its factory."""
    if name not in ARCHITECTURES:
        raise UnknownArchitectureError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name].factory(num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, device: torch.device) -> int:
    """Forward FLOPs for one 32x32 image (a multiply-add counts 2), by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def describe_architectures(num_classes: int = 10) -> list[dict]:
    """One row per registered network with its exact parameter count (default options)."""
    return [{"name": spec.name, "family": spec.family, "block": spec.block, "depth": spec.depth,
             "width": spec.width, "params": _default_parameter_count(spec.name, num_classes)}
            for spec in ARCHITECTURES.values()]


@functools.lru_cache(maxsize=None)
def _default_parameter_count(name: str, num_classes: int) -> int:
    # Building all 20 networks on the CPU takes a few seconds (faster than the meta device,
    # whose per-op overhead dominates for the 1000-layer nets); cache it for repeated calls.
    return count_parameters(build_model(name, num_classes))
