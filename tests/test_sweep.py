"""Sweeps end to end: every spec in sweeps/ validates and runs in smoke mode on a local Ray,
each trial lands in MLflow as a finished child run, and stages are trained once and reused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray  # noqa: E402  (a required dependency: a broken install fails here, not skips)
import yaml
from mlflow.tracking import MlflowClient  # noqa: E402

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.recipes.stages import FAILURE_FILE  # noqa: E402
from dakd.sweep.driver.plan import plan, smoke  # noqa: E402
from dakd.sweep.driver.run import run_sweep  # noqa: E402
from dakd.sweep.spec.sweep_spec import SpecError, load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _real(path: Path) -> bool:
    """Specs on the real datasets need them: tests/test_real_specs.py runs them on fixture trees."""
    experiment = yaml.safe_load(path.read_text()).get("experiment") or {}
    return (experiment.get("data") or {}).get("dataset") == "real"


SPECS = [p for p in sorted((ROOT / "sweeps").glob("*.yaml")) if not _real(p)]
RUN_PY = ROOT / "sweeps" / "run.py"


def _cli(argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweeps_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for every sweep of this module (starting Ray costs seconds)."""
    if not ray.is_initialized():
        # "local": a new Ray, never one a `ray start` on this machine left its address for
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Stages, Tune storage and the MLflow store of this module's sweeps (shared, so later
    sweeps find the stages earlier ones trained)."""
    root = tmp_path_factory.mktemp("sweeps")
    return {
        "stages": root / "stages",
        "storage": (root / "ray").as_uri(),  # a URI: what a cluster's shared storage looks like
        "uri": f"sqlite:///{root / 'mlflow.db'}",
    }


def _overrides(place) -> list[str]:
    return [
        f"experiment.out_dir={place['stages']}",
        f"storage={place['storage']}",
        f"tracking.uri={place['uri']}",
    ]


def test_specs_directory_holds_the_issue_specs():
    names = {p.stem for p in SPECS}
    assert {"quickstart", "loss_weights", "levels", "paradigms", "loss_ablation"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_dry_run_prints_the_plan_without_ray(path, capsys):
    assert not ray.is_initialized()
    assert _cli([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(path)
    assert f"sweep {spec.name}" in out
    assert "trials:" in out and "stages the trials build on or are measured against:" in out
    assert not ray.is_initialized()


def test_bad_spec_fails_before_ray_with_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nexperiment: {base: "
        + str(ROOT / "configs" / "embedded.yaml")
        + "}\nsearch:\n  loss.kl: {loguniform: [0, 1]}\n"
    )
    assert _cli([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "search.loss.kl" in err and "loguniform" in err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a checkpoint that does not exist: the plan would silently have no teacher stage
        (
            "experiment: {base: BASE, stage: dakd, teacher: nowhere/model.pt, init: auto}",
            r"bad\.yaml: experiment: teacher: checkpoint .*nowhere/model\.pt does not exist",
        ),
        (
            "experiment: {base: BASE, stage: dakd, teacher: auto, init: nowhere.pt}",
            r"bad\.yaml: experiment: init: checkpoint .*nowhere\.pt does not exist",
        ),
        # a searched option is checked too, not only the first
        (
            "experiment: {base: BASE, stage: dakd, init: auto}\n"
            "search: {teacher: {choice: [auto, gone.pt]}}",
            r"teacher: checkpoint .*gone\.pt does not exist",
        ),
        # a shipped teacher adapted to the other scenario: named with both scenarios
        (
            "experiment: {base: BASE, stage: dakd, init: auto, teacher: SHIPPED, "
            "data: {scenario: real_to_real}}",
            r"bad\.yaml: experiment: teacher: .*teacher_da-synth_to_real\.pt is adapted to "
            r"synth_to_real .*but data\.scenario is real_to_real",
        ),
        (
            "experiment: {base: BASE, stage: dakd, init: auto, teacher: SHIPPED}\n"
            "search: {data.scenario: {choice: [synth_to_real, real_to_real]}}",
            r"adapted to synth_to_real .*but data\.scenario is real_to_real",
        ),
        (
            "experiment: {base: BASE}\ntune: {metric: mIoU_typo}",
            r"tune\.metric: 'mIoU_typo' is not reported by the trials; they report miou, pixel_acc",
        ),
        (
            "experiment: {base: BASE}\ntune: {metric: loss/kl_typo}",
            r"tune\.metric: 'loss/kl_typo' is not reported",
        ),
    ],
)
def test_bad_paths_and_metrics_stop_the_dry_run_in_one_line(tmp_path, capsys, text, expected):
    import re

    bad = tmp_path / "bad.yaml"
    shipped = ROOT / "weights" / "embedded" / "teacher_da-synth_to_real.pt"
    text = text.replace("BASE", str(ROOT / "configs" / "embedded.yaml"))
    bad.write_text("name: bad\n" + text.replace("SHIPPED", str(shipped)))
    assert _cli([str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_plan_trains_the_fair_baseline_after_the_student_da_stage():
    """A sweep over DAKD trials that start from student-DA trains their fair baseline (student-DA
    trained on for the trials' steps) as a stage, after the student-DA stage it starts from."""
    spec = load_spec(ROOT / "sweeps" / "loss_weights.yaml")
    the_plan = plan(spec, ROOT)
    assert [s.kind for s in the_plan.stages] == ["student_da", "fair baseline"]
    student, fair = the_plan.stages
    assert fair.needs == {"init": student.config.name} and not student.needs
    assert fair.config.init == "auto" and fair.config.train.steps == spec.base.train.steps
    assert student.config.train.steps == spec.stages["train.steps"]
    assert "fair baseline" in the_plan.text()


def test_the_summary_sets_the_best_trial_against_both_baselines():
    from dakd.sweep.driver.summary import SweepResult, format_summary, headline_metrics

    spec = load_spec(ROOT / "sweeps" / "loss_weights.yaml")
    row = {"best": 0.0, "step": 300, "status": "done", "error": "", "values": {}}
    result = SweepResult(
        "storage/loss_weights",
        "parent",
        "sqlite:///x.db",
        rows=[
            {**row, "trial": "a", "where": ("synth_to_real", 0), "final": 16.0},
            {**row, "trial": "b", "where": ("synth_to_real", 0), "final": 14.0},
        ],
        baselines={("synth_to_real", 0): {"student-DA": 12.0, "fair baseline": 13.5}},
        errors=0,
    )
    text = format_summary(result, spec, "mlflow ui", "loss_weights")
    assert (
        "synth_to_real seed=0: best trial 16.00, +2.50 over the fair baseline 13.50 (student-DA "
        "trained on for the trials' steps), +4.00 over student-DA 12.00" in text
    )
    assert headline_metrics(result, spec) == {
        "best_miou": 16.0,
        "student_da_miou": 12.0,
        "fair_baseline_miou": 13.5,
        "gain_over_student_da": 4.0,
        "gain_over_fair_baseline": 2.5,
    }


def test_the_summary_is_markdown_the_console_adds_where_to_look():
    """The summary's Markdown (the parent run's description) is a table of the best trials and
    lists, without the console's lines on where to look; the console prints both, with the link
    to the runs table best first beside the headline metrics, the view the driver saves."""
    from dakd.sweep.driver.summary import (
        SweepResult,
        format_summary,
        headline_columns,
        headline_metrics,
        summary_markdown,
        table_view,
    )
    from dakd.tracking.locations import ui_link

    spec = load_spec(ROOT / "sweeps" / "loss_weights.yaml")
    row = {"best": 16.5, "step": 300, "status": "done", "error": "", "values": {}}
    failed = {**row, "trial": "c", "where": ("synth_to_real", 0), "final": float("nan")}
    result = SweepResult(
        "storage/loss_weights",
        "parent",
        "sqlite:///x.db",
        rows=[
            {**row, "trial": "a", "where": ("synth_to_real", 0), "final": 16.0},
            {**failed, "status": "error", "error": "c: loss is NaN at step 3"},
        ],
        baselines={("synth_to_real", 0): {"student-DA": 12.0, "fair baseline": 13.5}},
        errors=1,
        failed_stages=["student_da lr=1e12: loss is NaN"],
    )
    text = summary_markdown(result, spec)
    lines = text.splitlines()
    header = lines.index("| trial | final miou | best miou | steps | status |")
    assert lines[header - 1] == "" and lines[header + 1] == "|---|---|---|---|---|"
    assert lines[header + 2 : header + 5] == [
        "| a | 16.00 | 16.50 | 300 | done |",
        "| c | nan | 16.50 | 300 | error |",
        "",
    ]
    for heading, item in [
        ("stages that failed (1; their trials failed):", "- student_da lr=1e12: loss is NaN"),
        ("why trials failed (1):", "- c: loss is NaN at step 3"),
        ("the best trial against the baselines (miou):", "- synth_to_real seed=0: best trial"),
    ]:  # a list after a blank line: Markdown renders it as one
        at = lines.index(heading)
        assert lines[at + 1] == "" and lines[at + 2].startswith(item)
    assert "MLflow" not in text and "Ray Tune" not in text
    console = format_summary(result, spec, "mlflow ui", "loss_weights", experiment_id="3")
    assert text in console and "Ray Tune: storage/loss_weights" in console
    assert f"then open {ui_link('3', **table_view(spec))}" in console
    assert table_view(spec) == {
        "order_by": "miou",
        "ascending": False,
        "columns": ["miou", *headline_columns("miou")],
    }
    assert set(headline_metrics(result, spec)) == set(headline_columns("miou"))


def test_the_driver_puts_the_summary_on_the_parent_run_and_saves_its_view(tmp_path, monkeypatch):
    """:meth:`Sweep.summary` on a Tune result (faked: no Ray here): the parent run's description
    is the summary's Markdown, the text is its ``summary.md``, and the link printed opens the
    view it saved on the experiment."""
    from types import SimpleNamespace

    import pandas as pd

    from dakd.sweep.driver import run as sweep_run
    from dakd.sweep.driver.summary import summary_markdown
    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import prepare
    from dakd.tracking.tags import MLFLOW_NOTE, MLFLOW_SAVED_VIEW

    spec = load_spec(ROOT / "sweeps" / "loss_weights.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = prepare(uri, spec.experiment_name)
    monkeypatch.setattr(sweep_run, "log_analysis", lambda *args: None)  # tables: not this test's
    lines = []
    sweep = sweep_run.Sweep(spec, root=ROOT, log=lines.append)
    sweep.plan = SimpleNamespace(tracking_uri=uri, storage=str(tmp_path / "ray"), stages=[])
    sweep.name, sweep.experiment_id = "loss_weights-1", experiment_id
    sweep.parent = RunLogger(uri, experiment_id, run_name="sweep loss_weights-1")
    sweep.grid = [
        SimpleNamespace(
            config={"paradigm": paradigm, "loss.kl": 0.1},
            metrics={"miou": miou, "step": 300},
            metrics_dataframe=pd.DataFrame({"miou": [miou - 1, miou]}),
            error=None,
        )
        for paradigm, miou in [("c", 14.0), ("d", 16.0)]
    ]
    sweep.summary()
    sweep.analysis.join()

    client = sweep.parent.client
    parent = client.get_run(sweep.parent.run_id)
    description = parent.data.tags[MLFLOW_NOTE]
    assert description == summary_markdown(sweep.result, spec)
    assert "| paradigm=d kl=0.1 seed=0 | 16.00 | 16.00 | 300 | done |" in description
    assert parent.data.metrics["best_miou"] == 16.0
    # what the runs took (none ran under this parent here), logged and printed
    assert parent.data.metrics["run_hours"] == parent.data.metrics["gpu_hours"] == 0.0
    assert "cost:     0.00 run-hours, 0.00 GPU-hours" in lines[-1]
    assert "summary.md" in {a.path for a in client.list_artifacts(sweep.parent.run_id)}
    views = [
        key[len(MLFLOW_SAVED_VIEW) :]
        for key in client.get_experiment(experiment_id).tags
        if key.startswith(MLFLOW_SAVED_VIEW)
    ]
    assert len(views) == 1
    assert f"?viewStateShareKey={views[0]}&workflowType=machine_learning" in lines[-1]


def test_a_spec_that_is_not_text_stops_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\n\xff\xfe\x00\x01 binary")
    assert _cli([str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: not UTF-8 text (byte 0xff at offset 8)" in err
    assert len(err.strip().splitlines()) == 1


def test_resources_the_cluster_lacks_stop_before_any_trial(local_ray, place, tmp_path):
    overrides = [
        *_overrides(place),
        "resources.gpu=4",
        "tracking.experiment=no_gpus",
        f"storage={tmp_path / 'ray'}",
    ]
    spec = smoke(ROOT / "sweeps" / "quickstart.yaml", overrides)
    with pytest.raises(
        SpecError,
        match=r"resources\.gpu: a stage task asks for 1 CPU and 4 GPU on one node, but no node "
        r"has that many \(nodes: \S+ 2 CPU 0 GPU\)",
    ):
        run_sweep(spec, root=ROOT, log=lambda _: None)
    client = MlflowClient(place["uri"])
    experiment = client.get_experiment_by_name("no_gpus")
    assert client.search_runs([experiment.experiment_id]) == []  # no sweep ran: no record of one
    assert ray.is_initialized()  # the module's Ray: not this sweep's to shut down


def test_a_failed_stage_fails_its_trials_and_the_rest_go_on(local_ray, place, tmp_path):
    """A learning rate of 1e12 makes both of its stages' losses NaN at once: the trials on
    them fail with one line naming the stage and the difference; the other learning rate's
    stages and trials run; no run is left RUNNING. The failed stage is trained once, by the
    driver: its trials read the recorded failure instead of training it again."""
    overrides = [
        *_overrides(place),
        "search.optim.lr={grid: [0.05, 1.0e+12]}",
        "search.distill.levels=[output]",  # one trial per learning rate
        "tune.max_failures=0",  # a trial whose stage failed is not worth retrying
        "tracking.experiment=failing",
        f"storage={tmp_path / 'ray'}",
    ]
    spec = smoke(ROOT / "sweeps" / "quickstart.yaml", overrides)
    lines, logged_at = [], []

    def log(line):
        lines.append(line)
        logged_at.append(time.time())

    result = run_sweep(spec, root=ROOT, log=log)
    assert len(result.rows) == 2 and result.errors == 1
    assert [r["status"] for r in result.rows] == ["done", "error"]
    client = MlflowClient(place["uri"])
    experiment = client.get_experiment_by_name("failing")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    # FAILED: the sweep, the stage (once) and the trial on it; the fair baseline that would
    # start from the stage is recorded as failed without a run of its own
    failed_runs = [r for r in runs if r.info.status == "FAILED"]
    assert sorted(r.data.tags["stage"] for r in failed_runs) == ["dakd", "student_da", "sweep"]
    # nothing touched the failed stage after the driver reported its failure: the trial read
    # the failure record and did not train the stage itself
    (reported,) = [
        t for t, line in zip(logged_at, lines, strict=True) if "build on it fail" in line
    ]
    (stage,) = [
        s for s in plan(spec, ROOT).stages if s.kind == "student_da" and s.config.optim.lr > 1
    ]
    assert json.loads((stage.config.run_dir / FAILURE_FILE).read_text())["time"] <= reported
    assert max(p.stat().st_mtime for p in stage.config.run_dir.iterdir()) <= reported
    (stage_run,) = [r for r in failed_runs if r.data.tags["stage"] == "student_da"]
    assert stage_run.info.end_time <= reported * 1000
    nan_runs = [r for r in runs if r.data.tags.get("error", "").startswith("NonFinite")]
    assert [r.info.run_id for r in nan_runs] == [stage_run.info.run_id]
    # what the sweep says about it
    assert 1 <= len(result.failed_stages) <= 2
    for line in result.failed_stages:
        assert "optim.lr=1000000000000.0" in line and "NonFiniteLossError" in line
    failed = [r for r in result.rows if r["status"] == "error"]
    for row in failed:
        assert row["error"].startswith("StageFailedError: stage "), row["error"]
        assert "(optim.lr=1000000000000.0) failed: NonFiniteLossError" in row["error"]
    summary = "\n".join(lines)
    assert "stages that failed" in summary and "why trials failed (1)" in summary
    assert "Traceback" not in summary
    trial_runs = [
        r for r in runs if "trial" in r.data.tags or "StageFailed" in r.data.tags.get("error", "")
    ]
    assert sorted(r.info.status for r in trial_runs) == ["FAILED", "FINISHED"]


def _finished_children(client: MlflowClient, experiment: str, parent: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    return runs, children


RESULTS: dict[str, tuple] = {}
"""Smoke sweeps already run in this module, by spec name: later tests look into them."""


#: Smoke runs keep every grid option; paradigms.yaml's scenario axis is pinned to keep the suite
#: short (its 9 kinds of trial still run; --dry-run covers both scenarios' stages).
PINNED = {"paradigms": ["search.data.scenario=synth_to_real"]}


def _smoke_sweep(name: str, place):
    if name not in RESULTS:
        overrides = [*_overrides(place), *PINNED.get(name, [])]
        spec = smoke(ROOT / "sweeps" / f"{name}.yaml", overrides)
        RESULTS[name] = (spec, run_sweep(spec, root=ROOT, log=lambda _: None))
    return RESULTS[name]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_spec_runs_in_smoke_mode(path, local_ray, place):
    spec, result = _smoke_sweep(path.stem, place)
    expected = len(spec.tune.seeds) * spec.tune.num_samples
    for dist in spec.search.values():
        if dist.grid:
            expected *= len(dist.options)
    assert len(result.rows) == expected
    assert result.errors == 0
    assert all(r["status"] == "done" and r["final"] == r["final"] for r in result.rows)

    client = MlflowClient(place["uri"])
    runs, children = _finished_children(client, spec.experiment_name, result.parent_run_id)
    trials = [r for r in children if "trial" in r.data.tags]
    assert len(trials) == expected
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep"] == spec.name
        assert {"scenario", "paradigm", "levels", "seed", "stage", "git_commit"} <= set(
            run.data.tags
        )
        assert "loss.kl" in run.data.params and "data.scenario" in run.data.params
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "miou")]
        assert steps
        if run.data.tags.get("early_stopped") == "true":  # ASHA stopped it at a rung
            assert max(steps) < int(run.data.params["train.steps"])
        else:  # ran to the end: final weights and evaluation artifacts are there, even when
            # the scheduler stops trials at their last report (ASHA's max_t)
            names = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
            assert "weights/model.pt" in names, run.info.run_name
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    for run in [parent, *children]:  # stages, the fair baseline, trials: MLflow's commit tag too
        assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"]
    assert "summary.md" in {a.path for a in client.list_artifacts(result.parent_run_id)}


def test_teacher_outputs_are_cached_once_as_a_stage_and_read_by_every_trial(
    local_ray, place, tmp_path
):
    """With the cache on (smoke trials read too few outputs for auto to build one), the driver
    builds each domain's cache as a tracked stage after the teacher; the trials read it; the
    next sweep with the same teacher plans to reuse it."""
    overrides = [
        *_overrides(place),
        "experiment.teacher_cache.mode=on",
        f"experiment.teacher_cache.dir={tmp_path / 'cache'}",
        "experiment.data.train_size=8",
        "tracking.experiment=cached",
        f"storage={tmp_path / 'ray'}",
    ]
    spec = smoke(ROOT / "sweeps" / "quickstart.yaml", overrides)
    assert [c.done for c in plan(spec, ROOT).caches] == [False, False]
    result = run_sweep(spec, root=ROOT, log=lambda _: None)
    assert result.errors == 0 and len(result.rows) == 2
    client = MlflowClient(place["uri"])
    runs, children = _finished_children(client, "cached", result.parent_run_id)
    builds = [r for r in children if r.data.tags["stage"] == "teacher_cache"]
    assert sorted(r.data.tags["domain"] for r in builds) == ["source", "target"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["entries"] == 16 for r in builds)
    trials = [r for r in children if "trial" in r.data.tags]
    assert [r.data.tags["teacher_cache"] for r in trials] == ["source+target"] * 2
    again = plan(spec, ROOT)
    assert [c.done for c in again.caches] == [True, True]
    assert "reuse teacher outputs on game train" in again.text()


def test_reused_stage_rows_report_the_stage_itself(local_ray, place):
    """paradigms.yaml's teacher-DA and student-DA rows are the stages the DAKD rows use."""
    spec, result = _smoke_sweep("paradigms", place)
    client = MlflowClient(place["uri"])
    _, children = _finished_children(client, spec.experiment_name, result.parent_run_id)
    reused = [r for r in children if r.data.tags.get("reused") == "true"]
    assert {r.data.tags["stage"] for r in reused} == {"teacher_da", "student_da"}
    for run in reused:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "miou")]
        assert steps == [2, 4]  # the stage's own schedule (smoke: 4 steps, evaluated every 2)


def test_trials_reuse_one_actor_after_asha_stops_them(local_ray, place):
    """One trial at a time on a reused actor (Tune's default for function trainables), with
    ASHA stopping trials at intermediate and at last reports: every trial runs and ends, all in
    the same process. A trial that swallowed Tune's stop at its last report left its actor
    unable to reset, so the next trial failed and the sweep hung."""
    import dataclasses

    from ray.tune import ExperimentAnalysis

    spec = smoke(ROOT / "sweeps" / "loss_weights.yaml", _overrides(place))
    assert spec.tune.reuse_actors and spec.tune.scheduler == "asha"
    spec = dataclasses.replace(
        spec, tune=dataclasses.replace(spec.tune, num_samples=3, max_concurrent=1)
    )
    result = run_sweep(spec, root=ROOT, log=lambda _: None)
    assert result.errors == 0 and len(result.rows) == 3
    assert all(row["status"] == "done" for row in result.rows)
    trials = ExperimentAnalysis(result.experiment_path).trials
    assert len({trial.last_result["pid"] for trial in trials}) == 1  # one actor served all


def test_trial_artifacts_and_per_evaluation_metrics(local_ray, place):
    spec, result = _smoke_sweep("quickstart", place)
    client = MlflowClient(place["uri"])
    _, children = _finished_children(client, spec.experiment_name, result.parent_run_id)
    run = next(r for r in children if "trial" in r.data.tags)
    # 4 steps evaluated every 2: two evaluations of mIoU, per-class IoU, every loss term and
    # what the steps cost
    assert [m.step for m in client.get_metric_history(run.info.run_id, "miou")] == [2, 4]
    evaluated = ("iou/road", "pixel_acc", "loss/total", "loss/kl_target", "loss/seg")
    for name in (*evaluated, "step_ms", "tflops"):
        assert client.get_metric_history(run.info.run_id, name), name
    # where the trial's time went (bench/sweep_overhead.py): parts that add up to at most the whole
    times = {k: v for k, v in run.data.metrics.items() if k.startswith("time/")}
    parts = ("setup", "train", "report", "logging", "artifacts")
    assert set(times) == {f"time/{p}_s" for p in (*parts, "total")}
    assert all(v >= 0 for v in times.values()) and times["time/train_s"] > 0
    assert sum(times[f"time/{p}_s"] for p in parts) <= times["time/total_s"] + 1e-6
    names = set()
    for top in client.list_artifacts(run.info.run_id):
        names.add(top.path)
        if top.is_dir:
            names |= {a.path for a in client.list_artifacts(run.info.run_id, top.path)}
    assert "config.yaml" in names
    assert "weights/model.pt" in names
    assert {"eval/confusion.png", "eval/per_class_iou.md", "eval/predictions.png"} <= names


def test_second_sweep_reuses_the_stages(local_ray, place):
    spec, _ = _smoke_sweep("levels", place)
    again = plan(spec, ROOT)
    assert again.stages and all(s.done for s in again.stages)  # nothing left to train
    # levels.yaml distils from the shipped teacher: its stages are student-DA and the fair
    # baseline that starts from it
    assert sorted(s.kind for s in again.stages) == ["fair baseline", "student_da"]
    stamps = {s.kind: s.checkpoint.stat().st_mtime_ns for s in again.stages}
    client = MlflowClient(place["uri"])
    exp = client.get_experiment_by_name(spec.experiment_name)
    before = client.search_runs([exp.experiment_id], "tags.stage = 'student_da'")
    run_sweep(spec, root=ROOT, log=lambda _: None)
    after = client.search_runs([exp.experiment_id], "tags.stage = 'student_da'")
    # neither was trained again, and no new stage run was tracked
    assert {s.kind: s.checkpoint.stat().st_mtime_ns for s in again.stages} == stamps
    assert len(after) == len(before)


def test_resume_continues_the_latest_sweep_in_the_same_parent_run(local_ray, place):
    spec, first = _smoke_sweep("quickstart", place)
    resumed = run_sweep(spec, resume=True, root=ROOT, log=lambda _: None)
    assert resumed.experiment_path == first.experiment_path
    assert resumed.parent_run_id == first.parent_run_id
    assert sorted(r["trial"] for r in resumed.rows) == sorted(r["trial"] for r in first.rows)
    assert first.experiment_path.startswith("file://")
    folder = Path(first.experiment_path.removeprefix("file://"))
    state = json.loads((folder / "dakd_sweep.json").read_text())
    assert state["parent_run_id"] == first.parent_run_id


def test_resume_without_a_previous_sweep_says_so(place, tmp_path):
    spec = smoke(ROOT / "sweeps" / "quickstart.yaml", [*_overrides(place), f"storage={tmp_path}"])
    with pytest.raises(SpecError, match="no interrupted sweep"):
        run_sweep(spec, resume=True, root=ROOT, log=lambda _: None)


def test_ray_failing_to_start_leaves_no_running_parent_run(place, tmp_path, monkeypatch):
    """Ray starts while the MLflow parent run opens in a thread; when Ray fails, the error
    reaches the user and the parent run is closed (KILLED), not left RUNNING."""
    import dakd.sweep.driver.run as sweep_run

    def no_ray(address):
        raise ConnectionError("no Ray cluster at 127.0.0.1:1")

    monkeypatch.setattr(sweep_run, "start_ray", no_ray)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = smoke(
        ROOT / "sweeps" / "quickstart.yaml",
        [*_overrides(place), f"tracking.uri={uri}", f"storage={tmp_path / 'ray'}"],
    )
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        run_sweep(spec, root=ROOT, log=lambda _: None)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment_name).experiment_id])
    assert [(r.data.tags["stage"], r.info.status) for r in runs] == [("sweep", "KILLED")]


