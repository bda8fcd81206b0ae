"""Self-training on target images (``train.self_training``): the term against a hand-computed
value and an independent per-pixel loop, the step that adds it, the weight average as its
labeller, and the config's refusals."""

import copy
import math

import pytest
import torch

from dakd import losses
from dakd.config import ConfigError
from dakd.engine.state import TrainState
from dakd.engine.trainer import train
from dakd.models import checkpoint as ckpt


def test_confident_ce_by_hand():
    """Two pixels, two classes. Teacher logits (2, 0) -> p = 0.881 (confident at 0.8, label 0);
    (0, 0.5) -> p = 0.622 (not confident). Student logits (1, 0) on the first pixel: CE =
    log(1 + e^-1) = 0.3133; the second counts as zero; the mean is over both pixels."""
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.5]]).T.reshape(1, 2, 1, 2)
    student = torch.tensor([[1.0, 0.0], [3.0, -2.0]]).T.reshape(1, 2, 1, 2)
    value = losses.confident_ce(student, teacher, 0.8)
    assert value.item() == pytest.approx(math.log(1 + math.exp(-1)) / 2, rel=1e-6)
    # a threshold nobody reaches: zero, with a gradient path
    zero = losses.confident_ce(student.requires_grad_(), teacher, 0.99)
    assert zero.item() == 0.0
    zero.backward()
    assert student.grad is not None and not student.grad.any()


def test_confident_ce_against_a_per_pixel_loop():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 3, 4) * 3
    student = torch.randn(2, 5, 3, 4)
    threshold = 0.6
    total, count = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(4):
                p = torch.softmax(teacher[b, :, i, j].double(), 0)
                count += 1
                if p.max() >= threshold:
                    log_q = torch.log_softmax(student[b, :, i, j].double(), 0)
                    total += -log_q[int(p.argmax())].item()
    assert losses.confident_ce(student, teacher, threshold).item() == pytest.approx(
        total / count, rel=1e-5
    )


def _record_terms(monkeypatch) -> list[dict[str, float]]:
    seen = []
    original = TrainState.train_step

    def recorded(self):
        terms = original(self)
        seen.append({k: float(v) for k, v in terms.items()})
        return terms

    monkeypatch.setattr(TrainState, "train_step", recorded)
    return seen


def test_the_term_starts_at_its_step_and_changes_the_weights(tiny, monkeypatch):
    """Off (weight 0) and on from a step past the run are the same run bit for bit; on from
    step 2 it is added from the third step (``loss/self``), moves the weights, and is
    deterministic."""
    seen = _record_terms(monkeypatch)
    base = {"train__ema_decay": 0.5, "train__self_training_threshold": 0.0}
    train(tiny("teacher_da", name="off", **base))
    never = tiny(
        "teacher_da", name="never", train__self_training=1.0, train__self_training_start=99, **base
    )
    train(never)
    seen.clear()
    on = tiny(
        "teacher_da", name="on", train__self_training=1.0, train__self_training_start=2, **base
    )
    result = train(on)
    assert ["self" in terms for terms in seen] == [i >= 2 for i in range(len(seen))]
    assert all(terms["self"] > 0 for terms in seen[2:])
    assert "loss/self" in result.metrics or any("loss/self" in row for row in result.history)
    again = tiny(
        "teacher_da", name="again", train__self_training=1.0, train__self_training_start=2, **base
    )
    train(again)

    def weights(cfg):
        return ckpt.load(cfg.run_dir / "last.pt")["model"]

    off_w, never_w = weights(tiny("teacher_da", name="off")), weights(never)
    assert all(torch.equal(off_w[k], never_w[k]) for k in off_w)
    on_w, again_w = weights(on), weights(again)
    assert any(not torch.equal(off_w[k], on_w[k]) for k in off_w)
    assert all(torch.equal(on_w[k], again_w[k]) for k in on_w)


