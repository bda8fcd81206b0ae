"""An example plugin of dakd: one student network and one distillation loss term.

Importing this module registers both (dakd imports it once per process, through the
``dakd.plugins`` entry point of this package or a config's ``plugins: [dakd_plugin_example]``):

* ``tiny_fcn``: a small fully convolutional segmenter at output stride 8, with builder
  arguments ``channels`` (base channel count) and ``depth`` (3x3 blocks after the stem), set in
  a config as ``models.student.args: {channels: 16, depth: 2}``;
* ``at``: attention transfer (Zagoruyko and Komodakis, ICLR 2017) between the student's and the
  teacher's maps at each distillation level, weighted by ``loss.at`` (default 0: off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dakd.loss_terms import LossTerm, TermInputs, register_term
from dakd.models import Segmenter, register_model

__all__ = ["TinyEncoder", "attention_map", "attention_transfer", "tiny_fcn"]


def _block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class TinyEncoder(nn.Module):
    """Three stride-2 blocks (stride 8), then ``depth`` blocks at stride 8; the feature level
    reads the map after the stem, the output level the last one."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _block(3, channels, 2), _block(channels, channels, 2), _block(channels, channels, 2)
        )
        self.body = nn.Sequential(*(_block(channels, channels) for _ in range(depth)))

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = self.stem(x)
        return mid, self.body(mid)


@register_model("tiny_fcn")
def tiny_fcn(
    num_classes: int = 19, width: float = 1.0, channels: int = 16, depth: int = 2
) -> Segmenter:
    """A small fully convolutional segmenter: ``channels * width`` channels, ``depth`` blocks."""
    if channels < 1 or depth < 0:
        raise ValueError(f"tiny_fcn needs channels >= 1 and depth >= 0, got {channels}, {depth}")
    width_channels = max(1, round(channels * width))
    return Segmenter(
        TinyEncoder(width_channels, depth),
        feature_head=nn.Conv2d(width_channels, num_classes, 1),
        output_head=nn.Conv2d(width_channels, num_classes, 1),
        num_classes=num_classes,
    )


def attention_map(maps: torch.Tensor) -> torch.Tensor:
    """A map's spatial attention: the mean over channels of the squared activations, flattened
    per image and scaled to unit L2 norm, ``[B, H*W]``."""
    return F.normalize(maps.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer(x: TermInputs) -> torch.Tensor:
    """The squared difference of the student's and the teacher's attention maps, averaged over
    images and positions."""
    return (attention_map(x.student) - attention_map(x.teacher)).pow(2).mean()


register_term(LossTerm("at", attention_transfer, default=0.0, label="AT"))
