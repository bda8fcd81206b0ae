"""Sweep specs: loading, validation errors that name file and key, the Tune space and back."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer, Quantized

from dakd.config import renamed
from dakd.sweep.spec.sweep_spec import (
    Distribution,
    SpecError,
    describe,
    grid_variants,
    load_spec,
    num_trials,
    param_space,
    resolve,
    trial_label,
    trial_overrides,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# the example of the contract, with the base one folder up from the spec
EXAMPLE = """
name: loss_weights
description: free text
experiment:
  base: ../configs/embedded.yaml
  stage: dakd
  train: {steps: 300}
  loss.seg_aux: 0.2
stages:
  train.steps: 600
search:
  loss.kl: {loguniform: [0.01, 1.0]}
  loss.mse: {choice: [0.0, 0.01, 0.1]}
  loss.temperature: {quniform: [1.0, 4.0, 0.5]}
  train.eval_interval: {randint: [1, 10]}
  loss.pseudo: {uniform: [0.5, 2.0]}
  distill.levels: {grid: [[output], [feature], [output, feature]]}
  optim.lr: 0.01
  method:
    grid:
      - {stage: student_da, init: auto}
      - {stage: dakd, paradigm: d, distill.sequential_split: 0.5}
tune:
  metric: miou
  mode: max
  num_samples: 8
  search: random
  search_seed: 3
  scheduler: asha
  asha: {grace_period: 2, reduction_factor: 3}
  seeds: [0, 1, 2]
  max_concurrent: 2
  max_failures: 1
  reuse_actors: false
