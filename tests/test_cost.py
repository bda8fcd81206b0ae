"""The cost of a sweep before launch: the cluster's slots, the waves, GPU-hours and wall-clock
hours against hand-computed values, the measured step time it reads, and the budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.runtime.step_times import StepTime, find, recipe_of, record, setting_of
from dakd.sweep.driver.cost import Shape, check_budget, concurrency, plan_cost
from dakd.sweep.driver.plan import plan
from dakd.sweep.spec.sweep_spec import SpecError, load_spec
from tests.test_real_specs import place  # noqa: F401  (fixture: data trees and weight files)
from tests.test_sweep import _cli

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "sweeps" / "synth_to_real.yaml"
FOUR_BY_EIGHT = Shape.of(4, 8, 64, "4 nodes")


def test_slots_count_what_each_node_holds_for_one_request():
    assert FOUR_BY_EIGHT.slots(4, 1) == 32  # 8 GPUs a node
    assert FOUR_BY_EIGHT.slots(16, 1) == 16  # 4 a node by CPUs
    assert FOUR_BY_EIGHT.slots(4, 1, per_run=2) == 16  # a trial of 2 workers
    assert FOUR_BY_EIGHT.slots(4, 0.25) == 64  # four students a GPU, 16 CPUs
    assert Shape([(2, 0)], "cpu").slots(1, 0) == 2
    assert Shape([(2, 0)], "cpu").slots(1, 1) == 0  # no GPU anywhere
    mixed = Shape([(8, 0), (8, 2)], "mixed")  # a CPU head and one GPU node
    assert mixed.slots(1, 1) == 2 and mixed.slots(1, 0) == 16
    assert "1 x (8 CPU, 0 GPU), 1 x (8 CPU, 2 GPU)" in mixed.describe()


def test_the_paper_spec_costed_by_hand(place):  # noqa: F811
    """7 stages (1 teacher + 3 student-DA in wave 1, 3 fair baselines in wave 2), 18 trials that
    train (source-only, oracle, DAKD a-d, 3 seeds) and 9 that report a stage; at 100 ms a step
    one run of 50000 steps is 50000 x 0.1 / 3600 = 1.3889 GPU-hours."""
    spec = load_spec(PAPER)
    stages = plan(spec, Path.cwd()).stages
    cost = plan_cost(spec, stages, FOUR_BY_EIGHT, step_ms=100)
    run_h = 50000 * 0.1 / 3600
    waves = [(w.name, w.runs, w.at_once, w.reported) for w in cost.waves]
    assert waves == [
        ("stages, wave 1", 4, 4, 0),
        ("stages, wave 2", 3, 3, 0),
        ("trials", 18, 18, 9),
    ]
    assert cost.concurrency == 32  # max_concurrent: auto
    assert math.isclose(cost.gpu_hours, 25 * run_h)
    assert math.isclose(cost.wall_hours, 3 * run_h)  # each wave in one round
    text = cost.text()
    assert "total: 34.7 GPU-hours, 4.2 hours on this cluster" in text
    assert "step: 100 ms (given with --step-ms)" in text

    two = load_spec(PAPER, ["tune.max_concurrent=2"])
    slow = plan_cost(two, stages, FOUR_BY_EIGHT, step_ms=100)
    assert math.isclose(slow.wall_hours, (1 + 1 + 9) * run_h)  # 18 trials two at a time
    assert math.isclose(slow.gpu_hours, cost.gpu_hours)  # the same work

    with pytest.raises(SpecError) as err:
        check_budget(load_spec(PAPER, ["tune.budget_gpu_hours=30"]), cost)
    assert str(err.value) == (
        f"{PAPER}: tune.budget_gpu_hours: the plan needs 34.7 GPU-hours (at 100 ms a step), "
        "above the budget of 30"
    )
    check_budget(load_spec(PAPER, ["tune.budget_gpu_hours=35"]), cost)


def test_the_measured_step_time_of_the_recipe_and_setting(place, tmp_path):  # noqa: F811
    spec = load_spec(PAPER)
    assert setting_of(spec.base.train) == "bf16"  # auto switches, as they resolve on CUDA
    pinned = {"deterministic": "true", "amp": "fp32", "channels_last": "false"}
    pinned["cudnn_benchmark"] = "false"
    exact = load_spec(PAPER, [f"experiment.train.{k}={v}" for k, v in pinned.items()])
    assert setting_of(exact.base.train) == "exact"
    stages = plan(spec, Path.cwd()).stages
    cost = plan_cost(spec, stages, FOUR_BY_EIGHT)
    assert cost.step.device == "NVIDIA H200" and cost.step_ms == 58.7  # the shipped figure
    assert "NVIDIA H200, measured by bench/gpu_step.py" in cost.text()
    assert plan_cost(exact, stages, FOUR_BY_EIGHT).step_ms == 144.1
    none = plan_cost(spec, stages, FOUR_BY_EIGHT, device="NVIDIA H100 80GB HBM3")
    assert none.gpu_hours is None
    assert none.why == (
        "no step time measured on NVIDIA H100 80GB HBM3 for this recipe and setting "
        "(measured on: NVIDIA H200)"
    )
    with pytest.raises(SpecError, match=r"budget_gpu_hours: 9 GPU-hours, but the plan cannot"):
        check_budget(load_spec(PAPER, ["tune.budget_gpu_hours=9"]), none)

    figures = tmp_path / "times.json"
    recipe = recipe_of(spec.base)
    record(StepTime("GPU A", recipe, "bf16", 50.0), figures)
    record(StepTime("GPU B", recipe, "bf16", 70.0), figures)
    record(StepTime("GPU A", recipe, "bf16", 40.0), figures)  # replaces A's
    from dakd.runtime.step_times import load

    assert [(f.device, f.step_ms) for f in load(figures)] == [("GPU A", 40.0), ("GPU B", 70.0)]
    slowest, _ = find(recipe, "bf16", figures=load(figures))
    assert slowest.device == "GPU B"  # several measured and none named: never the optimist
    assert find(recipe, "fast", figures=load(figures))[1].endswith("(measured settings: bf16)")


def test_a_cpu_sweep_has_no_gpu_step_and_trials_fill_the_machine(tmp_path):
    spec = load_spec(ROOT / "sweeps" / "quickstart.yaml")
    cost = plan_cost(spec, [], Shape([(2, 0)], "this machine"))
    assert cost.gpu_hours is None and "use no GPU" in cost.why
    assert concurrency(spec, Shape([(2, 0)], "x")) == 2  # the spec's 2, and 2 CPUs
    assert (
        concurrency(
            load_spec(ROOT / "sweeps" / "quickstart.yaml", ["tune.max_concurrent=auto"]),
            Shape([(8, 0)], "x"),
        )
        == 8
    )


def test_the_dry_run_prints_the_cost_for_the_nodes_given(place, capsys):  # noqa: F811
    assert (
        _cli([str(PAPER), "--dry-run", "--nodes", "4", "--gpus-per-node", "8", "--step-ms", "100"])
        == 0
    )
    out = capsys.readouterr().out
    assert "cost, on 4 x (64 CPU, 8 GPU) (--nodes 4 --gpus-per-node 8):" in out
    assert "  trials: 18 run(s) x 50000 steps x 1 GPU, 18 at once" in out
    assert "total: 34.7 GPU-hours, 4.2 hours" in out
    over = [
        str(PAPER),
        "--dry-run",
        "--nodes",
        "1",
        "--gpus-per-node",
        "8",
        "--step-ms",
        "100",
        "--set",
        "tune.budget_gpu_hours=1",
    ]
    assert _cli(over) == 2
    assert "above the budget of 1" in capsys.readouterr().err


def test_max_concurrent_auto_is_what_the_sweep_counted():
    from dakd.sweep.driver.tuner import trial_limit

    spec = load_spec(PAPER)
    assert spec.tune.max_concurrent == "auto"
    assert trial_limit(spec, 12) == 12
    assert trial_limit(load_spec(PAPER, ["tune.max_concurrent=3"]), 12) == 3
    with pytest.raises(SpecError, match=r"tune.max_concurrent: must be auto .* got 'many'"):
        load_spec(PAPER, ["tune.max_concurrent=many"])


def test_the_runs_took_their_wall_time_times_their_gpus(tmp_path):
    """Actual cost: each trained child run of the parent, end minus start, times the trial's
    GPUs; a run reporting a reused stage trains nothing and is not counted."""
    from mlflow import MlflowClient

    from dakd.sweep.driver.run import Sweep
    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import prepare

    spec = load_spec(PAPER, ["resources.gpu=0.5"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = prepare(uri, spec.experiment_name)
    sweep = Sweep(spec, root=ROOT, log=lambda _: None)
    sweep.plan = type("P", (), {"tracking_uri": uri})()
    sweep.parent = RunLogger(uri, experiment_id, run_name="sweep")
    client = MlflowClient(uri)
    hour = 3600 * 1000
    for hours, reused in ((2.0, False), (1.5, False), (9.0, True)):
        tags = {"mlflow.parentRunId": sweep.parent.run_id}
        if reused:
            tags["reused"] = "true"
        run = client.create_run(experiment_id, start_time=hour, tags=tags)
        client.set_terminated(run.info.run_id, end_time=hour + int(hours * hour))
    run_hours, gpu_hours = sweep.used_gpu_hours()
    assert math.isclose(run_hours, 3.5) and math.isclose(gpu_hours, 1.75)


def test_a_trial_no_planned_node_holds_stops_the_dry_run_in_one_line(place, capsys):  # noqa: F811
    assert _cli([str(PAPER), "--dry-run", "--nodes", "2", "--cpus-per-node", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {PAPER}: resources.gpu: a stage task asks for 1 CPU and 1 GPU on one node, but "
        "no node has that many (nodes: node 0 16 CPU 0 GPU, node 1 16 CPU 0 GPU) "
        "(--nodes 2 --gpus-per-node 0)"
    )
