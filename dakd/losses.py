"""The DAKD loss terms, each a small function of tensors (see docs/method.md, "Losses").

Shapes: logits are ``[B, C, H, W]``, labels ``[B, H, W]`` (int64, ``IGNORE_INDEX`` = ignore).
Every function returns a scalar tensor, averaged over the pixels it is defined on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dakd import loss_terms
from dakd.data.labels import IGNORE_INDEX
from dakd.loss_terms import TermInputs

#: AdaptSegNet's discriminator labels: source predictions are 0, target predictions are 1.
SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0

#: The built-in distillation terms; every registered one is in :mod:`dakd.loss_terms`.
DISTILL_TERMS = tuple(term.name for term in loss_terms.BUILTIN)


def upsample(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize stride-8 logits to ``size`` (H, W), as AdaptSegNet does before its losses.

    The result is float32 in the default (NCHW) memory format, converted on the logits' small
    grid: mixed-precision logits (``train.amp``) and channels-last ones (``train.channels_last``)
    would otherwise be cast and copied at full size by every loss that reads them (autocast
    runs softmax, cross-entropy and MSE in float32, and they read NCHW). For float32 NCHW
    logits, the CPU default, nothing changes.
    """
    logits = logits.contiguous().float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def seg_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Pixel cross-entropy against ground truth, mean over the non-ignored pixels."""
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)


def adversarial(d_logits: torch.Tensor, is_source: bool, kind: str = "bce") -> torch.Tensor:
    """Loss of a discriminator output against the domain label (source 0, target 1).

    ``kind="bce"``: binary cross-entropy with logits (AdaptSegNet). ``kind="lsgan"``: least squares
    on the raw output. The segmenter's adversarial term is ``adversarial(D(target), is_source=True)``.
    """
    label = SOURCE_LABEL if is_source else TARGET_LABEL
    target = torch.full_like(d_logits, label)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(d_logits, target)
    if kind == "lsgan":
        return F.mse_loss(d_logits, target)
    raise ValueError(f"unknown adversarial loss kind {kind!r}; expected 'bce' or 'lsgan'")


def kl_divergence(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the per-pixel class distributions at temperature T, times T^2.

    ``sum_c p_t (log p_t - log p_s)`` per pixel, averaged over pixels (B*H*W). The T^2 factor keeps
    gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    per_pixel = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return per_pixel.mean() * (t * t)


def mse(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher maps ("hard alignment"), mean over elements."""
    return F.mse_loss(student_maps, teacher_maps)


