"""Deployment figures against hand counts: peak memory, FLOPs, parameters, and the failures."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dakd.__main__ import main
from dakd.config import ConfigError, ModelConfig, build
from dakd.evaluation.deploy import (
    DEPLOY_METRICS,
    DeployError,
    DeployOutOfMemory,
    DeploySettings,
    check_size,
    count_flops,
    measure,
    measure_model,
    memory_curve_peak,
)
from dakd.models import count_parameters, create_model

F32 = 4  # bytes per float32


class Chain(nn.Module):
    """Layers applied in turn, each activation dropped once the next exists; a segmenter's
    output dict."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return {"feature": x, "output": x}


def cpu(size, **kw) -> DeploySettings:
    return DeploySettings(size=list(size), device="cpu", **{"warmup": 0, "repeats": 1, **kw})


def peak_bytes(model, size, **kw) -> int:
    """The measured peak in bytes, with oneDNN off: a plain convolution is then im2col and a
    matrix product, whose buffers are the hand count's."""
    with warnings.catch_warnings():  # the flags' note on TF32 of Intel GPUs
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            figures = measure_model(model, cpu(size, **kw), "chain")
    return round(figures.peak_memory_mb * 2**20)


@pytest.mark.parametrize("size", [(8, 16), (16, 32)])
def test_peak_memory_of_a_convolution_is_weights_input_columns_and_output(size):
    h, w = size
    weights, image, output = 8 * 3 * 3 * 3 * F32, 3 * h * w * F32, 8 * h * w * F32
    # the allocator also hands out the im2col buffer, one 3x3 patch of 3 channels per pixel
    columns = 3 * 3 * 3 * h * w * F32
    conv = Chain(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    assert peak_bytes(conv, size) == weights + image + columns + output
    assert peak_bytes(conv, size, batch=2) == weights + 2 * (image + columns + output)


def test_peak_memory_of_a_chain_counts_only_the_live_activations():
    # 1x1 convolutions need no im2col buffer: the allocator hands out activations only
    h, w = 16, 32
    chain = Chain(
        nn.Conv2d(3, 16, 1, bias=False), nn.Conv2d(16, 2, 1, bias=False), nn.Conv2d(2, 16, 1)
    )
    weights = (3 * 16 + 16 * 2 + 2 * 16 + 16) * F32
    image, pixels = 3 * h * w * F32, h * w * F32
    # live at once: a1 and a2 while the second runs, then a2 and a3 (a1 was dropped)
    assert peak_bytes(chain, (h, w)) == weights + image + (16 + 2) * pixels
    assert peak_bytes(chain, (h, w)) < weights + image + (16 + 2 + 16) * pixels


def test_the_curve_peak_follows_time_not_list_order():
    assert memory_curve_peak([(3, -5), (1, 5), (2, 7), (4, -7)]) == 12
    assert memory_curve_peak([(1, 4), (2, -4), (3, 3), (4, -3)]) == 4
    assert memory_curve_peak([]) == 0


def test_flops_of_a_convolution_by_hand():
    h, w = 16, 32
    conv = Chain(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    figures = measure_model(conv, cpu((h, w)), "conv")
    assert figures.gflops * 1e9 == pytest.approx(2 * 8 * 3 * 3 * 3 * h * w)


def test_flops_on_meta_equal_a_real_pass():
    model = create_model("drn_d_22", width=0.0625, output_stride=2).eval()
    settings = cpu((64, 128))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 64, 128))
    assert count_flops(model, settings) == counter.get_total_flops() > 0


def test_figures_of_two_widths():
    settings = cpu((64, 128))
    narrow, wide = (
        measure(ModelConfig("drn_d_22", width, output_stride=2), settings, threads=1)
        for width in (0.0625, 0.125)
    )
    model = create_model("drn_d_22", width=0.0625, output_stride=2)
    assert narrow.params_m == count_parameters(model) / 1e6
    for name in ("params_m", "peak_memory_mb", "gflops"):
        assert getattr(wide, name) > getattr(narrow, name) > 0
    assert narrow.latency_ms > 0 and narrow.device == "cpu"
    assert tuple(narrow.metrics()) == DEPLOY_METRICS


