"""Sweeps killed at any moment (SIGKILL to the driver's whole process group, as a closed laptop
or a killed job does) and started again: exactly the planned MLflow runs, none RUNNING, none
twice; Tune ends with every planned trial.

Each test drives ``sweeps/run.py --smoke`` on the quickstart spec (two trials after the
teacher-DA and student-DA stages) as a user would, in its own process group.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TRIALS = {"levels=output seed=0", "levels=output+feature seed=0"}
STAGES = {"teacher_da seed=0 synth_to_real", "student_da seed=0 synth_to_real"}


def _command(place: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "sweeps" / "run.py"),
        str(ROOT / "sweeps" / "quickstart.yaml"),
        "--smoke",
        "--set",
        f"experiment.out_dir={place / 'stages'}",
        "--set",
        f"storage={place / 'ray'}",
        "--set",
        f"tracking.uri=sqlite:///{place / 'mlflow.db'}",
        *extra,
    ]


def _kill_when(place: Path, marker: str, delay: float = 0.0) -> str:
    """Start the sweep, kill its process group ``delay`` s after a line holding ``marker``."""
    process = subprocess.Popen(
        _command(place),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    deadline = time.monotonic() + 300
    try:
        for line in process.stdout:
            seen.append(line)
            if marker in line:
                time.sleep(delay)
                break
            assert time.monotonic() < deadline, "".join(seen[-30:])
        else:
            pytest.fail(f"the sweep ended before {marker!r}:\n" + "".join(seen[-30:]))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    return "".join(seen)


def _run(place: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(place, *extra), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done


def _runs(place: Path):
    client = MlflowClient(f"sqlite:///{place / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _check_complete(place: Path, sweeps: int = 1) -> dict[str, collections.Counter]:
    """No run RUNNING, each planned stage and trial run once per sweep and FINISHED."""
    runs = _runs(place)
    status = collections.Counter(r.info.status for r in runs)
    assert status["RUNNING"] == 0, [(r.info.run_name, r.info.status) for r in runs]
    finished = collections.Counter(r.info.run_name for r in runs if r.info.status == "FINISHED")
    for name in TRIALS:
        assert finished[name] == sweeps, (name, finished)
    for name in STAGES:  # trained once (by the first attempt or its continuation)
        assert finished[name] == 1, (name, finished)
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    assert sum(r.info.status == "FINISHED" for r in parents) == sweeps
    names = collections.Counter(
        r.info.run_name for r in runs if r.data.tags.get("stage") != "sweep"
    )
    return {"status": status, "names": names}


@pytest.mark.parametrize(
    ("phase", "marker", "delay"),
    [
        ("stages", "training 2 stage(s)", 1.0),  # Ray tasks started, stages training
        ("trials", "Trial status", 2.0),  # Tune running the trials
        ("tables", "best trials of", 0.0),  # the result tables being built
    ],
)
def test_a_sweep_killed_in_any_phase_resumes_into_exactly_its_planned_runs(
    tmp_path, phase, marker, delay
):
    _kill_when(tmp_path, marker, delay)
    if phase != "tables":
        assert any(r.info.status == "RUNNING" for r in _runs(tmp_path))  # what a kill leaves
    done = _run(tmp_path, "--resume")
    found = _check_complete(tmp_path)
    # continued, not duplicated: every run of the sweep is there once
    assert all(count == 1 for count in found["names"].values()), found["names"]
    assert "best trials of quickstart" in done.stdout
    from ray.tune import ExperimentAnalysis

    experiments = [p for p in (tmp_path / "ray").iterdir() if p.is_dir()]
    assert len(experiments) == 1
    assert len(ExperimentAnalysis(str(experiments[0])).trials) == len(TRIALS)


def test_a_plain_rerun_after_a_kill_closes_the_dead_attempt(tmp_path):
    _kill_when(tmp_path, "Trial status", 2.0)
    _run(tmp_path)  # no --resume: a new sweep; the stages are reused
    runs = _runs(tmp_path)
    assert not any(r.info.status == "RUNNING" for r in runs)
    parents = sorted(
        (r.data.tags["tune_experiment"], r.info.status)
        for r in runs
        if r.data.tags.get("stage") == "sweep"
    )
    assert [status for _, status in parents] == ["KILLED", "FINISHED"]