resources: {cpu: 0.5, gpu: 0.25, workers: 1}
tracking: {uri: null, experiment: null}
storage: runs/ray
"""


@pytest.fixture
def write(tmp_path):
    """``write(text_or_dict, name=...)`` -> path of a spec under ``tmp_path/sweeps``."""
    (tmp_path / "configs").mkdir()
    shutil.copy(CONFIGS / "embedded.yaml", tmp_path / "configs" / "embedded.yaml")
    (tmp_path / "sweeps").mkdir()

    def make(spec, name="spec.yaml"):
        path = tmp_path / "sweeps" / name
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
        return path

    return make


def minimal(**sections):
    """A small valid spec as a dict, with ``sections`` replacing or adding top-level keys."""
    spec = {
        "name": "s",
        "experiment": {"stage": "student_da", "train": {"steps": 10}},
        "search": {"loss.kl": {"choice": [0.1, 0.5]}},
    }
    spec.update(sections)
    return spec


def test_example_loads_with_everything_in_place(write):
    path = write(EXAMPLE)
    spec = load_spec(path)
    assert spec.path == path and spec.name == "loss_weights" and spec.description == "free text"
    assert spec.base_file == path.parent.parent / "configs" / "embedded.yaml"
    base = spec.base
    # base file, then the experiment section (nested and dotted), then fixed search values
    assert base.name == "embedded" and base.optim.momentum == 0.9 and base.data.val_batch_size == 50
    assert base.stage == "dakd" and base.train.steps == 300 and base.train.threads == 2
    assert base.loss.seg_aux == 0.2 and base.optim.lr == 0.01
    assert spec.fixed == {"optim.lr": 0.01}
    # stage dakd without teacher/init: the reused stages
    assert (base.teacher, base.init) == ("auto", "auto")
    assert list(spec.search) == [
        "loss.kl",
        "loss.mse",
        "loss.temperature",
        "train.eval_interval",
        "loss.pseudo",
        "distill.levels",
        "method",
    ]
    assert spec.search["loss.kl"] == Distribution("loguniform", (0.01, 1.0))
    assert spec.search["loss.temperature"] == Distribution("quniform", (1.0, 4.0, 0.5))
    assert spec.search["train.eval_interval"] == Distribution("randint", (1, 10))
    assert spec.search["loss.mse"].options == (("0.0", 0.0), ("0.01", 0.01), ("0.1", 0.1))
    assert spec.search["distill.levels"].labels() == ["output", "feature", "output+feature"]
    assert spec.search["method"].labels() == [
        "stage=student_da init=auto",
        "stage=dakd paradigm=d distill.sequential_split=0.5",
    ]
    assert spec.stages == {"train.steps": 600}
    t = spec.tune
    assert (t.metric, t.mode, t.num_samples, t.search, t.search_seed) == (
        "miou",
        "max",
        8,
        "random",
        3,
    )
    assert (t.scheduler, t.asha) == ("asha", {"grace_period": 2, "reduction_factor": 3})
    assert (t.seeds, t.max_concurrent, t.max_failures, t.reuse_actors) == ([0, 1, 2], 2, 1, False)
    assert (spec.resources.cpu, spec.resources.gpu, spec.resources.workers) == (0.5, 0.25, 1)
    assert spec.tracking.uri is None and spec.experiment_name == "loss_weights"
    assert spec.storage == "runs/ray"
    text = describe(spec)
    assert "loss.kl: loguniform(0.01, 1.0)" in text
    assert "distill.levels: grid(output | feature | output+feature)" in text
    assert "optim.lr = 0.01" in text and "144 trial(s)" in text


def test_defaults_of_optional_sections(write):
    spec = load_spec(write({"name": "d", "experiment": {"stage": "teacher_da"}}))
    assert spec.base.stage == "teacher_da" and spec.base.teacher == "" and spec.search == {}
    t = spec.tune
    assert (t.metric, t.mode, t.num_samples, t.search, t.scheduler) == (
        "miou",
        "max",
        1,
        "grid",
        "fifo",
    )
    assert (t.seeds, t.max_concurrent, t.max_failures, t.reuse_actors) == ([0], "auto", 2, True)
    assert t.asha == {"grace_period": 1, "reduction_factor": 2} and t.search_seed == 0
    assert (spec.resources.cpu, spec.resources.gpu, spec.resources.workers) == (1.0, 0.0, 1)
    assert spec.storage == "runs/ray" and spec.stages == {} and spec.base_file is None
    assert num_trials(spec) == 1 and grid_variants(spec) == [{"seed": 0}]
    assert load_spec(write(minimal(tracking={"experiment": "x"}))).experiment_name == "x"


def test_base_path_falls_back_to_the_current_folder(write, tmp_path, monkeypatch):
    path = write(minimal(experiment={"base": "configs/embedded.yaml", "stage": "student_da"}))
    monkeypatch.chdir(tmp_path / "sweeps")
    with pytest.raises(SpecError, match=r"spec\.yaml: experiment\.base: no such config file"):
        load_spec(path)
    monkeypatch.chdir(tmp_path)
    spec = load_spec(path)
    assert spec.base_file == Path("configs/embedded.yaml") and spec.base.name == "embedded"
    # the spec's own folder wins over the current folder
    (tmp_path / "sweeps" / "configs").mkdir()
    (tmp_path / "sweeps" / "configs" / "embedded.yaml").write_text("name: local\n")
    assert load_spec(path).base.name == "local"


def test_param_space_has_every_distribution_kind(write):
    space = param_space(load_spec(write(EXAMPLE)))
    kl, temp, steps, pseudo = (
        space[k] for k in ("loss.kl", "loss.temperature", "train.eval_interval", "loss.pseudo")
    )
    assert isinstance(kl, Float) and (kl.lower, kl.upper) == (0.01, 1.0)
    assert isinstance(kl.get_sampler(), Float._LogUniform)
    assert isinstance(pseudo, Float) and isinstance(pseudo.get_sampler(), Float._Uniform)
    assert (pseudo.lower, pseudo.upper) == (0.5, 2.0)
    assert isinstance(temp.get_sampler(), Quantized) and temp.get_sampler().q == 0.5
    assert isinstance(steps, Integer) and (steps.lower, steps.upper) == (1, 10)
    assert isinstance(space["loss.mse"], Categorical)
    assert space["loss.mse"].categories == ["0.0", "0.01", "0.1"]
    assert space["distill.levels"] == tune.grid_search(["output", "feature", "output+feature"])
    assert space["method"]["grid_search"][1] == "stage=dakd paradigm=d distill.sequential_split=0.5"
    # every categorical value Tune sees is a string (Optuna only takes primitives)
    assert all(isinstance(v, str) for v in space["method"]["grid_search"])
    assert space["seed"] == tune.grid_search([0, 1, 2])
    assert list(space) == [*load_spec(write(EXAMPLE)).search, "seed"]


def test_optuna_keeps_seeds_out_of_the_space_and_rejects_grid(write):
    text = EXAMPLE.replace("search: random", "search: optuna")
    with pytest.raises(SpecError, match=r"search\.distill\.levels: grid needs tune\.search grid"):
        load_spec(write(text))
    text = text.replace("{grid: [[output]", "{choice: [[output]").replace("grid:\n", "choice:\n")
    spec = load_spec(write(text))
    space = param_space(spec)
    assert "seed" not in space and isinstance(space["method"], Categorical)
    assert num_trials(spec) == 8 * 3


def test_labels_round_trip(write):
    spec = load_spec(
        write(
            minimal(
                search={
                    "loss.kl": {"choice": [0.1, 1, 1e-05]},
                    "paradigm": {"choice": ["a", "d"]},
                    "train.deterministic": {"choice": [True, False]},
                    "optim.disc_betas": {"choice": [[0.9, 0.99], [0.5, 0.999]]},
                    "models.student": {
                        "grid": [{"name": "drn_d_22", "width": 0.25}, {"width": 0.5}]
                    },
                    "method": {"grid": [{"loss": {"mse": 0.0}, "train.steps": 20}]},
                }
            )
        )
    )
    labels = {axis: dist.labels() for axis, dist in spec.search.items()}
    assert labels == {
        "loss.kl": ["0.1", "1", "1e-05"],
        "paradigm": ["a", "d"],
        "train.deterministic": ["true", "false"],
        "optim.disc_betas": ["0.9+0.99", "0.5+0.999"],
        "models.student": ["name=drn_d_22 width=0.25", "width=0.5"],
        "method": ["loss.mse=0.0 train.steps=20"],
    }
    for axis, dist in spec.search.items():
        for label, value in dist.options:
            out = trial_overrides(spec, {axis: label})
            if axis == "method":
                assert out == {"loss.mse": 0.0, "train.steps": 20, "seed": 0}
            elif axis == "models.student":
                assert out == {**{f"models.student.{k}": v for k, v in value.items()}, "seed": 0}
            else:
                assert out == {axis: value, "seed": 0}
                assert type(out[axis]) is type(value)
    # a section option merges into the base's section instead of replacing it
    cfg = resolve(spec, {"models.student": "width=0.5"})
    assert cfg.models.student.name == "drn_d_22" and cfg.models.student.width == 0.5
    # the raw value is accepted too; a value that is no option is an error naming the axis
    assert trial_overrides(spec, {"loss.kl": 1})["loss.kl"] == 1
    with pytest.raises(SpecError, match=r"spec\.yaml: search\.loss\.kl: '0\.2' is not one of"):
        trial_overrides(spec, {"loss.kl": "0.2"})


def test_trial_index_maps_to_seeds(write):
    spec = load_spec(write(minimal(tune={"seeds": [7, 3, 5], "search": "optuna"})))
    assert [trial_overrides(spec, {"__trial_index__": i})["seed"] for i in range(3)] == [7, 3, 5]
    assert resolve(spec, {"__trial_index__": np.int64(2), "loss.kl": "0.5"}).seed == 5
    assert trial_overrides(spec, {})["seed"] == 7  # no Repeater (one seed): the first seed
    assert trial_overrides(spec, {"seed": 3, "__trial_index__": 0})["seed"] == 3
    assert trial_label(spec, {"__trial_index__": 1, "loss.kl": "0.5"}) == "kl=0.5 seed=3"
    with pytest.raises(SpecError, match=r"tune\.seeds: trial index 3 is outside"):
        trial_overrides(spec, {"__trial_index__": 3})


def test_grid_counting_and_variants(write):
    spec = load_spec(write(EXAMPLE))
    assert num_trials(spec) == 8 * 3 * 2 * 3  # num_samples x levels x method x seeds
    variants = grid_variants(spec)
    assert len(variants) == 3 * 2 * 3
    first = variants[0]
    assert first == {
        "loss.kl": 0.01,
        "loss.mse": "0.0",
        "loss.temperature": 1.0,
        "train.eval_interval": 1,
        "loss.pseudo": 0.5,
        "distill.levels": "output",
        "method": "stage=student_da init=auto",
        "seed": 0,
    }
    combos = {(v["distill.levels"], v["method"], v["seed"]) for v in variants}
    assert len(combos) == len(variants)
    # each variant resolves; the dry run's stages follow the method axis
    stages = [resolve(spec, v).stage for v in variants]
    assert stages.count("student_da") == stages.count("dakd") == 9
    random = load_spec(write(EXAMPLE.replace("num_samples: 8", "num_samples: 1")))
    assert num_trials(random) == 18


def test_resolve_and_trial_label(write):
    spec = load_spec(write(EXAMPLE))
    sampled = {
        "loss.kl": np.float64(0.123456),
        "loss.mse": "0.01",
        "loss.temperature": 2.5000000000000004,
        "train.eval_interval": np.int64(4),
        "loss.pseudo": 1.0,
        "distill.levels": "output+feature",
        "method": "stage=dakd paradigm=d distill.sequential_split=0.5",
        "seed": 2,
        "unknown": "ignored",
    }
    out = trial_overrides(spec, sampled)
    assert out == {
        "loss.kl": 0.123456,
        "loss.mse": 0.01,
        "loss.temperature": 2.5,
        "train.eval_interval": 4,
        "loss.pseudo": 1.0,
        "distill.levels": ["output", "feature"],
        "stage": "dakd",
        "paradigm": "d",
        "distill.sequential_split": 0.5,
        "seed": 2,
    }
    assert type(out["loss.kl"]) is float and type(out["train.eval_interval"]) is int
    cfg = resolve(spec, sampled)
    assert (cfg.stage, cfg.paradigm, cfg.seed, cfg.train.eval_interval) == ("dakd", "d", 2, 4)
    assert (cfg.teacher, cfg.init, cfg.optim.lr, cfg.train.steps) == ("auto", "auto", 0.01, 300)
    assert trial_label(spec, sampled) == (
        "kl=0.123 mse=0.01 temperature=2.5 eval_interval=4 pseudo=1 levels=output+feature "
        "stage=dakd paradigm=d distill.sequential_split=0.5 seed=2"
    )
    # a trial that leaves stage dakd does not inherit the implicit auto teacher
    student = resolve(spec, {**sampled, "method": "stage=student_da init=auto"})
    assert (student.stage, student.teacher, student.init) == ("student_da", "", "auto")
    # an explicit teacher stays what it is; short names grow until they are unique
    spec = load_spec(
        write(
            minimal(
                experiment={"stage": "teacher_da", "teacher": "t.pt"},
                search={
                    "models.student.width": {"choice": [0.25]},
                    "models.teacher.width": {"uniform": [0.25, 0.5]},
                    "method": {"choice": [{"stage": "student_da"}]},
                },
            )
        )
    )
    sampled = {
        "models.student.width": "0.25",
        "models.teacher.width": 0.3333,
        "method": "stage=student_da",
    }
    assert resolve(spec, sampled).teacher == "t.pt"
    assert (
        trial_label(spec, sampled)
        == "student.width=0.25 teacher.width=0.333 stage=student_da seed=0"
    )


def test_overrides_address_the_spec_tree(write):
    path = write(EXAMPLE)
    spec = load_spec(
        path,
        [
            "tune.num_samples=2",
            "tune.asha.grace_period=4",
            "experiment.train.steps=20",
            "resources.cpu=1",
            "search.loss.kl=0.5",
            "search.method=stage=dakd paradigm=d distill.sequential_split=0.5",
            "stages.train.steps=7",
            "tracking.experiment=exp",
            "name=other",
            "storage=s3://bucket/ray",
        ],
    )
    assert spec.tune.num_samples == 2 and spec.tune.asha["grace_period"] == 4
    assert spec.base.train.steps == 20 and spec.resources.cpu == 1.0
    assert "loss.kl" not in spec.search and "method" not in spec.search
    assert spec.fixed == {
        "optim.lr": 0.01,
        "loss.kl": 0.5,
        "stage": "dakd",
        "paradigm": "d",
        "distill.sequential_split": 0.5,
    }
    assert spec.base.loss.kl == 0.5 and spec.base.paradigm == "d"
    assert spec.stages == {"train.steps": 7} and spec.experiment_name == "exp"
    assert spec.name == "other" and spec.storage == "s3://bucket/ray"
    # replacing an axis by another distribution, and a new axis
    spec = load_spec(path, ["search.loss.kl={choice: [0.2, 0.3]}"])
    assert spec.search["loss.kl"].labels() == ["0.2", "0.3"]
    spec = load_spec(path, ["search.loss.target={uniform: [0.5, 1.0]}"])
    assert list(spec.search)[-1] == "loss.target"
    spec = load_spec(path, ["experiment.base=../configs/embedded.yaml", "experiment.seed=4"])
    assert spec.base.seed == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.nam_samples=2", r"tune\.nam_samples: unknown key; valid keys under tune"),
        ("foo.bar=1", r"foo\.bar: unknown section 'foo'"),
        ("tune=2", r"tune: name a key inside tune"),
        ("name.x=2", r"name\.x: name is a single value"),
        ("tune.num_samples", r"override 'tune\.num_samples': expected KEY=VALUE"),
        ("experiment.train.stepz=2", r"experiment\.train\.stepz: not a config key"),
        ("experiment.train.steps=0", r"experiment: train\.steps: must be >= 1"),
        ("stages.loss.kk=1", r"stages\.loss\.kk: not a config path"),
        ("search.loss.kk=1", r"search\.loss\.kk: .*not a config path"),
        ("resources.cpu=0", r"resources\.cpu: must be > 0"),
    ],
)
def test_bad_overrides_name_file_and_key(write, override, message):
    with pytest.raises(SpecError, match=r"spec\.yaml: " + message):
        load_spec(write(EXAMPLE), [override])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, r"name: required"),
        ({"name": 3}, r"name: 3: use letters"),
        ({"name": "a b"}, r"name: 'a b': use letters"),
        ({"experiment": None}, r"experiment: required"),
        ({"experimnt": {}}, r"experimnt: unknown key; valid keys: name"),
        ({"experiment": {"stage": "dakd", "paradigm": "e"}}, r"experiment: paradigm: 'e' is not"),
        ({"experiment": {"loss": {"kk": 1}}}, r"experiment\.loss\.kk: not a config key"),
        ({"experiment": {"base": "nope.yaml"}}, r"experiment\.base: no such config file 'nope"),
        (
            {"search": {"loss.kl": {"logunifrom": [1, 2]}}},
            r"search\.loss\.kl: unknown distribution 'logunifrom'",
        ),
        (
            {"search": {"loss.kl": {"uniform": [1], "choice": [1]}}},
            r"search\.loss\.kl: a distribution is a mapping with one key",
        ),
        (
            {"search": {"loss.kl": {"uniform": [2, 1]}}},
            r"search\.loss\.kl: uniform needs low < high",
        ),
        ({"search": {"loss.kl": {"uniform": [1, "x"]}}}, r"search\.loss\.kl: expected a number"),
        (
            {"search": {"loss.kl": {"loguniform": [0, 1]}}},
            r"search\.loss\.kl: loguniform needs low > 0",
        ),
        (
            {"search": {"loss.kl": {"quniform": [0, 1, 0]}}},
            r"search\.loss\.kl: quniform needs q > 0",
        ),
        (
            {"search": {"loss.kl": {"quniform": [0.1, 1, 0.25]}}},
            r"search\.loss\.kl: quniform bounds must be multiples of q=0\.25",
        ),
        (
            {"search": {"loss.kl": {"quniform": [0, 1]}}},
            r"search\.loss\.kl: quniform needs \[low, high, q\]",
        ),
        (
            {"search": {"train.steps": {"randint": [1.5, 10]}}},
            r"search\.train\.steps \(randint bounds\): expected an integer",
        ),
        (
            {"search": {"train.steps": {"randint": [0, 10]}}},
            r"search\.train\.steps: low 0: train\.steps: must be >= 1",
        ),
        (
            {"search": {"train.steps": {"uniform": [1, 10]}}},
            r"search\.train\.steps: low 1\.0: train\.steps: expected an integer",
        ),
        (
            {"search": {"loss.kl": {"uniform": [-1, 1]}}},
            r"search\.loss\.kl: low -1\.0: loss\.kl: must be >= 0",
        ),
        (
            {"search": {"loss.kl": {"choice": []}}},
            r"search\.loss\.kl: choice needs a non-empty list",
        ),
        (
            {"search": {"loss.kl": {"choice": [0.1, "0.1"]}}},
            r"search\.loss\.kl: options 1 and 2 have the same label '0\.1'",
        ),
        (
            {"search": {"paradigm": {"grid": ["a", "e"]}}},
            r"search\.paradigm: option 'e': paradigm: 'e' is not one of",
        ),
        (
            {"search": {"distill.levels": {"grid": [["output", "x"]]}}},
            r"search\.distill\.levels: option 'output\+x'",
        ),
        (
            {"search": {"method": {"grid": [{"stage": "dakd"}, {"stag": "dakd"}]}}},
            r"search\.method: option 'stag=dakd': 'stag' is not a config path",
        ),
        (
            {"search": {"method": {"grid": [{"stage": "x"}]}}},
            r"search\.method: option 'stage=x': stage: 'x' is not one of",
        ),
        (
            {"search": {"method": {"grid": ["a"]}}},
            r"search\.method: 'method' is not a config path, so its options must be mappings",
        ),
        (
            {"search": {"method": {"uniform": [0, 1]}}},
            r"search\.method: 'method' is not a config path; only choice or grid",
        ),
        (
            {"search": {"method": 3}},
            r"search\.method: 'method' is not a config path; a fixed value",
        ),
        ({"search": {"loss.kl": -1}}, r"search\.loss\.kl: loss\.kl: must be >= 0"),
        ({"search": {"loss.kl": {"kl": 1}}}, r"search\.loss\.kl: unknown distribution 'kl'"),
        ({"search": {"seed": {"grid": [1, 2]}}}, r"search\.seed: seeds come from tune\.seeds"),
        (
            {"search": {"method": {"grid": [{"seed": 1}]}}},
            r"search\.method: option 'seed=1': seeds come from tune\.seeds",
        ),
        (
            {"search": {"paradigm": {"grid": ["a"]}, "m": {"grid": [{"paradigm": "b"}]}}},
            r"search\.m: sets paradigm, which axis search\.paradigm sets too",
        ),
        (
            {"search": {"__trial_index__": {"grid": [{"paradigm": "b"}]}}},
            r"search\.__trial_index__: an axis name",
        ),
        (
            {"tune": {"search": "bayes"}},
            r"tune\.search: 'bayes' is not one of grid, random, optuna",
        ),
        ({"tune": {"mode": "maximum"}}, r"tune\.mode: 'maximum' is not one of max, min"),
        ({"tune": {"scheduler": "median"}}, r"tune\.scheduler: 'median' is not one of fifo, asha"),
        ({"tune": {"num_samples": 0}}, r"tune\.num_samples: must be >= 1"),
        ({"tune": {"num_samples": True}}, r"tune\.num_samples: expected an integer"),
        ({"tune": {"seeds": []}}, r"tune\.seeds: expected a non-empty list"),
        ({"tune": {"seeds": 3}}, r"tune\.seeds: expected a list of integers, got 3"),
        ({"tune": {"seeds": [0, 0]}}, r"tune\.seeds: .*repeats a seed"),
        ({"tune": {"seeds": [0, -1]}}, r"tune\.seeds\[1\]: must be >= 0"),
        ({"tune": {"asha": {"grace": 1}}}, r"tune\.asha\.grace: unknown key"),
        ({"tune": {"asha": {"reduction_factor": 1}}}, r"tune\.asha\.reduction_factor: must be > 1"),
        (
            {"tune": {"max_concurrent": 0}},
            r"tune\.max_concurrent: must be auto \(as many trials as the cluster holds\) or >= 1, got 0",
        ),
        ({"tune": {"reuse_actors": "yes"}}, r"tune\.reuse_actors: expected true or false"),
        ({"tune": {"metric": ""}}, r"tune\.metric: expected a non-empty string"),
        ({"tune": [1]}, r"tune: expected a mapping"),
        ({"resources": {"cpu": 0}}, r"resources\.cpu: must be > 0"),
        ({"resources": {"gpu": -1}}, r"resources\.gpu: must be >= 0"),
        ({"resources": {"workers": 1.5}}, r"resources\.workers: expected an integer"),
        ({"resources": {"gpus": 1}}, r"resources\.gpus: unknown key"),
        ({"tracking": {"uri": 3}}, r"tracking\.uri: expected a string, got 3"),
        ({"tracking": {"uri": ""}}, r"tracking\.uri: expected a non-empty string"),
        ({"storage": ""}, r"storage: expected a non-empty string"),
        ({"storage": "ftp://host/x"}, r"storage: 'ftp://host/x': Ray Tune's storage is a folder"),
        ({"tracking": {"uri": "runs/mlflow.db"}}, r"tracking\.uri: 'runs/mlflow\.db' is not an"),
        ({"tracking": {"uri": "sqlite:///x.db", "experiment": " "}}, r"tracking\.experiment"),
        (
            {"tracking": {"system_metrics": "gpu"}},
            r"tracking\.system_metrics: 'gpu' is not one of auto, true, false",
        ),
        ({"tracking": {"system_metrics_interval": 0}}, r"tracking\.system_metrics_interval: must"),
        ({"tune": {"metric": "mIoU"}}, r"tune\.metric: 'mIoU' is not reported by the trials"),
        ({"stages": {"train": {"steps": 0}}}, r"stages: on the teacher_da stage: train\.steps"),
        ({"stages": {"stage": "dakd"}}, r"stages\.stage: the sweep picks the stage"),
    ],
)
def test_errors_name_file_and_key(write, change, message):
    spec = {k: v for k, v in minimal(**change).items() if v is not None}  # None: left out
    with pytest.raises(SpecError, match=r"^.*sweeps/spec\.yaml: " + message):
        load_spec(write(spec))


def test_file_level_errors(write, tmp_path):
    with pytest.raises(SpecError, match=r"nope\.yaml: no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"spec\.yaml: not valid YAML"):
        load_spec(write("name: [unclosed\n"))
    with pytest.raises(SpecError, match=r"spec\.yaml: expected a mapping at the top level"):
        load_spec(write("- 1\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"binary\.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_spec(binary)
    assert issubclass(SpecError, ValueError)


def test_auto_stage_fields_pass_validation(write):
    spec = load_spec(
        write(minimal(experiment={"stage": "dakd", "teacher": "auto", "init": "auto"}))
    )
    assert (spec.base.teacher, spec.base.init) == ("auto", "auto") and spec.implicit_auto == ()
    spec = load_spec(write(minimal(experiment={"stage": "dakd", "teacher": "ckpt/t.pt"})))
    assert (spec.base.teacher, spec.base.init) == ("ckpt/t.pt", "auto")
    assert spec.implicit_auto == ("init",)


def _searched(**tune_section):
    return minimal(
        search={
            "paradigm": {"choice": ["a", "d"]},
            "loss.kl": {"loguniform": [0.01, 1.0]},
            "loss.temperature": {"quniform": [1.0, 4.0, 0.5]},
            "data.batch_size": {"randint": [4, 9]},
        },
        tune={"search": "optuna", "num_samples": 3, **tune_section},
    )


def test_points_to_evaluate_are_what_optuna_suggests_first(write):
    """A point gives every axis a config value; Tune sees labels, and the first trial is it."""
    from dakd.sweep.driver.tuner import build_tuner_parts

    point = {"paradigm": "d", "loss.kl": 0.1, "loss.temperature": 1.5, "data.batch_size": 4}
    spec = load_spec(write(_searched(points_to_evaluate=[point])))
    assert spec.tune.points_to_evaluate == [point]
    assert "tried first: paradigm=d loss.kl=0.1 loss.temperature=1.5" in describe(spec)
    searcher, _ = build_tuner_parts(spec)
    searcher.set_search_properties("miou", "max", param_space(spec))
    first = searcher.suggest("t1")
    assert {k: first[k] for k in point} == point
    assert trial_overrides(spec, first)["paradigm"] == "d"
    second = searcher.suggest("t2")  # then TPE samples
    assert {k: second[k] for k in point} != point


@pytest.mark.parametrize(
    "point, message",
    [
        ({"paradigm": "b"}, r"\[0\]\.paradigm: 'b' is not one of its options"),
        ({"loss.kl": 2.0}, r"\[0\]\.loss\.kl: 2\.0 is outside its range"),
        ({"loss.temperature": 1.2}, r"\[0\]\.loss\.temperature: 1\.2 is not a multiple of its"),
        ({"data.batch_size": 9}, r"\[0\]\.data\.batch_size: expected an integer in \[4, 9\)"),
        ({"loss.kl": "high"}, r"\[0\]\.loss\.kl: expected a number"),
        ({"loss.mse": 0.1}, r"\[0\]\.loss\.mse: not a search axis"),
        ({"paradigm": None}, r"\[0\]: gives no value for search axis paradigm"),
    ],
)
def test_bad_points_to_evaluate_name_the_point_and_axis(write, point, message):
    good = {"paradigm": "a", "loss.kl": 0.1, "loss.temperature": 1.0, "data.batch_size": 5}
    merged = {k: v for k, v in {**good, **point}.items() if v is not None}
    with pytest.raises(SpecError, match=r"sweeps/spec\.yaml: tune\.points_to_evaluate" + message):
        load_spec(write(_searched(points_to_evaluate=[merged])))


def test_points_to_evaluate_need_optuna_and_a_list(write):
    point = {"paradigm": "a", "loss.kl": 0.1, "loss.temperature": 1.0, "data.batch_size": 5}
    spec = _searched(points_to_evaluate=[point])
    spec["tune"]["search"] = "random"
    with pytest.raises(SpecError, match=r"tune\.points_to_evaluate: needs tune\.search optuna"):
        load_spec(write(spec))
    with pytest.raises(SpecError, match=r"tune\.points_to_evaluate: expected a list of mappings"):
        load_spec(write(_searched(points_to_evaluate={"paradigm": "a"})))
    with pytest.raises(SpecError, match=r"tune\.points_to_evaluate: expected a non-empty list"):
        load_spec(write(_searched(points_to_evaluate=[])))
    assert load_spec(write(_searched(points_to_evaluate=None))).tune.points_to_evaluate == []


def test_old_key_names_in_a_spec_are_read_with_one_note_each(write, tmp_path, monkeypatch, capsys):
    """A spec that still writes ``train.precise_bn`` and ``train.ema`` (in its base file, its
    experiment, stages and search sections and a ``--set``) gives what the current names give,
    with one note per old name."""
    monkeypatch.setattr(renamed, "_NOTED", set())
    (tmp_path / "configs" / "old.yaml").write_text("train: {steps: 10, precise_bn: 16}\n")
    axes = {
        "train.ema": {"choice": [0.0, 0.99]},
        "schedule": {
            "choice": [{"train.precise_bn": 8, "train.steps": 4}, {"train": {"precise_bn": 0}}]
        },
    }
    experiment = {"base": "../configs/old.yaml", "stage": "student_da", "train.ema": 0.5}
    path = write(minimal(experiment=experiment, stages={"train": {"ema": 0.9}}, search=axes))
    spec = load_spec(path)
    assert (spec.base.train.precise_bn_images, spec.base.train.ema_decay) == (16, 0.5)
    assert spec.stages == {"train.ema_decay": 0.9}
    assert list(spec.search) == ["train.ema_decay", "schedule"]
    assert spec.search["schedule"].labels() == [
        "train.precise_bn_images=8 train.steps=4",
        "train.precise_bn_images=0",
    ]
    cfg = resolve(
        spec, {"train.ema_decay": "0.99", "schedule": "train.precise_bn_images=8 train.steps=4"}
    )
    assert (cfg.train.ema_decay, cfg.train.precise_bn_images, cfg.train.steps) == (0.99, 8, 4)
    # a sweep resumed from before the rename samples the axis under its old name
    assert trial_overrides(spec, {"train.ema": "0.99"})["train.ema_decay"] == 0.99
    pinned = load_spec(path, ["search.train.ema=0.99"])
    assert pinned.fixed == {"train.ema_decay": 0.99} and list(pinned.search) == ["schedule"]
    assert pinned.base.train.ema_decay == 0.99
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert sorted(notes) == [
        "note: train.ema is now train.ema_decay; the old name is still read for now",
        "note: train.precise_bn is now train.precise_bn_images; the old name is still read for now",
    ]
