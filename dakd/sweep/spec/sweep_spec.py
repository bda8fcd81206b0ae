"""Sweep specs: one YAML file per study, validated before any Ray work starts.

A spec holds the base experiment (``experiment``, optionally over a ``base`` config file), the
search space (``search``: dotted config path -> distribution, or a plain value that is fixed),
the Ray Tune settings (``tune``), per-trial ``resources``, MLflow ``tracking`` and the Tune
``storage``. Every problem raises :class:`SpecError` with the message
``"<spec file>: <key>: <problem>"``.

The experiment is built and checked by the config itself (:func:`dakd.config.from_dict`, each
section's ``check``); the other sections are typed by the config's builder and check their own
values (:mod:`dakd.sweep.spec.settings`); the search space is :mod:`dakd.sweep.spec.space`. Every check
raises a ConfigError naming the key, and :func:`load_spec` adds the file, once.

Each search axis is a :class:`~dakd.sweep.spec.space.Distribution`, which knows its Tune domain
(:func:`param_space`), the config value behind a sampled label or number and the label a trial
name shows; :func:`trial_overrides` maps a sampled config back to dotted config values, and
:func:`resolve` turns it into a validated :class:`~dakd.config.ExperimentConfig`.

A sweep's DAKD runs build on the reused stages: a config with ``stage: dakd`` whose ``teacher``
or ``init`` is empty gets ``auto`` there (the teacher-DA / student-DA stage of that config).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dakd.config import (
    ConfigError,
    ExperimentConfig,
    coerce,
    current_key,
    current_tree,
    fail,
    flatten,
    parse_override,
    read_yaml,
    reject_unknown,
    require,
    set_dotted,
    within,
)
from dakd.config.renamed import STORED_NAMES
from dakd.paradigms import AUTO
from dakd.sweep.spec.schedule import check_schedule
from dakd.sweep.spec.settings import (
    Resources,
    Tracking,
    TuneSettings,
    check_metric,
    check_workers,
    section,
    storage_of,
    tune_settings,
)
from dakd.sweep.spec.space import (
    KINDS,
    NAME,
    Distribution,
    check_against_tune,
    current_axis,
    label_of,
    pinned,
    search_space,
    writes,
)
from dakd.sweep.spec.students import check_students, deploy_settings, students_of
from dakd.sweep.spec.tree import (
    EXPLICIT_EMPTY,
    assignments,
    config_path,
    experiment_config,
    merged,
    plain,
)

__all__ = [
    "KINDS",
    "Distribution",
    "Resources",
    "SpecError",
    "SweepSpec",
    "Tracking",
    "TuneSettings",
    "describe",
    "grid_variants",
    "load_spec",
    "num_trials",
    "param_space",
    "resolve",
    "trial_label",
    "trial_overrides",
]

SECTIONS = (
    "name",
    "description",
    "experiment",
    "stages",
    "search",
    "tune",
    "deploy",
    "resources",
    "tracking",
    "storage",
)
#: Spec sections that hold a single value (an override names them without a sub-key).
SCALAR_SECTIONS = ("name", "description", "storage")
TRIAL_INDEX = "__trial_index__"  # set by ray.tune.search.Repeater(set_index=True)


class SpecError(ValueError):
    """A problem with a sweep spec; the message is ``"<spec file>: <key>: <problem>"``."""


#: The reused stages a spec may train once per seed (``stages.per_seed``).
REUSED_STAGES = ("teacher_da", "student_da")

#: ``stages.per_seed`` by default: the student side. In DAKD the teacher is an input, trained
#: once per scenario; the seeds vary what is distilled into (student-DA, the fair baseline on
#: it, DAKD).
PER_SEED = ("student_da",)


@dataclass
class SweepSpec:
    """A loaded, validated spec.

    ``base``: the experiment section resolved over its base file and validated, with the fixed
    values of ``search`` applied (the axes are not). ``fixed``: dotted -> value of those plain
    values. ``search``: the axes in file order. ``stages``: dotted overrides for the reused
    teacher-DA / student-DA stages. ``base_file``: the resolved ``experiment.base`` file, if any.
    ``implicit_auto``: fields (teacher, init) that ``base`` holds as ``auto`` only because its
    stage is dakd; trials that pick another stage get them empty again.
    """

    path: Path
    name: str
    description: str
    base: ExperimentConfig
    fixed: dict[str, Any]
    search: dict[str, Distribution]
    stages: dict[str, Any]
    tune: TuneSettings
    resources: Resources
    tracking: Tracking
    storage: str
    base_file: Path | None = None
    implicit_auto: tuple[str, ...] = ()
    #: the ``deploy`` section (:class:`dakd.evaluation.deploy.DeploySettings`): every trial measures its
    #: student at this resolution before it trains; None: no deployment figures
    deploy: Any = None
    #: fields (teacher, init) the experiment section sets to "" itself: they stay empty in DAKD
    #: trials (init: from the student's pretrained weights) where a left-out one is ``auto``
    explicit_empty: tuple[str, ...] = ()
    #: ``stages.per_seed``: the reused stages trained once per seed of ``tune.seeds``; the others
    #: once, with the first seed (:func:`dakd.sweep.spec.context.stage_seeds`)
    per_seed: tuple[str, ...] = PER_SEED

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# -- reading the spec -------------------------------------------------------------------------


def _apply_overrides(raw: dict, overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply ``--set`` overrides to the raw spec tree; return the experiment and stages ones
    (dotted, applied after the file's own keys)."""
    experiment: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item)
        section, _, rest = key.partition(".")
        require(
            section in SECTIONS,
            key,
            f"unknown section {section!r}; sections: {', '.join(SECTIONS)}",
        )
        if section in SCALAR_SECTIONS:
            require(not rest, key, f"{section} is a single value; write {section}=VALUE")
            raw[section] = value
            continue
        require(bool(rest), key, f"name a key inside {section}, e.g. {section}.KEY=VALUE")
        if section == "experiment":
            experiment[rest] = value
        elif section == "stages":
            stages[rest] = value
        elif section == "search":
            search = raw.get("search")
            search = search if isinstance(search, dict) else {}
            raw["search"] = search
            rest, value = current_axis(rest, value)
            search[rest] = pinned(search.get(rest), value)
        else:
            node = raw.get(section)
            if node is None:
                node = raw[section] = {}
            require(isinstance(node, dict), section, f"expected a mapping, got {node!r}")
            with within(key):
                set_dotted(node, rest, value)
    return experiment, stages


