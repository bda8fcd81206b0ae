"""Sweeps on a Ray cluster: storage every node must reach, trials placed on several nodes, and
data-parallel trials (``resources.workers`` > 1) trained through Ray Train.

The cluster tests start a head and one more node on this machine (``ray.cluster_utils``), one
CPU each: two trials that run at once can only run on different nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.sweep.driver.cluster import (
    DRIVER_CPU,
    NodeWatch,
    check_cluster_storage,
    check_cluster_tracking,
    stage_cpus,
    trial_resources,
    unmet_request,
)
from dakd.sweep.driver.plan import smoke
from dakd.sweep.spec.sweep_spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]


def _spec_file(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "experiment:\n"
        f"  base: {ROOT / 'configs' / 'embedded.yaml'}\n"
        "  stage: source_only\n" + body
    )
    return path


# -- validation (no Ray) ----------------------------------------------------------------------


def test_workers_must_split_the_global_batch(tmp_path):
    path = _spec_file(tmp_path, "w", "resources: {workers: 3}\n")  # embedded batch: 8
    with pytest.raises(SpecError, match=r"experiment\.data\.batch_size.*8.*workers \(3\)"):
        load_spec(path)
    path = _spec_file(
        tmp_path, "w", "search:\n  data.batch_size: {choice: [4, 6]}\nresources: {workers: 4}\n"
    )
    with pytest.raises(SpecError, match=r"search\.data\.batch_size.*6"):
        load_spec(path)
    assert load_spec(path, ["resources.workers=2"]).resources.workers == 2


def test_workers_cannot_share_one_pinned_gpu(tmp_path):
    path = _spec_file(tmp_path, "w", "resources: {workers: 2, gpu: 0.5}\n")
    with pytest.raises(SpecError, match=r"experiment\.train\.device.*cuda:1"):
        load_spec(path, ["experiment.train.device=cuda:1"])
    spec = load_spec(path)  # fractional GPUs per worker are allowed
    assert (spec.resources.workers, spec.resources.gpu) == (2, 0.5)


def test_data_parallel_trials_reserve_only_their_driver(tmp_path):
    path = _spec_file(tmp_path, "w", "resources: {cpu: 2, gpu: 1, workers: 2}\n")
    assert trial_resources(load_spec(path)) == {"cpu": DRIVER_CPU, "gpu": 0}
    one = load_spec(path, ["resources.workers=1"])
    assert trial_resources(one) == {"cpu": 2.0, "gpu": 1.0}


def test_cluster_storage_must_be_shared(tmp_path):
    path = _spec_file(tmp_path, "s", "")
    relative = load_spec(path, ["storage=runs/ray"])
    with pytest.raises(SpecError, match=r"storage: 'runs/ray' is a relative folder.*2 nodes"):
        check_cluster_storage(relative, "auto", 2, print)
    with pytest.raises(SpecError, match=r"storage: .*relative"):
        check_cluster_storage(relative, "ray://head:10001", 1, print)

    lines: list[str] = []
    check_cluster_storage(relative, None, 1, lines.append)  # one machine: nothing to share
    assert lines == []
    check_cluster_storage(load_spec(path, [f"storage={tmp_path}"]), "auto", 2, lines.append)
    assert [line.split(":")[0:2] for line in lines] == [["warning", " storage"]]
    lines.clear()
    uri = load_spec(path, [f"storage={tmp_path.as_uri()}", "tracking.uri=http://mlflow:5000"])
    check_cluster_storage(uri, "auto", 2, lines.append)
    assert lines == []


def test_a_local_tracking_store_is_refused_across_machines(tmp_path):
    """SQLite (the default, or a ``sqlite:``/``file:`` URI) is a file of the driver's machine:
    refused once trials can land on nodes at two addresses; several nodes of one machine share
    its files (a note when joined with --address); a server or database is never in question."""
    path = _spec_file(tmp_path, "s", "")
    for uri in ("", "sqlite:///x.db", "file:///tmp/mlruns"):
        spec = load_spec(path, [f"tracking.uri={uri}"] if uri else [])
        with pytest.raises(SpecError, match=r"tracking.uri: .*file of this machine.*2 addresses"):
            check_cluster_tracking(spec, "auto", 2, print)
        lines: list[str] = []
        check_cluster_tracking(spec, None, 1, lines.append)
        assert lines == []
        check_cluster_tracking(spec, "10.0.0.1:6379", 1, lines.append)
        assert len(lines) == 1 and lines[0].startswith("note: tracking.uri:")
    for uri in ("http://mlflow:5000", "postgresql://u@db/mlflow"):
        lines = []
        check_cluster_tracking(load_spec(path, [f"tracking.uri={uri}"]), "auto", 9, lines.append)
        assert lines == []


def _node(ip: str, cpu: float, gpu: float = 0.0) -> dict:
    return {"ip": ip, "CPU": cpu, "GPU": gpu}


def test_requests_are_sized_by_the_largest_node_not_the_total(tmp_path):
    """Two 1-CPU nodes hold 2 CPUs in all, but no process can have 2: a stage gets what one node
    has, and a trial asking for more than any node stops in one line naming both sides."""
    nodes = [_node("10.0.0.1", 1), _node("10.0.0.2", 1)]
    assert stage_cpus(4, nodes) == 1
    assert stage_cpus(4, [_node("a", 8), _node("b", 2)]) == 4
    assert stage_cpus(4, []) == 1
    path = _spec_file(tmp_path, "s", "resources: {cpu: 2}\n")
    key, line = unmet_request(load_spec(path), nodes)
    assert key == "resources.cpu"
    assert line == (
        "a trial process asks for 2 CPU and 0 GPU on one node, but no node has that many "
        "(nodes: 10.0.0.1 1 CPU 0 GPU, 10.0.0.2 1 CPU 0 GPU)"
    )
    assert unmet_request(load_spec(path), [*nodes, _node("10.0.0.3", 2)]) is None
    gpu = load_spec(_spec_file(tmp_path, "g", "resources: {cpu: 1, gpu: 1}\n"))
    assert unmet_request(gpu, nodes)[0] == "resources.gpu"  # the stage task asks first
    assert unmet_request(gpu, [_node("10.0.0.4", 4, 1)]) is None


def test_node_watch_waits_then_stops_after_the_spec_timeout(tmp_path):
    """A cluster that loses the only node able to run a trial: one line saying what the sweep
    waits for, ``stop`` once ``resources.node_timeout_s`` has passed (not before), and a node
    back in time is said and resets the clock."""
    spec = load_spec(_spec_file(tmp_path, "s", "resources: {cpu: 2, node_timeout_s: 30}\n"))
    big, small = _node("10.0.0.1", 2), _node("10.0.0.2", 1)
    nodes = [[big, small]]
    lines: list[str] = []
    stops: list[str] = []
    watch = NodeWatch(spec, stops.append, lines.append, nodes=lambda: nodes[0])
    watch.poll(0.0)
    assert lines == [] and stops == []
    nodes[0] = [small]  # the 2-CPU node is lost
    watch.poll(10.0)
    assert len(lines) == 1 and lines[0].startswith("waiting for a node: a trial process asks")
    assert "within 30 s (resources.node_timeout_s)" in lines[0]
    watch.poll(39.9)
    assert stops == [] and len(lines) == 1  # said once, and 29.9 s is not 30
    nodes[0] = [small, big]  # back
    watch.poll(45.0)
    assert lines[-1].startswith("the cluster has a node for every process") and stops == []
    nodes[0] = [small]
    watch.poll(50.0)
    watch.poll(79.0)
    assert stops == []  # the clock started again at 50
    watch.poll(80.0)
    assert len(stops) == 1 and stops[0].startswith("no node could hold the sweep's processes")
    assert "10.0.0.2 1 CPU 0 GPU" in stops[0] and watch.stopped == stops[0]


def test_the_node_watch_thread_calls_stop_and_ends(tmp_path):
    spec = load_spec(_spec_file(tmp_path, "s", "resources: {cpu: 2, node_timeout_s: 0.05}\n"))
    stops: list[str] = []
    with NodeWatch(spec, stops.append, lambda _: None, interval=0.01, nodes=list) as watch:
        watch._thread.join(timeout=5)
    assert not watch._thread.is_alive() and len(stops) == 1


# -- the data-parallel worker, with Ray Train's side played by a fake --------------------------


class FakeTrain:
    """What a Ray Train worker sees of Ray Train: its rank, its checkpoint, ``report``."""

    def __init__(self, rank: int, store: Path, checkpoint=None, uri: str = ""):
        self.rank, self.store, self.checkpoint, self.uri = rank, store, checkpoint, uri
        self.prefix = "resumed-" if checkpoint is not None else ""
        self.reports: list[dict] = []

    def get_context(self):
        from types import SimpleNamespace

        return SimpleNamespace(get_world_rank=lambda: self.rank)

    def get_checkpoint(self):
        return self.checkpoint

    def report(self, metrics, checkpoint=None):
        import shutil

        from mlflow.tracking import MlflowClient

        entry = {"step": metrics["step"], "run_id": metrics["mlflow_run_id"]}
        if checkpoint is not None:  # Ray Train persists the folder before report returns
            kept = self.store / f"{self.prefix}checkpoint_{metrics['step']}"
            shutil.copytree(checkpoint.path, kept)
            entry["checkpoint"] = str(kept)
        if self.rank == 0:  # the MLflow run's state when Tune would hear of this evaluation
            entry["status"] = MlflowClient(self.uri).get_run(metrics["mlflow_run_id"]).info.status
        self.reports.append(entry)


def _train_worker_process(rank: int, root: Path, port: int, loop: dict, resume: bool) -> None:
    import json

    import ray.train
    import torch
    import torch.distributed as dist

    from dakd.sweep.remote import trial as trial_module

    torch.set_num_threads(1)
    store = root / "store"
    checkpoint = (
        ray.train.Checkpoint.from_directory(str(store / "checkpoint_2")) if resume else None
    )
    fake = FakeTrain(rank, store, checkpoint, loop["context"].tracking_uri)
    for name in ("get_context", "get_checkpoint", "report"):
        setattr(ray.train, name, getattr(fake, name))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trial_module.train_worker(loop)
    finally:
        dist.destroy_process_group()
    tag = "resumed" if resume else "first"
    (root / f"{tag}-rank{rank}.json").write_text(json.dumps(fake.reports))


@pytest.mark.slow
def test_data_parallel_worker_reports_in_step_and_resumes(tmp_path):
    """Two gloo processes run the trial's Ray Train worker function: every rank reports every
    evaluation, rank 0 alone with a checkpoint; the MLflow run is finished with its weights
    before the last report; restarted from the first checkpoint, it evaluates only what is left."""
    import json
    import socket

    import torch.multiprocessing as mp
    from mlflow.tracking import MlflowClient

    from dakd.config import from_dict
    from dakd.sweep.spec.context import SweepContext
    from dakd.sweep.spec.sweep_spec import grid_variants, resolve
    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import prepare

    spec = smoke(_spec_file(tmp_path, "dp", "resources: {workers: 2}\n"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = SweepContext(spec, str(ROOT), uri, prepare(uri, spec.name), "", {})
    cfg = from_dict(
        resolve(spec, grid_variants(spec)[0]).to_dict(), {"name": "run", "train.progress": False}
    )
    run = RunLogger(uri, context.experiment_id, run_name="dp", tags={"trial": "dp"})
    loop = {
        "config": cfg.to_dict(),
        "context": context,
        "run_id": run.run_id,
        "out_dir": str(tmp_path / "trial"),
        "teacher": None,
        "threads": 1,
    }
    (tmp_path / "store").mkdir()
    for resume in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_train_worker_process, args=(tmp_path, port, loop, resume), nprocs=2)

    first = [json.loads((tmp_path / f"first-rank{r}.json").read_text()) for r in (0, 1)]
    assert [e["step"] for e in first[0]] == [e["step"] for e in first[1]] == [2, 4]
    assert all("checkpoint" in e for e in first[0])
    assert not any("checkpoint" in e for e in first[1])
    assert [e["status"] for e in first[0]] == ["RUNNING", "FINISHED"]  # artifacts first
    assert {e["run_id"] for e in first[0] + first[1]} == {run.run_id}

    resumed = [json.loads((tmp_path / f"resumed-rank{r}.json").read_text()) for r in (0, 1)]
    assert [e["step"] for e in resumed[0]] == [e["step"] for e in resumed[1]] == [4]

    client = MlflowClient(uri)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.run_id, "miou")]
    # the restart went on from step 2 and evaluated step 4 again: the run holds it once
    assert steps == [2, 4]
    names = {a.path for a in client.list_artifacts(run.run_id, "weights")}
    assert names == {"weights/model.pt"}


# -- on a two-node cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False)
    nodes.wait_for_nodes()
    root = tmp_path_factory.mktemp("cluster")
    place = {
        "root": root,
        "overrides": [
            f"experiment.out_dir={root / 'stages'}",
            f"storage={(root / 'ray').as_uri()}",  # shared: both nodes are this machine
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        ],
    }
    yield place
    ray.shutdown()
    nodes.shutdown()


def _trial_runs(place, spec, result):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{place['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    return client, [r for r in children if "trial" in r.data.tags]


@pytest.mark.slow
def test_sweep_places_trials_on_both_nodes(cluster, tmp_path):
    import ray

    from dakd.sweep.driver.run import run_sweep

    body = (
        "search:\n  optim.lr: {grid: [0.01, 0.02]}\n"
        "tune: {search: grid, scheduler: fifo, max_concurrent: 2}\n"
        "resources: {cpu: 1}\n"
    )
    spec = smoke(_spec_file(tmp_path, "two_nodes", body), cluster["overrides"])
    lines: list[str] = []
    result = run_sweep(spec, address="auto", root=ROOT, log=lines.append)

    assert result.errors == 0
    assert [r["status"] for r in result.rows] == ["done", "done"]
    assert all(r["step"] == spec.base.train.steps for r in result.rows)
    client, trials = _trial_runs(cluster, spec, result)
    assert len(trials) == 2
    assert {r.info.status for r in trials} == {"FINISHED"}
    nodes = {r.data.tags["ray.node_id"] for r in trials}
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2 and nodes <= alive  # one trial on each node
    for run in trials:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "miou")] == [2, 4]
    # Tune's results are stored: the experiment can be read back from the storage URI
    from ray import tune

    assert tune.Tuner.can_restore(result.experiment_path)
    assert len(tune.ExperimentAnalysis(result.experiment_path).trials) == 2


@pytest.mark.slow
def test_data_parallel_trial_trains_through_ray_train(cluster, tmp_path):
    from dakd.sweep.driver.run import run_sweep

    body = (
        "tune: {search: grid, scheduler: fifo, max_concurrent: 1}\n"
        "resources: {cpu: 0.5, workers: 2}\n"  # the driver's CPU plus two half-CPU workers
    )
    spec = smoke(_spec_file(tmp_path, "two_workers", body), cluster["overrides"])
    result = run_sweep(spec, root=ROOT, log=lambda _: None)

    assert result.errors == 0
    (row,) = result.rows
    assert row["status"] == "done" and row["step"] == spec.base.train.steps
    client, (run,) = _trial_runs(cluster, spec, result)
    assert run.info.status == "FINISHED"
    assert run.data.tags["workers"] == "2"
    assert row["mlflow_run_id"] == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "miou")] == [2, 4]
    assert client.get_metric_history(run.info.run_id, "loss/total")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    assert "weights/model.pt" in names
    # the Train run (workers' checkpoints) lives in the sweep's storage, beside the trials
    train_runs = list(Path(result.experiment_path.removeprefix("file://")).glob("train-trial_id=*"))
    assert len(train_runs) == 1
    assert list(train_runs[0].glob("checkpoint_*/last.pt"))


def test_without_address_a_sweep_starts_its_own_local_ray(monkeypatch):
    """Ray's own default would join the latest cluster started on this machine; a sweep joins
    only what --address or RAY_ADDRESS names."""
    from dakd.sweep.driver.cluster import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == "local"
    assert ray_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) == "10.0.0.5:6379"
    assert ray_address("ray://head:10001") == "ray://head:10001"
