"""Result tables and plots from MLflow runs written with known values into a SQLite store.

One store for the whole file (module fixture), four experiments:

* ``study``: one sweep of both scenarios with every kind of row, several seeds, a failed and an
  unfinished run, two evaluations per run for some (final != best), a reused stage recorded
  twice (the stage run and its replay as a trial);
* ``weights``: DAKD runs that switch the distillation terms on and off (ablation, best trials);
* ``crowded``: a teacher, a student and DAKD (a)-(d) within a few tenths of mIoU, the KL
  weight swept over about a decade (plots that must stay readable);
* ``later``: a sweep whose DAKD run starts from a student-DA stage recorded in ``study``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from matplotlib.colors import to_rgb
from mlflow import MlflowClient

from dakd.__main__ import main
from dakd.config import ExperimentConfig
from dakd.data.labels import CLASS_NAMES
from dakd.tracking.cli import FORMATS as CLI_FORMATS
from dakd.tracking.drawing import PARADIGM_COLOURS
from dakd.tracking.groups import aggregate, dakd_groups
from dakd.tracking.load import load_runs, row_name, select
from dakd.tracking.locations import default_uri
from dakd.tracking.plots import make_plots, parameters_figure, sensitivity_figure
from dakd.tracking.report import log_sweep_analysis
from dakd.tracking.runs import RunLogger
from dakd.tracking.runs_table import BOOKKEEPING_PARAMS, AnalysisError, read_runs, write_runs
from dakd.tracking.store import prepare
from dakd.tracking.tables import FORMATS, build_tables, write_tables
from tests.test_core_imports import NOT_FOR_TABLES, run_blocked

ROOT = Path(__file__).resolve().parents[1]
BASE = ExperimentConfig().flat()
PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(miou: float, step: int) -> dict[str, float]:
    """What an evaluation logs, with class IoUs derived from mIoU so they can be checked."""
    return {
        "miou": miou,
        "pixel_acc": 50.0 + miou,
        "iou/road": 2.0 * miou,
        "iou/traffic_light": miou / 2.0,
        "loss/total": 1.0 / step,
        "step": float(step),
    }


def _log_run(store, experiment_id, parent, name, evaluations, status="FINISHED", tags=None, **p):
    """A run like a trial's: the flattened config as params (``p`` with ``__`` for dots), one
    metrics batch per evaluation ``(step, miou)``, closed with ``status`` (RUNNING: left open)."""
    params = {**BASE, "name": name, **{k.replace("__", "."): v for k, v in p.items()}}
    tags = {"stage": params["stage"], "seed": params["seed"], **(tags or {})}
    logger = RunLogger(store, experiment_id, run_name=name, parent_run_id=parent, tags=tags)
    logger.log_params(params)
    for step, miou in evaluations:
        logger.log_metrics(_metrics(miou, step), step=step)
    if status != "RUNNING":
        logger.finish(status)
    return logger.run_id


def _parent(store, experiment_id, name):
    return RunLogger(store, experiment_id, run_name=name, tags={"stage": "sweep"}).run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    uri = default_uri(root / "runs")
    ids = {}

    study = prepare(uri, "study")
    ids["study"] = parent = _parent(uri, study, "sweep study")
    s2r = {"data__scenario": "synth_to_real"}
    init = "/stages/student_da-s0/model.pt"
    teacher = "/stages/teacher_da-s0/model.pt"
    ids["teacher0"] = _log_run(
        uri, study, parent, "teacher_da-t0", [(2, 20.0)], stage="teacher_da", seed=0, **s2r
    )
    _log_run(uri, study, parent, "teacher_da-t1", [(2, 24.0)], stage="teacher_da", seed=1, **s2r)
    for seed, evaluations in enumerate([[(1, 15.0), (2, 10.0)], [(2, 12.0)], [(2, 14.0)]]):
        name = "student_da-s0" if seed == 0 else f"student_da-s{seed}"
        ids[f"student{seed}"] = _log_run(
            uri, study, parent, name, evaluations, stage="student_da", seed=seed, **s2r
        )
    _log_run(uri, study, parent, "fair", [(2, 13.0)], stage="student_da", init=init, **s2r)
    for seed, miou in enumerate([11.0, 13.0, 18.0]):
        _log_run(
            uri,
            study,
            parent,
            f"paradigm=a seed={seed}",
            [(1, miou - 1.0), (2, miou)],
            stage="dakd",
            paradigm="a",
            seed=seed,
            init=init,
            teacher=teacher,
            **s2r,
        )
    ids["failed"] = _log_run(
        uri, study, parent, "a failed", [(1, 50.0)], "FAILED", stage="dakd", paradigm="a", seed=3
    )
    ids["running"] = _log_run(
        uri, study, parent, "a running", [(1, 60.0)], "RUNNING", stage="dakd", paradigm="a", seed=4
    )
    for levels, miou in (("['output']", 9.0), ("['output', 'feature']", 16.0)):
        _log_run(
            uri,
            study,
            parent,
            f"paradigm=b levels={levels}",
            [(2, miou)],
            stage="dakd",
            paradigm="b",
            distill__levels=levels,
            init=init,
            teacher=teacher,
            **s2r,
        )
    _log_run(uri, study, parent, "source", [(2, 5.0)], stage="source_only", **s2r)
    r2r = {"data__scenario": "real_to_real"}
    _log_run(uri, study, parent, "student r2r", [(2, 7.0)], stage="student_da", **r2r)
    _log_run(uri, study, parent, "dakd r2r", [(2, 8.0)], stage="dakd", paradigm="a", **r2r)
    # the teacher stage again, as a sweep replays a reused stage as a table row
    ids["replay"] = _log_run(
        uri,
        study,
        parent,
        "teacher_da-t0",
        [(2, 20.0)],
        tags={"trial": "teacher seed=0", "reused": "true"},
        stage="teacher_da",
        seed=0,
        sweep__seed=0,
        **s2r,
    )

    weights = prepare(uri, "weights")
    ids["weights"] = parent = _parent(uri, weights, "sweep weights")
    for (kl, mse, pseudo), seed, miou in (
        ((0.1, 0.0, 0.0), 0, 6.0),
        ((0.0, 0.01, 0.0), 0, 5.0),
        ((0.0, 0.0, 1.0), 0, 9.0),
        ((0.1, 0.01, 1.0), 0, 11.0),
        ((0.1, 0.01, 1.0), 1, 13.0),
    ):
        _log_run(
            uri,
            weights,
            parent,
            f"kl={kl} mse={mse} pseudo={pseudo} seed={seed}",
            [(2, miou)],
            stage="dakd",
            seed=seed,
            loss__kl=kl,
            loss__mse=mse,
            loss__pseudo=pseudo,
        )

    # teacher, student and DAKD (a)-(d) close together, DAKD's KL weight over about a decade
    crowded = prepare(uri, "crowded")
    ids["crowded"] = parent = _parent(uri, crowded, "sweep crowded")
    _log_run(uri, crowded, parent, "teacher", [(2, 30.0)], stage="teacher_da")
    _log_run(uri, crowded, parent, "student", [(2, 20.0)], stage="student_da")
    for k, kl in enumerate(np.geomspace(0.05, 0.65, 8)):
        paradigm = "abcd"[k % 4]
        _log_run(
            uri,
            crowded,
            parent,
            f"paradigm={paradigm} kl={kl:.3f}",
            [(2, 20.1 + 0.05 * k)],
            stage="dakd",
            paradigm=paradigm,
            loss__kl=float(kl),
        )

    later = prepare(uri, "later")
    ids["later"] = parent = _parent(uri, later, "sweep later")
    _log_run(uri, later, parent, "dakd later", [(2, 12.5)], stage="dakd", init=init, **s2r)
    return uri, ids


@pytest.fixture(scope="module")
def study(store):
    uri, ids = store
    return load_runs(select(uri, "study", ids["study"]))


def _groups(runs: pa.Table, best: bool = False) -> dict[tuple, dict]:
    """Aggregated groups by (scenario, row), for rows with one configuration."""
    out = {}
    for group in aggregate(runs, best).to_pylist():
        out.setdefault((group["scenario"], group["row"]), []).append(group)
    return {key: groups[0] if len(groups) == 1 else groups for key, groups in out.items()}


def _by_name(runs: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in runs.to_pylist():
        out.setdefault(run["run_name"], []).append(run)
    return out


# -- loading -------------------------------------------------------------------------------------


def test_runs_table_has_one_row_per_run_and_no_parent(store, study):
    uri, ids = store
    assert study.num_rows == 17  # every child run of the sweep, its parent left out
    for column in (
        "run_id",
        "run_name",
        "status",
        "parent_run_id",
        "start_time",
        "end_time",
        "row",
        "config",
        "tags.stage",
        "params.loss.kl",
        "params.data.scenario",
        "metrics.miou",
        "metrics.pixel_acc",
        "metrics.iou/road",
        "best.miou",
        "best.step",
    ):
        assert column in study.column_names, column
    assert ids["study"] not in study["run_id"].to_pylist()
    assert set(study["parent_run_id"].to_pylist()) == {ids["study"]}
    assert "sweep" not in study["tags.stage"].to_pylist()
    statuses = dict(zip(study["run_id"].to_pylist(), study["status"].to_pylist()))
    assert statuses[ids["failed"]] == "FAILED"
    assert statuses[ids["running"]] == "RUNNING"
    assert study.schema.field("metrics.miou").type == pa.float64()
    assert study.schema.field("start_time").type == pa.timestamp("ms", tz="UTC")


def test_runs_parquet_round_trip(study, tmp_path):
    path = write_runs(study, tmp_path)
    assert path.name == "runs.parquet"
    assert pq.read_table(path).equals(study)


def test_final_metrics_are_the_last_evaluation_and_best_is_the_max(study):
    run = _by_name(study)["student_da-s0"][0]
    assert run["metrics.miou"] == 10.0 and run["best.miou"] == 15.0 and run["best.step"] == 1
    assert run["metrics.iou/road"] == 20.0 and run["best.iou/road"] == 30.0
    assert run["best.pixel_acc"] == 65.0
    dakd = _by_name(study)["paradigm=a seed=2"][0]
    assert dakd["metrics.miou"] == dakd["best.miou"] == 18.0 and dakd["best.step"] == 2


def test_pages_of_search_results_add_up(store, study):
    uri, ids = store
    paged = load_runs(select(uri, "study", ids["study"]), page_size=4)
    assert sorted(paged["run_id"].to_pylist()) == sorted(study["run_id"].to_pylist())


def test_rows_are_derived_from_params():
    assert row_name("source_only", None, "", "student") == "source-only"
    assert row_name("oracle", None, "", "teacher") == "oracle (teacher)"
    assert row_name("teacher_da", None, "", "student") == "teacher-DA"
    assert row_name("student_da", None, "", "student") == "student-DA"
    assert row_name("student_da", None, "/x/model.pt", "student") == "student-DA + extra steps"
    assert row_name("dakd", "d", "/x/model.pt", "student") == "DAKD (d)"


def test_rows_of_the_study(study):
    rows = {name: [r["row"] for r in runs] for name, runs in _by_name(study).items()}
    assert rows["fair"] == ["student-DA + extra steps"]
    assert rows["student_da-s1"] == ["student-DA"]
    assert rows["paradigm=a seed=0"] == ["DAKD (a)"]
    assert rows["source"] == ["source-only"]
    levels = {r["run_name"]: r["levels"] for r in study.to_pylist() if r["paradigm"] == "b"}
    assert sorted(levels.values()) == ["output", "output+feature"]


def test_a_stage_recorded_twice_counts_once(store, study):
    uri, ids = store
    duplicate = dict(zip(study["run_id"].to_pylist(), study["duplicate"].to_pylist()))
    assert duplicate[ids["teacher0"]] is True  # the older record of teacher seed 0
    assert duplicate[ids["replay"]] is False
    assert sum(duplicate.values()) == 1


def test_stages_recorded_by_an_earlier_sweep_are_linked(store):
    uri, ids = store
    runs = load_runs(select(uri, "later", ids["later"]))
    linked = {r["run_name"]: r["linked"] for r in runs.to_pylist()}
    assert linked == {"dakd later": False, "student_da-s0": True}
    table = build_tables(aggregate(runs))[0]
    dakd = table.data.to_pylist()[-1]
    assert dakd["row"] == "DAKD (c)" and dakd["delta_miou"] == pytest.approx(12.5 - 10.0)


def test_a_trial_pbt_restarted_is_a_configuration_of_its_own(tmp_path):
    """Three trials of one PBT population, one seed, all started with kl=0.1: the one PBT
    restarted from another's weights trained another schedule, so it is neither averaged with
    the others nor dropped as their duplicate, and the best-trials table shows the value it
    ended with beside the one its params keep."""
    uri = default_uri(tmp_path / "runs")
    experiment = prepare(uri, "pbt")
    parent = _parent(uri, experiment, "sweep pbt")
    history = "step 2: weights of kl=0.1 (trial a_00000), continued as kl=0.669"
    for name, miou, tags, kl_last in (
        ("kl=0.1 (a_00000)", 10.0, None, 0.1),
        ("kl=0.1 (a_00001)", 12.0, None, 0.1),
        ("kl=0.669 (a_00002)", 15.0, {"pbt_history": history}, 0.669),
    ):
        run = _log_run(
            uri, experiment, parent, name, [(2, 9.0)], "RUNNING", tags, stage="dakd", loss__kl=0.1
        )
        logger = RunLogger(uri, experiment, run_id=run)
        logger.log_metrics(
            {**_metrics(miou, 4), "weight/loss.kl": kl_last, "weight/loss.mse": 0.01}, step=4
        )
        logger.finish("FINISHED")
    runs = load_runs(select(uri, "pbt", parent))
    by_name = {r["run_name"]: r for r in runs.to_pylist()}
    assert [by_name[n]["duplicate"] for n in sorted(by_name)] == [True, False, False]
    fixed = {by_name["kl=0.1 (a_00000)"]["config"], by_name["kl=0.1 (a_00001)"]["config"]}
    assert len(fixed) == 1 and by_name["kl=0.669 (a_00002)"]["config"] not in fixed
    # the two that never restarted ran the same config and seed: the newer is kept, as for any
    # rerun; the restarted one is its own group, with its schedule
    groups = {g["config"]: g for g in aggregate(runs).to_pylist()}
    assert sorted((g["n"], g["miou_mean"]) for g in groups.values()) == [(1, 12.0), (1, 15.0)]
    runs = runs.filter(pc.invert(runs["duplicate"]))
    assert sorted(runs["run_name"].to_pylist()) == ["kl=0.1 (a_00001)", "kl=0.669 (a_00002)"]

    # two different fixed values as well, so the KL weight is a swept column
    _log_run(uri, experiment, parent, "kl=0.3", [(4, 11.0)], stage="dakd", loss__kl=0.3)
    runs = load_runs(select(uri, "pbt", parent))
    best = _table(build_tables(aggregate(runs)), "best_trials")
    assert best.header[:2] == ["rank", "loss.kl"]
    assert [c[:3] for c in best.cells] == [
        ["1", "0.1 → 0.669", "15.00 ± –"],
        ["2", "0.1", "12.00 ± –"],
        ["3", "0.3", "11.00 ± –"],
    ]
    assert best.notes == [
        "rank 1 (1): PBT trials restarted from other trials' weights (restarts), each a "
        "configuration of its own; a → b: the value it started with and ended with"
    ]
    assert best.data["loss.kl"].to_pylist() == [0.1, 0.1, 0.3]
    assert best.data["loss.kl_final"].to_pylist() == [0.669, None, None]
    assert best.data["pbt_history"].to_pylist() == [history, None, None]


def test_runs_logged_before_a_key_was_renamed_are_the_same_configuration(tmp_path):
    """A run logged with ``train.ema``/``train.precise_bn`` and one logged with their current
    names, the same config otherwise: one group, read under the current names, its ``config``
    the hash the old run always had (its params as logged, bookkeeping aside, and its row)."""
    uri = default_uri(tmp_path / "runs")
    experiment = prepare(uri, "renamed")
    parent = _parent(uri, experiment, "sweep renamed")
    current = {
        **BASE,
        "stage": "student_da",
        "train.ema_decay": 0.99,
        "train.precise_bn_images": 64,
    }
    old = {
        k: v for k, v in current.items() if k not in ("train.ema_decay", "train.precise_bn_images")
    }
    old.update({"train.ema": 0.99, "train.precise_bn": 64})
    for seed, (params, miou) in enumerate([(old, 10.0), (current, 12.0)]):
        name = f"student seed={seed}"
        logger = RunLogger(
            uri, experiment, run_name=name, parent_run_id=parent, tags={"stage": "student_da"}
        )
        logger.log_params({**params, "name": name, "seed": seed})
        logger.log_metrics(_metrics(miou, 2), step=2)
        logger.finish("FINISHED")
    runs = load_runs(select(uri, "renamed", parent))
    assert "params.train.ema" not in runs.column_names
    assert "params.train.precise_bn" not in runs.column_names
    rows = runs.to_pylist()
    assert [(r["params.train.ema_decay"], r["params.train.precise_bn_images"]) for r in rows] == [
        ("0.99", "64")
    ] * 2
    logged = {k: str(v) for k, v in old.items() if k not in BOOKKEEPING_PARAMS}
    text = json.dumps({**logged, "row": "student-DA"}, sort_keys=True)
    assert {r["config"] for r in rows} == {hashlib.sha256(text.encode()).hexdigest()[:12]}
    (group,) = aggregate(runs).to_pylist()
    assert (group["n"], group["miou_mean"]) == (2, 11.0)


# -- aggregation ---------------------------------------------------------------------------------


def test_seed_aggregates_against_numpy_and_statistics(study):
    groups = _groups(study)
    student = groups[("synth_to_real", "student-DA")]
    values = [10.0, 12.0, 14.0]
    assert student["n"] == 3
    assert student["miou_mean"] == pytest.approx(12.0) == pytest.approx(statistics.fmean(values))
    assert student["miou_std"] == pytest.approx(2.0)
    assert student["miou_std"] == pytest.approx(statistics.stdev(values))
    assert student["miou_std"] == pytest.approx(np.std(values, ddof=1))
    assert student["iou/road_mean"] == pytest.approx(24.0)
    assert student["pixel_acc_mean"] == pytest.approx(62.0)
    teacher = groups[("synth_to_real", "teacher-DA")]
    assert teacher["n"] == 2  # seed 0 once, although recorded twice
    assert teacher["miou_mean"] == pytest.approx(22.0)
    assert teacher["miou_std"] == pytest.approx(math.sqrt(8.0))
    fair = groups[("synth_to_real", "student-DA + extra steps")]
    assert fair["n"] == 1 and fair["miou_std"] is None


def test_failed_and_unfinished_runs_are_counted_not_averaged(study):
    dakd = _groups(study)[("synth_to_real", "DAKD (a)")]
    assert (dakd["n"], dakd["n_failed"], dakd["n_unfinished"]) == (3, 1, 1)
    assert dakd["miou_mean"] == pytest.approx(14.0)  # not 50 (failed) nor 60 (running)
    assert dakd["miou_std"] == pytest.approx(math.sqrt(13.0))
    assert dakd["steps"] == 2


def test_best_of_evaluations_aggregates_each_runs_maximum(study):
    student = _groups(study, best=True)[("synth_to_real", "student-DA")]
    assert student["miou_mean"] == pytest.approx((15.0 + 12.0 + 14.0) / 3)
    assert student["iou/road_mean"] == pytest.approx(2 * (15.0 + 12.0 + 14.0) / 3)


# -- tables --------------------------------------------------------------------------------------


def _table(tables, name):
    return next(t for t in tables if t.name == name)


def test_scenario_table_rows_delta_and_parameters(study):
    tables = build_tables(aggregate(study))
    assert [t.name for t in tables] == [
        "scenario_real_to_real",
        "scenario_synth_to_real",
        "levels_paradigm",
    ]
    table = _table(tables, "scenario_synth_to_real")
    assert [c[0] for c in table.cells] == [
        "source-only",
        "teacher-DA",
        "student-DA",
        "student-DA + extra steps",
        "DAKD (a)",
        "DAKD (b)",
    ]
    data = {r["row"]: r for r in table.data.to_pylist()}
    assert data["DAKD (a)"]["delta_miou"] == pytest.approx(2.0)
    assert data["DAKD (b)"]["miou_mean"] == pytest.approx(16.0)  # best of its two configs
    assert data["DAKD (b)"]["n_configs"] == 2
    assert data["teacher-DA"]["delta_miou"] == pytest.approx(10.0)
    assert data["DAKD (a)"]["n_failed"] == 1 and data["DAKD (a)"]["n_unfinished"] == 1
    # written out: DRN-D-38 x0.25 has 1,633,250 parameters, DRN-D-22 x0.125 252,152 (both
    # with their two 19-class heads)
    assert (BASE["models.teacher.name"], BASE["models.student.name"]) == ("drn_d_38", "drn_d_22")
    assert data["teacher-DA"]["params_m"] == pytest.approx(1.633250)
    assert data["DAKD (a)"]["params_m"] == pytest.approx(0.252152)
    assert table.header[1:20] == list(CLASS_NAMES)
    row = dict(zip(table.header, table.cells[4]))
    assert row["mIoU"] == "14.00 ± 3.61" and row["ΔmIoU"] == "+2.00" and row["n"] == "3"
    assert row["road"] == "28.0" and row["traffic light"] == "7.0" and row["sky"] == "–"
    assert dict(zip(table.header, table.cells[3]))["mIoU"] == "13.00 ± –"
    assert "DAKD (a): 1 failed and 1 unfinished run(s), not averaged" in table.notes
    assert "DAKD (b): best of 2 configurations by mean mIoU" in table.notes
    assert _table(tables, "scenario_real_to_real").data["delta_miou"].to_pylist() == [0.0, 1.0]


def test_levels_by_paradigm_grid(study):
    table = _table(build_tables(aggregate(study)), "levels_paradigm")
    assert table.header == ["scenario", "levels", "DAKD (a)", "DAKD (b)"]
    cells = {(c[0], c[1]): c[2:] for c in table.cells}
    assert cells[("synth_to_real", "output")] == ["–", "9.00 ± – (n=1)"]
    assert cells[("synth_to_real", "output+feature")] == ["14.00 ± 3.61 (n=3)", "16.00 ± – (n=1)"]


def test_loss_ablation_and_best_trials(store):
    uri, ids = store
    runs = load_runs(select(uri, "weights", "latest"))
    tables = build_tables(aggregate(runs), top=3)
    assert [t.name for t in tables] == ["scenario_synth_to_real", "loss_ablation", "best_trials"]
    ablation = _table(tables, "loss_ablation")
    assert ablation.header == ["KL", "MSE", "pseudo-T", "mIoU", "n", "ΔmIoU"]
    assert [c[:4] for c in ablation.cells] == [
        ["✓", "", "", "6.00 ± –"],
        ["", "✓", "", "5.00 ± –"],
        ["", "", "✓", "9.00 ± –"],
        ["✓", "✓", "✓", f"12.00 ± {math.sqrt(2):.2f}"],
    ]
    best = _table(tables, "best_trials")
    assert best.header[:4] == ["rank", "loss.kl", "loss.mse", "loss.pseudo"]
    assert [c[:5] for c in best.cells] == [
        ["1", "0.1", "0.01", "1", f"12.00 ± {math.sqrt(2):.2f}"],
        ["2", "0", "0", "1", "9.00 ± –"],
        ["3", "0.1", "0", "0", "6.00 ± –"],
    ]
    assert best.data["miou_mean"].to_pylist() == [12.0, 9.0, 6.0]
    assert best.data["n"].to_pylist() == [2, 1, 1]


def test_every_format_is_written_and_reads_back(study, tmp_path):
    assert CLI_FORMATS == FORMATS  # the command line names them without importing pyarrow
    tables = build_tables(aggregate(study))
    files = write_tables(tables, tmp_path)
    names = {p.name for p in files}
    for fmt in FORMATS:
        assert f"scenario_synth_to_real.{fmt}" in names
    assert "tables.md" in names
    with open(tmp_path / "scenario_synth_to_real.csv", newline="") as stream:
        rows = {r["row"]: r for r in csv.DictReader(stream)}
    assert float(rows["student-DA"]["miou_mean"]) == pytest.approx(12.0)
    assert float(rows["student-DA"]["miou_std"]) == pytest.approx(2.0)
    assert int(rows["DAKD (a)"]["n_failed"]) == 1
    parquet = pq.read_table(tmp_path / "scenario_synth_to_real.parquet")
    assert parquet.equals(_table(tables, "scenario_synth_to_real").data)
    tex = (tmp_path / "scenario_synth_to_real.tex").read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\caption{"):
        assert rule in tex
    assert "14.00 $\\pm$ 3.61" in tex and "& $-$7.00 &" in tex and "$\\Delta$mIoU" in tex
    grid = (tmp_path / "levels_paradigm.tex").read_text()
    assert "synth\\_to\\_real & output+feature" in grid and "_" not in grid.replace("\\_", "")
    markdown = (tmp_path / "scenario_synth_to_real.md").read_text()
    assert "| DAKD (a) | 28.0 |" in markdown and "|---|" in markdown
    assert markdown in (tmp_path / "tables.md").read_text()
    only = write_tables(tables[:1], tmp_path / "csv", formats=["csv"])
    assert [p.suffix for p in only] == [".csv"]


def test_captions_say_which_checkpoint(study):
    final = _table(build_tables(aggregate(study)), "scenario_synth_to_real")
    best = _table(
        build_tables(aggregate(study, True), best_of_evaluations=True),
        "scenario_synth_to_real_best",
    )
    assert "final checkpoint" in final.caption and "optimistic" not in final.caption
    assert "optimistic" in best.caption and best.name.endswith("_best")
    student = {r["row"]: r for r in best.data.to_pylist()}["student-DA"]
    assert student["miou_mean"] == pytest.approx(41.0 / 3)


# -- plots and artifacts -------------------------------------------------------------------------


def test_plots_are_png_and_missing_inputs_are_skipped(store, study, tmp_path):
    uri, _ = store
    notices = []
    files = make_plots(aggregate(study), tmp_path, log=notices.append)
    assert {p.name for p in files} == {"miou_vs_parameters.png", "per_class_synth_to_real.png"}
    assert all(p.read_bytes().startswith(PNG) for p in files)
    assert notices == [
        "skipped sensitivity.png: the DAKD runs vary no loss weight",
        "skipped per_class_real_to_real.png: real_to_real lacks a teacher-DA or a student row",
    ]
    weights = load_runs(select(uri, "weights", "latest"))
    files = make_plots(aggregate(weights), tmp_path / "w", log=notices.append)
    assert [p.name for p in files] == ["sensitivity.png"]
    assert files[0].read_bytes().startswith(PNG)


@pytest.fixture(scope="module")
def crowded(store):
    uri, ids = store
    return aggregate(load_runs(select(uri, "crowded", ids["crowded"]))).to_pylist()


def _tick_label_boxes(ax, renderer):
    """Boxes of the x tick labels drawn: visible, with text, at a tick inside the view."""
    lo, hi = sorted(ax.get_xlim())
    boxes = []
    for locs, ticks in (
        (ax.xaxis.get_majorticklocs(), ax.xaxis.get_major_ticks),
        (ax.xaxis.get_minorticklocs(), ax.xaxis.get_minor_ticks),
    ):
        for loc, tick in zip(locs, ticks(len(locs))):
            label = tick.label1
            if lo * (1 - 1e-9) <= loc <= hi * (1 + 1e-9) and label.get_visible():
                if label.get_text():
                    boxes.append(label.get_window_extent(renderer))
    return boxes


def _key(x, y) -> tuple[float, float]:
    return round(float(x), 9), round(float(y), 9)


def _marker_colours(ax) -> dict[tuple[float, float], tuple]:
    """Each plotted point (the lines with a marker) and its colour."""
    out = {}
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            out[_key(x, y)] = to_rgb(line.get_color())
    return out


def test_sensitivity_ticks_are_readable_and_paradigms_coloured(crowded):
    fig = sensitivity_figure(crowded)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "loss.kl"
    boxes = _tick_label_boxes(ax, renderer)
    assert len(boxes) >= 2
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    colours = _marker_colours(ax)
    dakd = dakd_groups(crowded)
    assert len(colours) == len(dakd) == 8
    by_paradigm = {}
    for g in dakd:
        by_paradigm.setdefault(g["paradigm"], set()).add(
            colours[_key(g["params.loss.kl"], g["miou_mean"])]
        )
    assert sorted(by_paradigm) == ["a", "b", "c", "d"]
    assert all(len(c) == 1 for c in by_paradigm.values())
    assert len(set.union(*by_paradigm.values())) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["DAKD (a)", "DAKD (b)", "DAKD (c)", "DAKD (d)", "student-DA synth_to_real"]


def test_parameters_labels_do_not_overlap_and_paradigms_coloured(crowded):
    fig = parameters_figure(crowded)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    texts = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in texts) == sorted(
        ["teacher-DA", "student-DA", "DAKD (a)", "DAKD (b)", "DAKD (c)", "DAKD (d)"]
    )
    boxes = [t.get_window_extent(renderer) for t in texts]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    axes_box = ax.get_window_extent(renderer)
    colours = _marker_colours(ax)
    centres = ax.transData.transform(list(colours))
    for box in boxes:
        assert axes_box.x0 < box.x0 and box.x1 < axes_box.x1
        assert axes_box.y0 < box.y0 and box.y1 < axes_box.y1
        assert not any(box.contains(x, y) for x, y in centres)
    assert len(colours) == 6 and len(set(colours.values())) == 6  # a colour per paradigm/row
    # the same paradigm, the same colour in every plot
    sensitivity = _marker_colours(sensitivity_figure(crowded).axes[0])
    for paradigm in "abcd":
        rows = [g for g in crowded if g["paradigm"] == paradigm]
        best = max(g["miou_mean"] for g in rows)
        here = {c for (_, y), c in colours.items() if y == _key(0, best)[1]}
        there = {sensitivity[_key(g["params.loss.kl"], g["miou_mean"])] for g in rows}
        assert here == there == {to_rgb(PARADIGM_COLOURS[paradigm])}


def test_sweep_analysis_is_logged_to_the_parent_run(store):
    uri, ids = store
    lines = []
    logged = log_sweep_analysis(uri, "weights", ids["weights"], log=lines.append)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(ids["weights"], "analysis")}
    assert set(logged) == artifacts
    for name in ("runs.parquet", "tables.md", "loss_ablation.tex", "best_trials.csv"):
        assert f"analysis/{name}" in artifacts
    assert "analysis/sensitivity.png" in artifacts
    assert lines[-1] == f"result tables and plots: artifacts analysis/ of run {ids['weights']}"


# -- selection and command line ------------------------------------------------------------------


def test_selection_errors_name_the_problem(store, tmp_path):
    uri, ids = store
    with pytest.raises(AnalysisError, match="no experiment 'nope'.*study"):
        select(uri, "nope")
    with pytest.raises(AnalysisError, match="no sweep 'abc' in .*; list them with: dakd sweeps"):
        select(uri, "study", "abc")  # neither a run id nor the start of a sweep's
    with pytest.raises(AnalysisError, match="not a sweep's parent run"):
        select(uri, "study", ids["student1"])
    with pytest.raises(AnalysisError, match="not in experiment 'study'"):
        select(uri, "study", ids["weights"])
    with pytest.raises(AnalysisError, match="no MLflow store"):
        select(default_uri(tmp_path / "missing"), "study")
    assert select(uri, "study", "latest").sweep == ids["study"]
    assert select(uri, "study").sweep is None


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", ROOT / "analysis" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_help():
    for name in ("tables.py", "plots.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "analysis" / name), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        for option in ("--experiment", "--sweep", "--tracking-uri", "--best-of-evaluations"):
            assert option in done.stdout


def test_cli_writes_tables_and_plots(store, tmp_path, capsys):
    uri, ids = store
    tables = _script("tables.py")
    common = ["--experiment", "weights", "--tracking-uri", uri, "--no-log"]
    assert tables.main([*common, "--out", str(tmp_path), "--format", "md,csv"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "best_trials.csv",
        "best_trials.md",
        "loss_ablation.csv",
        "loss_ablation.md",
        "runs.parquet",
        "scenario_synth_to_real.csv",
        "scenario_synth_to_real.md",
        "tables.md",
    ]
    plots = _script("plots.py")
    assert plots.main([*common, "--out", str(tmp_path / "p"), "--best-of-evaluations"]) == 0
    assert (tmp_path / "p" / "sensitivity_best.png").read_bytes().startswith(PNG)
    capsys.readouterr()
    assert tables.main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.startswith("error: no experiment 'nope'")
    assert tables.main(["--experiment", "study", "--sweep", "abc", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no sweep 'abc' in {uri} (") and err.count("\n") == 1
    empty = prepare(uri, "empty")
    _parent(uri, empty, "sweep empty")
    assert tables.main(["--experiment", "empty", "--tracking-uri", uri]) == 2
    assert "no runs to analyse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables.main([*common, "--format", "html"])


# -- tables from a saved runs table, without MLflow ----------------------------------------------


def test_tables_from_runs_parquet_equal_the_tables_from_the_store(store, tmp_path, capsys):
    """``python -m dakd tables`` from the store writes ``runs.parquet``; ``--runs`` on that file
    writes the same files, byte for byte."""
    uri, ids = store
    for experiment in ("study", "weights", "crowded"):
        stored, saved = tmp_path / experiment / "store", tmp_path / experiment / "parquet"
        common = ["tables", "--best-of-evaluations", "--plots", "--top", "3"]
        argv = [*common, "--experiment", experiment, "--tracking-uri", uri, "--sweep", "latest"]
        assert main([*argv, "--out", str(stored), "--no-log"]) == 0
        assert main([*common, "--runs", str(stored / "runs.parquet"), "--out", str(saved)]) == 0
        from_store = {p.name: p.read_bytes() for p in stored.iterdir() if p.suffix != ".png"}
        from_file = {p.name: p.read_bytes() for p in saved.iterdir() if p.suffix != ".png"}
        assert from_store.pop("runs.parquet") and len(from_file) > 4
        assert from_file == from_store, experiment
        assert {p.name for p in stored.glob("*.png")} == {p.name for p in saved.glob("*.png")}
    runs = read_runs(tmp_path / "study" / "store")  # the folder holding runs.parquet
    assert runs.equals(load_runs(select(uri, "study", ids["study"])).select(runs.column_names))
    out = capsys.readouterr().out
    assert f"{tmp_path / 'study' / 'store' / 'runs.parquet'}: 17 runs (0 linked" in out


def test_a_file_that_is_not_a_runs_table_is_one_error_line(study, tmp_path, capsys):
    pq.write_table(study.drop_columns(["config", "row"]), tmp_path / "runs.parquet")
    (tmp_path / "notes.parquet").write_text("not parquet")
    assert main(["tables", "--runs", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'runs.parquet'} is not a runs table (no column row, config)\n"
    )
    assert main(["tables", "--runs", str(tmp_path / "notes.parquet")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'notes.parquet'} cannot be read")
    with pytest.raises(AnalysisError, match="no runs table at"):
        read_runs(tmp_path / "missing.parquet")
    with pytest.raises(SystemExit):
        main(["tables", "--runs", str(tmp_path), "--tracking-uri", "sqlite:///x.db"])
    assert "--tracking-uri: a tracking store's option" in capsys.readouterr().err


#: The rows of scenario_synth_to_real.md of the ``study`` sweep, by hand: class IoUs are 2x
#: (road) and 0.5x (traffic light) each run's mIoU, pixel accuracy 50 + mIoU; DAKD (a) averages
#: 11, 13 and 18 (std sqrt(13) = 3.61), student-DA 10, 12 and 14; the student has 0.252152 M
#: parameters; delta against student-DA's 12.
STUDY_ROWS = (
    "| student-DA | 24.0 | – | – | – | – | – | 6.0 |"
    + " – |" * 12
    + " 12.00 ± 2.00 | 62.00 ± 2.00 | 0.25 | +0.00 | 3 |",
    "| DAKD (a) | 28.0 | – | – | – | – | – | 7.0 |"
    + " – |" * 12
    + " 14.00 ± 3.61 | 64.00 ± 3.61 | 0.25 | +2.00 | 3 |",
)


def test_tables_and_plots_from_runs_parquet_where_mlflow_and_ray_cannot_be_imported(
    study, tmp_path
):
    """The command runs in an interpreter where importing MLflow, Ray or Optuna fails, on the
    ``runs.parquet`` this suite's store exported."""
    write_runs(study, tmp_path)
    out = tmp_path / "tables"
    argv = ["python -m dakd", "tables", "--runs", str(tmp_path / "runs.parquet")]
    argv += ["--out", str(out), "--format", "md,tex", "--plots"]
    code = f"""
import runpy

sys.argv = {argv!r}
try:
    runpy.run_module("dakd", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded and "pyarrow" in sys.modules, loaded
"""
    done = run_blocked(code, ROOT, NOT_FOR_TABLES)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (out / "scenario_synth_to_real.md").read_text().splitlines()
    assert lines[0] == "### Results, synth-to-real"
    assert (
        lines[4].startswith("| row | road | sidewalk |") and lines[5] == "|---|" * 1 + "---|" * 24
    )
    assert [line for line in lines if line.startswith(("| student-DA |", "| DAKD (a) |"))] == list(
        STUDY_ROWS
    )
    assert "- DAKD (a): 1 failed and 1 unfinished run(s), not averaged" in lines
    tex = (out / "scenario_synth_to_real.tex").read_text()
    assert "DAKD (a) & 28.0 & -- &" in tex and "14.00 $\\pm$ 3.61 & 64.00 $\\pm$ 3.61" in tex
    assert (out / "miou_vs_parameters.png").read_bytes().startswith(PNG)
    assert sorted(p.name for p in out.iterdir()) == [
        "levels_paradigm.md",
        "levels_paradigm.tex",
        "miou_vs_parameters.png",
        "per_class_synth_to_real.png",
        "scenario_real_to_real.md",
        "scenario_real_to_real.tex",
        "scenario_synth_to_real.md",
        "scenario_synth_to_real.tex",
        "tables.md",
    ]
    assert done.stdout.splitlines()[-1] == str(out / "per_class_synth_to_real.png")


