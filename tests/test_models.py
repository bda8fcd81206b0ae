"""Tests for dakd.models: registry, DRN-D, DeepLab-v2 and the discriminator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dakd.models import (
    Discriminator,
    Segmenter,
    count_parameters,
    create_backbone,
    create_model,
    list_models,
    models_table,
)
from dakd.models.drn import DRN_D_ARCHS

DRN_NAMES = sorted(DRN_D_ARCHS)


def _meta_params(build) -> int:
    with torch.device("meta"):
        return count_parameters(build())


def _close(actual: int, expected: float, rel: float = 0.005) -> bool:
    return abs(actual - expected) <= rel * expected


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registered_names():
    """The package's networks, and those of the installed plugins (the dev environment
    installs the example plugin, examples/dakd-plugin-example)."""
    builtin = {"drn_d_22", "drn_d_38", "drn_d_54", "drn_d_105", "deeplabv2_resnet101"}
    from dakd.config.plugins import installed_modules

    plugins = {"tiny_fcn"} if ("dakd_plugin_example", "example") in installed_modules() else set()
    assert set(list_models()) == builtin | plugins


@pytest.mark.parametrize(
    ("name", "imagenet", "segmenter"),
    [("drn_d_22", 16.39e6, 15.90e6), ("drn_d_38", 26.50e6, 26.01e6)],
)
def test_drn_parameter_counts(name, imagenet, segmenter):
    n_imagenet = _meta_params(lambda: create_backbone(name))
    n_segmenter = _meta_params(lambda: create_model(name, num_classes=19))
    assert _close(n_imagenet, imagenet), n_imagenet
    assert _close(n_segmenter, segmenter), n_segmenter
    # The two segmenter heads are 1x1 convs 512 -> 19 replacing the 512 -> 1000 classifier.
    assert n_imagenet - n_segmenter == (512 * 1000 + 1000) - 2 * (512 * 19 + 19)


def test_imagenet_forward_shape():
    model = create_backbone("drn_d_22", width=0.125).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize("name", DRN_NAMES)
@pytest.mark.parametrize(("height", "width"), [(64, 128), (37, 50)])
def test_drn_output_levels(name, height, width):
    model = create_model(name, num_classes=19, width=0.25).eval()
    assert isinstance(model, Segmenter)
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert set(out) == {"feature", "output"}
    expected = (2, 19, -(-height // 8), -(-width // 8))
    assert model.output_size(height, width) == expected[2:]
    for level in ("feature", "output"):
        assert out[level].shape == expected
        assert torch.isfinite(out[level]).all()


def test_deeplab_output_levels():
    model = create_model("deeplabv2_resnet101", num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "feature": (1, 5, 8, 8),
        "output": (1, 5, 8, 8),
    }
    # ResNet-101 without its classifier (42.50M) plus two 19-class ASPP heads (2.10M).
    assert _close(_meta_params(lambda: create_model("deeplabv2_resnet101")), 44.60e6)


def test_deeplab_rejects_width():
    with pytest.raises(ValueError, match="width"):
        create_model("deeplabv2_resnet101", width=0.5)


def test_width_multiplier_scales_quadratically():
    full = _meta_params(lambda: create_model("drn_d_38", width=1.0))
    for width in (0.5, 0.25):
        ratio = _meta_params(lambda w=width: create_model("drn_d_38", width=w)) / full
        assert width**2 * 0.9 < ratio < width**2 * 1.15, (width, ratio)


def test_structure_and_dilations():
    model = create_model("drn_d_22", width=0.25)
    enc = model.encoder
    assert [m.stride[0] for m in enc.layer2 if isinstance(m, nn.Conv2d)] == [2]
    assert enc.layer3[0].conv1.stride == (2, 2) and enc.layer4[0].conv1.stride == (2, 2)
    assert all(b.conv1.dilation == b.conv2.dilation == (2, 2) for b in enc.layer5)
    assert all(b.conv1.dilation == b.conv2.dilation == (4, 4) for b in enc.layer6)
    assert [m.dilation[0] for m in enc.layer7 if isinstance(m, nn.Conv2d)] == [2]
    assert [m.dilation[0] for m in enc.layer8 if isinstance(m, nn.Conv2d)] == [1]
    assert model.feature_head.in_channels == 128 and model.output_head.in_channels == 128
    # Stages 7 and 8 are plain conv-BN-ReLU stacks without residual blocks.
    for stage in (enc.layer7, enc.layer8):
        assert [type(m) for m in stage] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_bottleneck_feature_head_channels():
    model = create_model("drn_d_54", width=0.25)
    assert model.feature_head.in_channels == 512  # 128 * 4 (bottleneck expansion)
    assert model.output_head.in_channels == 128


def test_feature_stage_option():
    model = create_model("drn_d_22", width=0.25, feature_stage=5).eval()
    assert model.feature_head.in_channels == 64
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out["feature"].shape == out["output"].shape == (1, 19, 4, 4)
    with pytest.raises(ValueError, match="feature_stage"):
        create_model("drn_d_22", feature_stage=2)


def test_deterministic_initialisation():
    torch.manual_seed(0)
    a = create_model("drn_d_22", width=0.25).state_dict()
    torch.manual_seed(0)
    b = create_model("drn_d_22", width=0.25).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    bn = create_model("drn_d_22", width=0.25).encoder.layer0[1]
    assert isinstance(bn, nn.BatchNorm2d)
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_gradients_reach_both_heads():
    torch.manual_seed(0)
    model = create_model("drn_d_22", num_classes=19, width=0.125).train()
    out = model(torch.randn(2, 3, 32, 64))
    (out["feature"].square().mean() + out["output"].square().mean()).backward()
    for head in (model.feature_head, model.output_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert model.encoder.layer0[0].weight.grad.abs().sum() > 0
    n_params = sum(1 for _ in model.parameters())
    assert (
        sum(1 for _ in model.backbone_parameters()) + sum(1 for _ in model.head_parameters())
        == n_params
    )


def test_unknown_name():
    with pytest.raises(ValueError, match="drn_d_22") as info:
        create_model("resnet_9000")
    assert "resnet_9000" in str(info.value)
    with pytest.raises(ValueError, match="registered"):
        create_backbone("resnet_9000")


def test_models_table():
    rows = dict(models_table())
    assert set(rows) == set(list_models())
    assert _close(rows["drn_d_22"], 15.90e6) and _close(rows["drn_d_38"], 26.01e6)
    small = dict(models_table(width=0.25))
    assert small["drn_d_22"] < rows["drn_d_22"] / 10
    assert small["deeplabv2_resnet101"] == rows["deeplabv2_resnet101"]


def test_discriminator_structure_and_shape():
    disc = Discriminator(num_classes=19, ndf=64)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    assert [c.in_channels for c in convs] == [19, 64, 128, 256, 512]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    acts = [m for m in disc.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4 and all(a.negative_slope == 0.2 for a in acts)
    assert isinstance(list(disc.layers)[-1], nn.Conv2d)
    x = torch.softmax(torch.randn(2, 19, 64, 128), dim=1)
    assert disc(x).shape == (2, 1, 2, 4)


@pytest.mark.parametrize(("stride", "skip"), [(2, 2), (4, 3)])
def test_decoder_brings_the_output_level_to_its_stride(stride, skip):
    model = create_model("drn_d_22", num_classes=19, width=0.125, output_stride=stride).eval()
    assert model.output_stride == stride and model.decoder.skip_stage == skip
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 128))
    assert tuple(out["output"].shape) == (2, 19, 64 // stride, 128 // stride)
    assert tuple(out["feature"].shape) == (2, 19, 8, 16)  # the feature level stays at stride 8
    assert model.output_size(64, 128) == (64 // stride, 128 // stride)
    assert model.output_size(64, 128, "feature") == (8, 16)
    # the decoder reads the skip stage: changing that stage's output changes the prediction
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        base = model(x)["output"]
        stage = getattr(model.encoder, f"layer{skip}")
        handle = stage.register_forward_hook(lambda m, i, o: o * 0)
        try:
            zeroed = model(x)["output"]
        finally:
            handle.remove()
    assert not torch.allclose(base, zeroed)


def test_output_stride_is_checked():
    with pytest.raises(ValueError, match="output_stride"):
        create_model("drn_d_22", width=0.125, output_stride=16)
