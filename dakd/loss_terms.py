"""The distillation loss terms as a registry: one :class:`LossTerm` entry per term.

An entry says everything the rest of the package needs of a term: its name and config key
(``loss.<name>``, its weight), the function computing it, its default weight, the levels and
domains it reads, its column in the loss-ablation table and whether its weight enters the stage
keys of the teacher-DA and student-DA stages. The step (``dakd.engine.state``), the metric names
(``dakd.evaluation.run_metrics``), the tables (``dakd.tracking.tables``), the stage keys
(``dakd.recipes.stages``) and the config (``dakd.config.sections.LossConfig``) read it from here.

Adding a term is one function and one :func:`register_term` call, in the package or in a plugin
(``dakd.config.plugins``; docs/extending.md). Nothing here imports torch: a built-in term's
function is named as ``"module:function"`` and imported when a step first computes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from dakd.paradigms import LEVELS

#: The domains a term may be computed on, in the order metric names list them.
DOMAINS = ("source", "target")


class TermInputs(NamedTuple):
    """What a term's function reads at one level of one domain's batch.

    ``student`` and ``teacher``: the level's logits, of the same shape ``[B, C, H, W]``;
    ``teacher_output``: the teacher's output-level logits at that size (the pseudo labels'
    source); ``loss``: the ``loss`` section of the config (``temperature``, ``pseudo_threshold``).
    """

    student: Any
    teacher: Any
    teacher_output: Any
    level: str
    domain: str
    loss: Any


@dataclass(frozen=True)
class LossTerm:
    """One distillation term.

    ``compute``: ``fn(TermInputs) -> scalar tensor``, or ``"module:function"`` naming one.
    ``default``: the weight ``loss.<name>`` has when a config does not set it.
    ``levels``/``domains``: where it is computed: each of ``distill.levels`` in ``levels``, each
    domain of the paradigm's phase in ``domains``; it is summed over its levels.
    ``distill_only``: only distillation reads it, so the teacher-DA and student-DA stages a DAKD
    run builds on are keyed with its weight at the default (every value shares those stages).
    ``always``: computed and reported at weight 0 too (the built-in terms, for ablations);
    other terms are computed only when weighted.
    ``keyed_at_default``: its weight enters fingerprints at its default value too (the built-in
    terms, as stored stages have them); another term's weight enters only when it differs from
    the default, so registering a term leaves every stored key as it was.
    """

    name: str
    compute: Callable[[TermInputs], Any] | str
    default: float = 0.0
    levels: tuple[str, ...] = LEVELS
    domains: tuple[str, ...] = DOMAINS
    label: str = ""
    distill_only: bool = True
    always: bool = False
    keyed_at_default: bool = False

    @property
    def key(self) -> str:
        """The config key of its weight, ``loss.<name>``."""
        return f"loss.{self.name}"

    @property
    def title(self) -> str:
        """Its column header in tables."""
        return self.label or self.name

    def function(self) -> Callable[[TermInputs], Any]:
        """The function computing it (a ``"module:function"`` imported on first use)."""
        if callable(self.compute):
            return self.compute
        module, _, name = self.compute.partition(":")
        return getattr(importlib.import_module(module), name)

    def metric_names(self) -> list[str]:
        """``<name>_<domain>`` for each domain it is computed on."""
        return [f"{self.name}_{domain}" for domain in DOMAINS if domain in self.domains]


#: The loss section's own keys: no term may take one of these names.
RESERVED = (
    "seg_aux",
    "adv_output",
    "adv_feature",
    "adv_kind",
    "target",
    "temperature",
    "pseudo_threshold",
    "terms",
)

_TERMS: dict[str, LossTerm] = {}


def register_term(term: LossTerm) -> LossTerm:
    """Add ``term`` to the registry; a name that exists, a reserved key, or levels and domains
    that are not the method's are a ``ValueError`` naming it."""
    name = term.name
    if not name.isidentifier():
        raise ValueError(f"loss term {name!r}: a name must be a Python identifier")
    if name in _TERMS or name in RESERVED:
        raise ValueError(f"loss term {name!r} is already registered (or is a key of loss)")
    if not term.levels or not set(term.levels) <= set(LEVELS):
        raise ValueError(f"loss term {name!r}: levels {term.levels} are not among {LEVELS}")
    if not term.domains or not set(term.domains) <= set(DOMAINS):
        raise ValueError(f"loss term {name!r}: domains {term.domains} are not among {DOMAINS}")
    if not term.default >= 0:
        raise ValueError(f"loss term {name!r}: the default weight must be >= 0")
    _TERMS[name] = term
    return term


def _installed() -> None:
    from dakd.config.plugins import load_installed

    load_installed()


def terms() -> tuple[LossTerm, ...]:
    """Every registered term (installed plugins imported first), in registration order: the
    built-in ones first. The order is the order of the weighted sum."""
    _installed()
    return tuple(_TERMS.values())


def get_term(name: str) -> LossTerm:
    _installed()
    try:
        return _TERMS[name]
    except KeyError:
        raise ValueError(f"unknown loss term {name!r}; registered: {', '.join(_TERMS)}") from None


def names() -> tuple[str, ...]:
    return tuple(term.name for term in terms())


def active(weights: dict[str, float], domain: str) -> list[str]:
    """The terms a step computes on ``domain``: weighted ones and the ``always`` ones."""
    return [
        t.name
        for t in terms()
        if domain in t.domains and (t.always or float(weights.get(t.name, t.default)) != 0.0)
    ]


def metric_names() -> list[str]:
    """``<term>_<domain>`` of every term, domain by domain (``kl_source``, ..., ``kl_target``)."""
    return [f"{t.name}_{domain}" for domain in DOMAINS for t in terms() if domain in t.domains]


def distill_only_keys() -> list[str]:
    """The weights (``loss.<name>``) only distillation reads."""
    return [t.key for t in terms() if t.distill_only]


def fingerprint_neutral(flat: dict[str, Any]) -> Iterable[str]:
    """The keys of ``flat`` (a config's dotted view) that a fingerprint leaves out: the weights
    of terms not ``keyed_at_default`` while at their default."""
    for t in terms():
        if not t.keyed_at_default and flat.get(t.key, t.default) == t.default:
            yield t.key


#: The built-in terms (docs/method.md, "Losses"): the paper's lambda_KL, lambda_MSE and
#: lambda_pseudoT, in the order of the weighted sum.
BUILTIN = (
    LossTerm("kl", "dakd.losses:kl_term", 0.1, label="KL", always=True, keyed_at_default=True),
    LossTerm("mse", "dakd.losses:mse_term", 0.01, label="MSE", always=True, keyed_at_default=True),
    LossTerm(
        "pseudo",
        "dakd.losses:pseudo_term",
        1.0,
        label="pseudo-T",
        always=True,
        keyed_at_default=True,
    ),
)
for _term in BUILTIN:
    register_term(_term)

#: Built-in term name -> its default weight (``LossConfig``'s fields read these).
BUILTIN_DEFAULTS = {t.name: t.default for t in BUILTIN}
