"""The student search: several objectives, constraints, deployment figures and their checks."""

import shutil
from pathlib import Path

import pytest
import yaml

from dakd.sweep.driver.objectives import (
    ObjectivesSearch,
    ParetoScheduler,
    fail_suggestion,
    optuna_state,
)
from dakd.sweep.remote.deployment import broken
from dakd.sweep.spec.sweep_spec import SpecError, describe, load_spec

ROOT = Path(__file__).resolve().parents[1]

SEARCH = {
    "name": "students",
    "experiment": {
        "base": "../configs/embedded.yaml",
        "stage": "dakd",
        "teacher": "weights/embedded/teacher_da-synth_to_real.pt",
        "init": "",
        "models": {"student": {"pretrained": "auto"}},
    },
    "search": {
        "models.student.width": {"choice": [0.0625, 0.125]},
        "models.student.output_stride": {"choice": [2, 8]},
    },
    "tune": {
        "metric": ["miou", "peak_memory_mb"],
        "mode": ["max", "min"],
        "search": "optuna",
        "sampler": "nsga2",
        "num_samples": 4,
        "scheduler": "pareto",
        "constraints": {"peak_memory_mb": {"max": 512}},
    },
    "deploy": {"size": [64, 128]},
}


@pytest.fixture
def spec_file(tmp_path):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "embedded.yaml", tmp_path / "configs" / "embedded.yaml")
    (tmp_path / "sweeps").mkdir()

    def write(tree: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / "sweeps" / name
        path.write_text(yaml.safe_dump(tree))
        return path

    return write


def _with(**changes) -> dict:
    """SEARCH with ``section__key`` replaced (None deletes it)."""
    tree = yaml.safe_load(yaml.safe_dump(SEARCH))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return tree


def _error(spec_file, **changes) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(_with(**changes)))
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_a_multi_objective_spec_loads_and_describes_its_front(spec_file):
    spec = load_spec(spec_file(SEARCH))
    assert spec.tune.objectives == ["miou", "peak_memory_mb"]
    assert spec.tune.modes == ["max", "min"] and spec.tune.multi
    assert spec.tune.primary == "miou" and spec.tune.primary_mode == "max"
    assert spec.deploy.size == [64, 128] and spec.deploy.batch == 1
    text = describe(spec)
    assert "max miou, min peak_memory_mb (Pareto front)" in text
    assert "peak_memory_mb <= 512" in text
    assert "deploy: each student measured at 64x128" in text
    # one objective stays one
    single = load_spec(spec_file(_with(tune__metric="miou", tune__mode="max")))
    assert single.tune.objectives == ["miou"] and not single.tune.multi


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"tune__scheduler": "asha"}, "tune.scheduler: asha ranks trials by one metric"),
        ({"tune__mode": ["max"]}, "tune.mode: gives 1 direction(s) for the 2 metric(s)"),
        ({"tune__mode": ["max", "down"]}, "tune.mode[1]: 'down' is not one of max, min"),
        ({"tune__metric": ["miou", "miou"]}, "names a metric twice"),
        ({"tune__metric": ["miou", "peak_mem"]}, "tune.metric[1]: 'peak_mem' is not reported"),
        ({"deploy": None}, "tune.metric[1]: 'peak_memory_mb' is a deployment figure, measured"),
        (
            {"tune__constraints": {"loss/total": {"max": 1}}},
            "tune.constraints.loss/total: constraints bound the deployment figures",
        ),
        (
            {"tune__constraints": {"latency_ms": {"below": 1}}},
            "tune.constraints.latency_ms.below: unknown key",
        ),
        (
            {"tune__constraints": {"latency_ms": {"min": 5, "max": 1}}},
            "min 5 is above max 1",
        ),
        ({"tune__sampler": "cmaes"}, "tune.sampler: 'cmaes' is not one of tpe, nsga2"),
        ({"tune__seeds": [0, 1]}, "tune.seeds: 2 seeds: with several objectives"),
        ({"deploy": {"size": [63, 128]}}, "deploy.size:"),
        ({"deploy": {"size": [64, 128], "batch": 0}}, "deploy.batch"),
        ({"resources": {"workers": 2}}, "deploy: a data-parallel trial"),
        (
            {"search": {"models.student.name": {"choice": ["drn_d_22", "resnet_9000"]}}},
            "resnet_9000",
        ),
    ],
)
def test_a_bad_combination_stops_in_the_dry_run_with_one_line(spec_file, changes, expected):
    message = _error(spec_file, **changes)
    assert expected in message, message
    assert "spec.yaml" in message