def test_sizes_the_network_cannot_take_are_named():
    student = ModelConfig("drn_d_22", 0.125, output_stride=2)
    check_size(student, [1024, 2048])
    with pytest.raises(DeployError, match=r"^drn_d_22 w0.125 os2 at 1023x2048: the height 1023"):
        check_size(student, [1023, 2048])
    with pytest.raises(DeployError, match="drn_d_22 w0.125 os2 at 1023x2048"):
        measure(student, DeploySettings([1023, 2048], device="cpu"))


def test_an_unknown_network_is_one_line_listing_the_registered_ones():
    with pytest.raises(DeployError) as err:
        measure(ModelConfig("drn_d_21"), cpu((64, 128)))
    assert "\n" not in str(err.value) and "drn_d_21" in str(err.value)
    assert "drn_d_22" in str(err.value) and "deeplabv2_resnet101" in str(err.value)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 34359738368 bytes.\nError code 12"
        ),
    ],
)
def test_running_out_of_memory_is_infeasible(monkeypatch, error):
    conv = Chain(nn.Conv2d(3, 8, 3, padding=1, bias=False))

    def forward(x):
        raise error

    monkeypatch.setattr(conv, "forward", forward)
    with pytest.raises(DeployOutOfMemory) as err:
        measure_model(conv, cpu((8, 16)), "conv")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("conv at 8x16, batch 1 on cpu: out of memory")


def test_other_failures_name_the_values_and_the_cause():
    broken = Chain(nn.Conv2d(4, 8, 3, padding=1))  # expects 4 channels, gets 3
    with pytest.raises(DeployError) as err:
        measure_model(broken, cpu((8, 16), batch=2), "broken")
    assert not isinstance(err.value, DeployOutOfMemory) and "\n" not in str(err.value)
    assert str(err.value).startswith("broken at 8x16, batch 2 on cpu: RuntimeError: ")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"size": [64]}, "deploy.size"),
        ({"size": [0, 128]}, "deploy.size"),
        ({"batch": 0}, "deploy.batch"),
        ({"warmup": -1}, "deploy.warmup"),
        ({"repeats": 0}, "deploy.repeats"),
        ({"device": "gpu"}, "deploy.device"),
        ({"device": "cuda:x"}, "deploy.device"),
    ],
)
def test_settings_name_the_bad_key(data, key):
    settings = build(DeploySettings, data, "deploy.")
    with pytest.raises(ConfigError, match=f"^{key}: "):
        settings.check()


def test_settings_from_a_spec_section():
    settings = build(DeploySettings, {"size": [512, 1024], "device": "cpu"}, "deploy.")
    settings.check()
    assert settings == DeploySettings([512, 1024], batch=1, warmup=2, repeats=10, device="cpu")


def test_cuda_without_cuda_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeployError, match="deploy.device is 'cuda'"):
        measure(ModelConfig("drn_d_22", 0.0625), DeploySettings([64, 128], device="cuda"))


def test_the_command_line_prints_the_figures(capsys):
    argv = ["deploy", "--size", "32", "64", "--repeats", "1", "--device", "cpu"]
    assert main([*argv, "--threads", "1", "--set", "models.student.width=0.0625"]) == 0
    out = capsys.readouterr().out
    assert "student drn_d_22 w0.0625 os2 at 32x64, batch 1, on cpu, 1 thread" in out
    for word in ("parameters", "peak memory", "latency", "GFLOPs"):
        assert word in out
    assert main([*argv[:1], "--size", "33", "64", "--device", "cpu"]) == 2
    assert "at 33x64: the height 33 is not a multiple of 8" in capsys.readouterr().err