def test_ctrl_c_in_a_phase_closes_the_parent_run_and_the_ray_the_sweep_started(
    place, tmp_path, monkeypatch
):
    """One context manager holds Ray and the parent run: Ctrl-C once both are open ends the
    parent run KILLED and shuts down the Ray this sweep started, once; the interrupt goes on."""
    import dakd.sweep.driver.run as sweep_run

    shutdowns = []
    monkeypatch.setattr(sweep_run, "start_ray", lambda address: True)  # as if it started Ray
    monkeypatch.setattr(sweep_run, "check_cluster", lambda spec, address, autoscale, log: None)
    monkeypatch.setattr(ray, "shutdown", lambda **_: shutdowns.append("shutdown"))
    # the processes a stop waits for are the module's own Ray's here: not this sweep's to end
    monkeypatch.setattr(sweep_run, "_child_processes", list)

    def ctrl_c(sweep):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_run.Sweep, "stages", ctrl_c)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = smoke(
        ROOT / "sweeps" / "quickstart.yaml",
        [*_overrides(place), f"tracking.uri={uri}", f"storage={tmp_path / 'ray'}"],
    )
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, root=ROOT, log=lambda _: None)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment_name).experiment_id])
    assert [(r.data.tags["stage"], r.info.status) for r in runs] == [("sweep", "KILLED")]
    assert shutdowns == ["shutdown"]