def test_a_constraint_without_a_deploy_section_names_the_metric(spec_file):
    message = _error(
        spec_file, deploy=None, tune__metric="miou", tune__mode="max", tune__scheduler="fifo"
    )
    assert "tune.constraints.peak_memory_mb: no trial reports 'peak_memory_mb'" in message


def test_a_searched_width_with_one_explicit_pretrained_file_is_refused(spec_file):
    weights = ROOT / "weights" / "embedded" / "drn_d_22-w0.125-os2.pt"
    message = _error(
        spec_file, experiment__models={"student": {"pretrained": str(weights), "width": 0.125}}
    )
    assert "search.models.student.width: 0.0625" in message
    assert "holds weights for" in message and "pretrained: auto" in message
    # the same file for every output stride of its width is fine: the encoder is the same
    load_spec(
        spec_file(
            _with(
                experiment__models={"student": {"pretrained": str(weights), "width": 0.125}},
                search={"models.student.output_stride": {"choice": [2, 4, 8]}},
            )
        )
    )


def test_pareto_scheduler_stops_only_trials_dominated_at_the_same_evaluation():
    from ray.tune.schedulers import TrialScheduler

    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE
    s = ParetoScheduler(["miou", "peak_memory_mb"], ["max", "min"], grace_period=2)

    def r(it, miou, mem):
        return {"training_iteration": it, "miou": miou, "peak_memory_mb": mem}

    assert s.decide("small", r(1, 10.0, 100.0)) == go
    # dominated at evaluation 1, but within the grace period
    assert s.decide("worse", r(1, 9.0, 120.0)) == go
    assert s.decide("small", r(2, 12.0, 100.0)) == go
    # more accurate but bigger: not dominated
    assert s.decide("big", r(2, 15.0, 400.0)) == go
    # dominated by "small" at evaluation 2
    assert s.decide("worse", r(2, 11.0, 120.0)) == stop
    # dominated by a value "small" had at an earlier evaluation only: goes on
    assert s.decide("late", r(3, 11.0, 120.0)) == go
    # a result without every objective never stops a trial
    assert s.decide("odd", {"training_iteration": 3, "miou": 1.0}) == go
    # equal on both: not dominated
    assert s.decide("twin", r(2, 12.0, 100.0)) == go
    assert s.stopped == 1 and "1 trial(s)" in s.debug_string()


def test_an_infeasible_trial_is_told_to_optuna_as_pruned():
    import optuna

    searcher = ObjectivesSearch(
        space={"w": optuna.distributions.CategoricalDistribution(["a", "b"])},
        metric=["miou", "peak_memory_mb"],
        mode=["max", "min"],
        sampler=optuna.samplers.NSGAIISampler(seed=0, population_size=2),
    )
    searcher.suggest("t1")
    searcher.suggest("t2")
    searcher.on_trial_complete("t1", {"peak_memory_mb": 900.0, "infeasible": 1.0})
    searcher.on_trial_complete("t2", {"miou": 10.0, "peak_memory_mb": 100.0})
    study, _ = optuna_state(searcher)
    states = {t.number: t.state for t in study.trials}
    values = {t.number: t.values for t in study.trials}
    assert states == {0: optuna.trial.TrialState.PRUNED, 1: optuna.trial.TrialState.COMPLETE}
    assert values[1] == [10.0, 100.0]


def test_broken_constraints_name_the_figure_and_the_bound():
    limits = {"peak_memory_mb": {"max": 512.0}, "latency_ms": {"min": 1.0, "max": 50.0}}
    assert broken({"peak_memory_mb": 600.0, "latency_ms": 20.0}, limits) == [
        "peak_memory_mb 600 > max 512"
    ]
    assert broken({"peak_memory_mb": 512.0, "latency_ms": 0.5}, limits) == [
        "latency_ms 0.5 < min 1"
    ]
    assert broken({"peak_memory_mb": 100.0, "latency_ms": 20.0}, limits) == []


# -- students the shipped weights cover, and those they do not ---------------------------------


def test_auto_picks_each_students_shipped_backbone_or_none():
    from dakd.config.sections import ModelConfig
    from dakd.models.pretrained import resolve_pretrained, shipped_backbone

    folder = ROOT / "weights" / "embedded"
    for width in (0.0625, 0.125, 0.25, 0.5):
        for stride in (2, 4, 8):
            model = ModelConfig("drn_d_22", width, "auto", stride)
            # one file per width, at output stride 2: the encoder is the same at every stride
            assert shipped_backbone(model) == folder / f"drn_d_22-w{width:g}-os2.pt"
            assert resolve_pretrained(model) == str(folder / f"drn_d_22-w{width:g}-os2.pt")
    # none shipped: random initialisation; the teacher-DA files are never a backbone
    assert shipped_backbone(ModelConfig("drn_d_38", 0.125, "auto", 2)) is None
    assert shipped_backbone(ModelConfig("drn_d_22", 0.75, "auto", 2)) is None
    assert resolve_pretrained(ModelConfig("drn_d_38", 0.125, "auto", 2)) == ""
    # an explicit file is kept as it is
    assert resolve_pretrained(ModelConfig("drn_d_22", 0.125, "x.pt", 2)) == "x.pt"


