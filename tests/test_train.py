"""The trainer: determinism, resume, stages and paradigms, the report callback, bad input,
speed switches."""

import json
import math

import pytest
import torch

from dakd import losses
from dakd.engine.state import NonFiniteLossError, TrainState
from dakd.engine.trainer import TIMING_KEYS, train
from dakd.models import checkpoint as ckpt
from dakd.paradigms import paradigm_phases, phase_at


def weights(path):
    return ckpt.load(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_metrics_and_weights(tiny):
    first = train(tiny(name="a"))
    second = train(tiny(name="b"))
    assert first.metrics["miou"] == second.metrics["miou"]
    assert same_weights(weights(first.checkpoint), weights(second.checkpoint))
    other = train(tiny(name="c", seed=1))
    assert not same_weights(weights(first.checkpoint), weights(other.checkpoint))


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny, monkeypatch):
    """Resume continues, it does not restart: the second call runs the one remaining step and
    reports step 4 alone, the metrics file holds each evaluation once, and the weights, the
    discriminators, the optimiser state and the metrics equal an uninterrupted run's."""
    whole = train(tiny(name="whole"))
    cfg = tiny(name="split")
    train(cfg, stop_after=3)  # stops between evaluations: step 3 of 4
    assert ckpt.load(cfg.run_dir / "last.pt")["step"] == 3
    steps = []
    original = TrainState.train_step

    def counted(self):
        steps.append(self.step)
        return original(self)

    monkeypatch.setattr(TrainState, "train_step", counted)
    reports = []
    resumed = train(cfg, report=lambda metrics, path: reports.append(metrics["step"]))
    assert steps == [3] and reports == [4]
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]
    a, b = ckpt.load(whole.checkpoint), ckpt.load(resumed.checkpoint)
    for part in ("model", "discriminators"):
        assert same_weights(a[part], b[part]), part
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]
        )
    assert resumed.metrics["miou"] == whole.metrics["miou"]
    assert [h["step"] for h in resumed.history] == [2, 4]


def test_report_gets_metrics_loss_terms_and_checkpoint(tiny):
    reports = []
    train(tiny(), report=lambda metrics, path: reports.append((metrics, path)))
    assert [m["step"] for m, _ in reports] == [2, 4]
    metrics, path = reports[-1]
    assert path.name == "last.pt" and path.exists()
    for key in ("miou", "pixel_acc", "loss/seg", "loss/adv_output", "loss/disc", "lr"):
        assert key in metrics
    assert 0 <= metrics["miou"] <= 100
    assert any(k.startswith("iou/") for k in metrics)
    assert (path.parent / "model.pt").exists()


def test_dakd_paradigms_log_the_domains_they_distill_on(tiny):
    teacher = train(tiny("teacher_da"))
    start = train(tiny("student_da"))
    common = {"teacher": str(teacher.checkpoint), "init": str(start.checkpoint)}
    seen = {}
    for paradigm in "abcd":
        keys = set()
        train(
            tiny("dakd", name=f"p{paradigm}", paradigm=paradigm, **common),
            report=lambda m, p, keys=keys: keys.update(m),
        )
        seen[paradigm] = keys
    assert "loss/kl_source" in seen["a"] and "loss/kl_target" not in seen["a"]
    assert "loss/kl_target" in seen["b"] and "loss/kl_source" not in seen["b"]
    assert {"loss/kl_source", "loss/kl_target"} <= seen["c"]
    assert {"loss/kl_source", "loss/kl_target"} <= seen["d"]