def _base_file(base: Any, path: Path) -> Path:
    """The ``experiment.base`` file: absolute, or beside the spec, or in the current folder, or
    the shipped file the spec's shipped siblings in ``sweeps/`` name so (``configs/embedded.yaml``
    one folder up: :mod:`dakd.models.shipped`, which an installed package carries)."""
    from dakd.models.shipped import shipped_file

    require(
        isinstance(base, str) and bool(base.strip()),
        "experiment.base",
        f"expected a non-empty string, got {base!r}",
    )
    candidates = [Path(base)] if Path(base).is_absolute() else [path.parent / base, Path(base)]
    found = next((Path(os.path.normpath(c)) for c in candidates if c.is_file()), None)
    if found is None and not Path(base).is_absolute():
        found = shipped_file(os.path.join("sweeps", base))
    if found is None:
        fail(
            "experiment.base",
            f"no such config file {base!r} (looked in {path.parent or '.'}, the current folder "
            "and the package's shipped configs)",
        )
    return found


def _experiment(raw: Any, extra: dict[str, Any], path: Path):
    """The experiment section, built and checked by the config: (its config, its plain tree
    with the implicit ``auto`` fields empty again, those fields, the base file or None)."""
    section = dict(coerce(raw, dict[str, Any], "experiment"))
    if "base" in extra:
        section["base"] = extra.pop("base")
    base = section.pop("base", None)
    base_file, tree = None, {}
    if base is not None:
        base_file = _base_file(base, path)
        with within("experiment.base"):
            tree = current_tree(read_yaml(base_file))
    assigned = {current_key(k): v for k, v in {**flatten(section), **extra}.items()}
    for key in assigned:
        require(
            config_path(key) is not None, f"experiment.{key}", "not a config key of the experiment"
        )
    # written as "": empty for DAKD too (init: the student's pretrained weights, not a stage)
    explicit = tuple(f for f in ("teacher", "init") if assigned.get(f) == "")
    tree = merged(tree, {**assigned, **dict.fromkeys(explicit, EXPLICIT_EMPTY)})
    with within("experiment"):
        config = experiment_config(tree)
    # the fields experiment_config filled with auto stay empty for trials that change the stage
    implicit = tuple(
        f for f in ("teacher", "init") if tree.get(f, "") == "" and getattr(config, f) == AUTO
    )
    tree = config.to_dict()
    tree.update(dict.fromkeys(implicit, ""))
    tree.update(dict.fromkeys(explicit, EXPLICIT_EMPTY))
    return config, tree, implicit, base_file, explicit


