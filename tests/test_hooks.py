"""The training loop's hooks: the points they are called at, in order; what the default hooks
have written by the time a hook sees an evaluation; errors seen by every hook, construction
included, and every ``after_train`` and ``on_exception`` hook run when one raises; the order
by priority; the gradient points of a step; a hook's state across a resume; hook timings kept
by hook, not by class name; precise BN before each network an evaluation reads."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from dakd.engine.hooks import (
    HIGHEST,
    HOOK_STATES,
    LOWEST,
    NORMAL,
    Checkpointer,
    Hook,
    MetricsFile,
    PreciseBN,
    Progress,
    default_hooks,
)
from dakd.engine.trainer import Trainer, train
from dakd.models import checkpoint as ckpt


class Recorder(Hook):
    """Writes down every call, with what the run folder holds at evaluations."""

    def __init__(self, fail_at: str = ""):
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def _fail(self, point: str) -> None:
        if point == self.fail_at:
            raise RuntimeError(f"hook failed at {point}")

    def before_train(self, trainer):
        self.calls.append(("before_train", trainer.state.step))
        self._fail("before_train")

    def after_step(self, trainer, terms):
        self.calls.append(("after_step", trainer.state.step, sorted(terms)[0]))

    def before_evaluation(self, trainer, network):
        self.calls.append(("before_evaluation", network is trainer.state.model))

    def after_evaluation(self, trainer, metrics, checkpoint):
        files = sorted(p.name for p in trainer.run_dir.iterdir())
        lines = (trainer.run_dir / "metrics.jsonl").read_text().count("\n")
        self.calls.append(("after_evaluation", metrics["step"], checkpoint.name, files, lines))
        self._fail("after_evaluation")

    def after_train(self, trainer, result):
        self.calls.append(
            ("after_train", result.metrics["step"], (trainer.run_dir / "model.pt").exists())
        )
        self._fail("after_train")

    def on_exception(self, trainer, error):
        self.calls.append(("on_exception", trainer.state is not None, str(error)))
        self._fail("on_exception")


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


# -- every after_train and on_exception hook runs ---------------------------------------------------
class Resource(Hook):
    """Opens something at the start; closes it however the run ends."""

    def __init__(self):
        self.open = False

    def before_train(self, trainer):
        self.open = True

    def after_train(self, trainer, result):
        self.open = False

    def on_exception(self, trainer, error):
        self.open = False


def _notes(error: BaseException) -> list[str]:
    return getattr(error, "__notes__", [])


def test_every_after_train_hook_runs_and_the_first_error_surfaces_with_the_others_noted(tiny):
    """Two hooks raise at ``after_train``: the hooks after them still run (a resource is
    closed), the first error reaches the caller and every ``on_exception``, the second is a
    note on it, and the final weights are written."""
    first, second, last = Recorder("after_train"), Recorder("after_train"), Recorder()
    second.name = "second"
    resource = Resource()
    cfg = tiny("source_only", train__steps=2, train__eval_interval=2)
    with pytest.raises(RuntimeError) as caught:
        train(cfg, hooks=[first, second, last, resource])
    error = caught.value
    assert error is not None and str(error) == "hook failed at after_train"
    for hook in (first, second, last):
        assert hook.calls[-2] == ("after_train", 2, True)
        assert hook.calls[-1] == ("on_exception", True, "hook failed at after_train")
    assert not resource.open
    (note,) = _notes(error)
    assert note.startswith("after_train of hook second also raised:")
    assert "RuntimeError: hook failed at after_train" in note and "_fail" in note  # traceback
    assert (cfg.run_dir / "model.pt").exists()


def test_every_on_exception_hook_runs_and_the_original_error_propagates(tiny):
    """A run fails at an evaluation; two hooks then raise in ``on_exception``: the hooks after
    them still run, the default progress bar is closed, and the caller gets the run's own error
    with both hook errors as notes, in order."""
    failing = Recorder("after_evaluation")
    first, second = Recorder("on_exception"), Recorder("on_exception")
    first.name, second.name = "first", "second"
    resource = Resource()
    progress = Progress()
    cfg = tiny("source_only", train__steps=4, train__eval_interval=2)
    with pytest.raises(RuntimeError, match="hook failed at after_evaluation") as caught:
        Trainer(
            cfg, [Checkpointer(), MetricsFile(), progress, failing, first, second, resource]
        ).run(True, None)
    assert (
        first.calls[-1]
        == second.calls[-1]
        == (
            "on_exception",
            True,
            "hook failed at after_evaluation",
        )
    )
    assert not resource.open and progress.bar is None
    notes = _notes(caught.value)
    assert [n.splitlines()[0] for n in notes] == [
        "on_exception of hook first also raised:",
        "on_exception of hook second also raised:",
    ]
    assert all("RuntimeError: hook failed at on_exception" in n for n in notes)


# -- order: priorities, then list order --------------------------------------------------------------
class Tagged(Hook):
    def __init__(self, tag: str, priority: int, order: list):
        self.tag, self.priority, self.order = tag, priority, order

    def before_train(self, trainer):
        self.order.append((self.tag, trainer.run_dir.exists()))


def test_priorities_order_the_hooks_whatever_their_list_order_and_ties_keep_it(tiny):
    """Lower priorities run first; hooks of one priority in the order given. A ``HIGHEST``
    hook runs before the checkpointer makes the run folder, one of ``NORMAL`` after it, though
    both come after the default hooks in the list."""
    order: list = []
    hooks = [
        Tagged("late", LOWEST, order),
        Tagged("a", NORMAL, order),
        Tagged("first", HIGHEST, order),
        Tagged("b", NORMAL, order),
        Tagged("c", NORMAL, order),
    ]
    cfg = tiny("source_only", train__steps=1, train__eval_interval=1)
    trainer = Trainer(cfg, [*default_hooks(cfg), *hooks])
    kinds = [type(h).__name__ if not isinstance(h, Tagged) else h.tag for h in trainer.hooks]
    assert kinds == ["first", "Checkpointer", "MetricsFile", "Progress", "a", "b", "c", "late"]
    trainer.run(resume=False, stop_after=None)
    assert order == [("first", False), ("a", True), ("b", True), ("c", True), ("late", True)]


def test_the_default_hooks_order_holds_whatever_the_list_order(tiny):
    """Precise BN, the checkpointer, the metrics file, the bar: given in reverse, sorted."""
    cfg = tiny("source_only", train__precise_bn_images=4)
    hooks = list(reversed(default_hooks(cfg)))
    sorted_hooks = Trainer(cfg, hooks).hooks
    assert [type(h) for h in sorted_hooks] == [PreciseBN, Checkpointer, MetricsFile, Progress]


# -- the gradient points of a step ------------------------------------------------------------------
class StepPoints(Hook):
    """Writes down ``before_step`` and ``after_backward``: the step, whether the first
    parameter has a gradient and whether it still has the weights it had before the step."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.weight: torch.Tensor | None = None

    def _param(self, trainer) -> torch.nn.Parameter:
        return next(trainer.state.model.parameters())

    def before_step(self, trainer):
        self.weight = self._param(trainer).detach().clone()
        grad = self._param(trainer).grad
        self.calls.append(("before_step", trainer.state.step, grad is not None))

    def after_backward(self, trainer):
        param = self._param(trainer)
        unchanged = torch.equal(param.detach(), self.weight)
        nonzero = param.grad is not None and bool(param.grad.abs().sum() > 0)
        self.calls.append(("after_backward", trainer.state.step, nonzero, unchanged))

    def after_step(self, trainer, terms):
        unchanged = torch.equal(self._param(trainer).detach(), self.weight)
        self.calls.append(("after_step", trainer.state.step, unchanged))