def test_paradigm_c_without_its_source_term_is_paradigm_b_bit_for_bit(tiny, monkeypatch):
    """The control behind comparing (b) with (c): (c) adds D(source) to (b)'s objective and
    nothing else. With that term dropped from the objective (the teacher still predicts the
    source batch), (c) must train the same weights as (b), bit for bit: the source-side
    teacher pass, the extra loss terms and the phase logic leave no trace (no random draw, no
    BatchNorm statistic, no data order)."""
    teacher = train(tiny("teacher_da"))
    start = train(tiny("student_da"))
    common = {"teacher": str(teacher.checkpoint), "init": str(start.checkpoint)}
    train(tiny("dakd", name="b", paradigm="b", **common))
    original = losses.distillation_objective

    def target_only(source_terms, target_terms, weights, lambda_target=1.0):
        assert source_terms is not None  # (c) did compute the source terms
        return original(None, target_terms, weights, lambda_target)

    monkeypatch.setattr(losses, "distillation_objective", target_only)
    train(tiny("dakd", name="c", paradigm="c", **common))
    b = ckpt.load(tiny("dakd", name="b", paradigm="b", **common).run_dir / "last.pt")
    c = ckpt.load(tiny("dakd", name="c", paradigm="c", **common).run_dir / "last.pt")
    assert b["model"].keys() == c["model"].keys()
    assert all(torch.equal(b["model"][k], c["model"][k]) for k in b["model"])


def test_sequential_paradigm_switches_to_target_only():
    assert [p.source for p in paradigm_phases("d", 0.25)] == [True, False]
    phases = [phase_at("d", step, 8, 0.25) for step in range(8)]
    assert [p.source for p in phases] == [True, True] + [False] * 6
    assert all(p.target for p in phases)
    assert phase_at("c", 7, 8).source and phase_at("a", 0, 8).target is False


def test_teacher_is_frozen_and_in_eval_mode(tiny, monkeypatch):
    teacher = train(tiny("teacher_da"))
    before = weights(teacher.checkpoint)
    trainer = TrainState(tiny("dakd", teacher=str(teacher.checkpoint)))
    trainer.train_step()
    assert not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    state = trainer.teacher.state_dict()
    assert all(torch.equal(state[k].cpu(), before[k]) for k in before)  # BN stats untouched too


