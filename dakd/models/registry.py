"""Model registry and the two-level segmenter interface.

Every segmentation network in :mod:`dakd.models` is a :class:`Segmenter`: an encoder that yields
an intermediate and a final feature map, each followed by a classifier head. ``forward`` returns
``{"feature": logits, "output": logits}``, the AdaptSegNet-style feature-level and output-level
predictions, both class-logit maps at output stride 8.

Networks are registered by name with :func:`register_model` (segmenter factories) and
:func:`register_backbone` (ImageNet classifier forms) and built with :func:`create_model` /
:func:`create_backbone`, in the style of pytorch-image-models::

    model = create_model("drn_d_22", num_classes=19, width=0.25)
    logits = model(images)["output"]
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from dakd.paradigms import LEVELS

__all__ = [
    "Segmenter",
    "check_model_args",
    "count_parameters",
    "create_backbone",
    "create_model",
    "list_backbones",
    "list_models",
    "models_table",
    "register_backbone",
    "register_model",
]

ModelFactory = Callable[..., "Segmenter"]
BackboneFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}
_BACKBONES: dict[str, BackboneFactory] = {}


class Segmenter(nn.Module):
    """Two-level semantic segmenter: an encoder plus a feature-level and an output-level head.

    Args:
        encoder: module with a ``forward_levels(x) -> (mid, last)`` method returning the
            intermediate feature map (input of the feature-level head) and the final feature map
            (input of the output-level head), both at output stride 8; with a decoder,
            ``forward_levels(x, skip_stage)`` also returns that stage's output.
        feature_head: classifier applied to ``mid``, producing class logits.
        output_head: classifier applied to ``last``, producing class logits.
        num_classes: number of classes the heads predict.
        decoder: optional module ``decoder(last, skip)`` with ``stride`` and ``skip_stage``
            attributes, between the final feature map and the output-level head.

    ``forward(x)`` with ``x`` of shape ``[B, 3, H, W]`` returns
    ``{"feature": [B, C, h, w], "output": [B, C, h', w']}`` with ``h = ceil(H / 8)`` and
    ``w = ceil(W / 8)`` (every stride-2 layer pads so that it rounds up; the output level at
    ``output_stride``); see :meth:`output_size`. Logits are not upsampled: losses and evaluation resize them.
    """

    levels: tuple[str, ...] = LEVELS
    #: Output stride of the encoder's two maps (and of both levels without a decoder).
    encoder_stride: int = 8

    def __init__(
        self,
        encoder: nn.Module,
        feature_head: nn.Module,
        output_head: nn.Module,
        num_classes: int,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_head = feature_head
        self.output_head = output_head
        self.num_classes = num_classes
        self.decoder = decoder

    @property
    def output_stride(self) -> int:
        """Stride of the output-level logits: 8, or the decoder's (2 or 4)."""
        return self.encoder_stride if self.decoder is None else self.decoder.stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.decoder is None:
            mid, last = self.encoder.forward_levels(x)
        else:
            mid, last, skip = self.encoder.forward_levels(x, self.decoder.skip_stage)
            last = self.decoder(last, skip)
        return {"feature": self.feature_head(mid), "output": self.output_head(last)}

    def output_size(self, height: int, width: int, level: str = "output") -> tuple[int, int]:
        """Spatial size of a level's logit map for an input of ``height x width`` pixels."""
        stride = self.output_stride if level == "output" else self.encoder_stride
        return _strided(height, width, stride)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the encoder (for a separate learning rate)."""
        return self.encoder.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of both classifier heads and the decoder (for a separate learning rate)."""
        if self.decoder is not None:
            yield from self.decoder.parameters()
        yield from self.feature_head.parameters()
        yield from self.output_head.parameters()


def _strided(height: int, width: int, stride: int) -> tuple[int, int]:
    """Size after ``log2(stride)`` stride-2 layers that pad so that they round up."""
    return math.ceil(height / stride), math.ceil(width / stride)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a segmenter factory ``fn(num_classes, width, **kwargs)`` as ``name``."""

    def decorator(fn: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return decorator


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering an ImageNet classifier factory ``fn(width, **kwargs)`` as ``name``."""

    def decorator(fn: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = fn
        return fn

    return decorator


def _installed() -> None:
    """Installed plugins register their networks before a name is looked up."""
    from dakd.config.plugins import load_installed

    load_installed()


def list_models() -> list[str]:
    """Names of the registered segmenters (installed plugins' included), sorted."""
    _installed()
    return sorted(_MODELS)


def list_backbones() -> list[str]:
    """Names of the registered ImageNet classifier forms, sorted."""
    return sorted(_BACKBONES)


def _lookup(table: dict, name: str, kind: str):
    _installed()
    try:
        return table[name]
    except KeyError:
        raise ValueError(
            f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}"
        ) from None


def create_model(name: str, num_classes: int = 19, width: float = 1.0, **kwargs) -> Segmenter:
    """Build the registered segmenter ``name`` with ``num_classes`` outputs per level.

    ``width`` scales every channel count (where the architecture supports it); extra keyword
    arguments go to the model's factory. Unknown names raise ``ValueError`` listing the
    registered ones.
    """
    factory = _lookup(_MODELS, name, "model")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return factory(num_classes=num_classes, width=width, **kwargs)


def check_model_args(name: str, width: float, args: dict[str, Any]) -> None:
    """A ``ValueError`` naming the network and the argument unless the builder of ``name``
    takes every keyword of ``args``: read from its signature, or, for a builder that passes
    ``**kwargs`` on, by building the network on the ``meta`` device (no memory, no weights)."""
    factory = _lookup(_MODELS, name, "model")
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        taken = [p for p, v in params.items() if v.kind is not inspect.Parameter.VAR_POSITIONAL]
        for arg in args:
            if arg not in params:
                raise ValueError(f"{name} takes no argument {arg!r} (it takes {', '.join(taken)})")
    try:
        with torch.device("meta"):
            factory(num_classes=19, width=width, **args)
    except TypeError as err:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if match:
            raise ValueError(f"{name} takes no argument {match.group(1)!r}") from None
        raise ValueError(f"{name} with args {args}: {err}") from None
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"{name} with args {args}: {err}") from None


def create_backbone(name: str, width: float = 1.0, **kwargs) -> nn.Module:
    """Build the ImageNet classifier form (1000 classes) of the registered network ``name``."""
    factory = _lookup(_BACKBONES, name, "backbone")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return factory(width=width, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all of them, or only those requiring gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def models_table(num_classes: int = 19, width: float = 1.0) -> list[tuple[str, int]]:
    """Rows ``(name, parameters)`` for every registered segmenter at the given width.

    Models are built on the ``meta`` device, so no memory is allocated and no weights are
    initialised; the listing is fast even for ResNet-101. Models that do not support ``width``
    are listed at their only width (1.0).
    """
    rows = []
    for name in list_models():
        with torch.device("meta"):
            try:
                model = create_model(name, num_classes=num_classes, width=width)
            except ValueError:
                model = create_model(name, num_classes=num_classes)
        rows.append((name, count_parameters(model)))
    return rows