def test_a_sweep_that_stops_itself_fails_with_its_reason_and_closes_its_runs(
    place, tmp_path, monkeypatch
):
    """A watch thread that finds the sweep cannot go on (the nodes for its trials lost past
    ``resources.node_timeout_s``) stops it as Ctrl-C would, from another thread: the sweep
    raises Stopped with that reason, its parent run ends KILLED with the reason as ``error``."""
    import threading

    import dakd.sweep.driver.run as sweep_run
    from dakd.sweep.driver.interrupt import Stopped

    monkeypatch.setattr(sweep_run, "start_ray", lambda address: False)
    monkeypatch.setattr(sweep_run, "check_cluster", lambda spec, address, autoscale, log: None)
    reason = "no node could hold the sweep's processes for 5 s (resources.node_timeout_s): ..."

    def stages(sweep):  # the watch fires while a stage waits for a node
        threading.Thread(target=sweep.signals.fail, args=(reason,)).start()
        time.sleep(30)
        raise AssertionError("the sweep was not stopped")

    monkeypatch.setattr(sweep_run.Sweep, "stages", stages)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = smoke(
        ROOT / "sweeps" / "quickstart.yaml",
        [*_overrides(place), f"tracking.uri={uri}", f"storage={tmp_path / 'ray'}"],
    )
    with pytest.raises(Stopped) as stopped:
        run_sweep(spec, root=ROOT, log=lambda _: None)
    assert stopped.value.reason == reason and stopped.value.closed == 1
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment_name).experiment_id])
    assert [(r.info.status, r.data.tags.get("error")) for r in runs] == [("KILLED", reason)]