def test_missing_and_wrong_checkpoints_are_named(tiny, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        train(tiny("dakd", teacher=str(tmp_path / "nope.pt")))
    student = train(tiny("student_da"))
    # a student checkpoint where the teacher (drn_d_38) is expected
    with pytest.raises(ckpt.CheckpointError, match=r"holds drn_d_22 .* drn_d_38 .* was asked for"):
        train(tiny("dakd", name="x", teacher=str(student.checkpoint)))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        train(tiny("student_da", name="y", init=str(corrupt)))


def test_nan_loss_stops_with_the_step_and_terms(tiny, monkeypatch):
    monkeypatch.setattr(losses, "seg_ce", lambda logits, labels: logits.sum() * math.nan)
    with pytest.raises(NonFiniteLossError, match=r"step 0: .*seg=nan"):
        train(tiny("source_only"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save({"step": 1}, path)

    def crash(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"step": 2}, path)
    assert ckpt.load(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_oracle_and_source_only_train_without_discriminators(tiny):
    for stage in ("oracle", "source_only"):
        reports = []
        train(tiny(stage), report=lambda m, p, reports=reports: reports.append(m))
        assert "loss/adv_output" not in reports[-1] and "loss/seg" in reports[-1]


def test_bf16_autocast_runs_on_cpu_with_finite_losses(tiny):
    fp32, bf16 = TrainState(tiny(name="fp32")), TrainState(tiny(name="bf16", train__amp="bf16"))
    assert bf16.speed.amp_dtype is torch.bfloat16 and not bf16.scaler.is_enabled()
    reference, terms = fp32.train_step(), bf16.train_step()
    assert all(math.isfinite(v.item()) for v in terms.values())
    # autocast really ran (bfloat16 arithmetic), and it stays close to float32
    assert terms["total"].item() != reference["total"].item()
    assert terms["total"].item() == pytest.approx(reference["total"].item(), rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the notices are about a CPU-only machine")
def test_switches_the_cpu_lacks_stay_off_with_one_notice_each(tiny, capsys):
    plain = TrainState(tiny(name="plain"))
    capsys.readouterr()
    asked = TrainState(
        tiny(
            name="asked", train__amp="fp16", train__cudnn_benchmark=True, train__deterministic=False
        )
    )
    notices = capsys.readouterr().err.splitlines()
    assert notices == [
        "note: train.amp=fp16 needs CUDA; training in float32 on cpu",
        "note: train.cudnn_benchmark needs CUDA (cuDNN); off on cpu",
    ]
    assert asked.speed.amp_dtype is None and not asked.scaler.is_enabled()
    assert not torch.backends.cudnn.benchmark
    a, b = plain.train_step(), asked.train_step()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_networks_and_inputs(tiny):
    plain, nhwc = (
        TrainState(tiny(name="plain")),
        TrainState(tiny(name="nhwc", train__channels_last=True)),
    )
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    a, b = plain.train_step(), nhwc.train_step()
    assert b["total"].item() == pytest.approx(a["total"].item(), rel=1e-4)


# -- what the steps cost: time, FLOPs, memory -----------------------------------------------------
def test_evaluations_report_step_time_and_throughput(tiny):
    """Every evaluation carries the mean step time (seconds and ms) and the TFLOP/s the step's
    counted FLOPs give at that time; no GPU memory on CPU."""
    result = train(tiny())
    for metrics in result.history:
        assert {"sec_per_step", "step_ms", "tflops"} <= set(metrics)
        assert "gpu_peak_mb" not in metrics  # CUDA only
        assert metrics["step_ms"] == pytest.approx(1000 * metrics["sec_per_step"])
        assert metrics["sec_per_step"] > 0 and metrics["tflops"] > 0
    assert set(TIMING_KEYS) - {"gpu_peak_mb"} <= set(
        json.loads((result.checkpoint.parent / "metrics.jsonl").read_text().splitlines()[-1])
    )


def test_counting_the_flops_of_a_step_changes_no_number(tiny):
    """The step run under the FLOP counter computes what it computes without it, bit for bit:
    every step's loss terms, the weights, the discriminators and the optimiser state."""
    from dakd.engine.hooks import Hook, default_hooks
    from dakd.engine.trainer import Trainer

    class Terms(Hook):
        def __init__(self):
            self.steps = []

        def after_step(self, trainer, terms):
            self.steps.append({k: v.clone() for k, v in terms.items()})

    runs = {}
    for counted in (True, False):
        cfg = tiny(name=f"counted-{counted}", train__steps=3, train__eval_interval=3)
        terms = Terms()
        trainer = Trainer(cfg, [*default_hooks(cfg), terms])
        trainer.count_flops = counted
        result = trainer.run(resume=False, stop_after=None)
        assert (trainer.meter.flops is not None) == counted
        runs[counted] = (terms.steps, ckpt.load(result.checkpoint), result.history)
    (terms_a, state_a, history_a), (terms_b, state_b, history_b) = runs[True], runs[False]
    assert len(terms_a) == len(terms_b) == 3
    for a, b in zip(terms_a, terms_b):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for part in ("model", "discriminators"):
        assert same_weights(state_a[part], state_b[part]), part
    for key, state in state_a["optimizer"]["state"].items():
        other = state_b["optimizer"]["state"][key]["momentum_buffer"]
        assert torch.equal(state["momentum_buffer"], other)
    assert "tflops" in history_a[-1] and "tflops" not in history_b[-1]
    untimed = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history_a]
    assert untimed == [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history_b]


def test_the_meter_counts_once_and_leaves_the_counted_step_out_of_the_mean(monkeypatch):
    """FLOPs are counted in the first step only; the counted step (slower: the counter's Python
    work per operation) is out of the mean step time unless it is the window's only step."""
    from dakd.runtime import performance

    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 22.0])
    monkeypatch.setattr(performance.time, "perf_counter", lambda: next(clock))
    meter = performance.StepMeter(torch.device("cpu"))

    def step():
        return torch.ones(4, 8) @ torch.ones(8, 2)  # 2 * 4 * 8 * 2 = 128 FLOPs

    meter.step(step)
    assert meter.flops == 128
    assert meter.metrics() == {"sec_per_step": 5.0, "step_ms": 5000.0, "tflops": 128 / 5 / 1e12}
    meter.step(step)
    meter.reset()
    meter.step(step)
    assert meter.flops == 128 and meter.metrics()["sec_per_step"] == 2.0  # 20 -> 22 alone


# -- faults: a device torch does not see, running out of GPU memory ---------------------------------
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error_before_any_work(tiny, monkeypatch, device):
    import dakd.engine.state
    from dakd.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dakd.engine.state, "build_data", lambda *a: pytest.fail("data was built"))
    cfg = tiny(train__device=device)
    with pytest.raises(
        ConfigError, match=rf"train.device: '{device}' but torch sees no CUDA device"
    ):
        train(cfg)
    assert not cfg.run_dir.exists()


