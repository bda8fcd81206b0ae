"""The search space: each distribution kind's Tune domain, the config value and label of what
Tune samples, the points Optuna tries first; and what every shipped spec gives Tune, its trial
names and its searcher's first suggestions, as written down by hand from the spec files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer, Quantized

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.config import ConfigError
from dakd.sweep.spec.space import KINDS, Distribution
from dakd.sweep.spec.sweep_spec import (
    SpecError,
    grid_variants,
    load_spec,
    num_trials,
    param_space,
    trial_label,
)

ROOT = Path(__file__).resolve().parents[1]


def domain(d) -> tuple:
    """A Tune domain as the searchers see it: its kind and its parameters (or labels)."""
    if isinstance(d, dict):
        return ("grid_search", *d["grid_search"])
    if isinstance(d, Categorical):
        return ("choice", *d.categories)
    sampler = d.get_sampler()
    if isinstance(sampler, Quantized):
        assert isinstance(sampler.get_sampler(), Float._Uniform)
        return ("quniform", d.lower, d.upper, sampler.q)
    if isinstance(d, Integer):
        assert isinstance(sampler, Integer._Uniform)
        return ("randint", d.lower, d.upper)
    if isinstance(sampler, Float._LogUniform):
        return ("loguniform", d.lower, d.upper)
    assert isinstance(d, Float) and isinstance(sampler, Float._Uniform)
    return ("uniform", d.lower, d.upper)


# -- one kind at a time -------------------------------------------------------------------------

CHOICE = Distribution("choice", (0.1, 1), (("0.1", 0.1), ("1", 1)))
GRID = Distribution(
    "grid",
    (["output"], ["output", "feature"]),
    (("output", ["output"]), ("output+feature", ["output", "feature"])),
)
UNIFORM = Distribution("uniform", (0.5, 2.0))
LOGUNIFORM = Distribution("loguniform", (0.01, 1.0))
RANDINT = Distribution("randint", (1, 10))
QUNIFORM = Distribution("quniform", (1.0, 4.0, 0.5))


def test_the_kinds_in_the_order_messages_list_them():
    assert list(KINDS) == ["choice", "grid", "uniform", "loguniform", "randint", "quniform"]
    assert [k for k, kind in KINDS.items() if kind.categorical] == ["choice", "grid"]
    assert [k for k, kind in KINDS.items() if kind.grid] == ["grid"]


@pytest.mark.parametrize(
    "dist, expected",
    [
        (CHOICE, ("choice", "0.1", "1")),
        (GRID, ("grid_search", "output", "output+feature")),
        (UNIFORM, ("uniform", 0.5, 2.0)),
        (LOGUNIFORM, ("loguniform", 0.01, 1.0)),
        (RANDINT, ("randint", 1, 10)),
        (QUNIFORM, ("quniform", 1.0, 4.0, 0.5)),
    ],
    ids=lambda x: x.kind if isinstance(x, Distribution) else "",
)
def test_each_kind_gives_its_tune_domain(dist, expected):
    assert domain(dist.tune_domain()) == expected


def test_the_domains_are_the_ones_tune_makes():
    assert GRID.tune_domain() == tune.grid_search(["output", "output+feature"])
    assert CHOICE.tune_domain().categories == tune.choice(["0.1", "1"]).categories


def test_an_option_comes_back_from_its_label_or_its_own_value():
    assert CHOICE.config_value("1") == 1 and type(CHOICE.config_value("1")) is int
    assert CHOICE.config_value(0.1) == 0.1 and CHOICE.config_value(1) == 1
    levels = GRID.config_value("output+feature")
    assert levels == ["output", "feature"] and levels is not GRID.options[1][1]  # a copy
    assert GRID.config_value(["output"]) == ["output"]
    assert (CHOICE.label("0.1"), CHOICE.label(1), GRID.label("output+feature")) == (
        "0.1",
        "1",
        "output+feature",
    )
    with pytest.raises(ConfigError) as err:
        CHOICE.config_value("2", "search.loss.kl")
    assert str(err.value) == "search.loss.kl: '2' is not one of its options (0.1, 1)"
    with pytest.raises(ConfigError, match=r"^search.x: 1\.0 is not one of its options"):
        CHOICE.config_value(1.0, "search.x")  # a value of another type is no option


def test_a_sampled_number_becomes_the_config_value_and_a_short_label():
    assert UNIFORM.config_value(np.float64(1.25)) == 1.25
    assert type(UNIFORM.config_value(np.float64(1.25))) is float
    assert type(UNIFORM.config_value(1)) is float and UNIFORM.label(0.123456) == "0.123"
    assert LOGUNIFORM.config_value(0.022937145935626995) == 0.022937145935626995
    assert LOGUNIFORM.label(0.022937145935626995) == "0.0229"
    assert RANDINT.config_value(np.int64(4)) == 4 and type(RANDINT.config_value(4.0)) is int
    assert RANDINT.label(np.int64(9)) == "9"
    # quniform: on its step, whatever the float error of Tune's rounding
    assert QUNIFORM.config_value(2.5000000000000004) == 2.5
    assert QUNIFORM.config_value(2.6) == 2.5 and QUNIFORM.label(3.9999999) == "4"
    for dist in (UNIFORM, LOGUNIFORM, RANDINT, QUNIFORM):
        for bad in ("x", True):
            with pytest.raises(ConfigError) as err:
                dist.config_value(bad, "search.loss.kl")
            assert str(err.value) == f"search.loss.kl: expected a number, got {bad!r}"


def test_a_point_to_evaluate_becomes_what_tune_samples():
    key = "tune.points_to_evaluate[0].x"
    assert CHOICE.point_value(1, key) == "1" and CHOICE.point_value("0.1", key) == "0.1"
    assert GRID.point_value(["output", "feature"], key) == "output+feature"
    assert UNIFORM.point_value(2, key) == 2.0 and LOGUNIFORM.point_value(0.01, key) == 0.01
    assert RANDINT.point_value(9.0, key) == 9 and type(RANDINT.point_value(9.0, key)) is int
    assert QUNIFORM.point_value(3.5, key) == 3.5
    bad = [
        (CHOICE, 0.5, "0.5 is not one of its options (0.1, 1)"),
        (UNIFORM, 2.5, "2.5 is outside its range [0.5, 2.0]"),
        (LOGUNIFORM, 0.001, "0.001 is outside its range [0.01, 1.0]"),
        (RANDINT, 10, "expected an integer in [1, 10), got 10"),
        (RANDINT, 2.5, "expected an integer in [1, 10), got 2.5"),
        (QUNIFORM, 1.25, "1.25 is not a multiple of its step 0.5"),
        (UNIFORM, "x", "expected a number, got 'x' (str)"),
    ]
    for dist, value, message in bad:
        with pytest.raises(ConfigError) as err:
            dist.point_value(value, key)
        assert str(err.value) == f"{key}: {message}"


def test_first_and_text_of_each_kind():
    assert [d.first() for d in (CHOICE, GRID, UNIFORM, RANDINT, QUNIFORM)] == [
        "0.1",
        "output",
        0.5,
        1,
        1.0,
    ]
    assert str(GRID) == "grid(output | output+feature)"
    assert str(QUNIFORM) == "quniform(1.0, 4.0, 0.5)" and str(RANDINT) == "randint(1, 10)"
    with pytest.raises(ValueError, match=r"^unknown distribution 'normal'; one of choice, grid"):
        Distribution("normal", (0.0, 1.0))


@pytest.fixture
def spec_with(tmp_path):
    """``spec_with(search)`` -> the path of a small spec with that ``search`` section."""

    def make(search):
        path = tmp_path / "spec.yaml"
        spec = {
            "name": "s",
            "experiment": {
                "base": str(ROOT / "configs" / "embedded.yaml"),
                "stage": "student_da",
                "train": {"steps": 10},
            },
            "search": search,
        }
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return make


@pytest.mark.parametrize(
    "axis, written, problem",
    [
        ("loss.kl", {"choice": 0.1}, "choice needs a non-empty list of options, got 0.1"),
        ("loss.kl", {"grid": []}, "grid needs a non-empty list of options, got []"),
        ("loss.kl", {"uniform": [1]}, "uniform needs [low, high], got [1]"),
        ("loss.kl", {"loguniform": [0, 1]}, "loguniform needs low > 0, got [0, 1]"),
        ("train.eval_interval", {"randint": [5, 5]}, "randint needs low < high, got [5, 5]"),
        ("loss.kl", {"quniform": [0, 1]}, "quniform needs [low, high, q], got [0, 1]"),
        ("loss.kl", {"normal": [0, 1]}, "unknown distribution 'normal'; one of "),
    ],
)
def test_a_malformed_distribution_is_one_line_naming_the_key(spec_with, axis, written, problem):
    path = spec_with({axis: written})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    line = str(err.value)
    assert line.startswith(f"{path}: search.{axis}: {problem}")
    assert len(line.splitlines()) == 1


# -- the shipped specs --------------------------------------------------------------------------

#: The paper's rows (real_to_real.yaml, synth_to_real.yaml), by label.
METHODS = (
    'stage=source_only teacher="" init=""',
    'stage=oracle teacher="" init=""',
    'stage=teacher_da teacher="" init=""',
    'stage=student_da teacher="" init=""',
    'stage=student_da teacher="" init=auto',
    *(f"stage=dakd paradigm={p}" for p in "abcd"),
)
SHORT = " train.steps=300 train.eval_interval=150"  # paradigms.yaml's lower bound and oracle

#: spec -> (its Tune param_space, the first grid variant's trial name, how many trials)
SHIPPED = {
    "levels": (
        {
            "distill.levels": ("grid_search", "output", "feature", "output+feature"),
            "seed": ("grid_search", 0, 1, 2),
        },
        "levels=output seed=0",
        9,
    ),
    "loss_ablation": (
        {
            "terms": (
                "grid_search",
                "loss.kl=0.1 loss.mse=0.0 loss.pseudo=0.0",
                "loss.kl=0.0 loss.mse=0.01 loss.pseudo=0.0",
                "loss.kl=0.0 loss.mse=0.0 loss.pseudo=1.0",
                "loss.kl=0.1 loss.mse=0.01 loss.pseudo=0.0",
                "loss.kl=0.1 loss.mse=0.0 loss.pseudo=1.0",
                "loss.kl=0.0 loss.mse=0.01 loss.pseudo=1.0",
                "loss.kl=0.1 loss.mse=0.01 loss.pseudo=1.0",
            ),
            "seed": ("grid_search", 0, 1, 2),
        },
        "loss.kl=0.1 loss.mse=0.0 loss.pseudo=0.0 seed=0",
        21,
    ),
    "loss_schedule": (
        {
            "loss.kl": ("loguniform", 0.01, 1.0),
            "loss.mse": ("loguniform", 0.001, 0.1),
            "loss.pseudo": ("loguniform", 0.05, 2.0),
            "loss.target": ("loguniform", 0.01, 2.0),
            "loss.temperature": ("quniform", 1.0, 4.0, 0.5),
            "seed": ("grid_search", 0),
        },
        "kl=0.01 mse=0.001 pseudo=0.05 target=0.01 temperature=1 seed=0",
        4,
    ),
    "loss_weights": (
        {
            "paradigm": ("choice", "a", "b", "c", "d"),
            "loss.kl": ("loguniform", 0.01, 1.0),
            "loss.mse": ("loguniform", 0.001, 0.1),
            "loss.pseudo": ("loguniform", 0.05, 2.0),
            "loss.target": ("loguniform", 0.01, 2.0),
            "loss.temperature": ("quniform", 1.0, 4.0, 0.5),
        },
        "paradigm=a kl=0.01 mse=0.001 pseudo=0.05 target=0.01 temperature=1 seed=0",
        8,
    ),
    "paradigms": (
        {
            "data.scenario": ("grid_search", "synth_to_real", "real_to_real"),
            "method": (
                "grid_search",
                METHODS[0] + SHORT,
                METHODS[1] + SHORT,
                *METHODS[2:],
            ),
            "seed": ("grid_search", 0, 1, 2),
        },
        f"scenario=synth_to_real {METHODS[0]}{SHORT} seed=0",
        54,
    ),
    "quickstart": (
        {
            "distill.levels": ("grid_search", "output", "output+feature"),
            "seed": ("grid_search", 0),
        },
        "levels=output seed=0",
        2,
    ),
    "real_to_real": (
        {"method": ("grid_search", *METHODS), "seed": ("grid_search", 0, 1, 2)},
        f"{METHODS[0]} seed=0",
        27,
    ),
    "synth_to_real": (
        {"method": ("grid_search", *METHODS), "seed": ("grid_search", 0, 1, 2)},
        f"{METHODS[0]} seed=0",
        27,
    ),
    "student_search": (
        {
            "models.student.width": ("choice", "0.0625", "0.125", "0.25", "0.5", "1.0"),
            "models.student.output_stride": ("choice", "2", "4", "8"),
            "distill.levels": ("choice", "output", "output+feature"),
        },
        "width=0.0625 output_stride=2 levels=output seed=0",
        12,
    ),
    "student_search_real": (
        {
            "student": (
                "choice",
                "models.student.name=drn_d_22 models.student.width=1.0 "
                "models.student.pretrained=weights/drn_d_22-4bd2f8ea.pth",
                "models.student.name=drn_d_38 models.student.width=1.0 "
                "models.student.pretrained=weights/drn_d_38-eebb45f0.pth",
                'models.student.name=drn_d_22 models.student.width=0.5 models.student.pretrained=""',
                'models.student.name=drn_d_22 models.student.width=0.25 models.student.pretrained=""',
            ),
            "models.student.output_stride": ("choice", "8", "4"),
            "distill.levels": ("choice", "output", "output+feature"),
        },
        "models.student.name=drn_d_22 models.student.width=1.0 "
        "models.student.pretrained=weights/drn_d_22-4bd2f8ea.pth output_stride=8 levels=output "
        "seed=0",
        16,
    ),
}


def test_every_shipped_spec_is_written_down_here():
    assert sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_spec_gives_tune_its_space_and_names_its_trials(name):
    space, first, trials = SHIPPED[name]
    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    given = param_space(spec)
    assert {axis: domain(d) for axis, d in given.items()} == space
    assert list(given) == list(space)  # the spec's order, the seeds last
    assert trial_label(spec, grid_variants(spec)[0]) == first
    assert num_trials(spec) == trials
    for dist in spec.search.values():  # every option's label names its value
        for label, value in dist.options:
            assert dist.config_value(label) == value


def test_sampled_values_name_a_trial_with_three_digits():
    spec = load_spec(ROOT / "sweeps" / "loss_weights.yaml")
    sampled = {
        "paradigm": "b",
        "loss.kl": np.float64(0.022937145935626995),
        "loss.mse": 0.002293714593562699,
        "loss.pseudo": 0.09722386022666561,
        "loss.target": 0.025989980964375953,
        "loss.temperature": 1.5000000000000002,
    }
    assert trial_label(spec, sampled) == (
        "paradigm=b kl=0.0229 mse=0.00229 pseudo=0.0972 target=0.026 temperature=1.5 seed=0"
    )
    assert spec.tune.points_to_evaluate == [
        {
            "paradigm": "d",
            "loss.kl": 0.1,
            "loss.mse": 0.01,
            "loss.pseudo": 1.0,
            "loss.target": 1.0,
            "loss.temperature": 1.0,
        }
    ]


def suggestions(spec, n: int) -> list[str]:
    """The trial names of the first ``n`` configurations the sweep's searcher suggests, told
    0, 1, 2, 0, ... for every objective after each."""
    from dakd.sweep.driver.tuner import build_tuner_parts

    search_alg, _ = build_tuner_parts(spec)
    t = spec.tune
    metric, mode = (None, None) if t.multi else (t.primary, t.primary_mode)
    search_alg.set_search_properties(metric, mode, param_space(spec))
    names = []
    for i in range(n):
        config = search_alg.suggest(f"t{i}")
        names.append(trial_label(spec, config))
        search_alg.on_trial_complete(f"t{i}", {m: float(i % 3) for m in t.objectives})
    return names


def test_the_searchers_suggest_what_they_suggested():
    """With the spec's seeds, Optuna starts from the points to evaluate, then samples the same
    configurations as before (TPE over ranges and choices, NSGA-II over choices)."""
    weights = load_spec(ROOT / "sweeps" / "loss_weights.yaml")
    assert suggestions(weights, 3) == [
        "paradigm=d kl=0.1 mse=0.01 pseudo=1 target=1 temperature=1 seed=0",
        "paradigm=b kl=0.0704 mse=0.0196 pseudo=0.251 target=1.13 temperature=4 seed=0",
        "paradigm=b kl=0.71 mse=0.00139 pseudo=0.069 target=0.0111 temperature=3.5 seed=0",
    ]
    students = load_spec(ROOT / "sweeps" / "student_search.yaml")
    assert suggestions(students, 5) == [
        "width=0.0625 output_stride=8 levels=output+feature seed=0",
        "width=0.125 output_stride=2 levels=output+feature seed=0",
        "width=0.25 output_stride=2 levels=output+feature seed=0",
        "width=0.5 output_stride=2 levels=output+feature seed=0",
        "width=0.125 output_stride=8 levels=output seed=0",
    ]
