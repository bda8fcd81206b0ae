"""The trainer: determinism, resume, stages and paradigms, the report callback, bad input."""

import math

import pytest
import torch

from dakd import checkpoint as ckpt
from dakd import losses
from dakd.paradigms import paradigm_phases, phase_at
from dakd.train import NonFiniteLossError, train


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


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tiny):
    whole = train(tiny(name="whole"))
    cfg = tiny(name="split")
    train(cfg, stop_after=3)  # stops between evaluations: step 3 of 4
    assert ckpt.load(cfg.run_dir / "last.pt")["step"] == 3
    resumed = train(cfg)
    assert same_weights(weights(whole.checkpoint), weights(resumed.checkpoint))
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


def test_sequential_paradigm_switches_to_target_only():
    assert [p.source for p in paradigm_phases("d", 0.25)] == [True, False]
    phases = [phase_at("d", step, 8, 0.25) for step in range(8)]
    assert [p.source for p in phases] == [True, True] + [False] * 6
    assert all(p.target for p in phases)
    assert phase_at("c", 7, 8).source and phase_at("a", 0, 8).target is False


def test_teacher_is_frozen_and_in_eval_mode(tiny, monkeypatch):
    teacher = train(tiny("teacher_da"))
    before = weights(teacher.checkpoint)
    from dakd.train import Trainer

    trainer = Trainer(tiny("dakd", teacher=str(teacher.checkpoint)))
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