def test_before_step_and_after_backward_come_once_a_step_between_backward_and_update(tiny):
    hook = StepPoints()
    train(tiny("student_da", train__steps=2, train__eval_interval=2), hooks=[hook])
    assert hook.calls == [
        ("before_step", 0, False),  # no gradient before the first backward
        ("after_backward", 0, True, True),  # gradients there, the weights not yet updated
        ("after_step", 1, False),  # updated
        ("before_step", 1, True),
        ("after_backward", 1, True, True),
        ("after_step", 2, False),
    ]


class ClipGradients(Hook):
    def after_backward(self, trainer):
        torch.nn.utils.clip_grad_norm_(trainer.state.model.parameters(), max_norm=1e-3)


class NothingAfterBackward(Hook):
    def before_step(self, trainer):
        pass

    def after_backward(self, trainer):
        pass


def test_a_clipping_hook_changes_the_weights_and_a_hook_that_does_nothing_changes_nothing(tiny):
    def run(name, hooks):
        cfg = tiny("student_da", name=name, train__steps=3, train__eval_interval=3)
        result = train(cfg, hooks=hooks)
        return ckpt.load(result.checkpoint), result.metrics

    plain, plain_metrics = run("plain", [])
    idle, idle_metrics = run("idle", [NothingAfterBackward()])
    clipped, _ = run("clipped", [ClipGradients()])
    for part in ("model", "discriminators"):
        assert all(torch.equal(plain[part][k], idle[part][k]) for k in plain[part]), part
    for key, state in plain["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], idle["optimizer"]["state"][key]["momentum_buffer"]
        )
    assert plain_metrics["loss/total"] == idle_metrics["loss/total"]
    changed = [k for k in plain["model"] if not torch.equal(plain["model"][k], clipped["model"][k])]
    assert changed  # a clipped gradient is a different update


