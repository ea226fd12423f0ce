"""CIFAR ResNets: pre-activation (He et al. 2016), original (He et al. 2015) and wide
(Zagoruyko & Komodakis 2016); where the sources differ, the choice is a named option.

The units and the network, built by one builder (`create`) from a spec of the registry
(`architectures.ARCHITECTURES`, which states what each network is, without torch), and one
factory per registered network, found by its name (`preact_resnet110(**options)`, as timm's);
`build_model(name)` calls the same factories."""
import functools
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architectures import ARCHITECTURES, OPTIONS, ArchSpec, default_options

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


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from equal shares of at most `ghost_batch` images.

    He et al. 2016, appendix: "mini-batch size of 128 on 2 GPUs (64 each)", so each BN layer
    normalises over 64 images. A batch of n images is cut into ceil(n / ghost_batch) consecutive
    equal shares (sizes differ by at most one), as that many processes would each take one: 128
    into 2 x 64, and the epoch's last 80 images (50,000 mod 128) into 2 x 40, as two processes
    split them. A last batch of ghost_batch images or fewer is one share, where N processes would
    still split it N ways. Running statistics move once per step, by the average of the shares'
    statistics; evaluation is plain BatchNorm2d. Build with `convert`, as torch's
    `SyncBatchNorm.convert_sync_batchnorm`."""

    def __init__(self, num_features: int, ghost_batch: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_batch:
            return super().forward(x)  # one share (e.g. one GPU's): plain batch norm
        chunks = x.tensor_split(math.ceil(x.shape[0] / self.ghost_batch))
        out = torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                         for c in chunks])
        if self.track_running_stats:
            with torch.no_grad():  # in the buffers' precision (bf16 activations, float64 networks)
                stats = [torch.var_mean(c.to(self.running_var.dtype), (0, 2, 3), correction=1) for c in chunks]
                var, mean = (torch.stack(s).mean(0) for s in zip(*stats))
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var, momentum)
        return out

    @classmethod
    def convert(cls, module: nn.Module, ghost_batch: int) -> nn.Module:
        """`module` with every BatchNorm2d replaced by a GhostBatchNorm2d holding the same state,
        on the same device, in the same dtype and mode."""
        if type(module) is nn.BatchNorm2d:
            like = next((t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), None)
            factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
            ghost = cls(module.num_features, ghost_batch, eps=module.eps, momentum=module.momentum,
                        affine=module.affine, track_running_stats=module.track_running_stats, **factory)
            ghost.load_state_dict(module.state_dict())
            return ghost.train(module.training)
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, ghost_batch))
        return module


class _PreActBlock(nn.Module):
    """Shared pre-activation and shortcut logic of the pre-activation units."""

    def _init_preact(self, in_planes: int, preactivate: bool) -> None:
        # The seed's code at 7c4c997 builds every unit of stage 1 with `first=True` ("bn_pre_relu = l"):
        # after the first, those units start with their convolution on the raw sum (preactivate=False).
        self.bn1 = nn.BatchNorm2d(in_planes) if preactivate else None

    def _preact(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(x)) if self.bn1 is not None else x

    def _init_shortcut(self, in_planes: int, out_planes: int, stride: int, shortcut: str, first: bool) -> None:
        self.shortcut = make_shortcut(in_planes, out_planes, stride, shortcut, with_bn=False)
        # He 2016, appendix: "For the first Residual Unit (that follows a stand-alone convolutional
        # layer, conv1), we adopt the first activation right after conv1 and before splitting into
        # two paths" (the seed's code: stem conv-BN-ReLU, `if first: bn_pre_relu = l`; fb.resnet.torch's
        # CIFAR model: a bare stem conv, then 'both_preact' units). Units that change shape do the
        # same in the authors' code ("common BN, ReLU"); the seed's later projections read the raw input.
        changes_shape = not isinstance(self.shortcut, nn.Identity)
        self.shortcut_reads_preact = first or (changes_shape and shortcut != "input_projection")


class PreActBasicBlock(_PreActBlock):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus shortcut (also the wide ResNet unit).
    last_bias: a bias on the second convolution (Lasagne's ConvLayer default)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "projection",
                 dropout: float = 0.0, first: bool = False, last_bias: bool = False, preactivate: bool = True):
        super().__init__()
        self._init_preact(in_planes, preactivate)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=last_bias)
        self._init_shortcut(in_planes, planes, stride, shortcut, first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self._preact(x)
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
                 bottleneck_stride: str = "1x1", first: bool = False, last_bias: bool = False,
                 preactivate: bool = True):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if bottleneck_stride == "1x1" else (1, stride)
        self._init_preact(in_planes, preactivate)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=last_bias)
        self._init_shortcut(in_planes, planes * self.expansion, stride, shortcut, first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self._preact(x)
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

    def __init__(self, block: type[nn.Module], units: tuple[int, int, int], widths=(16, 32, 64),
                 num_classes: int = 10, preact_stage1: str = "every_unit", **block_options):
        super().__init__()
        preact = issubclass(block, _PreActBlock)
        self.in_planes = 16
        conv = conv3x3(3, 16)
        # Pre-activation nets start each unit with BN-ReLU, so their stem is a bare conv; the
        # first unit's BN-ReLU is the "activation right after conv1" of He 2016.
        self.stem = conv if preact else nn.Sequential(conv, nn.BatchNorm2d(16), nn.ReLU())
        first = {"first": True} if preact else {}
        rest = {"preactivate": False} if preact_stage1 == "first_unit" else {}
        self.stage1 = self._make_stage(block, widths[0], units[0], 1, block_options, first, rest)
        self.stage2 = self._make_stage(block, widths[1], units[1], 2, block_options)
        self.stage3 = self._make_stage(block, widths[2], units[2], 2, block_options)
        # ... and end with a BN-ReLU before pooling, since their last unit ends with a conv.
        self.final_act = nn.Sequential(nn.BatchNorm2d(self.in_planes), nn.ReLU()) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

        # He et al. 2015 ("Delving deep"), as in the authors' Torch code: N(0, sqrt(2/(k*k*out))),
        # BN gamma 1, beta 0. The classifier's weight keeps the Torch/PyTorch default,
        # U(+-1/sqrt(in)); its bias is zero, as every source sets it (fb.resnet.torch and
        # resnet-1k-layers: "for k,v in pairs(model:findModules('nn.Linear')) do v.bias:zero()";
        # WRN: utils.FCinit; Lasagne's DenseLayer: b=Constant(0.)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def _make_stage(self, block, planes: int, units: int, stride: int, block_options, first=None,
                    rest=None) -> nn.Sequential:
        layers = []
        for i in range(units):
            extra = (first if i == 0 else rest) or {}
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1, **block_options, **extra))
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


def _lasagne_init(model: ResNet) -> ResNet:
    """Initialise as the seed's Lasagne code: convolutions `W=he_norm` (HeNormal(gain='relu'):
    N(0, 2/fan_in)), projections Lasagne's default GlorotUniform, the dense layer
    `W=HeNormal()` (gain 1), every bias Constant(0.); BatchNormLayer's epsilon=1e-4. (The
    unit's last convolution keeps its bias: `ConvLayer(..., W=he_norm)` without `b=None`.)"""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if name.endswith("shortcut"):
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-4
    nn.init.kaiming_normal_(model.fc.weight, mode="fan_in", nonlinearity="linear")
    nn.init.zeros_(model.fc.bias)
    return model