def _per_seed(raw: Any, extra: dict[str, Any]) -> tuple[str, ...]:
    """``stages.per_seed`` (the file's, or a ``--set stages.per_seed=[...]``), checked."""
    value = extra.pop("per_seed", None)
    if value is None and isinstance(raw, dict):
        value = raw.get("per_seed")
    if value is None:
        return PER_SEED
    value = [value] if isinstance(value, str) else value
    require(
        isinstance(value, list) and all(v in REUSED_STAGES for v in value),
        "stages.per_seed",
        f"{value!r}: a list of the reused stages trained once per seed, from "
        f"{', '.join(REUSED_STAGES)} (e.g. [teacher_da, student_da]; [] trains each once)",
    )
    return tuple(stage for stage in REUSED_STAGES if stage in value)


def _stages(raw: Any, extra: dict[str, Any], base: ExperimentConfig) -> dict:
    """Dotted overrides for the reused stages, checked on the teacher-DA and student-DA configs
    (``per_seed`` is not one: :func:`_per_seed`)."""
    stages: dict[str, Any] = {}
    raw = coerce(raw, dict[str, Any], "stages")
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k != "per_seed"}
    for key, value in {**flatten(raw), **extra}.items():
        for leaf, item in assignments(key, value).items():
            leaf = current_key(leaf)
            require(config_path(leaf) is not None, f"stages.{leaf}", "not a config path")
            require(
                leaf != "stage", "stages.stage", "the sweep picks the stage; set other keys here"
            )
            stages[leaf] = plain(item)
    for stage in ("teacher_da", "student_da"):
        with within(f"stages: on the {stage} stage"):
            experiment_config(base.to_dict(), {**stages, "teacher": "", "init": "", "stage": stage})
    return stages


def _header(raw: dict) -> tuple[str, str]:
    """The spec's ``name`` and ``description``."""
    require("name" in raw, "name", "required (letters, digits, '_', '.', '-')")
    name = raw["name"]
    require(
        isinstance(name, str) and bool(NAME.fullmatch(name)),
        "name",
        f"{name!r}: use letters, digits, '_', '.', '-'",
    )
    description = raw.get("description") or ""
    require(isinstance(description, str), "description", f"expected text, got {description!r}")
    require(
        "experiment" in raw,
        "experiment",
        "required: the base experiment (base: FILE and/or config keys)",
    )
    return name, description