class GradientRecorder(Hook):
    """The first parameter's gradient at every ``after_backward``."""

    def __init__(self):
        self.grads: list[torch.Tensor] = []

    def after_backward(self, trainer):
        self.grads.append(next(trainer.state.model.parameters()).grad.clone())


def test_under_a_grad_scaler_a_hook_sees_true_gradients_and_a_silent_one_changes_nothing(
    tiny, monkeypatch
):
    """With gradient scaling on (fp16's GradScaler, here forced on in float32 on the CPU), the
    gradients an ``after_backward`` hook sees are those of a run without scaling (the scale is
    a power of two), and unscaling them before the optimiser step, as the loop does for such a
    hook, leaves every weight as it is without one."""
    from dataclasses import replace

    from dakd.engine import state as state_module

    def run(name, hooks, scaling):
        original = state_module.speed_settings

        def settings(*args):
            speed, notices = original(*args)
            return replace(speed, grad_scaling=scaling), notices

        monkeypatch.setattr(state_module, "speed_settings", settings)
        cfg = tiny("student_da", name=name, train__steps=3, train__eval_interval=3)
        return ckpt.load(train(cfg, hooks=hooks).checkpoint)

    scaled, unscaled = GradientRecorder(), GradientRecorder()
    plain = run("plain", [], scaling=True)
    seen = run("seen", [scaled], scaling=True)
    run("unscaled", [unscaled], scaling=False)
    assert "grad_scaler" in plain and plain["grad_scaler"]["scale"] > 1  # scaling was on
    assert len(scaled.grads) == 3
    assert all(torch.equal(a, b) for a, b in zip(scaled.grads, unscaled.grads, strict=True))
    for part in ("model", "discriminators"):
        assert all(torch.equal(plain[part][k], seen[part][k]) for k in plain[part]), part


# -- a hook's state across a resume -----------------------------------------------------------------
class Counter(Hook):
    """Counts steps; its state is plain data, a tensor included."""

    def __init__(self):
        self.steps = 0
        self.at_start: int | None = None
        self.seen = torch.zeros(0, dtype=torch.long)

    def before_train(self, trainer):
        self.at_start = self.steps

    def after_step(self, trainer, terms):
        self.steps += 1
        self.seen = torch.cat([self.seen, torch.tensor([trainer.state.step])])

    def state_dict(self):
        return {"steps": self.steps, "seen": self.seen.clone()}

    def load_state_dict(self, state):
        self.steps, self.seen = state["steps"], state["seen"].clone()


