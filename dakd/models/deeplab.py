"""DeepLab-v2 on ResNet-101, multi-level as in AdaptSegNet (Tsai et al., CVPR 2018).

The encoder is torchvision's ResNet-101 built with ``weights=None`` (weights are never
downloaded) and ``replace_stride_with_dilation=[False, True, True]``: layer3 and layer4 keep
stride 8 and use dilations 2 and 4, so the network has output stride 8. Its average pool and
fully connected classifier are dropped.

Each level has a DeepLab-v2 ASPP classifier: four parallel 3x3 convs with dilations 6, 12, 18,
24 (with biases) whose logits are summed. The "feature" level classifies the output of layer3
(1024 channels), the "output" level that of layer4 (2048 channels). Classifier weights are
drawn from N(0, 0.01) with zero biases; the ResNet keeps torchvision's initialisation
(Kaiming-normal convs, BN weight 1 and bias 0).
"""

from __future__ import annotations

import torch
from torch import nn

from dakd.models.registry import Segmenter, register_backbone, register_model

__all__ = ["ASPPClassifier", "ResNetEncoder", "deeplabv2_resnet101"]

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
    """Sum of parallel dilated 3x3 conv classifiers (DeepLab-v2 ASPP)."""

    def __init__(
        self, in_ch: int, num_classes: int, dilations: tuple[int, ...] = ASPP_DILATIONS
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_ch, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class ResNetEncoder(nn.Module):
    """torchvision ResNet stem and layers 1-4; ``forward_levels`` returns (layer3, layer4)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.mid_dim = resnet.layer3[-1].conv3.out_channels
        self.out_dim = resnet.layer4[-1].conv3.out_channels

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        mid = self.layer3(x)
        return mid, self.layer4(mid)


def _check_width(width: float) -> None:
    if width != 1.0:
        raise ValueError(f"deeplabv2_resnet101 supports only width=1.0, got {width}")


@register_model("deeplabv2_resnet101")
def deeplabv2_resnet101(num_classes: int = 19, width: float = 1.0) -> Segmenter:
    """DeepLab-v2 ResNet-101 segmenter: ASPP heads on layer3 ("feature") and layer4 ("output")."""
    _check_width(width)
    from torchvision.models import resnet101  # here: importing torchvision costs seconds

    resnet = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
    encoder = ResNetEncoder(resnet)
    return Segmenter(
        encoder,
        feature_head=ASPPClassifier(encoder.mid_dim, num_classes),
        output_head=ASPPClassifier(encoder.out_dim, num_classes),
        num_classes=num_classes,
    )


@register_backbone("deeplabv2_resnet101")
def resnet101_backbone(width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-101 ImageNet classifier (random weights)."""
    _check_width(width)
    from torchvision.models import resnet101

    return resnet101(weights=None, num_classes=num_classes)