def test_a_gpu_index_past_the_last_gpu_names_the_count(monkeypatch):
    from dakd.config import ConfigError
    from dakd.runtime.device import training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2' but torch sees 2 CUDA devices \(cuda:0 to"):
        training_device("cuda:2")
    with pytest.raises(ConfigError, match="'cuda:x' is not a device"):
        training_device("cuda:x")


def _oom(self):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_running_out_of_memory_stops_with_what_to_change(tiny, monkeypatch):
    """The step's OutOfMemoryError becomes one line naming the device, the batch, the crops and
    the network, and the settings that use less memory in the order to try them."""
    from dakd.engine.trainer import OutOfMemory

    monkeypatch.setattr(TrainState, "train_step", _oom)
    with pytest.raises(OutOfMemory) as caught:
        train(tiny(data__batch_size=4))
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    assert message.startswith("out of memory on cpu in step 0; batch 4 per process, crops 32x64, ")
    assert "drn_d_22 w0.0625 os8" in message
    assert message.endswith(
        "try, in this order: train.amp=bf16, train.channels_last=true, "
        "a smaller data.batch_size (now 4), smaller crops (data.crop_size)"
    )


def test_out_of_memory_on_a_gpu_names_the_peak_the_total_and_the_live_teacher(tiny, monkeypatch):
    """On CUDA the line holds the process's peak and the device's memory, and with a live
    teacher suggests the teacher-output cache; the allocator's cache is given back."""
    from types import SimpleNamespace

    from dakd.runtime import performance
    from dakd.runtime.device import Speed

    emptied = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 70 * 2**30)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30)
    )
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    cfg = tiny(
        "dakd",
        teacher="teacher.pt",
        train__amp="bf16",
        data__batch_size=8,
        data__dataset="real",
    )
    trainer = SimpleNamespace(
        device=torch.device("cuda", 1),
        world=SimpleNamespace(size=2),
        teacher=object(),
        speed=Speed(amp_dtype=torch.bfloat16),  # bf16 on, channels_last off (as resolved)
    )
    message = str(performance.out_of_memory_error(cfg, trainer, "step 7"))
    assert emptied
    assert message.startswith(
        "out of memory on cuda:1 in step 7, peak 71680 MiB allocated by this process of the "
        "81920 MiB it has; batch 4 per process (data.batch_size 8 over 2 processes), crops "
        "512x1024 source, 512x1024 target, student drn_d_22 w0.0625 os8, teacher drn_d_38 "
        "w0.0625 os8 (live); "
    )
    assert message.endswith(
        "try, in this order: train.channels_last=true, teacher_cache.mode=on, a smaller "
        "data.batch_size (now 8), smaller crops (data.source_crop / data.target_crop)"
    )