def test_the_labels_come_from_the_average_on_target_images(tiny, monkeypatch):
    """The labeller is the weight average (not the trained network), fed the step's target batch,
    and takes no gradient."""
    calls = []
    original = TrainState._self_training

    def spy(self, tgt, pred_t):
        calls.append((self.averaged() is self.ema.module, tgt["image"].shape))
        value = original(self, tgt, pred_t)
        assert all(p.grad is None for p in self.ema.module.parameters())
        return value

    monkeypatch.setattr(TrainState, "_self_training", spy)
    cfg = tiny("student_da", train__ema_decay=0.9, train__self_training=0.5)
    train(cfg)
    assert len(calls) == cfg.train.steps and all(is_average for is_average, _ in calls)


def test_the_default_leaves_fingerprints_unchanged(tiny):
    assert (
        tiny("teacher_da").fingerprint()
        == tiny(
            "teacher_da",
            train__self_training=0.0,
            train__self_training_threshold=0.9,
            train__self_training_start=0,
        ).fingerprint()
    )
    assert (
        tiny("teacher_da").fingerprint()
        != tiny("teacher_da", train__ema_decay=0.9, train__self_training=1.0).fingerprint()
    )


@pytest.mark.parametrize(
    ("stage", "changes", "named"),
    [
        ("teacher_da", {"train__self_training": 1.0}, "train.ema_decay > 0"),
        ("teacher_da", {"train__self_training": -1.0}, "train.self_training"),
        ("teacher_da", {"train__self_training_threshold": 1.0}, "train.self_training_threshold"),
        ("teacher_da", {"train__self_training_start": -1}, "train.self_training_start"),
        ("source_only", {"train__self_training": 1.0, "train__ema_decay": 0.9}, "source_only"),
        ("oracle", {"train__self_training": 1.0, "train__ema_decay": 0.9}, "target images"),
    ],
)
def test_bad_settings_are_named(tiny, stage, changes, named):
    with pytest.raises(ConfigError, match=named):
        tiny(stage, **changes)


def _two_class_logits(probabilities_of_class_0: list[float]) -> torch.Tensor:
    p = torch.tensor(probabilities_of_class_0, dtype=torch.float64)
    diff = torch.log(p / (1 - p))
    return torch.stack([diff, torch.zeros_like(diff)]).reshape(1, 2, 1, -1).float()


def test_class_balanced_selection_by_hand():
    """Six pixels: p(class 0) = 0.95, 0.6, 0.55, 0.52 (labelled 0), 0.3, 0.42 (labelled 1 with
    confidence 0.7, 0.58). Threshold 0.9 alone keeps the first pixel only; with a class share
    of 0.5 each class also keeps its more confident half: class 0 above its median 0.575
    (0.95, 0.6), class 1 above its median 0.64 (0.7)."""
    logits = _two_class_logits([0.95, 0.6, 0.55, 0.52, 0.3, 0.42])
    labels, keep = losses.confident_mask(logits, 0.9)
    assert labels.flatten().tolist() == [0, 0, 0, 0, 1, 1]
    assert keep.flatten().tolist() == [True, False, False, False, False, False]
    _, keep = losses.confident_mask(logits, 0.9, class_share=0.5)
    assert keep.flatten().tolist() == [True, True, False, False, True, False]
    # a share of 1 keeps every pixel
    assert losses.confident_mask(logits, 0.9, class_share=1.0)[1].all()


def test_the_frozen_labeller_is_taken_at_the_start_and_at_each_refresh(tiny, monkeypatch):
    taken = []
    original = TrainState._labeller

    def spy(self):
        labeller = original(self)
        taken.append((self.step, id(labeller)))
        return labeller

    monkeypatch.setattr(TrainState, "_labeller", spy)
    common = {"train__ema_decay": 0.5, "train__self_training": 1.0, "train__steps": 7}
    train(
        tiny(
            "teacher_da",
            name="once",
            train__self_training_start=1,
            train__self_training_refresh=0,
            **common,
        )
    )
    ids = [i for _, i in taken]
    assert [s for s, _ in taken] == list(range(1, 7)) and len(set(ids)) == 1
    taken.clear()
    train(
        tiny(
            "teacher_da",
            name="rounds",
            train__self_training_start=1,
            train__self_training_refresh=2,
            **common,
        )
    )
    ids = [i for _, i in taken]
    # new copies at steps 1, 3, 5; the same copy in between
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4] == ids[5]