def test_a_tracking_server_that_is_down_stops_the_sweep_before_ray(place, tmp_path, monkeypatch):
    """One line naming the URI, before Ray starts and before any run is opened."""
    import dakd.sweep.driver.run as sweep_run
    from dakd.cluster.processes import free_port

    def no_ray(address):
        raise AssertionError("Ray started though the tracking server is down")

    monkeypatch.setattr(sweep_run, "start_ray", no_ray)
    uri = f"http://127.0.0.1:{free_port()}"
    spec = smoke(
        ROOT / "sweeps" / "quickstart.yaml",
        [*_overrides(place), f"tracking.uri={uri}", f"storage={tmp_path / 'ray'}"],
    )
    with pytest.raises(SpecError, match=rf"tracking.uri: no MLflow server answers at {uri} "):
        run_sweep(spec, root=ROOT, log=lambda _: None)


def test_the_plan_is_made_without_importing_mlflow():
    """The driver opens MLflow (seconds to import) in a thread while Ray starts; that only
    overlaps if nothing before ``ray.init`` imports it."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from dakd.sweep.driver.plan import plan; "
        "import dakd.sweep.driver.run; "
        "from dakd.sweep.spec.sweep_spec import load_spec; "
        f"plan(load_spec({str(ROOT / 'sweeps' / 'quickstart.yaml')!r}), Path({str(ROOT)!r})); "
        "print('mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_a_student_search_records_infeasible_students_and_tags_its_front(local_ray, place):
    """A bound the wider student breaks: it is measured, recorded with why, and not trained;
    the front is the feasible student, tagged, plotted, counted on the parent run."""
    overrides = [
        *_overrides(place),
        "deploy.size=[64, 128]",
        # parameters are the same on every machine, unlike a memory figure
        "tune.constraints={params_m: {max: 0.1}}",
        "tracking.experiment=student_search_bounded",
    ]
    spec = smoke(ROOT / "sweeps" / "student_search.yaml", overrides)
    lines: list[str] = []
    result = run_sweep(spec, root=ROOT, log=lines.append)
    by_status = {r["status"]: r for r in result.rows}
    assert sorted(by_status) == ["done", "infeasible"] and result.errors == 0
    assert by_status["infeasible"]["trial"].startswith("width=0.125")
    assert [r["trial"] for r in result.front] == [by_status["done"]["trial"]]

    client = MlflowClient(place["uri"])
    _, children = _finished_children(client, spec.experiment_name, result.parent_run_id)
    trials = {r.data.tags["trial"]: r for r in children if "trial" in r.data.tags}
    bounded = trials[by_status["infeasible"]["trial"]]
    assert bounded.info.status == "FINISHED"
    assert bounded.data.tags["infeasible"].startswith("params_m 0.2552 > max 0.1")
    # ruled out by its parameters before any pass ran: not timed, not trained
    assert {"params_m", "gflops"} <= set(bounded.data.metrics)
    assert "latency_ms" not in bounded.data.metrics and "miou" not in bounded.data.metrics
    assert bounded.data.tags["deploy"] == "64x128 batch 1 (parameters and FLOPs only)"
    assert "early_stopped" not in bounded.data.tags
    assert bounded.data.tags["start"] == "pretrained drn_d_22-w0.125-os2.pt"
    kept = trials[by_status["done"]["trial"]]
    assert kept.data.tags["pareto_front"] == "true"
    assert kept.data.tags["deploy"].startswith("64x128 batch 1 on cpu")
    assert kept.data.tags["start"] == "pretrained drn_d_22-w0.0625-os2.pt"
    assert kept.data.metrics["params_m"] < 0.1 and "miou" in kept.data.metrics

    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["front_size"] == 1.0
    description = parent.data.tags["mlflow.note.content"]
    assert "the Pareto front (1 of 2 trials; max miou, min peak_memory_mb)" in description
    assert "- params_m <= 0.1: width=0.0625" in description
    assert "infeasible, recorded and not trained (1):" in description
    plots = {a.path for a in client.list_artifacts(result.parent_run_id, "analysis")}
    assert "analysis/pareto_front.png" in plots