def _spec(path: Path, raw: dict, overrides: Sequence[str]) -> SweepSpec:
    """The spec of the file's tree ``raw`` and the ``--set`` overrides: every section built and
    checked, the experiment first (the other sections' checks read it)."""
    for key in raw:
        require(isinstance(key, str), "", f"keys must be strings, got {key!r}")
    reject_unknown(raw, SECTIONS)
    if isinstance(raw.get("search"), dict):  # renamed keys first, so an override finds its axis
        raw["search"] = dict(current_axis(k, v) for k, v in raw["search"].items())
    experiment_extra, stages_extra = _apply_overrides(raw, overrides)
    name, description = _header(raw)
    base, tree, implicit, base_file, explicit = _experiment(
        raw["experiment"], experiment_extra, path
    )
    tune = tune_settings(raw.get("tune"))
    base, fixed, axes = search_space(raw.get("search"), tree, base)
    implicit = tuple(f for f in implicit if f not in fixed)
    check_against_tune(tune, axes)
    students = students_of(base, axes)
    check_students(students, path.parent)
    deploy = deploy_settings(raw.get("deploy"), students)
    check_metric(tune, base, deploy)
    storage = raw.get("storage", "runs/ray")
    resources = section(raw.get("resources"), Resources, "resources")
    check_workers(resources, base, axes)
    check_schedule(tune, axes, {a: writes(a, d) for a, d in axes.items()}, resources, base)
    require(
        deploy is None or resources.workers == 1,
        "deploy",
        f"a data-parallel trial (resources.workers {resources.workers}) has no device of its "
        "own to measure its student on; measure with resources.workers 1",
    )
    return SweepSpec(
        path=path,
        name=name,
        description=description,
        base=base,
        fixed=fixed,
        search=axes,
        per_seed=_per_seed(raw.get("stages"), stages_extra),
        stages=_stages(raw.get("stages"), stages_extra, base),
        tune=tune,
        resources=resources,
        tracking=section(raw.get("tracking"), Tracking, "tracking"),
        storage=storage_of(storage),
        base_file=base_file,
        implicit_auto=implicit,
        deploy=deploy,
        explicit_empty=explicit,
    )


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read, override (``"tune.num_samples=2"``, ``"experiment.train.steps=20"``,
    ``"search.loss.kl=0.5"``) and validate a spec; nothing of Ray is started. Every problem is
    one SpecError naming the file, the key and the problem."""
    path = Path(path)
    try:
        raw = read_yaml(path, "spec")
    except ConfigError as err:
        raise SpecError(str(err)) from None
    try:
        return _spec(path, raw, overrides)
    except ConfigError as err:
        raise SpecError(f"{path}: {err}") from None


# -- from the spec to Tune and back -----------------------------------------------------------


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Ray Tune ``param_space``: axis name -> its Tune domain (choice/grid over labels), plus
    ``"seed": tune.grid_search(seeds)`` for the grid and random searchers. With Optuna the seeds
    are not in the space: wrap the searcher in ``Repeater(repeat=len(seeds), set_index=True)``."""
    from ray import tune

    space = {axis: dist.tune_domain() for axis, dist in spec.search.items()}
    if spec.tune.search != "optuna":
        space["seed"] = tune.grid_search(list(spec.tune.seeds))
    return space


def _sampled(spec: SweepSpec, axis: str, read: Callable[[Any, str], Any], sampled: Any) -> Any:
    """``read(sampled, key)`` of an axis's distribution (its config value or label); a value
    that is none of the axis's is a SpecError naming the file and the axis."""
    try:
        return read(sampled, f"search.{axis}")
    except ConfigError as err:
        raise SpecError(f"{spec.path}: {err}") from None


def _seed(spec: SweepSpec, sampled: Mapping) -> int:
    if "seed" in sampled:
        return int(plain(sampled["seed"]))
    if TRIAL_INDEX in sampled:
        index = int(plain(sampled[TRIAL_INDEX]))
        if not 0 <= index < len(spec.tune.seeds):
            raise SpecError(
                f"{spec.path}: tune.seeds: trial index {index} is outside the "
                f"{len(spec.tune.seeds)} seeds {spec.tune.seeds}"
            )
        return spec.tune.seeds[index]
    return spec.tune.seeds[0]


def trial_overrides(spec: SweepSpec, sampled: Mapping) -> dict[str, Any]:
    """Dotted config key -> value for one sampled Tune config: labels mapped back to values,
    mapping options expanded to their assignments, ``seed`` from ``"seed"`` or the Repeater's
    ``"__trial_index__"`` (``tune.seeds[0]`` when neither is there). Unknown keys are ignored;
    an axis renamed since the sweep began (a resumed one samples it under its old name) is read
    under either name."""
    out: dict[str, Any] = {}
    for axis, dist in spec.search.items():
        name = axis if axis in sampled else STORED_NAMES.get(axis, axis)
        if name not in sampled:
            continue
        value = _sampled(spec, axis, dist.config_value, sampled[name])
        out.update(assignments("" if config_path(axis) is None else axis, value))
    out["seed"] = _seed(spec, sampled)
    return out


def _base_tree(spec: SweepSpec) -> dict[str, Any]:
    tree = spec.base.to_dict()
    tree.update(dict.fromkeys(spec.implicit_auto, ""))
    tree.update(dict.fromkeys(spec.explicit_empty, EXPLICIT_EMPTY))
    return tree


def resolve(spec: SweepSpec, sampled: Mapping) -> ExperimentConfig:
    """The validated config of one trial: ``spec.base`` plus :func:`trial_overrides`."""
    return experiment_config(_base_tree(spec), trial_overrides(spec, sampled))


def _short_names(axes: Sequence[str]) -> dict[str, str]:
    """The last path component of each axis, or as many trailing components as make it unique."""
    out = {}
    for axis in axes:
        parts = axis.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            others = [a for a in axes if a != axis and (a == name or a.endswith("." + name))]
            if not others:
                break
        out[axis] = name
    return out


