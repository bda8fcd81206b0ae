"""Dilated Residual Networks, D variants (Yu, Koltun and Funkhouser, CVPR 2017).

Structure of DRN-D (channels ``16, 32, 64, 128, 256, 512, 512, 512``, each times ``width``):

=======  ==========================================  ======  ========
stage    layers                                      stride  dilation
=======  ==========================================  ======  ========
layer0   7x7 conv 3->c0, BN, ReLU                    1       1
layer1   ``n1`` x (3x3 conv, BN, ReLU) -> c0         1       1
layer2   ``n2`` x (3x3 conv, BN, ReLU) -> c1         2       1
layer3   ``n3`` residual blocks -> c2                2       1
layer4   ``n4`` residual blocks -> c3                2       1
layer5   ``n5`` residual blocks -> c4                1       2
layer6   ``n6`` residual blocks -> c5                1       4
layer7   ``n7`` x (3x3 conv, BN, ReLU) -> c6         1       2
layer8   ``n8`` x (3x3 conv, BN, ReLU) -> c7         1       1
=======  ==========================================  ======  ========

Overall output stride 8; every 3x3 conv of a dilated stage uses the stage's dilation. Layers 7
and 8 are plain convolutions without residual connections, which removes the gridding
artifacts of dilated residual stages. Residual blocks are ``BasicBlock`` (two 3x3 convs) for
DRN-D-22/38 and ``Bottleneck`` (1x1, 3x3, 1x1 with expansion 4) for DRN-D-54/105; a projection
shortcut (1x1 conv + BN) is used whenever the stride or the channel count changes.

The ImageNet classifier form (:class:`DRN` with ``num_classes=1000``) adds global average
pooling and a 1x1 conv classifier; with ``width=1`` it has the published sizes (DRN-D-22
16.39M, DRN-D-38 26.50M parameters). The segmenters drop that classifier and put a 1x1 conv
head on the output of layer6 ("feature" level) and on the output of layer8 ("output" level).

Initialisation: convolutions Kaiming normal (fan-out, ReLU gain), BN weight 1 and bias 0,
classifier biases 0.
"""

from __future__ import annotations

import torch
from torch import nn

from dakd.models.registry import Segmenter, register_backbone, register_model

__all__ = [
    "DRN",
    "DRN_D_ARCHS",
    "BasicBlock",
    "Bottleneck",
    "SkipDecoder",
    "drn_segmenter",
    "init_weights",
    "scale_channels",
]

DRN_D_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


def scale_channels(channels: int, width: float) -> int:
    """Channel count ``channels`` scaled by ``width``, rounded, at least 1."""
    return max(1, round(channels * width))


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convs with dilation ``dilation``."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """Residual block 1x1 -> 3x3 (stride, dilation ``dilation``) -> 1x1, expansion 4."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DRN(nn.Module):
    """DRN-D network (see the module docstring for the stage table).

    Args:
        block: residual block class for layers 3-6 (:class:`BasicBlock` or :class:`Bottleneck`).
        layers: eight counts: convs in layers 1, 2, 7, 8 and residual blocks in layers 3-6.
        num_classes: size of the ImageNet classifier (global average pool + 1x1 conv);
            0 builds the feature extractor only.
        width: channel multiplier applied to every stage.
        feature_stage: stage (4-7, all at stride 8) whose output :meth:`forward_levels`
            returns as the intermediate map; 6 by default.

    ``forward_levels(x)`` returns ``(output of feature_stage, output of layer8)``;
    ``forward(x)`` returns ImageNet logits ``[B, num_classes]`` (requires ``num_classes > 0``).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        num_classes: int = 1000,
        width: float = 1.0,
        feature_stage: int = 6,
    ) -> None:
        super().__init__()
        if len(layers) != 8:
            raise ValueError(f"DRN needs 8 stage sizes, got {len(layers)}")
        if feature_stage not in (4, 5, 6, 7):
            raise ValueError(f"feature_stage must be one of 4, 5, 6, 7, got {feature_stage}")
        ch = [scale_channels(c, width) for c in DRN_D_CHANNELS]
        self.feature_stage = feature_stage
        self.in_ch = ch[0]
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, ch[0], 7, padding=3, bias=False),
            nn.BatchNorm2d(ch[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._make_conv_layers(ch[0], layers[0], stride=1)
        self.layer2 = self._make_conv_layers(ch[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, ch[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, ch[3], layers[3], stride=2)
        self.layer5 = self._make_layer(block, ch[4], layers[4], dilation=2)
        self.layer6 = self._make_layer(block, ch[5], layers[5], dilation=4)
        self.layer7 = self._make_conv_layers(ch[6], layers[6], dilation=2)
        self.layer8 = self._make_conv_layers(ch[7], layers[7], dilation=1)
        self.stage_channels = self._stage_channels(block, ch)
        self.out_dim = self.stage_channels[8]
        self.mid_dim = self.stage_channels[feature_stage]
        self.num_classes = num_classes
        if num_classes > 0:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Conv2d(self.out_dim, num_classes, 1, bias=True)
        init_weights(self)

    @staticmethod
    def _stage_channels(block: type[nn.Module], ch: list[int]) -> dict[int, int]:
        out = {0: ch[0], 1: ch[0], 2: ch[1], 7: ch[6], 8: ch[7]}
        out.update({i: ch[i - 1] * block.expansion for i in (3, 4, 5, 6)})
        return out

    def _make_conv_layers(
        self, channels: int, convs: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        modules: list[nn.Module] = []
        for i in range(convs):
            modules += [
                _conv3x3(self.in_ch, channels, stride if i == 0 else 1, dilation),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            self.in_ch = channels
        return nn.Sequential(*modules)

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilation: int = 1,
    ) -> nn.Sequential:
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        modules = [block(self.in_ch, planes, stride, downsample, dilation)]
        self.in_ch = out_ch
        modules += [block(out_ch, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward_levels(
        self, x: torch.Tensor, skip_stage: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Return ``(output of feature_stage, output of layer8)``, both at stride 8, and with
        ``skip_stage`` (2 or 3) also that stage's output (stride 2 or 4) for a decoder."""
        mid = skip = None
        for i in range(9):
            x = getattr(self, f"layer{i}")(x)
            if i == self.feature_stage:
                mid = x
            if i == skip_stage:
                skip = x
        return (mid, x) if skip_stage is None else (mid, x, skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes <= 0:
            raise RuntimeError("DRN built with num_classes=0 has no classifier; use forward_levels")
        _, x = self.forward_levels(x)
        return self.fc(self.avgpool(x)).flatten(1)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, ReLU), zero conv biases, BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


