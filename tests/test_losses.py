"""Every loss term against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from dakd import losses

LN3 = math.log(3.0)


def logits(*pixels):
    """[1, C, 1, N] logits from N per-pixel class-logit lists."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_seg_ce_ignores_255():
    x = logits([0.0, LN3], [5.0, -5.0])  # pixel 0: p = (0.25, 0.75)
    y = torch.tensor([[[1, 255]]])
    assert losses.seg_ce(x, y).item() == pytest.approx(-math.log(0.75))


def test_adversarial_bce_and_lsgan():
    d = torch.tensor([[[[0.0, 2.0]]]])
    # BCE with logits against target label 1 (the target domain): mean(-log sigmoid(d))
    expected = (math.log(2.0) + math.log(1 + math.exp(-2.0))) / 2
    assert losses.adversarial(d, is_source=False).item() == pytest.approx(expected)
    # least squares against source label 0: mean(d^2)
    assert losses.adversarial(d, is_source=True, kind="lsgan").item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="hinge"):
        losses.adversarial(d, True, kind="hinge")


def test_kl_matches_hand_value_and_temperature_scaling():
    teacher = logits([0.0, LN3])  # p_t = (1/4, 3/4)
    student = logits([0.0, 0.0])  # p_s = (1/2, 1/2)
    by_hand = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.kl_divergence(student, teacher).item() == pytest.approx(by_hand)
    # T = 2: p_t = softmax(0, ln3 / 2) = (1, sqrt 3) / (1 + sqrt 3), scaled by T^2 = 4
    a, b = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    by_hand_t2 = 4 * (a * math.log(a / 0.5) + b * math.log(b / 0.5))
    assert losses.kl_divergence(student, teacher, 2.0).item() == pytest.approx(by_hand_t2)
    assert losses.kl_divergence(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_agrees_with_torch_kldivloss_averaged_per_pixel():
    torch.manual_seed(0)
    s, t = torch.randn(2, 19, 4, 5), torch.randn(2, 19, 4, 5)
    reference = torch.nn.KLDivLoss(reduction="sum", log_target=True)(
        torch.log_softmax(s, 1), torch.log_softmax(t, 1)
    ) / (2 * 4 * 5)
    assert losses.kl_divergence(s, t).item() == pytest.approx(reference.item(), rel=1e-5)


def test_mse():
    s = torch.tensor([[[[1.0, 2.0]]]])
    t = torch.tensor([[[[0.0, 4.0]]]])
    assert losses.mse(s, t).item() == pytest.approx((1 + 4) / 2)


def test_pseudo_ce_with_and_without_threshold():
    teacher = logits([0.0, LN3], [math.log(0.55), math.log(0.45)])  # conf 0.75 -> 1, 0.55 -> 0
    student = logits([0.0, 0.0], [0.0, LN3])  # pixel 1: p(class 0) = 0.25
    assert losses.pseudo_labels(teacher).tolist() == [[[1, 0]]]
    both = (-math.log(0.5) - math.log(0.25)) / 2
    assert losses.pseudo_ce(student, teacher).item() == pytest.approx(both)
    assert losses.pseudo_labels(teacher, 0.6).tolist() == [[[1, 255]]]
    assert losses.pseudo_ce(student, teacher, 0.6).item() == pytest.approx(-math.log(0.5))
    none_left = losses.pseudo_ce(student.requires_grad_(), teacher, 0.99)
    assert none_left.item() == 0.0 and none_left.requires_grad


def test_distill_terms_sum_levels_and_use_teacher_output_for_pseudo_labels():
    t_out, t_feat = logits([0.0, LN3]), logits([LN3, 0.0])
    s_out, s_feat = logits([0.0, 0.0]), logits([0.0, 0.0])
    teacher = {"output": t_out, "feature": t_feat}
    student = {"output": s_out, "feature": s_feat}
    out_only = losses.distill_terms(student, teacher, ["output"])
    both = losses.distill_terms(student, teacher, ["output", "feature"])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # symmetric for the feature level
    assert out_only["kl"].item() == pytest.approx(kl)
    assert both["kl"].item() == pytest.approx(2 * kl)
    assert both["mse"].item() == pytest.approx(2 * LN3**2 / 2)
    # pseudo labels come from the teacher's output level (class 1) for both student heads
    assert both["pseudo"].item() == pytest.approx(2 * math.log(2.0))


def test_distillation_objective_weights_and_lambda_target():
    src = {"kl": torch.tensor(1.0), "mse": torch.tensor(10.0), "pseudo": torch.tensor(2.0)}
    tgt = {"kl": torch.tensor(3.0), "mse": torch.tensor(20.0), "pseudo": torch.tensor(4.0)}
    w = {"kl": 0.1, "mse": 0.01, "pseudo": 1.0}
    d_src = 0.1 * 1 + 0.01 * 10 + 2.0
    d_tgt = 0.1 * 3 + 0.01 * 20 + 4.0
    assert losses.distillation_objective(src, tgt, w, 0.5).item() == pytest.approx(
        d_src + 0.5 * d_tgt
    )
    assert losses.distillation_objective(src, None, w).item() == pytest.approx(d_src)
    assert losses.distillation_objective(None, tgt, w, 2.0).item() == pytest.approx(2 * d_tgt)
    zero = {"kl": 0.0, "mse": 0.0, "pseudo": 0.0}
    assert losses.distillation_objective(src, tgt, zero).item() == 0.0
    with pytest.raises(ValueError):
        losses.distillation_objective(None, None, w)
