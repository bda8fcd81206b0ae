"""A cluster of the real parts, and the faults a cluster brings: nothing lost.

The module brings up one local cluster (:mod:`dakd.cluster.local`): PostgreSQL, an MLflow server
on it with served artifacts, a Ray head with no CPU (the sweep's driver only) and two worker
nodes of one CPU each, every one started with ``ray start`` as its own set of processes. Each
test drives ``sweeps/run.py`` on the quickstart spec as a user would, joined to the cluster
with ``--address`` and logging to the server, and inflicts faults while its trials train, two
per sweep at two moments (each sweep costs a minute or more on two cores):

* the services: the MLflow server restarted, then PostgreSQL restarted;
* the workers: a trial's process killed (a preempted worker), then a worker node lost (SIGKILL
  to its raylet and workers at once).

After each, the sweep ends with rc 0, every planned run exists exactly once and none is
RUNNING, and every run's metric histories equal those of an uninterrupted sweep of the same
spec on the same cluster, value for value (trials are bit-reproducible per thread count), so
no metric was lost or logged twice. The trials are made long enough (24 steps, an evaluation
every 4) to be hit while they train; the stages are trained once and reused by every sweep.
A load test puts 16 writers through the project's tracking code on the server at once.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray._common.utils import get_ray_address_file

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.cluster.local import ClusterError, LocalCluster, PostgresMissing, postgres_bin
from dakd.cluster.processes import free_port, session_members

ROOT = Path(__file__).resolve().parents[1]
TRIALS = {"levels=output seed=0", "levels=output+feature seed=0"}
STEPS, EVAL = 24, 4
#: Metrics whose values are timings or machine readings, not results: not compared.
UNSTABLE = ("time/", "step_ms", "sec_per_step", "tflops", "gpu_peak_mb", "system/")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        postgres_bin()
    except PostgresMissing as err:
        pytest.skip(f"{err} (the cluster tests need PostgreSQL's server)")
    folder = tmp_path_factory.mktemp("cluster")
    taken: list[int] = []
    ports = {}
    for name in ("ray_port", "mlflow_port", "postgres_port"):
        ports[name] = free_port(avoid=taken)
        taken.append(ports[name])
    local = LocalCluster(folder=folder, nodes=3, cpus_per_node=1, head_cpus=0, **ports)
    try:
        local.up(log=lambda line: None)
        yield local
    finally:
        local.down(log=lambda line: None)


def _command(cluster: LocalCluster, place: Path, experiment: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-u",
        str(ROOT / "sweeps" / "run.py"),
        str(ROOT / "sweeps" / "quickstart.yaml"),
        "--smoke",
        "--address",
        cluster.ray_address,
        "--set",
        f"experiment.train.steps={STEPS}",
        "--set",
        f"experiment.train.eval_interval={EVAL}",
        "--set",
        f"experiment.out_dir={place.parent / 'stages'}",  # shared: stages trained once
        "--set",
        f"storage={place / 'ray'}",
        "--set",
        f"tracking.uri={cluster.tracking_uri}",
        "--set",
        f"tracking.experiment={experiment}",
        *extra,
    ]


def _env(cluster: LocalCluster) -> dict[str, str]:
    # every trial's progress line reaches the driver at once (Ray folds repeated lines)
    return {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}


def _sweep(cluster: LocalCluster, place: Path, experiment: str, faults=()):
    """Run the sweep to its end; ``faults``: ``(marker, fault)`` pairs in order: at the first
    line for which ``marker(line)`` holds, ``fault()`` is called, then the next pair waits.
    Returns (return code, output)."""
    process = subprocess.Popen(
        _command(cluster, place, experiment),
        cwd=ROOT,
        env=_env(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    pending = list(faults)
    seen: list[str] = []
    deadline = time.monotonic() + 420
    try:
        for line in process.stdout:
            seen.append(line)
            if pending and pending[0][0](line):
                pending.pop(0)[1]()
            assert time.monotonic() < deadline, "".join(seen[-40:])
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    if pending:
        pytest.fail(f"{len(pending)} fault(s) never came:\n" + "".join(seen[-40:]))
    return process.returncode, "".join(seen)


def _at(step: int):
    """A marker: a trial reported its evaluation at ``step``: trials are training on the workers."""
    return lambda line: "[trial " in line and f"] step {step}/{STEPS} " in line


def _runs(cluster: LocalCluster, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(cluster.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    return client, client.search_runs([found.experiment_id], max_results=1000)


def _histories(cluster: LocalCluster, experiment: str) -> dict[str, dict[str, list]]:
    """Each trial run's metric histories, ``{run name: {key: [(step, value), ...]}}``, after
    checking that the sweep's runs are complete: each planned trial once, none RUNNING."""
    client, runs = _runs(cluster, experiment)
    status = collections.Counter(r.info.status for r in runs)
    assert status["RUNNING"] == 0, [(r.info.run_name, r.info.status) for r in runs]
    names = collections.Counter(r.info.run_name for r in runs if r.data.tags.get("trial"))
    assert names == dict.fromkeys(TRIALS, 1), names
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.info.run_name, r.info.status, r.data.tags.get("error")) for r in runs
    ]
    histories = {}
    for run in runs:
        if run.info.run_name not in TRIALS:
            continue
        keys = [k for k in run.data.metrics if not k.startswith(UNSTABLE) and k not in UNSTABLE]
        histories[run.info.run_name] = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in keys
        }
    return histories


