"""``dakd sweep``, ``dakd sweeps``, ``dakd compare``, ``--resume ID`` and ``dakd plots`` as a user
runs them, on two smoke sweeps of the quickstart spec in one real MLflow store (module-scoped:
every test reads the same store)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from dakd.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "sweeps" / "quickstart.yaml")


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module's sweeps, which join it (starting Ray costs seconds)."""
    import ray

    import dakd.sweep  # noqa: F401  (Ray's environment, set before ray starts)

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory, local_ray):
    """Two sweeps of the quickstart spec (both levels, then the output level alone, which
    reuses the first one's stages) run by ``dakd sweep --smoke`` from the clone; their ids,
    oldest first, and where they are."""
    root = tmp_path_factory.mktemp("sweep-cli")
    place = {
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "overrides": [
            f"experiment.out_dir={root / 'stages'}",
            f"storage={root / 'ray'}",
            f"tracking.uri={root / 'mlflow.db'}",
        ],
        "root": root,
    }
    place["overrides"][-1] = f"tracking.uri={place['uri']}"
    sets = [word for item in place["overrides"] for word in ("--set", item)]
    here = os.getcwd()
    os.chdir(ROOT)  # the spec names the shipped teacher relative to the clone
    try:
        assert main(["sweep", QUICKSTART, "--smoke", *sets]) == 0
        one = ["--set", "search.distill.levels={grid: [[output]]}"]
        assert main(["sweep", QUICKSTART, "--smoke", *sets, *one]) == 0
    finally:
        os.chdir(here)
    client = MlflowClient(place["uri"])
    experiment = client.get_experiment_by_name("quickstart")
    parents = client.search_runs(
        [experiment.experiment_id], "tags.stage = 'sweep'", order_by=["attributes.start_time ASC"]
    )
    place["ids"] = [run.info.run_id for run in parents]
    place["sets"] = sets
    return place


def test_sweeps_lists_them_newest_first_with_their_ids(store, capsys):
    capsys.readouterr()
    assert main(["sweeps", "--tracking-uri", store["uri"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "started", "status", "trials", "best", "gain", "id"]
    first, second = store["ids"]
    rows = [line.split() for line in lines[1:]]
    assert [row[-1] for row in rows] == [second, first]  # newest first
    for row, trials in zip(rows, ("1/1", "2/2")):
        name, day, clock, status, done, metric, best, gain, _ = row
        assert (name, status, done, metric) == ("quickstart", "FINISHED", trials, "miou")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", day) and re.fullmatch(r"\d\d:\d\d:\d\d", clock)
        assert re.fullmatch(r"\d+\.\d\d", best) and re.fullmatch(r"[+-]\d+\.\d\d", gain)
    assert main(["sweeps", "--tracking-uri", store["uri"], "--limit", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[-1] == second and out[-1].startswith("(1 of 2 sweeps")


def test_sweeps_of_an_empty_or_missing_store_say_so_in_one_line(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert main(["sweeps", "--tracking-uri", missing]) == 0
    assert capsys.readouterr().out == (
        f"no sweeps: no MLflow store at {tmp_path / 'none.db'} (tracking URI {missing})\n"
    )
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(empty).create_experiment("quickstart")
    assert main(["sweeps", "--tracking-uri", empty]) == 0
    assert capsys.readouterr().out == f"no sweeps in {empty}\n"


def test_compare_sets_the_best_trials_and_the_tables_side_by_side(store, capsys):
    first, second = store["ids"]
    capsys.readouterr()
    assert main(["compare", first[:8], second, "--tracking-uri", store["uri"]]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "best trials by miou (max):"
    rows = [line for line in lines if line.startswith("| quickstart ")]
    best = rows[:2]
    assert best[0].startswith(f"| quickstart {first[:8]} |") and "levels=" in best[0]
    assert best[1].startswith(f"| quickstart {second[:8]} |") and "levels=output" in best[1]
    assert "### " in out and "| sweep |" in out  # a result table with both sweeps' rows
    table = out[out.index("### ") :]
    assert f"quickstart {first[:8]}" in table and f"quickstart {second[:8]}" in table


def test_compare_of_sweeps_with_different_metrics_is_one_line(store, capsys):
    client = MlflowClient(store["uri"])
    experiment = client.create_experiment(f"latency-{len(store['ids'])}")
    run = client.create_run(experiment, tags={"stage": "sweep", "sweep": "fast"})
    client.log_param(run.info.run_id, "metric", "latency_ms")
    client.log_param(run.info.run_id, "mode", "min")
    client.set_terminated(run.info.run_id)
    capsys.readouterr()
    assert main(["compare", store["ids"][0], run.info.run_id, "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different metrics" in err, err
    assert "max miou" in err and "min latency_ms" in err


def test_an_unknown_sweep_id_is_one_line_with_the_nearest(store, capsys):
    first = store["ids"][0]
    typo = first[:6] + ("0" if first[6] != "0" else "1") + first[7:10]
    capsys.readouterr()
    assert main(["sweep", QUICKSTART, "--smoke", *store["sets"], "--resume", typo]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"no sweep {typo!r}" in err and first in err
    assert f"dakd sweeps --tracking-uri {store['uri']}" in err
    assert main(["compare", typo, first, "--tracking-uri", store["uri"]]) == 2
    assert first in capsys.readouterr().err


def test_resume_with_an_id_continues_that_sweep_not_the_latest(store, capsys):
    first, second = store["ids"]
    here = os.getcwd()
    os.chdir(ROOT)
    capsys.readouterr()
    try:
        assert main(["sweep", QUICKSTART, "--smoke", *store["sets"], "--resume", first[:8]]) == 0
    finally:
        os.chdir(here)
    out = capsys.readouterr().out
    assert f"parent run {first}" in out and second not in out
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("quickstart")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'sweep'")
    assert sorted(r.info.run_id for r in parents) == sorted(store["ids"])  # no new sweep


def test_plots_of_a_sweep(store, tmp_path, capsys):
    argv = ["plots", "--experiment", "quickstart", "--sweep", store["ids"][0][:8]]  # a prefix
    argv += ["--tracking-uri", store["uri"], "--out", str(tmp_path), "--no-log"]
    assert main(argv) == 0
    written = [Path(line) for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
    assert written and all(p.parent == tmp_path and p.stat().st_size > 0 for p in written)
    assert not list(tmp_path.glob("*.md"))  # plots only


def test_tables_of_a_sweep_by_a_prefix_and_an_unknown_one(store, tmp_path, capsys):
    first, second = store["ids"]
    argv = ["tables", "--experiment", "quickstart", "--tracking-uri", store["uri"], "--no-log"]
    assert main([*argv, "--sweep", second[:6], "--out", str(tmp_path / "prefix")]) == 0
    assert main([*argv, "--sweep", second, "--out", str(tmp_path / "whole")]) == 0
    by_prefix, by_id = (
        sorted(pq.read_table(tmp_path / f / "runs.parquet").column("run_id").to_pylist())
        for f in ("prefix", "whole")
    )
    assert by_prefix and by_prefix == by_id
    typo = "f" * 6 if not first.startswith("f" * 6) else "e" * 6
    capsys.readouterr()
    assert main([*argv, "--sweep", typo, "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no sweep {typo!r}" in err, err