# Which class is which unit: (block, pre-activation) -> the unit.
_UNITS = {("basic", True): PreActBasicBlock, ("bottleneck", True): PreActBottleneck,
          ("basic", False): BasicBlock, ("bottleneck", False): Bottleneck}


def create(spec: ArchSpec, **options) -> ResNet:
    """The network `spec` describes, with `options` (defaults and checks: `ArchSpec.options`)."""
    options = spec.options(options)
    num_classes, bn_batch = options.pop("num_classes"), options.pop("bn_batch")
    lasagne = options.pop("layer_defaults", "torch") == "lasagne"
    # Lasagne's `ConvLayer(...)` keeps its default bias (b=Constant(0.)) on each unit's last convolution.
    last_bias = {"last_bias": True} if lasagne else {}
    model = ResNet(_UNITS[spec.block, spec.preact], spec.units, spec.widths, num_classes, **options, **last_bias)
    model = _lasagne_init(model) if lasagne else model
    return GhostBatchNorm2d.convert(model, bn_batch) if bn_batch else model


class UnknownArchitectureError(ValueError):
    pass


# Each registered network's factory, by name (`register`).
MODELS: dict[str, Callable[..., ResNet]] = {}


def register(factory: Callable[..., ResNet]) -> Callable[..., ResNet]:
    """A factory under its own name, which must name a network of the registry: its sizes and
    options are the registry's (`ARCHITECTURES`), never restated here."""
    if factory.__name__ not in ARCHITECTURES:
        raise UnknownArchitectureError(f"factory {factory.__name__!r} names no registered network")
    MODELS[factory.__name__] = factory
    return factory


def build_model(name: str, num_classes: int = 10, **options) -> nn.Module:
    """Build a registered network by name, through its factory; options as for its family
    (`default_options`)."""
    if name not in MODELS:
        raise UnknownArchitectureError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}")
    return MODELS[name](num_classes=num_classes, **options)


# ---------------------------------------------------------------- the registered networks, one factory each
# Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

@register
def preact_resnet20(**options) -> ResNet:
    return create(ARCHITECTURES["preact_resnet20"], **options)


@register
def preact_resnet32(**options) -> ResNet:
    return create(ARCHITECTURES["preact_resnet32"], **options)