def _check_same(got: dict, reference: dict) -> None:
    """The same runs, keys, steps and values: nothing lost, nothing twice."""
    assert set(got) == set(reference)
    for name, keys in reference.items():
        assert set(got[name]) == set(keys), (name, set(keys) ^ set(got[name]))
        for key, history in keys.items():
            steps = [step for step, _ in got[name][key]]
            assert len(steps) == len(set(steps)), f"{name} {key}: a step logged twice: {steps}"
            assert got[name][key] == history, f"{name} {key}"


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """An uninterrupted sweep of the spec on the cluster: the histories every fault must keep."""
    place = tmp_path_factory.mktemp("sweeps") / "reference"
    default = ROOT / "runs" / "mlflow.db"  # the default store, which a server URI replaces
    before = default.stat().st_mtime_ns if default.exists() else None
    rc, out = _sweep(cluster, place, "reference")
    assert rc == 0, out[-4000:]
    # trials log to the server, and nothing writes a local SQLite file
    assert (default.stat().st_mtime_ns if default.exists() else None) == before
    assert not [p for p in place.parent.rglob("*") if p.suffix in (".db", ".sqlite")]
    histories = _histories(cluster, "reference")
    for name in TRIALS:  # every evaluation of every trial, once
        assert [s for s, _ in histories[name]["miou"]] == list(range(EVAL, STEPS + 1, EVAL))
    return place.parent, histories


# -- the cluster itself ------------------------------------------------------------------------