def test_parameter_counts_follow_the_models_builder_arguments():
    """A student logged with ``models.student.args.output_stride: 4`` (a skip decoder) counts
    the decoder's parameters: the count is the built network's, not its name's and width's."""
    import torch

    from dakd.models import count_parameters, create_model
    from dakd.tracking.groups import group_parameters_m

    plain = {"row": "DAKD (a)", "params.models.student.name": "drn_d_22"}
    plain["params.models.student.width"] = "0.125"
    decoded = {**plain, "params.models.student.args.output_stride": "4"}
    with torch.device("meta"):
        want_plain = count_parameters(create_model("drn_d_22", width=0.125)) / 1e6
        want_decoded = count_parameters(create_model("drn_d_22", width=0.125, output_stride=4))
    assert group_parameters_m(plain) == pytest.approx(0.252152) == pytest.approx(want_plain)
    assert group_parameters_m(decoded) == pytest.approx(want_decoded / 1e6)
    assert group_parameters_m(decoded) > group_parameters_m(plain)
    # an argument the builder does not take: not a number, not a wrong one
    assert math.isnan(group_parameters_m({**plain, "params.models.student.args.depth": "9"}))
    # a list (unhashable, so not cached) is read back as a list and reaches the builder
    assert math.isnan(group_parameters_m({**plain, "params.models.student.args.depth": "[9, 9]"}))
