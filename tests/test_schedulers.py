"""The schedulers that pause trials (HyperBand, population-based training) on a real local Ray
and a real SQLite MLflow store, their spec checks, and MLflow's own commit tag on every run a
sweep makes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.sweep.driver.plan import smoke
from dakd.sweep.driver.run import run_sweep
from dakd.sweep.spec.sweep_spec import SpecError, load_spec
from dakd.tracking import tags
from dakd.tracking.groups import aggregate
from dakd.tracking.load import load_runs, select

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "sweeps" / "loss_schedule.yaml"


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedulers")
    return {
        "stages": root / "stages",
        "storage": str(root / "ray"),
        "uri": f"sqlite:///{root / 'mlflow.db'}",
    }


def _overrides(place) -> list[str]:
    return [
        f"experiment.out_dir={place['stages']}",
        f"storage={place['storage']}",
        f"tracking.uri={place['uri']}",
    ]


#: DAKD trials from the shipped student weights: no stages to train first (tests/test_sweep.py
#: runs the spec as shipped, its stages included)
NO_STAGES = ['experiment.init=""']


def _runs(place, spec, parent: str):
    client = MlflowClient(place["uri"])
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    under = [r for r in runs if r.data.tags.get(tags.MLFLOW_PARENT_RUN_ID) == parent]
    return client, [r for r in runs if r.info.run_id == parent] + under


def test_the_commit_tag_is_mlflows_own():
    assert tags.MLFLOW_GIT_COMMIT == MLFLOW_GIT_COMMIT
    assert tags.commit_tags("abc") == {tags.GIT_COMMIT: "abc", MLFLOW_GIT_COMMIT: "abc"}
    assert tags.commit_tags(None) == {tags.GIT_COMMIT: "unknown"}


BAD = [
    (["tune.search=optuna"], "tune.search: pbt is not used with Optuna's searcher"),
    (["tune.search=grid"], "tune.search: pbt samples its population at random"),
    (["tune.num_samples=1"], "tune.num_samples: pbt needs a population of >= 2"),
    (["tune.seeds=[0, 1]"], "tune.seeds: 2 seeds: pbt copies weights between trials"),
    (["search.paradigm={choice: [c, d]}"], "search.paradigm: sets paradigm, which pbt cannot"),
    (["search.distill.levels={choice: [[output], [feature]]}"], "sets distill.levels"),
    (["search.loss.kl={grid: [0.1, 1.0]}"], "search.loss.kl: pbt mutates its axes"),
    (["resources.workers=2"], "resources.workers: pbt pauses trials"),
    (["tune.pbt.quantile_fraction=0.7"], "tune.pbt.quantile_fraction: must be in (0, 0.5]"),
    (["tune.pbt.resample_probability=2"], "tune.pbt.resample_probability: must be in [0, 1]"),
    (["tune.pbt.perturbation_interval=0"], "tune.pbt.perturbation_interval: must be >= 1"),
    (["tune.pbt.every=2"], "tune.pbt.every"),
    (["tune.metric=[miou, pixel_acc]", "tune.mode=[max, max]"], "pbt ranks trials by one"),
    (["tune.scheduler=hyperband", "tune.hyperband.reduction_factor=1"], "must be > 1"),
    (["tune.scheduler=hyperband", "tune.hyperband.max_t=0"], "tune.hyperband.max_t: must be"),
    (["tune.scheduler=hyperband", "resources.workers=2"], "hyperband pauses trials"),
    (["tune.scheduler=hyperband", "tune.search=optuna"], "use asha with optuna"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_a_spec_a_pausing_scheduler_cannot_run_stops_in_one_line(overrides, expected):
    with pytest.raises(SpecError) as err:
        load_spec(SPEC, overrides)
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    assert message.startswith(str(SPEC))


def test_the_shipped_pbt_spec_mutates_the_loss_weights():
    from dakd.sweep.driver.schedulers import InRange, mutations

    spec = load_spec(SPEC)
    assert spec.tune.scheduler == "pbt" and spec.tune.search == "random"
    assert (
        set(mutations(spec))
        == set(spec.search)
        == {
            "loss.kl",
            "loss.mse",
            "loss.pseudo",
            "loss.target",
            "loss.temperature",
        }
    )
    # a perturbed value stays a value of its axis: clipped to the range, on its step
    clip = InRange(spec.search)
    config = clip({"loss.kl": 1.2, "loss.mse": 0.0001, "loss.temperature": 2.3, "seed": 0})
    assert config == {"loss.kl": 1.0, "loss.mse": 0.001, "loss.temperature": 2.5, "seed": 0}


def test_pbt_starts_weak_trials_from_strong_ones_and_mlflow_shows_the_weights_over_time(
    local_ray, place
):
    """Two trials, synchronous rounds at every evaluation: at the first the weaker continues
    from the stronger's checkpoint with mutated weights, in its own MLflow run, which shows the
    weights it trained with at each evaluation and whose weights it took."""
    spec = smoke(SPEC, [*_overrides(place), "tune.pbt.synch=true", *NO_STAGES])
    result = run_sweep(spec, root=ROOT, log=lambda _: None)
    assert result.errors == 0 and len(result.rows) == 2
    assert all(row["status"] == "done" for row in result.rows)

    client, runs = _runs(place, spec, result.parent_run_id)
    trials = [r for r in runs if tags.TRIAL in r.data.tags]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    exploited = [r for r in trials if tags.PBT_EXPLOITED in r.data.tags]
    assert len(exploited) == 1, [r.data.tags for r in trials]
    (run,) = exploited
    (other,) = [r for r in trials if r is not run]
    assert other.data.tags[tags.RAY_TRIAL_ID] in run.data.tags[tags.PBT_EXPLOITED]
    assert run.data.tags[tags.PBT_HISTORY].startswith("step 2: weights of ")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pbt/exploits")] == [2]
    # the values it started with (its params) at step 2, the mutated ones at step 4
    changed = []
    for key in spec.search:
        history = {
            m.step: m.value for m in client.get_metric_history(run.info.run_id, f"weight/{key}")
        }
        assert set(history) == {2, 4}
        assert history[2] == pytest.approx(float(run.data.params[f"sweep.{key}"]))
        changed.append(history[4] != pytest.approx(history[2]))
    assert any(changed)
    # its own run goes on from the other trial's step: one value per step, to the last
    assert [m.step for m in client.get_metric_history(run.info.run_id, "miou")] == [2, 4]
    assert "weights/model.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    # in the result tables it is a configuration of its own, shown with the values it ended with
    table = load_runs(select(place["uri"], spec.experiment_name, result.parent_run_id))
    assert len(set(table["config"].to_pylist())) == 2 and not any(table["duplicate"].to_pylist())
    best = {g["config"]: g for g in aggregate(table).to_pylist()}
    restarted = best[next(r["config"] for r in table.to_pylist() if r["run_id"] == run.info.run_id)]
    assert restarted["tags.pbt_history"] == run.data.tags[tags.PBT_HISTORY]
    for key in spec.search:
        assert restarted[f"metrics.weight/{key}"] == pytest.approx(
            client.get_metric_history(run.info.run_id, f"weight/{key}")[-1].value
        )
    # every run of the sweep carries the commit, under MLflow's own tag too
    assert {r.data.tags.get(tags.STAGE) for r in runs} == {"sweep", "dakd"}
    for r in runs:
        assert r.data.tags[MLFLOW_GIT_COMMIT] == r.data.tags[tags.GIT_COMMIT] != "unknown"


def test_hyperband_stops_trials_at_its_milestones_and_the_sweep_finishes(local_ray, place):
    """HyperBand over 2 evaluations, halving: Ray's first bracket runs 2 trials to the end, the
    second halves 2 at the first evaluation, the first there paused until the other reaches it,
    then the weaker stopped and the stronger going on (from its checkpoint when it was the paused
    one); every MLflow run is closed."""
    spec = smoke(
        SPEC,
        [
            *_overrides(place),
            "tune.scheduler=hyperband",
            "tune.hyperband.reduction_factor=2",
            *NO_STAGES,
        ],
    )
    spec = dataclasses.replace(spec, tune=dataclasses.replace(spec.tune, num_samples=4))
    result = run_sweep(spec, root=ROOT, log=lambda _: None)
    assert result.errors == 0 and len(result.rows) == 4
    assert all(row["status"] == "done" for row in result.rows)
    client, runs = _runs(place, spec, result.parent_run_id)
    trials = [r for r in runs if tags.TRIAL in r.data.tags]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    stopped = [r for r in trials if r.data.tags.get(tags.EARLY_STOPPED) == "true"]
    assert len(stopped) == 1, "HyperBand stopped no trial"
    for r in stopped:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "miou")] == [2]
    for r in runs:
        assert r.data.tags[MLFLOW_GIT_COMMIT] == r.data.tags[tags.GIT_COMMIT] != "unknown"


def test_pbt_mutates_every_registered_distillation_weight():
    """The weights of registered terms (built-in and plugins') are PBT's to mutate, the stage
    inputs are not."""
    from dakd import loss_terms
    from dakd.sweep.spec.schedule import pbt_mutable

    mutable = set(pbt_mutable())
    assert {"loss.kl", "loss.mse", "loss.pseudo", "loss.temperature"} <= mutable
    assert set(loss_terms.distill_only_keys()) <= mutable
    assert not mutable & {"paradigm", "teacher", "init", "distill.levels", "loss.seg_aux"}