def test_the_cluster_is_made_of_its_own_processes(cluster):
    """Each service runs in a session of its own, recorded; Ray sees the head and two workers
    with their own addresses; the MLflow server keeps its runs in PostgreSQL."""
    state = json.loads((cluster.folder / "cluster.json").read_text())
    assert set(state["services"]) == {"postgres", "mlflow"}
    assert [n["ip"] for n in state["ray_nodes"]] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    for node in cluster.ray_nodes:
        assert session_members(node.pid), node
    assert cluster.database_uri.startswith("postgresql://")
    code = (
        f"import ray; ray.init(address={cluster.ray_address!r}, include_dashboard=False);"
        "print(sorted((n['NodeManagerAddress'], n['Resources'].get('CPU', 0)) "
        "for n in ray.nodes() if n['Alive']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(cluster), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    nodes = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own print
    assert sorted(cpu for _, cpu in nodes) == [0, 1.0, 1.0]
    assert {"127.0.0.2", "127.0.0.3"} <= {ip for ip, _ in nodes}


def test_up_refuses_a_port_that_is_taken(cluster, tmp_path):
    other = LocalCluster(
        folder=tmp_path / "other",
        nodes=1,
        ray_port=free_port(),
        mlflow_port=cluster.mlflow_port,  # the running cluster's
        postgres_port=free_port(),
    )
    with pytest.raises(ClusterError, match=rf"port {cluster.mlflow_port} .*MLflow server.*taken"):
        other.up(log=lambda line: None)
    assert not other.services and not other.ray_nodes  # nothing was started
    again = LocalCluster(folder=cluster.folder)
    with pytest.raises(ClusterError, match="already up"):
        again.up(log=lambda line: None)


# -- faults ------------------------------------------------------------------------------------


def test_mlflow_server_then_postgres_restarted_mid_sweep_lose_nothing(cluster, reference):
    """The server down 3 s at one evaluation, PostgreSQL down 3 s at a later one: store calls
    retry with backoff, no trial fails, every history equals the uninterrupted sweep's."""
    root, expected = reference
    restarts: list[str] = []

    def restart(service: str):
        def fault():
            getattr(cluster, f"restart_{service}")(down_for=3.0, log=lambda line: None)
            restarts.append(service)

        return fault

    rc, out = _sweep(
        cluster,
        root / "services_restarted",
        "services_restarted",
        faults=[(_at(2 * EVAL), restart("mlflow")), (_at(4 * EVAL), restart("postgres"))],
    )
    assert restarts == ["mlflow", "postgres"]
    assert rc == 0, out[-4000:]
    assert "best trials of quickstart" in out  # the driver's summary is complete
    _check_same(_histories(cluster, "services_restarted"), expected)


def _trial_processes(cluster: LocalCluster, index: int) -> list[int]:
    """The processes of worker node ``index`` that run a trial (Ray names them after the
    trainable's actor: ``ray::ImplicitFunc``)."""
    found = []
    for pid in cluster.node_pids(index):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title.startswith("ray::ImplicitFunc"):
            found.append(pid)
    return found


def _restored_steps(place: Path) -> dict[str, list[int]]:
    """Per trial, the steps Tune received, from its ``result.json`` (every attempt's results),
    and where an attempt started over from a checkpoint (``iterations_since_restore`` 1)."""
    steps = {}
    for result in place.glob("ray/*/trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        steps[result.parent.name] = [(int(r["step"]), r["iterations_since_restore"]) for r in rows]
    return steps


def _check_continued(place: Path) -> set[str]:
    """The trials restored after a failure, each from a checkpoint: an attempt's steps rise; a
    restored attempt's first step is past the first evaluation (it did not start over) and at
    most one evaluation after the last step the attempt before it reported (it went on from
    the checkpoint it had: a step reported but not yet checkpointed when the trial died comes
    again, and its MLflow run keeps it once); the last attempt ends the trial."""
    restored = set()
    for trial, rows in _restored_steps(place).items():
        attempts: list[list[int]] = []
        for position, (step, since) in enumerate(rows):
            if position == 0 or since == 1:
                attempts.append([])
            attempts[-1].append(step)
        for before, attempt in zip(attempts, attempts[1:], strict=False):
            restored.add(trial)
            assert EVAL < attempt[0] <= before[-1] + EVAL, (trial, rows)
        for attempt in attempts:
            assert attempt == sorted(set(attempt)), (trial, rows)
        assert attempts[-1][-1] == STEPS, (trial, rows)
    return restored


def test_a_killed_trial_process_then_a_lost_worker_node_cost_no_run_and_no_step(cluster, reference):
    """SIGKILL to one trial's process (a preempted worker) at one evaluation; then SIGKILL to
    every process of worker node 2 (its raylet and workers at once) while a trial trains there.
    Each trial goes on from its last checkpoint (the lost node's on the other worker), in the
    same MLflow run, with every history equal to the uninterrupted sweep's."""
    root, expected = reference
    place = root / "workers_lost"
    killed: list[int] = []
    lost: list[int] = []

    def kill_one_trial() -> None:
        for index in (1, 2):
            pids = _trial_processes(cluster, index)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return

    def trains_on_node_2(line: str) -> bool:
        """A trial reported a later evaluation (each trial has a checkpoint past its first)
        while a trial trains on node 2."""
        match = re.search(r"\[trial [^]]*\] step (\d+)/", line)
        return (
            bool(match) and int(match.group(1)) >= 3 * EVAL and bool(_trial_processes(cluster, 2))
        )

    try:
        rc, out = _sweep(
            cluster,
            place,
            "workers_lost",
            faults=[
                (_at(2 * EVAL), kill_one_trial),
                (trains_on_node_2, lambda: lost.extend(cluster.kill_node(2))),
            ],
        )
        assert killed and lost, out[-3000:]
        assert rc == 0, out[-4000:]
        assert _check_continued(place), _restored_steps(place)
        _check_same(_histories(cluster, "workers_lost"), expected)
    finally:
        cluster.start_node(2, log=lambda line: None)  # the cluster whole again for what follows


def test_sixteen_writers_through_the_server_lose_nothing(cluster):
    """The load benchmark's run, small: 16 concurrent trial-like writers (metrics every step,
    an evaluation with an artifact every few) through dakd's tracking code to the server on
    PostgreSQL: every metric stored once, no error."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from tracking_load import run_load
    finally:
        sys.path.remove(str(ROOT / "bench"))
    result = run_load(cluster.tracking_uri, writers=16, steps=20, artifact_bytes=64 * 1024)
    assert result["ok"], result
    assert (result["missing"], result["duplicates"], result["errors"]) == (0, 0, 0), result
    assert result["metrics_found"] == result["metrics_expected"] >= 16 * 20 * 4, result


def test_down_stops_exactly_what_up_started(cluster, tmp_path):
    """``down`` ends every session it recorded and nothing else: a process of this machine
    that is not the cluster's goes on."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        sessions = [s.pid for s in cluster.services.values()] + [n.pid for n in cluster.ray_nodes]
        cluster.down(log=lambda line: None)
        for session in sessions:
            assert session_members(session) == [], session
        assert bystander.poll() is None
        assert not LocalCluster.load(cluster.folder).running()
        # where `ray start --head` left the head's address for a later `ray.init()` to join
        recorded = Path(get_ray_address_file(None))
        assert not (recorded.exists() and recorded.read_text().endswith(f":{cluster.ray_port}"))
    finally:
        bystander.kill()
        bystander.wait()
