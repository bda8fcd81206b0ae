"""The training loop's hooks: the points they are called at, in order; what the default hooks
have written by the time a hook sees an evaluation; errors seen by every hook, construction
included; precise BN before each network an evaluation reads."""

from __future__ import annotations

import pytest

from dakd.engine.hooks import Hook, PreciseBN
from dakd.engine.trainer import train


class Recorder(Hook):
    """Writes down every call, with what the run folder holds at evaluations."""

    def __init__(self, fail_at: str = ""):
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def _fail(self, point: str) -> None:
        if point == self.fail_at:
            raise RuntimeError(f"hook failed at {point}")

    def before_train(self, loop):
        self.calls.append(("before_train", loop.state.step))
        self._fail("before_train")

    def after_step(self, loop, terms):
        self.calls.append(("after_step", loop.state.step, sorted(terms)[0]))

    def before_evaluation(self, loop, network):
        self.calls.append(("before_evaluation", network is loop.state.model))

    def after_evaluation(self, loop, metrics, checkpoint):
        files = sorted(p.name for p in loop.run_dir.iterdir())
        lines = (loop.run_dir / "metrics.jsonl").read_text().count("\n")
        self.calls.append(("after_evaluation", metrics["step"], checkpoint.name, files, lines))
        self._fail("after_evaluation")

    def after_train(self, loop, result):
        self.calls.append(
            ("after_train", result.metrics["step"], (loop.run_dir / "model.pt").exists())
        )

    def on_exception(self, loop, error):
        self.calls.append(("on_exception", loop.state is not None, str(error)))


def test_hooks_are_called_at_each_point_in_order_after_the_default_ones(tiny):
    hook = Recorder()
    train(tiny("student_da", train__steps=3, train__eval_interval=2), hooks=[hook])
    files = ["config.json", "last.pt", "metrics.jsonl"]
    assert hook.calls == [
        ("before_train", 0),
        ("after_step", 1, "adv_feature"),
        ("after_step", 2, "adv_feature"),
        ("before_evaluation", True),
        ("after_evaluation", 2, "last.pt", files, 1),  # checkpoint and metrics line written
        ("after_step", 3, "adv_feature"),
        ("before_evaluation", True),
        ("after_evaluation", 3, "last.pt", files, 2),
        ("after_train", 3, True),  # the final weights exist
    ]


def test_an_error_reaches_every_hook_and_then_the_caller(tiny):
    first, second = Recorder(fail_at="after_evaluation"), Recorder()
    cfg = tiny("source_only", train__steps=4, train__eval_interval=2)
    with pytest.raises(RuntimeError, match="hook failed at after_evaluation"):
        train(cfg, hooks=[first, second])
    error = ("on_exception", True, "hook failed at after_evaluation")
    assert first.calls[-1] == error and second.calls[-1] == error
    assert not [c for c in second.calls if c[0] == "after_evaluation"]  # never reached
    assert not (cfg.run_dir / "model.pt").exists()


def test_a_trainer_that_cannot_be_built_is_an_error_every_hook_sees(tiny, tmp_path):
    hook = Recorder()
    cfg = tiny("dakd", teacher=str(tmp_path / "missing.pt"))
    with pytest.raises(Exception, match="missing.pt"):
        train(cfg, hooks=[hook])
    assert len(hook.calls) == 1
    point, built, message = hook.calls[0]
    assert (point, built) == ("on_exception", False) and "missing.pt" in message


def test_precise_bn_runs_before_each_network_an_evaluation_reads(tiny, monkeypatch):
    """With a weight average, an evaluation reads the trained network (raw metrics), then the
    average: precise BN re-estimates each, in that order."""
    seen = []
    monkeypatch.setattr(
        PreciseBN,
        "before_evaluation",
        lambda self, loop, net: seen.append(net is loop.state.model),
    )
    cfg = tiny("source_only", train__steps=2, train__eval_interval=2, train__precise_bn_images=4)
    train(cfg)
    assert seen == [True]
    seen.clear()
    train(
        tiny(
            "source_only",
            name="ema",
            train__steps=2,
            train__ema_decay=0.9,
            train__precise_bn_images=4,
        )
    )
    assert seen == [True, False]
