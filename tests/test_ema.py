"""The weight average (``train.ema_decay``): the averaged weights against an exponential moving
average computed by hand from the raw weights of every step, exact resume, what is reported
and stored, and a run without it unchanged."""

import pytest
import torch

from dakd.config import ConfigError
from dakd.engine.state import TrainState
from dakd.engine.trainer import train
from dakd.models import checkpoint as ckpt


def _float_params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _record_raw_weights(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The raw weights after every training step, appended as the run goes."""
    raw_after_step = []
    original = TrainState.train_step

    def recorded(self):
        terms = original(self)
        raw_after_step.append(_float_params(self.model))
        return terms

    monkeypatch.setattr(TrainState, "train_step", recorded)
    return raw_after_step


def test_averaged_weights_equal_an_ema_computed_by_hand(tiny, monkeypatch):
    """W_1 = raw weights after step 1; W_t = d W_(t-1) + (1 - d) raw_t (torch's AveragedModel
    with get_ema_multi_avg_fn); the final model.pt holds them, last.pt the raw weights."""
    decay = 0.75
    raw_after_step = _record_raw_weights(monkeypatch)
    cfg = tiny("teacher_da", train__ema_decay=decay, train__precise_bn_images=4)
    result = train(cfg)
    by_hand = {k: v.double() for k, v in raw_after_step[0].items()}
    for raw in raw_after_step[1:]:
        by_hand = {k: decay * by_hand[k] + (1 - decay) * raw[k].double() for k in by_hand}
    stored = ckpt.load(cfg.run_dir / "model.pt")["model"]
    for name, value in by_hand.items():
        torch.testing.assert_close(stored[name].double(), value, rtol=0, atol=1e-6)
    # the raw weights differ from the average and are what last.pt resumes from
    last = ckpt.load(cfg.run_dir / "last.pt")
    assert any(not torch.equal(last["model"][k], stored[k]) for k in by_hand)
    for name, value in raw_after_step[-1].items():
        assert torch.equal(last["model"][name], value)
    # both are evaluated and reported
    assert {"miou", "raw/miou", "raw/pixel_acc"} <= set(result.metrics)
    assert len(raw_after_step) == cfg.train.steps


def test_resumed_average_equals_an_uninterrupted_one(tiny):
    whole = tiny("student_da", name="whole", train__ema_decay=0.9)
    train(whole)
    split = tiny("student_da", name="split", train__ema_decay=0.9)
    train(split, stop_after=3)
    train(split)
    a = ckpt.load(whole.run_dir / "model.pt")["model"]
    b = ckpt.load(split.run_dir / "model.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_without_an_average_is_refused_when_ema_is_on(tiny):
    cfg = tiny("student_da", name="plain")
    train(cfg, stop_after=1)
    averaged = tiny("student_da", name="plain", train__ema_decay=0.9)
    with pytest.raises(ckpt.CheckpointError, match="no weight average"):
        train(averaged)


def test_ema_off_leaves_the_run_unchanged(tiny):
    """``train.ema_decay: 0`` is the behaviour from before the option, and its fingerprint too."""
    plain = train(tiny("student_da", name="a"))
    off = train(tiny("student_da", name="b", train__ema_decay=0.0))
    assert plain.metrics["miou"] == off.metrics["miou"] and "raw/miou" not in off.metrics
    assert (
        tiny("student_da").fingerprint() == tiny("student_da", train__ema_decay=0.0).fingerprint()
    )
    assert (
        tiny("student_da").fingerprint() != tiny("student_da", train__ema_decay=0.99).fingerprint()
    )


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_bad_decay_is_named(tiny, value):
    with pytest.raises(ConfigError, match="train.ema_decay"):
        tiny("student_da", train__ema_decay=value)


def test_mean_teacher_warmup_is_the_plain_mean_until_the_decay_takes_over(tiny, monkeypatch):
    """With ``ema_warmup`` and a decay of 0.6, the t-th new weight enters with max(0.4, 1/(t+1)):
    1/2 (the mean of the first two), then 0.4 (the decay has taken over); computed by hand."""
    decay = 0.6
    raw_after_step = _record_raw_weights(monkeypatch)
    cfg = tiny("source_only", train__ema_decay=decay, train__ema_warmup=True)
    train(cfg)
    by_hand = {k: v.double() for k, v in raw_after_step[0].items()}
    for t, raw in enumerate(raw_after_step[1:], start=1):
        weight = max(1 - decay, 1 / (t + 1))
        by_hand = {k: (1 - weight) * by_hand[k] + weight * raw[k].double() for k in by_hand}
    stored = ckpt.load(cfg.run_dir / "model.pt")["model"]
    for name, value in by_hand.items():
        torch.testing.assert_close(stored[name].double(), value, rtol=0, atol=1e-6)
