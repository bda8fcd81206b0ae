"""Training stages, DAKD paradigms and distillation levels, written down as data.

A *stage* says what is trained and with which terms: supervised on source or target labels,
output-space adversarial adaptation on or off, distillation from a frozen teacher on or off.
A *paradigm* (DAKD only) is a list of phases; each phase covers a share of the steps and says on
which domains the distillation terms are computed (docs/method.md, "Training stages").
A *level* is one of a segmenter's two predictions that adaptation and distillation read.

This is the one home of these words: the config checks against them, the trainer iterates
them, the sweep and the stage pipeline name them; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    supervised_on: str  # "source" or "target" (oracle)
    adversarial: bool
    distill: bool
    description: str


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("source_only", "source", False, False, "source labels only, no adaptation"),
        Stage("oracle", "target", False, False, "target labels (upper bound; never used by UDA)"),
        Stage("teacher_da", "source", True, False, "the teacher: L_seg + multi-level L_adv"),
        Stage("student_da", "source", True, False, "the student: L_seg + multi-level L_adv"),
        Stage("dakd", "source", True, True, "L_seg + L_adv + L_distill from the frozen teacher"),
    )
}


#: ``teacher: auto`` / ``init: auto``: the field names the reused stage of the same config
#: (trained once, found again by its fingerprint) instead of a checkpoint file.
AUTO = "auto"

#: What an ``auto`` field stands for: config field -> the stage that provides its checkpoint.
AUTO_STAGES = {"teacher": "teacher_da", "init": "student_da"}

#: The DAKD paradigms: on which domains distillation runs, phase by phase (``paradigm_phases``).
PARADIGMS = ("a", "b", "c", "d")

#: The levels a segmenter predicts (``{"feature": ..., "output": ...}``), in the order the
#: trainer builds its per-level modules and sums per-level terms: the order fixes the random
#: initialisation of those modules and the float sums, so changing it changes every result.
LEVELS = ("feature", "output")

#: Both levels as a config chooses them by default (``distill.levels``) and as messages and
#: stored teacher-output caches list them: output first, as the paper names them. The order is
#: part of stored keys (stage fingerprints, cache folders), so it stays as it is.
DEFAULT_LEVELS = ("output", "feature")

#: Where the distillation terms compare student and teacher (``distill.resolution``): at the
#: images' size (the paper's form) or on the student's logit grid.
RESOLUTIONS = ("image", "logits")


@dataclass(frozen=True)
class Phase:
    """Distillation domains for a share of the training steps."""

    source: bool
    target: bool
    share: float = 1.0


def paradigm_phases(paradigm: str, sequential_split: float = 0.5) -> tuple[Phase, ...]:
    """(a) source, (b) target, (c) source+target, (d) (c) for ``sequential_split`` then (b)."""
    phases = {
        "a": (Phase(True, False),),
        "b": (Phase(False, True),),
        "c": (Phase(True, True),),
        "d": (Phase(True, True, sequential_split), Phase(False, True, 1.0 - sequential_split)),
    }
    if paradigm not in PARADIGMS:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected one of {', '.join(PARADIGMS)}")
    return phases[paradigm]


def phase_at(paradigm: str, step: int, total_steps: int, sequential_split: float = 0.5) -> Phase:
    """The phase in force at 0-based ``step`` of ``total_steps``."""
    boundary = 0.0
    phases = paradigm_phases(paradigm, sequential_split)
    for phase in phases:
        boundary += phase.share * total_steps
        if step < round(boundary):
            return phase
    return phases[-1]