def trial_label(spec: SweepSpec, sampled: Mapping) -> str:
    """A readable, short trial name such as ``"paradigm=d kl=0.1 seed=0"``: axes in file order
    by their last path component, floats with 3 significant digits, mapping options by label."""
    names = _short_names(list(spec.search))
    parts = []
    for axis, dist in spec.search.items():
        if axis not in sampled:
            continue
        label = _sampled(spec, axis, dist.label, sampled[axis])
        parts.append(label if config_path(axis) is None else f"{names[axis]}={label}")
    parts.append(f"seed={_seed(spec, sampled)}")
    return " ".join(parts)


def num_trials(spec: SweepSpec) -> int:
    """How many trials Tune will run: grid/random: num_samples x grid sizes x seeds;
    optuna: num_samples x seeds."""
    n = spec.tune.num_samples * len(spec.tune.seeds)
    if spec.tune.search != "optuna":
        n *= math.prod(len(d.options) for d in spec.search.values() if d.grid)
    return n


def grid_variants(spec: SweepSpec) -> list[dict[str, Any]]:
    """The cartesian product of the grid axes and the seeds, as sampled-like dicts (labels and
    ``"seed"``); other axes take their first option or low bound. For ``--dry-run``."""
    grids = {axis: d.labels() for axis, d in spec.search.items() if d.grid}
    variants = []
    for combo in itertools.product(*grids.values(), spec.tune.seeds):
        chosen = dict(zip(grids, combo[:-1]))
        sampled = {axis: chosen.get(axis, d.first()) for axis, d in spec.search.items()}
        sampled["seed"] = combo[-1]
        variants.append(sampled)
    return variants


def describe(spec: SweepSpec) -> str:
    """Several lines of text: the spec's search space, fixed values and Tune settings."""
    t = spec.tune
    lines = [f"sweep {spec.name} ({spec.path})"]
    if spec.description:
        lines.append(f"  {spec.description.strip()}")
    base = f"{spec.base_file} + " if spec.base_file else ""
    lines.append(f"base: {base}experiment section (stage {spec.base.stage})")
    if spec.fixed:
        lines.append("fixed:")
        lines += [f"  {key} = {label_of(value)}" for key, value in spec.fixed.items()]
    lines.append("search:" if spec.search else "search: (no axes)")
    lines += [f"  {axis}: {dist}" for axis, dist in spec.search.items()]
    if spec.stages:
        lines.append("stages: " + ", ".join(f"{k}={label_of(v)}" for k, v in spec.stages.items()))
    scheduler = t.scheduler
    if t.scheduler == "asha":
        scheduler += " " + ", ".join(f"{k}={v}" for k, v in t.asha.items())
    lines += [
        f"seeds: {t.seeds}",
        f"tune: {t.search} search, {t.num_samples} sample(s), {scheduler}; "
        f"{_objectives(t)}; {num_trials(spec)} trial(s)",
        *(
            f"  tried first: {' '.join(f'{k}={label_of(v)}' for k, v in point.items())}"
            for point in t.points_to_evaluate
        ),
        *(
            [
                f"deploy: each student measured at {'x'.join(map(str, spec.deploy.size))}, "
                f"batch {spec.deploy.batch}, on {spec.deploy.device} before it trains"
            ]
            if spec.deploy is not None
            else []
        ),
        f"resources per trial: cpu {spec.resources.cpu:g}, gpu {spec.resources.gpu:g}, "
        f"workers {spec.resources.workers}",
        f"tracking: {spec.tracking.uri or 'default sqlite store'}, "
        f"experiment {spec.experiment_name}; storage: {spec.storage}",
    ]
    return "\n".join(lines)


def _objectives(t: TuneSettings) -> str:
    """``max miou`` or ``max miou, min peak_memory_mb (Pareto front)``, with the constraints."""
    text = ", ".join(f"{mode} {metric}" for metric, mode in zip(t.objectives, t.modes))
    if t.multi:
        text += " (Pareto front)"
    for name, bounds in t.constraints.items():
        text += "; " + " and ".join(
            f"{name} {'<=' if bound == 'max' else '>='} {value:g}"
            for bound, value in bounds.items()
        )
    return text