#: Block type and the eight stage sizes of each DRN-D depth.
DRN_D_ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]] = {
    "drn_d_22": (BasicBlock, (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_38": (BasicBlock, (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_54": (Bottleneck, (1, 1, 3, 4, 6, 3, 1, 1)),
    "drn_d_105": (Bottleneck, (1, 1, 3, 4, 23, 3, 1, 1)),
}


#: Output stride of the output-level logits -> the DRN stage whose output the decoder fuses.
DECODER_SKIPS = {4: 3, 2: 2}


class SkipDecoder(nn.Module):
    """A light decoder that brings the output level to stride 2 or 4 (DeepLabv3+-like).

    ``layer8``'s features are reduced by a 1x1 conv, upsampled bilinearly to the resolution of
    an early stage (layer2 for stride 2, layer3 for stride 4), concatenated with that stage's
    output and fused by a 3x3 conv; each conv is followed by BN and ReLU. The output-level head
    then classifies at that finer stride, so thin and small classes survive on the logit grid.
    """

    def __init__(self, in_ch: int, skip_ch: int, channels: int, stride: int) -> None:
        super().__init__()
        if stride not in DECODER_SKIPS:
            raise ValueError(f"decoder stride must be one of {sorted(DECODER_SKIPS)}, got {stride}")
        self.stride = stride
        self.skip_stage = DECODER_SKIPS[stride]
        self.out_dim = channels
        self.reduce = nn.Sequential(
            nn.Conv2d(in_ch, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            _conv3x3(channels + skip_ch, channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        init_weights(self)

    def forward(self, last: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(
            self.reduce(last), size=skip.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.fuse(torch.cat([x, skip], dim=1))


def _head(in_ch: int, num_classes: int) -> nn.Conv2d:
    head = nn.Conv2d(in_ch, num_classes, 1, bias=True)
    init_weights(head)
    return head


def drn_segmenter(
    arch: str,
    num_classes: int = 19,
    width: float = 1.0,
    feature_stage: int = 6,
    output_stride: int = 8,
) -> Segmenter:
    """Two-level DRN-D segmenter: 1x1 heads on ``feature_stage`` (default layer6) and layer8.

    ``output_stride`` 8 is the paper's network; 4 or 2 put a :class:`SkipDecoder` between
    layer8 and the output-level head (the feature level stays at stride 8).
    """
    if output_stride not in (8, *DECODER_SKIPS):
        raise ValueError(f"output_stride must be 8, 4 or 2, got {output_stride}")
    block, layers = DRN_D_ARCHS[arch]
    encoder = DRN(block, layers, num_classes=0, width=width, feature_stage=feature_stage)
    decoder = None
    out_dim = encoder.out_dim
    if output_stride != 8:
        skip_ch = encoder.stage_channels[DECODER_SKIPS[output_stride]]
        channels = max(8, scale_channels(128, width))
        decoder = SkipDecoder(encoder.out_dim, skip_ch, channels, output_stride)
        out_dim = decoder.out_dim
    return Segmenter(
        encoder,
        feature_head=_head(encoder.mid_dim, num_classes),
        output_head=_head(out_dim, num_classes),
        num_classes=num_classes,
        decoder=decoder,
    )


def _register(arch: str) -> None:
    def model_factory(num_classes: int = 19, width: float = 1.0, **kwargs) -> Segmenter:
        return drn_segmenter(arch, num_classes=num_classes, width=width, **kwargs)

    def backbone_factory(width: float = 1.0, num_classes: int = 1000) -> DRN:
        block, layers = DRN_D_ARCHS[arch]
        return DRN(block, layers, num_classes=num_classes, width=width)

    model_factory.__doc__ = f"{arch} two-level segmenter (heads on layer6 and layer8)."
    backbone_factory.__doc__ = f"{arch} ImageNet classifier form."
    register_model(arch)(model_factory)
    register_backbone(arch)(backbone_factory)


for _arch in DRN_D_ARCHS:
    _register(_arch)