def test_a_student_without_shipped_weights_trains_from_random_init_and_says_so(tiny):
    from dakd.engine.state import TrainState
    from dakd.sweep.spec.context import start_of

    covered = tiny(
        "student_da",
        models__student__pretrained="auto",
        models__student__width=0.125,
        models__student__output_stride=8,
    )
    assert start_of(covered) == "pretrained drn_d_22-w0.125-os2.pt"
    trainer = TrainState(covered)
    assert trainer.pretrained is not None and trainer.pretrained.matched
    # the decoder of os2 is not in an os8 network; every encoder tensor loaded
    assert not [k for k in trainer.pretrained.missing if k.startswith("encoder.")]

    bare = tiny(
        "student_da",
        models__student__pretrained="auto",
        models__student__width=0.125,
        models__student__name="drn_d_38",
    )
    assert start_of(bare) == "random initialisation (no shipped weights for drn_d_38 w0.125 os8)"
    assert TrainState(bare).pretrained is None
    # its stages are keyed by what auto resolves to: another width, another key
    other = tiny("student_da", models__student__pretrained="auto", models__student__width=0.25)
    assert covered.fingerprint() != other.fingerprint()


# -- a trial's measurement ----------------------------------------------------------------------


def test_a_trial_out_of_memory_is_infeasible_and_another_failure_one_line(spec_file, monkeypatch):
    import dakd.evaluation.deploy
    from dakd.evaluation.deploy import DeployError, DeployOutOfMemory
    from dakd.sweep.remote.deployment import measure_trial
    from dakd.sweep.spec.sweep_spec import resolve

    spec = load_spec(spec_file(SEARCH))
    cfg = resolve(spec, {"models.student.width": "0.125", "models.student.output_stride": "2"})
    found = measure_trial(spec, cfg, "width=0.125", threads=1)
    assert found.infeasible == "" and found.where.startswith("64x128 batch 1 on cpu")
    assert set(found.metrics) == {"params_m", "peak_memory_mb", "latency_ms", "gflops"}

    def oom(*args, **kwargs):
        raise DeployOutOfMemory("drn_d_22 w0.125 os2 at 64x128, batch 1 on cuda:0: out of memory")

    monkeypatch.setattr(dakd.evaluation.deploy, "measure", oom)
    found = measure_trial(spec, cfg, "width=0.125", threads=1)
    assert found.metrics == {} and found.infeasible.startswith("out of memory while measured")

    def broken_device(*args, **kwargs):
        raise DeployError("drn_d_22 w0.125 os2 at 64x128, batch 1 on cuda:0: no CUDA device")

    monkeypatch.setattr(dakd.evaluation.deploy, "measure", broken_device)
    with pytest.raises(DeployError) as err:
        measure_trial(spec, cfg, "width=0.125 output_stride=2 seed=0", threads=1)
    assert str(err.value).startswith("trial width=0.125 output_stride=2 seed=0: drn_d_22")
    assert "\n" not in str(err.value)
    # a bound the figures break: infeasible, naming the figure and the bound
    spec.tune.constraints = {"peak_memory_mb": {"max": 1.0}}
    monkeypatch.undo()
    found = measure_trial(spec, cfg, "width=0.125", threads=1)
    assert found.infeasible.startswith("peak_memory_mb ") and "> max 1" in found.infeasible


# -- the summary of a front ---------------------------------------------------------------------


def _row(trial, miou, mem, status="done", run=""):
    return {
        "trial": trial,
        "status": status,
        "final": miou,
        "miou": miou,
        "peak_memory_mb": mem,
        "paradigm": "c",
        "mlflow_run_id": run,
    }


