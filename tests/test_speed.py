"""The speed switches: ``auto`` per device, the frozen teacher held in the autocast dtype, the
losses' layout and precision, and distillation on the logit grid."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from dakd import losses
from dakd.config import TrainConfig
from dakd.engine.state import TrainState
from dakd.models import create_model
from dakd.runtime.builders import build_network, spec_of
from dakd.runtime.device import Speed, hold_in_amp_dtype, speed_settings
from dakd.runtime.distributed import World

CPU, GPU = torch.device("cpu"), torch.device("cuda")
ONE = World()


@pytest.fixture
def fake_gpu(monkeypatch):
    """What speed_settings asks of a GPU, answered without one (``bf16``: does it have it)."""

    def make(bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")

    return make


def test_auto_on_the_cpu_is_exactly_the_setting_from_before_auto():
    speed, notices = speed_settings(TrainConfig(), CPU, ONE)
    assert speed == Speed() and speed.deterministic and notices == []
    explicit = TrainConfig(amp="fp32", channels_last=False, cudnn_benchmark=False)
    assert speed_settings(dataclasses.replace(explicit, deterministic=True), CPU, ONE)[0] == speed


def test_auto_on_a_gpu_is_bf16_channels_last_autotuned(fake_gpu):
    fake_gpu(bf16=True)
    speed, notices = speed_settings(TrainConfig(), GPU, ONE)
    assert speed.amp_dtype is torch.bfloat16 and not speed.grad_scaling
    assert speed.channels_last and speed.cudnn_benchmark and not speed.deterministic
    assert speed.memory_format is torch.channels_last and not speed.compile
    assert notices == []


def test_deterministic_true_is_the_one_switch_for_exact_gpu_runs(fake_gpu):
    fake_gpu(bf16=True)
    speed, _ = speed_settings(TrainConfig(deterministic=True), GPU, ONE)
    assert speed.deterministic and not speed.cudnn_benchmark
    # the rest stays fast (bf16 and NHWC are deterministic with deterministic kernels)
    assert speed.amp_dtype is torch.bfloat16 and speed.channels_last


def test_explicit_values_win_over_auto(fake_gpu):
    fake_gpu(bf16=True)
    t = TrainConfig(amp="fp32", channels_last=False, cudnn_benchmark=False, deterministic=False)
    speed, _ = speed_settings(t, GPU, ONE)
    assert speed == Speed(deterministic=False)
    # asked for autotuning, deterministic left to auto: autotuned on the GPU, exact on the CPU
    t = TrainConfig(cudnn_benchmark=True)
    assert speed_settings(t, GPU, ONE)[0].cudnn_benchmark
    cpu, notices = speed_settings(t, CPU, ONE)
    assert not cpu.cudnn_benchmark and cpu.deterministic
    assert notices == ["train.cudnn_benchmark needs CUDA (cuDNN); off on cpu"]


def test_auto_on_a_gpu_without_bfloat16_trains_in_float32_and_says_so(fake_gpu):
    fake_gpu(bf16=False)
    speed, notices = speed_settings(TrainConfig(), GPU, ONE)
    assert speed.amp_dtype is None and speed.channels_last
    assert notices == ["train.amp=auto: Old GPU lacks bfloat16; training in float32"]


def test_auto_fingerprints_as_the_cpu_setting(tiny):
    auto = tiny()
    legacy = tiny(
        train__amp="fp32",
        train__channels_last=False,
        train__cudnn_benchmark=False,
        train__deterministic=True,
    )
    assert auto.fingerprint() == legacy.fingerprint()
    assert tiny(train__amp="bf16").fingerprint() != auto.fingerprint()
    assert tiny(train__deterministic=False).fingerprint() != auto.fingerprint()
    # distill.resolution at the paper's form is neutral: stored stages keep their folders
    assert tiny(distill__resolution="image").fingerprint() == auto.fingerprint()
    assert tiny(distill__resolution="logits").fingerprint() != auto.fingerprint()


def _casts(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = collections.Counter({e.key: e.count for e in prof.key_averages()})
    return counts["aten::_to_copy"]


def test_the_frozen_teacher_held_in_bf16_computes_the_same_bits_without_casting_weights():
    torch.manual_seed(0)
    plain = create_model("drn_d_22", num_classes=19, width=0.125).eval().requires_grad_(False)
    held = create_model("drn_d_22", num_classes=19, width=0.125).eval().requires_grad_(False)
    held.load_state_dict(plain.state_dict())
    hold_in_amp_dtype(held, Speed(amp_dtype=torch.bfloat16))
    convs = [m for m in held.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in held.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.weight.dtype is torch.bfloat16 for m in convs)
    assert all(
        m.weight.dtype is torch.float32 and m.running_var.dtype is torch.float32 for m in norms
    )
    images = torch.randn(2, 3, 32, 64)

    def run(model):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(images)

    a, b = run(plain), run(held)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # autocast cast every conv's weight (and bias) of the plain network on this call
    assert _casts(lambda: run(plain)) - _casts(lambda: run(held)) >= len(convs)
    # amp off: left in float32
    fp32 = hold_in_amp_dtype(create_model("drn_d_22", num_classes=19, width=0.125), Speed())
    assert all(p.dtype is torch.float32 for p in fp32.parameters())


def test_upsampled_logits_are_float32_nchw_made_on_the_small_grid():
    torch.manual_seed(0)
    logits = (
        torch.randn(2, 19, 4, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    )
    up = losses.upsample(logits, (32, 64))
    assert up.dtype is torch.float32 and up.is_contiguous()
    expected = F.interpolate(logits.float().contiguous(), size=(32, 64), mode="bilinear")
    assert torch.equal(up, expected)
    # float32 NCHW logits: the very same operation as before (and no copy at equal size)
    plain = torch.randn(2, 19, 4, 8)
    assert torch.equal(
        losses.upsample(plain, (32, 64)), F.interpolate(plain, (32, 64), mode="bilinear")
    )
    assert losses.upsample(plain, (4, 8)) is plain


def test_distillation_on_the_logit_grid_against_a_hand_resize():
    torch.manual_seed(0)
    # student at stride 2 (output) and 8 (feature); teacher at 8 on both levels
    student = {"output": torch.randn(2, 19, 16, 32), "feature": torch.randn(2, 19, 4, 8)}
    teacher = {"output": torch.randn(2, 19, 4, 8), "feature": torch.randn(2, 19, 4, 8)}
    levels = ["output", "feature"]
    s_maps, t_maps, pseudo = losses.at_logit_grid(student, teacher, levels)
    assert s_maps["output"] is student["output"] and t_maps["feature"] is teacher["feature"]
    up = F.interpolate(teacher["output"], size=(16, 32), mode="bilinear")
    assert torch.equal(t_maps["output"], up) and torch.equal(pseudo["output"], up)
    assert torch.equal(pseudo["feature"], teacher["output"])  # the teacher's output, own grid
    terms = losses.distill_terms(s_maps, t_maps, levels, pseudo=pseudo)
    kl = losses.kl_divergence(student["output"], up) + losses.kl_divergence(
        student["feature"], teacher["feature"]
    )
    labels_out, labels_feat = up.argmax(1), teacher["output"].argmax(1)
    ce = F.cross_entropy(student["output"], labels_out) + F.cross_entropy(
        student["feature"], labels_feat
    )
    mse = F.mse_loss(student["output"], up) + F.mse_loss(student["feature"], teacher["feature"])
    torch.testing.assert_close(terms["kl"], kl, rtol=0, atol=0)
    torch.testing.assert_close(terms["pseudo"], ce, rtol=0, atol=0)
    torch.testing.assert_close(terms["mse"], mse, rtol=0, atol=0)


def test_a_dakd_step_distils_on_the_logit_grid_when_asked(tiny, tmp_path, monkeypatch):
    from dakd.models import checkpoint as ckpt

    spec = spec_of(tiny().models.teacher)
    path = tmp_path / "teacher.pt"
    ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, path)
    common = {"teacher": str(path), "paradigm": "c", "teacher_cache__mode": "off"}
    image = TrainState(tiny("dakd", name="image", **common))
    grid = TrainState(tiny("dakd", name="grid", distill__resolution="logits", **common))
    seen = []
    upsample = losses.upsample

    def spy(logits, size):
        seen.append(tuple(size))
        return upsample(logits, size)

    a = image.train_step()
    monkeypatch.setattr(losses, "upsample", spy)
    b = grid.train_step()
    crop = tuple(tiny().data.crop_size)
    # the teacher is never resized to the crop: only the student's maps for L_seg and the
    # discriminators (2 domains x 2 levels); the teacher's maps stay on the logit grid
    assert seen.count(crop) == 4
    assert torch.equal(a["seg"], b["seg"])  # the same student, the same first step
    assert not torch.equal(a["kl_source"], b["kl_source"])
    assert all(torch.isfinite(v) for v in b.values())
    image.close()
    grid.close()


def test_bf16_teacher_outputs_from_the_cache_equal_the_live_teachers(tiny, tmp_path):
    """The cache is built with the teacher held in bf16 as the live teacher is: a run reading
    it computes the same numbers, bit for bit."""
    from dakd.models import checkpoint as ckpt

    spec = spec_of(tiny().models.teacher)
    path = tmp_path / "teacher.pt"
    ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, path)
    common = {"teacher": str(path), "paradigm": "c", "train__amp": "bf16"}
    live = TrainState(tiny("dakd", name="live", teacher_cache__mode="off", **common))
    cached = TrainState(tiny("dakd", name="cached", teacher_cache__mode="on", **common))
    assert live.teacher is not None and cached.teacher is None
    convs = [m for m in live.teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.dtype is torch.bfloat16 for m in convs)
    for _ in range(2):
        a, b = live.train_step(), cached.train_step()
        assert all(torch.equal(a[k], b[k]) for k in a)
    live.close()
    cached.close()
