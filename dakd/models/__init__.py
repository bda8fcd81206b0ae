"""Segmentation networks, the output-space discriminator and the model registry.

Importing this package registers every network: DRN-D-22/38/54/105 (``drn_d_*``) and DeepLab-v2
ResNet-101 (``deeplabv2_resnet101``); installed plugins (``dakd.config.plugins``) register theirs
when a name is first looked up. Build them with :func:`create_model`.
"""

from dakd.models import deeplab, drn  # noqa: F401  (registers the models)
from dakd.models.discriminator import Discriminator
from dakd.models.registry import (
    Segmenter,
    check_model_args,
    count_parameters,
    create_backbone,
    create_model,
    list_backbones,
    list_models,
    models_table,
    register_backbone,
    register_model,
)

__all__ = [
    "Discriminator",
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