def pseudo_labels(teacher_logits: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Teacher argmax labels; pixels whose max softmax probability is below ``threshold`` are ignored."""
    prob = F.softmax(teacher_logits, dim=1)
    confidence, labels = prob.max(dim=1)
    if threshold > 0:
        labels = labels.masked_fill(confidence < threshold, IGNORE_INDEX)
    return labels


def pseudo_ce(student_logits, teacher_logits, threshold: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's (optionally thresholded) argmax labels.

    Returns 0 (with a gradient path) when the threshold leaves no pixel.
    """
    labels = pseudo_labels(teacher_logits, threshold)
    if not bool((labels != IGNORE_INDEX).any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits, labels, ignore_index=IGNORE_INDEX)


def confident_mask(
    teacher_logits: torch.Tensor, threshold: float, class_share: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's argmax labels and which pixels keep them: top softmax probability at or
    above ``threshold``, or (``class_share`` > 0, class-balanced selection as in CBST) among
    the ``class_share`` most confident pixels the batch predicts as the same class, so that a
    class the teacher is rarely sure of still gets labels and the frequent classes cannot
    crowd them out."""
    prob = F.softmax(teacher_logits.float(), dim=1)
    confidence, labels = prob.max(dim=1)
    keep = confidence >= threshold
    if class_share > 0:
        for c in labels.unique().tolist():
            mine = labels == c
            cut = torch.quantile(confidence[mine], 1.0 - class_share)
            keep |= mine & (confidence >= cut)
    return labels, keep


def confident_ce(
    student_logits, teacher_logits, threshold: float, class_share: float = 0.0
) -> torch.Tensor:
    """Cross-entropy against the teacher's argmax on the pixels :func:`confident_mask` keeps,
    averaged over *all* pixels (a pixel not kept counts as a zero loss): the self-training term
    of ``train.self_training``. Unlike :func:`pseudo_ce`, a batch with few kept pixels gives a
    small loss, not a full-weight one on those few."""
    labels, keep = confident_mask(teacher_logits, threshold, class_share)
    per_pixel = F.cross_entropy(student_logits, labels, reduction="none")
    return (per_pixel * keep).mean()


def kl_term(x: TermInputs) -> torch.Tensor:
    """The registered ``kl`` term: :func:`kl_divergence` at ``loss.temperature``."""
    return kl_divergence(x.student, x.teacher, x.loss.temperature)


def mse_term(x: TermInputs) -> torch.Tensor:
    """The registered ``mse`` term: :func:`mse` of the level's maps."""
    return mse(x.student, x.teacher)


def pseudo_term(x: TermInputs) -> torch.Tensor:
    """The registered ``pseudo`` term: :func:`pseudo_ce` against the teacher's output level."""
    return pseudo_ce(x.student, x.teacher_output, x.loss.pseudo_threshold)


@dataclass(frozen=True)
class TermSettings:
    """The loss settings a term reads when no config's ``loss`` section is given."""

    temperature: float = 1.0
    pseudo_threshold: float = 0.0


def distill_terms(
    student: Mapping[str, torch.Tensor],
    teacher: Mapping[str, torch.Tensor],
    levels: Sequence[str],
    temperature: float = 1.0,
    threshold: float = 0.0,
    pseudo: Mapping[str, torch.Tensor] | None = None,
    *,
    names: Sequence[str] = DISTILL_TERMS,
    domain: str = "source",
    loss: Any = None,
) -> dict[str, torch.Tensor]:
    """The unweighted distillation terms ``names`` on one batch, each summed over its levels.

    ``student`` and ``teacher`` map a level name (``"output"``, ``"feature"``) to logits of the same
    shape. The built-in terms at each level: KL between the level's class distributions, MSE
    between the level's maps, and cross-entropy of the level's student logits against the
    teacher's *output-level* argmax (the teacher's final prediction is the pseudo ground truth
    for every student head, as ground truth is for L_seg). ``pseudo`` gives that output-level
    prediction per level when the levels' maps differ in size (:func:`at_logit_grid`); by
    default every level reads ``teacher["output"]``. A registered term is computed at the
    levels of ``levels`` it reads (:mod:`dakd.loss_terms`); ``loss`` is the config's ``loss``
    section (default: ``temperature`` and ``threshold``).
    """
    settings = loss if loss is not None else TermSettings(temperature, threshold)
    entries = [loss_terms.get_term(name) for name in names]
    terms = {term.name: student[levels[0]].new_zeros(()) for term in entries}
    for level in levels:
        pseudo_source = teacher["output"] if pseudo is None else pseudo[level]
        inputs = TermInputs(student[level], teacher[level], pseudo_source, level, domain, settings)
        for term in entries:
            if level in term.levels:
                terms[term.name] = terms[term.name] + term.function()(inputs)
    return terms


def at_logit_grid(
    student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor], levels: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``distill.resolution: logits``: the student's raw logits per level, the teacher's map of
    the level resized to the student's grid, and the teacher's output-level map resized to it
    (the pseudo labels' source), for :func:`distill_terms`. A map already on the student's grid
    is used as it is; so with equal strides nothing is resized and no full-size map exists."""
    maps, pseudo = {}, {}
    for level in levels:
        grid = student[level].shape[-2:]
        maps[level] = upsample(teacher[level], grid)
        pseudo[level] = upsample(teacher["output"], grid)
    return {level: student[level].contiguous() for level in levels}, maps, pseudo


def weighted_distill(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """``lambda_KL * KL + lambda_MSE * MSE + lambda_pseudoT * pseudoT`` (and every other
    registered term in ``terms``) for one domain, in the registry's order."""
    total = None
    for name in loss_terms.names():
        if name not in terms:
            continue
        weight = float(weights[name])
        if weight == 0.0:
            continue
        part = weight * terms[name]
        total = part if total is None else total + part
    if total is None:
        return next(iter(terms.values())) * 0.0
    return total


def distillation_objective(
    source_terms: Mapping[str, torch.Tensor] | None,
    target_terms: Mapping[str, torch.Tensor] | None,
    weights: Mapping[str, float],
    lambda_target: float = 1.0,
) -> torch.Tensor:
    """L_distill = D(source) + lambda_target * D(target); a missing domain (paradigm) contributes 0."""
    if source_terms is None and target_terms is None:
        raise ValueError("distillation needs terms for the source, the target or both")
    total = None
    if source_terms is not None:
        total = weighted_distill(source_terms, weights)
    if target_terms is not None:
        part = lambda_target * weighted_distill(target_terms, weights)
        total = part if total is None else total + part
    return total