@pytest.mark.parametrize("refresh", [0, 1, 3])
def test_a_resumed_run_equals_an_uninterrupted_one(tiny, refresh):
    common = {
        "train__ema_decay": 0.5,
        "train__self_training": 1.0,
        "train__self_training_start": 1,
        "train__self_training_refresh": refresh,
        "train__self_training_class_share": 0.5,
        "train__steps": 6,
    }
    whole = tiny("teacher_da", name="whole", **common)
    train(whole)
    split = tiny("teacher_da", name="split", **common)
    train(split, stop_after=3)
    train(split)
    a = ckpt.load(whole.run_dir / "last.pt")["model"]
    b = ckpt.load(split.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_labeller_normalises_with_the_batch_and_keeps_its_statistics(tiny, monkeypatch):
    """The labels are the labeller's argmax with BatchNorm on the target batch's statistics
    (running statistics gathered by other weights mislabel), computed independently here; the
    frozen labeller's running statistics are the same before and after every step."""
    seen = []
    original = losses.confident_ce

    def spy(student_logits, teacher_logits, threshold, class_share=0.0):
        seen.append(teacher_logits.detach().clone())
        return original(student_logits, teacher_logits, threshold, class_share)

    checks = []
    original_term = TrainState._self_training

    def term(self, tgt, pred_t):
        before = self._labeller() if self.labeller is None else self.labeller
        snapshot = copy.deepcopy(before)
        buffers = [b.clone() for b in before.buffers()]
        value = original_term(self, tgt, pred_t)
        snapshot.train()
        with torch.no_grad():
            images = self.images(tgt)
            expected = losses.upsample(snapshot(images)["output"], images.shape[-2:])
        checks.append(torch.equal(seen[-1], expected))
        assert all(torch.equal(a, b) for a, b in zip(buffers, self.labeller.buffers(), strict=True))
        return value

    monkeypatch.setattr(losses, "confident_ce", spy)
    monkeypatch.setattr(TrainState, "_self_training", term)
    train(
        tiny(
            "teacher_da",
            train__ema_decay=0.5,
            train__self_training=1.0,
            train__self_training_refresh=0,
        )
    )
    assert checks and all(checks)


def test_a_self_trained_checkpoint_evaluates_and_teaches(tiny):
    """A run made with ``train.self_training`` is read back as any checkpoint is: evaluation
    and the calibration's BatchNorm check drop the training-only term (its stage check would
    refuse the source-only stage evaluation reads with), and DAKD takes it as its teacher."""
    from dakd.evaluation.run_metrics import evaluate_checkpoint
    from dakd.recipes.calibration import bn_reestimation_check

    made = tiny(
        "teacher_da",
        name="st",
        train__ema_decay=0.5,
        train__self_training=1.0,
        train__self_training_start=1,
        train__self_training_threshold=0.0,
    )
    result = train(made)
    path = made.run_dir / "model.pt"
    cfg, _, metrics = evaluate_checkpoint(path)
    assert cfg.train.self_training == 0.0 and cfg.stage == "source_only"
    assert 100.0 * metrics.miou == pytest.approx(result.metrics["miou"], abs=1e-6)
    stored, _ = bn_reestimation_check(str(path))
    assert stored == pytest.approx(result.metrics["miou"], abs=1e-6)
    student = tiny("dakd", name="kd", teacher=str(path), paradigm="b")
    distilled = train(student)
    assert int(distilled.metrics["step"]) == student.train.steps
    # it distilled from the self-trained teacher
    distill = [row["loss/distill"] for row in distilled.history if "loss/distill" in row]
    assert distill and all(value > 0.0 for value in distill)
