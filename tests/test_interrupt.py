"""Sweeps killed at any moment (SIGKILL to the driver's whole process group, as a closed laptop
or a killed job does) and started again: exactly the planned MLflow runs, none RUNNING, none
twice; Tune ends with every planned trial. Sweeps stopped by SIGTERM (a job's time limit) end
cleanly: every run left open KILLED and saying why, Ray gone, exit status 143; resumed, they
end with the numbers of a sweep never stopped.

Each test drives ``sweeps/run.py --smoke`` on the quickstart spec (two trials after the
student-DA stage and their fair baseline) as a user would, in its own process group.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
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

    from dakd.sweep.driver.parent import close_dead_runs
    from dakd.sweep.driver.plan import smoke
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


# -- SIGTERM ----------------------------------------------------------------------------------

#: The ``error`` tag of every run a SIGTERM left open, and the driver's last line on stderr.
REASON = "terminated by SIGTERM; continue with --resume"
STOPPED = (
    "sweep quickstart terminated by SIGTERM: {} MLflow run(s) closed as KILLED; "
    "continue it with the same command and --resume"
)
#: Trials of four evaluations: when the first one's checkpoint is reported, three are to come.
LONGER = ("--set", "experiment.train.steps=8")


@contextlib.contextmanager
def _alongside(place: Path, *extra: str):
    """A sweep run in the background (its own process group, its output in ``place/out.txt``)
    while the block runs; the block's end waits for it, which must end with status 0. Results
    do not depend on what else runs: each stage and trial trains on a fixed number of threads."""
    place.mkdir(parents=True)
    log = place / "out.txt"
    with log.open("w") as out:
        process = subprocess.Popen(
            _command(place, *extra),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
        assert process.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def _terminate_when(place: Path, marker: str, *extra: str, ready=None):
    """Start the sweep; at a line holding ``marker`` (on stdout or stderr: Ray passes a worker's
    lines on to either), once ``ready()`` holds, send SIGTERM to the driver alone, as Slurm
    signals a batch step's process. Returns the exit status, stderr's lines, and the processes
    of the driver's session (its Ray) still there when it has exited."""
    process = subprocess.Popen(
        _command(place, *extra),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()

    def pump(stream, name):
        for line in stream:
            lines.put((name, line))

    for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
        threading.Thread(target=pump, args=(stream, name), daemon=True).start()
    seen, errors, sent = [], [], False
    deadline = time.monotonic() + 300
    try:
        # until the driver has exited (a stream a leftover child holds open must not hang this)
        while process.poll() is None or not lines.empty():
            assert time.monotonic() < deadline, "".join(seen[-30:])
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if name == "stderr":
                errors.append(line)
            if not sent and marker in line:
                while ready is not None and not ready():
                    assert time.monotonic() < deadline, f"not ready after {marker!r}"
                    time.sleep(0.2)
                os.kill(process.pid, signal.SIGTERM)
                sent = True
        assert sent, f"the sweep ended before {marker!r}:\n" + "".join(seen[-30:])
        time.sleep(0.5)  # the driver's last lines, still in the pipe
        while not lines.empty():
            name, line = lines.get()
            errors += [line] if name == "stderr" else []
        return process.returncode, [e.rstrip("\n") for e in errors if e.strip()], _left(process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


def _left(session: int) -> list[str]:
    """The processes (zombies aside) of the session the driver led: Ray's GCS, raylet, workers."""
    import psutil

    left = []
    for found in psutil.process_iter(["name", "status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(found.pid) == session and found.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(f"{found.pid} {found.info['name']}")
    return left


def _trials_running(place: Path):
    """Whether both trials train: their MLflow runs are open (the store is read as the sweep
    writes it: retried while locked)."""
    from dakd.tracking.store import find_runs

    def ready() -> bool:
        runs = find_runs(f"sqlite:///{place / 'mlflow.db'}", "quickstart")
        return sum(r.info.run_name in TRIALS and r.info.status == "RUNNING" for r in runs) == 2

    return ready


def _check_stopped(place: Path, stopped, killed: set[str], finished: set[str] = frozenset()):
    """Exit 143 with the one line; ``killed`` runs and the parent KILLED with the error tag,
    ``finished`` ones (done before the signal) FINISHED without it; no process of Ray left."""
    code, errors, left = stopped
    assert code == 143, errors[-30:]
    assert errors[-1] == STOPPED.format(len(killed) + 1), errors[-30:]
    assert "Traceback" not in "\n".join(errors), errors[-60:]
    assert left == [], left
    runs = _runs(place)
    found = {
        "parent" if r.data.tags.get("stage") == "sweep" else r.info.run_name: (
            r.info.status,
            r.data.tags.get("error"),
        )
        for r in runs
    }
    assert len(found) == len(runs), [r.info.run_name for r in runs]
    expected = {name: ("KILLED", REASON) for name in {*killed, "parent"}}
    expected.update({name: ("FINISHED", None) for name in finished})
    assert found == expected


def _final_numbers(place: Path) -> dict[str, dict[str, float]]:
    """Per run (the parent as ``parent``): its final mIoU, pixel accuracy and per-class IoU; the
    parent's headline metrics (best trial, baselines, gains)."""
    out = {}
    for run in _runs(place):
        metrics = run.data.metrics
        if run.data.tags.get("stage") == "sweep":
            # the cost (run_hours, gpu_hours) is wall time, not a result
            out["parent"] = {k: v for k, v in metrics.items() if not k.endswith("_hours")}
        else:
            kept = {k: v for k, v in metrics.items() if k in ("miou", "pixel_acc") or "iou/" in k}
            out[run.info.run_name] = kept
    return out


@pytest.mark.slow
def test_sigterm_in_the_stages_then_in_the_trials_ends_cleanly_and_resumes_to_the_same_numbers(
    tmp_path,
):
    """SIGTERM to the driver while the student-DA stage trains, and again (resumed) while both
    trials train: each time exit 143 with one line saying so, every run left open (parent,
    stage, trials) KILLED with the error tag, Ray gone. Resumed once more, the sweep ends with
    every run FINISHED, no error tag left, and the final numbers of a sweep never stopped."""
    whole, place = tmp_path / "whole", tmp_path / "stopped"
    with _alongside(whole, *LONGER):  # the sweep never stopped, in the background
        stopped = _terminate_when(place, "training student_da ->", *LONGER)
        _check_stopped(place, stopped, killed={"student_da seed=0 synth_to_real"})
        stopped = _terminate_when(
            place, "checkpoint_000000", *LONGER, "--resume", ready=_trials_running(place)
        )
        _check_stopped(place, stopped, killed=TRIALS, finished=STAGES)
        _run(place, *LONGER, "--resume")
    _check_complete(place)
    assert all(r.data.tags.get("error") is None for r in _runs(place))
    assert _final_numbers(place) == _final_numbers(whole)


def test_a_signal_stops_the_sweep_at_once_or_through_tune():
    """SIGTERM and SIGINT (exit 143 and 130) raise Terminated at once outside Tune; inside
    ``Tuner.fit`` the first goes to Tune's stop handler (SIGUSR1's) and the sweep stops after fit
    (check), a second at once; once stopping, signals are ignored; the handlers, SIGUSR1's and
    ``TUNE_DISABLE_SIGINT_HANDLER`` are as before afterwards."""
    from dakd.sweep.driver.interrupt import TUNE_SIGINT_OFF, Signals, Terminated

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    env = os.environ.get(TUNE_SIGINT_OFF)
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        signals = Signals()
        with signals.installed(), pytest.raises(Terminated) as stop:
            signal.raise_signal(signum)
        assert (stop.value.signum, stop.value.exit_code) == (signum, code)
    stops = []
    signals = Signals()
    with signals.installed():
        with signals.tune_running():
            assert os.environ[TUNE_SIGINT_OFF] == "1"
            signal.signal(signal.SIGUSR1, lambda signum, frame: stops.append(signum))  # Tune's
            signal.raise_signal(signal.SIGTERM)
            assert stops == [signal.SIGUSR1]
            with pytest.raises(Terminated):  # a second signal: at once
                signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)  # stopping: ignored
        with pytest.raises(Terminated) as stop:
            signals.check()
        assert stop.value.signum == signal.SIGTERM  # the first signal names the stop
        assert stop.value.reason == REASON
    assert {s: signal.getsignal(s) for s in before} == before
    assert os.environ.get(TUNE_SIGINT_OFF) == env
