"""Sweeps killed at any moment (SIGKILL to the driver's whole process group, as a closed laptop
or a killed job does) and started again: exactly the planned MLflow runs, none RUNNING, none
twice; Tune ends with every planned trial.

Each test drives ``sweeps/run.py --smoke`` on the quickstart spec (two trials after the
student-DA stage and their fair baseline) as a user would, in its own process group.
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
# the quickstart distils from the shipped teacher: its stages are student-DA and the fair baseline
STAGES = {"student_da seed=0 synth_to_real", "fair baseline seed=0 synth_to_real"}


def _command(place: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-u",  # each line reaches the test when it is printed: the markers below are timely
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


def _kill_when(place: Path, marker: str, delay: float = 0.0, *extra: str, pause=None) -> str:
    """Start the sweep, kill its process group ``delay`` s after a line holding ``marker``.

    ``pause``: ``(earlier marker, check)``: at a line holding the earlier marker the process
    group is stopped (SIGSTOP) while ``check()`` looks at what the sweep has done so far."""
    process = subprocess.Popen(
        _command(place, *extra),
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
            if pause and pause[0] in line:
                os.killpg(process.pid, signal.SIGSTOP)
                try:
                    pause[1]()
                finally:
                    os.killpg(process.pid, signal.SIGCONT)
                pause = None
            elif pause and marker in line:
                pytest.fail(f"{marker!r} came before {pause[0]!r}:\n" + "".join(seen[-30:]))
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


def test_a_sweep_killed_in_each_phase_resumes_into_exactly_its_planned_runs(tmp_path):
    """Killed while its stages train, resumed and killed while its trials run, resumed and
    killed while its result tables are built, resumed: one run per stage and trial, all
    FINISHED, the parent FINISHED, nothing RUNNING; Tune holds the two planned trials. A
    resumed attempt first closes the runs the dead one left RUNNING (KILLED), then continues
    them in their own runs."""
    _kill_when(tmp_path, "training student_da ->")  # the student-DA stage training in Ray
    left = {r.info.run_id: r for r in _runs(tmp_path) if r.info.status == "RUNNING"}
    assert sorted(r.data.tags["stage"] for r in left.values()) == ["student_da", "sweep"]

    def closed_before_continuing():
        """The resumed attempt, before its stages start: the dead attempt's stage run is
        KILLED (it is reopened when the stage continues); the parent is this attempt's."""
        runs = _runs(tmp_path)
        dead = {r.data.tags["stage"]: r.info.status for r in runs if r.info.run_id in left}
        assert dead == {"sweep": "RUNNING", "student_da": "KILLED"}
        assert [r.data.tags["stage"] for r in runs if r.info.status == "RUNNING"] == ["sweep"]

    _kill_when(  # Tune running the trials
        tmp_path,
        "Trial status",
        2.0,
        "--resume",
        pause=("training 2 stage(s)", closed_before_continuing),
    )
    _kill_when(tmp_path, "best trials of", 0.0, "--resume")  # the result tables being built
    done = _run(tmp_path, "--resume")
    found = _check_complete(tmp_path)
    # continued, not duplicated: every run of the sweep is there once
    assert all(count == 1 for count in found["names"].values()), found["names"]
    assert "best trials of quickstart" in done.stdout
    from ray.tune import ExperimentAnalysis

    experiments = [p for p in (tmp_path / "ray").iterdir() if p.is_dir()]
    assert len(experiments) == 1
    assert len(ExperimentAnalysis(str(experiments[0])).trials) == len(TRIALS)


def test_a_new_attempt_closes_the_runs_of_dead_ones_and_leaves_live_ones(tmp_path):
    """What a sweep does when it starts (resumed or not): the runs an attempt whose driver died
    on this machine left RUNNING become KILLED, and so do RUNNING children of the resumed
    parent; an attempt whose driver still runs, or runs on another machine, is left alone."""
    import socket

    from dakd.sweep.parent import close_dead_runs
    from dakd.sweep.plan import smoke
    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import prepare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = smoke(ROOT / "sweeps" / "quickstart.yaml", [f"tracking.uri={uri}"])
    experiment = prepare(uri, spec.experiment_name)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    here = socket.gethostname()

    def attempt(name, host, pid):
        tags = {"sweep": "quickstart", "stage": "sweep", "driver_host": host, "driver_pid": pid}
        parent = RunLogger(uri, experiment, run_name=name, tags=tags)
        child = RunLogger(
            uri,
            experiment,
            run_name=f"{name} trial",
            parent_run_id=parent.run_id,
            tags={"sweep": "quickstart", "stage": "dakd"},
        )
        return parent.run_id, child.run_id

    attempt("dead", here, gone.stdout.strip())
    attempt("live", here, str(os.getpid()))
    attempt("elsewhere", "another-host", "1")
    resumed = attempt("resumed", here, str(os.getpid()))
    notes = []
    assert close_dead_runs(uri, spec, resumed[0], notes.append) == 3  # dead x2, resumed child
    status = {r.info.run_name: r.info.status for r in _runs_of(uri)}
    assert status == {
        "dead": "KILLED",
        "dead trial": "KILLED",
        "live": "RUNNING",
        "live trial": "RUNNING",
        "elsewhere": "RUNNING",
        "elsewhere trial": "RUNNING",
        "resumed": "RUNNING",
        "resumed trial": "KILLED",
    }
    assert len(notes) == 1 and "another-host" in notes[0] and "left as it is" in notes[0]


def _runs_of(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    return client.search_runs([experiment.experiment_id], max_results=1000)