@register
def preact_resnet44(**options) -> ResNet:
    return create(ARCHITECTURES["preact_resnet44"], **options)


@register
def preact_resnet56(**options) -> ResNet:
    return create(ARCHITECTURES["preact_resnet56"], **options)


@register
def preact_resnet110(**options) -> ResNet:
    """The seed's and the report's ResNet-110 (He et al. 2016, Table 3)."""
    return create(ARCHITECTURES["preact_resnet110"], **options)


@register
def preact_resnet1202(**options) -> ResNet:
    return create(ARCHITECTURES["preact_resnet1202"], **options)


@register
def preact_resnet164(**options) -> ResNet:
    """Bottleneck units; the report's ResNet-164 (He et al. 2016, Table 3)."""
    return create(ARCHITECTURES["preact_resnet164"], **options)


@register
def preact_resnet1001(**options) -> ResNet:
    """Bottleneck units (He et al. 2016, Table 3)."""
    return create(ARCHITECTURES["preact_resnet1001"], **options)


# Original post-activation ResNets (He et al. 2015, "Deep Residual Learning for Image Recognition").

@register
def resnet20(**options) -> ResNet:
    return create(ARCHITECTURES["resnet20"], **options)


@register
def resnet32(**options) -> ResNet:
    return create(ARCHITECTURES["resnet32"], **options)


@register
def resnet44(**options) -> ResNet:
    return create(ARCHITECTURES["resnet44"], **options)


@register
def resnet56(**options) -> ResNet:
    return create(ARCHITECTURES["resnet56"], **options)


@register
def resnet110(**options) -> ResNet:
    return create(ARCHITECTURES["resnet110"], **options)


@register
def resnet1202(**options) -> ResNet:
    return create(ARCHITECTURES["resnet1202"], **options)


@register
def resnet164(**options) -> ResNet:
    """Bottleneck units."""
    return create(ARCHITECTURES["resnet164"], **options)


@register
def resnet1001(**options) -> ResNet:
    """Bottleneck units."""
    return create(ARCHITECTURES["resnet1001"], **options)


# Wide ResNets (Zagoruyko & Komodakis 2016): WRN-depth-k.

@register
def wrn_16_4(**options) -> ResNet:
    """The network of the seed's table, with dropout 0.3."""
    return create(ARCHITECTURES["wrn_16_4"], **options)


@register
def wrn_16_8(**options) -> ResNet:
    return create(ARCHITECTURES["wrn_16_8"], **options)


@register
def wrn_28_10(**options) -> ResNet:
    return create(ARCHITECTURES["wrn_28_10"], **options)


@register
def wrn_40_4(**options) -> ResNet:
    return create(ARCHITECTURES["wrn_40_4"], **options)


@register
def seed_wrn_n2_k4(**options) -> ResNet:
    """The seed's "WRN n=2 k=4" as its code builds it (ResNet_FullPre_Wide(n=2, k=4)): 22 layers."""
    return create(ARCHITECTURES["seed_wrn_n2_k4"], **options)


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


@functools.lru_cache(maxsize=None)
def network_size(name: str, num_classes: int = 10, options: tuple = ()) -> tuple[int, int]:
    """(parameters, forward FLOPs per image) of a registered network with `options` (sorted
    (name, value) pairs), counted on the meta device: no weights allocated, no kernels run."""
    with torch.device("meta"):
        model = build_model(name, num_classes, **dict(options))
    return count_parameters(model), flops_per_image(model, torch.device("meta"))


def describe_architectures(num_classes: int = 10) -> list[dict]:
    """One row per registered network with its exact parameter count (default options)."""
    return [{"name": spec.name, "family": spec.family, "block": spec.block, "depth": spec.depth,
             "width": spec.width, "params": default_parameter_count(spec.name, num_classes)}
            for spec in ARCHITECTURES.values()]


def architecture_rows() -> list[dict]:
    """Each network's spec, exact parameters, forward GFLOPs per image (both counted on the meta
    device, nothing computed: `network_size`) and default options: the rows of the committed
    table that the book and the command line read without torch (`reproresnet.architectures`)."""
    rows = []
    for spec in ARCHITECTURES.values():
        params, flops = network_size(spec.name)
        options = default_options(spec.family, spec.block)
        rows.append({"name": spec.name, "family": spec.family, "block": spec.block, "depth": spec.depth,
                     "width": spec.width, "params": params, "gflops": round(flops / 1e9, 3),
                     **{name: options.get(name) for name in OPTIONS}})
    return rows


@functools.lru_cache(maxsize=None)
def default_parameter_count(name: str, num_classes: int = 10) -> int:
    """The exact parameter count of a registered network with its default options."""
    # Building all 21 networks on the CPU takes a few seconds (faster than the meta device,
    # whose per-op overhead dominates for the 1000-layer nets); cache it for repeated calls.
    return count_parameters(build_model(name, num_classes))