def test_the_summary_prints_the_front_the_best_under_each_constraint_and_the_infeasible(
    spec_file,
):
    from dakd.sweep.driver.front import front_markdown, trials_on_front
    from dakd.sweep.driver.summary import SweepResult, headline_metrics, table_view

    spec = load_spec(spec_file(SEARCH))
    spec.tune.constraints = {"peak_memory_mb": {"max": 100.0}}
    rows = [
        _row("big", 30.0, 400.0),
        _row("mid", 25.0, 90.0),
        _row("worse", 20.0, 95.0),  # dominated by mid
        _row("small", 10.0, 40.0),
        _row("failed", 50.0, 10.0, status="error"),  # never on the front
        {**_row("huge", float("nan"), 900.0, status="infeasible"), "miou": None},
    ]
    front = trials_on_front(rows, spec)
    assert [r["trial"] for r in front] == ["small", "mid", "big"]
    result = SweepResult("ray", "parent", "uri", rows, {}, errors=1, front=front)
    text = "\n".join(front_markdown(result, spec))
    assert "the Pareto front (3 of 6 trials; max miou, min peak_memory_mb):" in text
    table = [line for line in text.split("\n") if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in table[1:]] == ["small", "mid", "big"]
    assert "- peak_memory_mb <= 100: mid: miou 25.00, peak_memory_mb 90" in text
    assert "infeasible, recorded and not trained (1):" in text and "- huge" in text
    metrics = headline_metrics(result, spec)
    assert metrics["front_size"] == 3.0 and metrics["best_miou"] == 30.0
    view = table_view(spec)
    assert view["columns"][:2] == ["miou", "peak_memory_mb"] and "front_size" in view["columns"]


def test_rays_optuna_searcher_still_has_the_private_state_objectives_touches():
    """``optuna_state`` reads ``OptunaSearch._ot_study`` and ``_ot_trials``, which Ray does not
    document: with the installed Ray they are the study and its open trial per Tune trial, and
    a trial told failed and forgotten is asked anew by the next ``suggest``."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space={"w": optuna.distributions.CategoricalDistribution(["a", "b"])},
        metric="miou",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    first = searcher.suggest("t1")
    study, trials = optuna_state(searcher)
    assert isinstance(study, optuna.Study) and list(trials) == ["t1"]
    assert trials["t1"].number == 0 and trials["t1"].params == first
    fail_suggestion(searcher, "t1")
    assert "t1" not in trials and study.trials[0].state == optuna.trial.TrialState.FAIL
    searcher.suggest("t1")
    assert trials["t1"].number == 1 and len(study.trials) == 2
    del searcher._ot_trials  # a Ray without it: one error naming it
    with pytest.raises(RuntimeError, match="OptunaSearch has no attribute '_ot_trials'"):
        optuna_state(searcher)


def test_the_searcher_does_not_propose_a_configuration_twice():
    import optuna

    space = {
        "w": optuna.distributions.CategoricalDistribution(["a", "b"]),
        "s": optuna.distributions.CategoricalDistribution(["2", "8"]),
    }
    searcher = ObjectivesSearch(
        space=space,
        metric=["miou", "peak_memory_mb"],
        mode=["max", "min"],
        sampler=optuna.samplers.NSGAIISampler(seed=0, population_size=2),
    )
    seen = []
    for i in range(4):  # the whole space: every suggestion new
        params = searcher.suggest(f"t{i}")
        seen.append((params["w"], params["s"]))
        searcher.on_trial_complete(f"t{i}", {"miou": float(i), "peak_memory_mb": 10.0 - i})
    assert len(set(seen)) == 4
    # nothing new is left: the fifth is trained after RESAMPLES draws, not refused forever
    assert isinstance(searcher.suggest("t4"), dict) and searcher.repeats >= 20
    states = [t.state for t in optuna_state(searcher)[0].trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    assert states.count(optuna.trial.TrialState.FAIL) == searcher.repeats


def test_a_bound_on_parameters_rules_a_student_out_before_it_is_timed(spec_file, monkeypatch):
    import dakd.evaluation.deploy
    from dakd.sweep.remote.deployment import measure_trial
    from dakd.sweep.spec.sweep_spec import resolve

    spec = load_spec(spec_file(_with(tune__constraints={"params_m": {"max": 0.1}})))

    def timed(*args, **kwargs):
        raise AssertionError("a student over the parameter bound was run")

    monkeypatch.setattr(dakd.evaluation.deploy, "measure", timed)
    cfg = resolve(spec, {"models.student.width": "0.125", "models.student.output_stride": "2"})
    found = measure_trial(spec, cfg, "width=0.125", threads=1)
    assert found.infeasible == "params_m 0.2552 > max 0.1"
    assert set(found.metrics) == {"params_m", "gflops"}
    assert found.where == "64x128 batch 1 (parameters and FLOPs only)"
    # within the bound, the network is measured
    cfg = resolve(spec, {"models.student.width": "0.0625", "models.student.output_stride": "8"})
    with pytest.raises(AssertionError, match="was run"):
        measure_trial(spec, cfg, "width=0.0625", threads=1)