def test_a_hook_state_survives_a_resume(tiny):
    """Stopped after 2 of 4 steps and resumed with a new hook: the hook has its stored count
    back before ``before_train`` and carries on; ``last.pt`` holds the state by the hook's
    key."""
    cfg = tiny("source_only", train__steps=4, train__eval_interval=2)
    before = Counter()
    train(cfg, stop_after=2, hooks=[before])
    stored = ckpt.load(cfg.run_dir / "last.pt")[HOOK_STATES]
    assert list(stored) == [f"{__name__}.Counter"]
    assert stored[f"{__name__}.Counter"]["steps"] == 2
    after = Counter()
    train(cfg, hooks=[after])
    assert (after.at_start, after.steps) == (2, 4)
    assert after.seen.tolist() == [1, 2, 3, 4]
    assert ckpt.load(cfg.run_dir / "last.pt")[HOOK_STATES][f"{__name__}.Counter"]["steps"] == 4


def test_a_checkpoint_without_hook_states_still_resumes(tiny):
    """A ``last.pt`` written before hooks had states: the run resumes; the hook starts afresh."""
    cfg = tiny("source_only", train__steps=4, train__eval_interval=2)
    train(cfg, stop_after=2)
    state = ckpt.load(cfg.run_dir / "last.pt")
    del state[HOOK_STATES], state["format"]
    ckpt.save(state, cfg.run_dir / "last.pt")
    hook = Counter()
    result = train(cfg, hooks=[hook])
    assert (hook.at_start, hook.steps, result.metrics["step"]) == (0, 2, 4)


def test_a_hook_state_is_plain_data_and_its_key_is_its_own(tiny):
    class Opaque(Counter):
        def state_dict(self):
            return {"thing": object()}

    cfg = tiny("source_only", train__steps=2, train__eval_interval=2)
    with pytest.raises(TypeError, match="Opaque holds a object; a checkpoint holds plain data"):
        train(cfg, hooks=[Opaque()])
    with pytest.raises(ValueError, match="two hooks keep their state under the key"):
        Trainer(cfg, [Counter(), Counter()])
    named = Counter()
    named.name = "other"
    assert [h.key for h in Trainer(cfg, [Counter(), named]).hooks][-1] == "other"


# -- timings by hook, not by class name --------------------------------------------------------------
def test_the_trial_time_split_counts_a_renamed_tune_report(tiny, monkeypatch):
    """The sweep's ``time/report_s`` and ``time/logging_s`` are the time of the very hooks the
    trial made, whatever their classes are called: a renamed subclass of ``TuneReport`` that
    takes 0.3 s a report still counts."""
    from dakd.sweep.remote import hooks as sweep_hooks

    class Renamed(sweep_hooks.TuneReport):
        pass

    logged = []

    def log_metrics(metrics, step):
        time.sleep(0.05)
        logged.append(metrics)

    logger = SimpleNamespace(log_metrics=log_metrics, finish=lambda status: None)
    monkeypatch.setattr(sweep_hooks, "log_final_artifacts", lambda *args: None)
    report = Renamed(lambda metrics, checkpoint: time.sleep(0.3))
    tracking = sweep_hooks.TrialTracking(logger, None, time.perf_counter(), report=report)
    cfg = tiny("source_only", train__steps=4, train__eval_interval=2)
    train(cfg, hooks=[report, tracking])
    times = logged[-1]
    # one report sent during training (step 2; step 4's is sent after the run's end)
    assert 0.3 <= times["time/report_s"] < 0.6
    assert 0.1 <= times["time/logging_s"] < 0.3  # two evaluations logged, 0.05 s each
    assert times["time/train_s"] > 0


def test_precise_bn_runs_before_each_network_an_evaluation_reads(tiny, monkeypatch):
    """With a weight average, an evaluation reads the trained network (raw metrics), then the
    average: precise BN re-estimates each, in that order."""
    seen = []
    monkeypatch.setattr(
        PreciseBN,
        "before_evaluation",
        lambda self, trainer, net: seen.append(net is trainer.state.model),
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
