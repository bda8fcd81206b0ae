"""Training stages and DAKD paradigms, written down as data.

A *stage* says what is trained and with which terms: supervised on source or target labels,
output-space adversarial adaptation on or off, distillation from a frozen teacher on or off.
A *paradigm* (DAKD only) is a list of phases; each phase covers a share of the steps and says on
which domains the distillation terms are computed (PAPER.md, "Training stages").
"""

from __future__ import annotations

from dataclasses import dataclass

#: The two levels a segmenter predicts at, each with its adversarial and distillation terms: the
#: auxiliary ``feature`` head and the ``output`` head (PAPER.md). Their order is the order the
#: trainer builds their discriminators in, so it fixes a run's random stream.
LEVELS = ("feature", "output")

#: The value of ``teacher`` / ``init`` that names a reused stage, resolved before training
#: (``dakd.pipeline.with_stages``).
AUTO = "auto"


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
    if paradigm not in phases:
        raise ValueError(f"unknown paradigm {paradigm!r}; expected one of {', '.join(phases)}")
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
