"""Where a sweep runs: the Ray it starts or joins, and whether that cluster can host its trials.

Each check stops the sweep before its trials are queued when they could never start (a trial
asking for more than any node has waits forever) or would write where other nodes cannot read.
"""

from __future__ import annotations

import os
import time

from dakd.sweep.spec.sweep_spec import SpecError, SweepSpec

#: What workers on other nodes get from the driver's environment through Ray's runtime env:
#: Tune's settings, MLflow's, and the store retry budget (the spec's ``tracking.retry_seconds``).
FORWARDED_ENV = (
    "TUNE_FUNCTION_THREAD_TIMEOUT_S",
    "MLFLOW_DISABLE_TELEMETRY",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "DAKD_TRACKING_RETRY_SECONDS",
)

DRIVER_CPU = 1.0
"""CPUs Tune reserves for a data-parallel trial: the Ray Train driver (Ray's default for a trial)."""


def ray_address(address: str | None) -> str:
    """Where ``ray.init`` goes: ``--address`` if given, else ``RAY_ADDRESS`` (how ``ray job
    submit`` names the cluster), else a new local Ray. Never Ray's own fallback, the latest
    cluster started on this machine (``/tmp/ray/ray_current_cluster``): a sweep without
    ``--address`` would silently join a stale or foreign local cluster."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def start_ray(address: str | None) -> bool:
    """``ray.init`` unless Ray is already up in this process; whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # workers on other nodes get the driver's Tune settings through the runtime env
    env = {
        name: os.environ[name]
        for name in FORWARDED_ENV
        if os.environ.get(name)  # set by dakd.sweep, or by the spec (tracking.retry_seconds)
    }
    if os.environ.get("DAKD_DATA"):  # where trials on every node find the datasets
        env["DAKD_DATA"] = os.path.abspath(os.environ["DAKD_DATA"])
    ray.init(
        address=ray_address(address),
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": env},
    )
    return True


def node_sizes() -> list[dict[str, float | str]]:
    """The alive nodes of the Ray cluster: ``{"ip", "CPU", "GPU"}`` each."""
    import ray

    return [
        {
            "ip": n.get("NodeManagerAddress", "?"),
            "CPU": float(n.get("Resources", {}).get("CPU", 0.0)),
            "GPU": float(n.get("Resources", {}).get("GPU", 0.0)),
        }
        for n in ray.nodes()
        if n.get("Alive")
    ]


def largest(nodes: list[dict], kind: str) -> float:
    return max((float(n[kind]) for n in nodes), default=0.0)


def process_requests(spec: SweepSpec) -> list[tuple[str, str, dict[str, float]]]:
    """Every kind of process the sweep asks Ray for, each of which one node must hold:
    ``(what, spec key, {"CPU", "GPU"})``. A stage or cache task asks for at least 1 CPU (it is
    given what the largest node has, up to its threads: :func:`stage_cpus`) and the trial's GPUs;
    a trial process its ``resources``; a data-parallel trial its Train driver and each worker."""
    r = spec.resources
    asks = [("a stage task", "resources.gpu", {"CPU": 1.0, "GPU": r.gpu})]
    if r.workers > 1:
        asks.append(("a trial's Train driver", "resources", {"CPU": DRIVER_CPU, "GPU": 0.0}))
        asks.append(("a Ray Train worker", "resources.cpu", {"CPU": r.cpu, "GPU": r.gpu}))
    else:
        asks.append(("a trial process", "resources.cpu", {"CPU": r.cpu, "GPU": r.gpu}))
    return asks


def describe_nodes(nodes: list[dict]) -> str:
    if not nodes:
        return "no alive node"
    return ", ".join(f"{n['ip']} {n['CPU']:g} CPU {n['GPU']:g} GPU" for n in nodes)


def unmet_request(spec: SweepSpec, nodes: list[dict]) -> tuple[str, str] | None:
    """The first process of the sweep no single node of ``nodes`` can hold, as ``(spec key,
    one line naming the request and the nodes' sizes)``; ``None`` when every one fits a node."""
    for what, key, ask in process_requests(spec):
        fits = any(all(n[kind] >= ask[kind] for kind in ("CPU", "GPU")) for n in nodes)
        if not fits:
            return key, (
                f"{what} asks for {ask['CPU']:g} CPU and {ask['GPU']:g} GPU on one node, but no "
                f"node has that many (nodes: {describe_nodes(nodes)})"
            )
    return None


def stage_cpus(threads: int, nodes: list[dict]) -> int:
    """CPUs a stage task reserves: its threads, but never more than the largest node has (a
    task asking for more than any node holds waits forever, however many CPUs the cluster has
    in all)."""
    return max(1, min(threads, int(largest(nodes, "CPU"))))


def check_cluster_resources(spec: SweepSpec, autoscale: bool = False) -> None:
    """Stop with :class:`SpecError` when a process the sweep starts (a stage, a trial, a Ray Train
    worker) fits no single node of the Ray cluster, or a data-parallel trial's workers do not fit
    the whole cluster: its tasks would wait for resources forever. Checked before the first task
    starts. An autoscaling cluster adds nodes on demand: ``autoscale`` skips it."""
    import ray

    if autoscale:
        return
    r = spec.resources
    nodes = node_sizes()
    unmet = unmet_request(spec, nodes)
    if unmet is not None:
        key, line = unmet
        raise SpecError(
            f"{spec.path}: {key}: {line}; lower it, or pass --autoscale on a cluster that adds "
            "nodes on demand"
        )
    total = ray.cluster_resources()
    whole = {
        "CPU": r.cpu * r.workers + (DRIVER_CPU if r.workers > 1 else 0),
        "GPU": r.gpu * r.workers,
    }
    have = f"{total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU"
    for kind in ("CPU", "GPU"):
        if whole[kind] > total.get(kind, 0.0):
            raise SpecError(
                f"{spec.path}: resources: a trial of {r.workers} worker(s) asks for "
                f"{whole[kind]:g} {kind} in all, but the Ray cluster has {have}; lower "
                "resources.workers, or pass --autoscale on a cluster that adds nodes on demand"
            )


class NodeWatch:
    """Watches the cluster while the sweep runs: when no alive node can hold one of its processes
    any more (the nodes that could were lost), it says once what it waits for, and, if no such
    node is back within ``resources.node_timeout_s``, calls ``stop(reason)`` (the sweep stops as
    if interrupted, so ``--resume`` continues it). A node that comes back in time is said too."""

    def __init__(self, spec: SweepSpec, stop, log, interval: float = 5.0, nodes=node_sizes):
        import threading

        self.spec = spec
        self.stop = stop
        self.log = log
        self.interval = interval
        self.nodes = nodes
        self.waiting_since: float | None = None
        self.stopped: str | None = None  # the reason given to ``stop``
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dakd-node-watch", daemon=True)

    def __enter__(self) -> NodeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.poll(time.monotonic())
            except Exception as err:  # noqa: BLE001 - a watch must not end the sweep on its own
                self.log(f"warning: the node watch could not read the cluster: {err}")
            if self.stopped:
                return

    def poll(self, now: float) -> None:
        """One look at the cluster (``now``: a monotonic clock reading)."""
        timeout = self.spec.resources.node_timeout_s
        unmet = unmet_request(self.spec, self.nodes())
        if unmet is None:
            if self.waiting_since is not None:
                self.log("the cluster has a node for every process of the sweep again; going on")
            self.waiting_since = None
            return
        if self.waiting_since is None:
            self.waiting_since = now
            self.log(
                f"waiting for a node: {unmet[1]}; the sweep stops if none is back within "
                f"{timeout:g} s (resources.node_timeout_s)"
            )
        elif now - self.waiting_since >= timeout:
            self.stopped = (
                f"no node could hold the sweep's processes for {timeout:g} s "
                f"(resources.node_timeout_s): {unmet[1]}"
            )
            self.log(f"error: {self.stopped}")
            self.stop(self.stopped)


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What Tune reserves for one trial. With one worker the trial trains in its own process
    (``resources.cpu``/``gpu``); with more it is the driver of a Ray Train run whose workers
    reserve their own ``cpu``/``gpu`` each, so the trial itself takes :data:`DRIVER_CPU`."""
    if spec.resources.workers > 1:
        return {"cpu": DRIVER_CPU, "gpu": 0}
    return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_cluster_storage(spec: SweepSpec, address: str | None, nodes: int, log) -> None:
    """On a cluster every node must reach the same ``storage`` (trial checkpoints, Train runs).

    A relative folder names a different place on each machine: an error when the cluster has
    more than one node or is reached through Ray Client (``ray://``). A local absolute folder
    works only where it is a shared mount at the same path on every node: a warning then, and
    when ``--address`` joins a cluster that may still add nodes. A URI (``s3://``, ``gs://``,
    ``file://`` on a shared mount, ...) is what a cluster needs.
    """
    cluster = nodes > 1 or bool(address)
    remote = bool(address) and address.startswith("ray://")
    where = f"{nodes} nodes" if nodes > 1 else f"a cluster at {address}"
    if "://" not in spec.storage:
        if not os.path.isabs(spec.storage) and (nodes > 1 or remote):
            raise SpecError(
                f"{spec.path}: storage: {spec.storage!r} is a relative folder, but the sweep runs "
                f"on {where}: each node would write its own; set storage to a URI every node "
                "reaches (s3://..., gs://...) or a folder on a shared mount, e.g. "
                "--set storage=s3://BUCKET/ray"
            )
        if cluster:
            log(
                f"warning: storage: {spec.storage!r} is a local folder on {where}: it must be a "
                "shared mount at the same path on every node (else use an s3:// or gs:// URI)"
            )


def local_store(uri: str) -> bool:
    """Whether the tracking URI names a file of this machine (the default SQLite store, a
    ``sqlite:``/``file:`` URI, a bare folder) rather than a server or database every node reaches."""
    return not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri


def check_cluster_tracking(spec: SweepSpec, address: str | None, machines: int, log) -> None:
    """Trials log to ``tracking.uri`` from whichever node runs them. A local SQLite file (the
    default) is a file of the driver's machine: trials on other machines would each write a
    store of their own, or share one file over a network mount, which SQLite's locking does not
    survive. Refused when the cluster's nodes are on more than one machine (``machines``: their
    distinct addresses; several nodes started on one machine share its files); a note on a
    cluster of one machine joined with ``--address`` (it may add machines later)."""
    uri = spec.tracking.uri or ""
    if not local_store(uri):
        return
    what = uri or "the default SQLite store"
    if machines > 1:
        raise SpecError(
            f"{spec.path}: tracking.uri: {what} is a file of this machine, but trials run on "
            f"nodes at {machines} addresses; start an MLflow server every node reaches and pass it, e.g. "
            "--set tracking.uri=http://HEAD_IP:5000 (docs/cluster.md)"
        )
    if address:
        log(
            f"note: tracking.uri: {what} is a file of this machine; fine while the cluster at "
            f"{address} is this machine, not once it adds others (use an MLflow server, "
            "docs/cluster.md)"
        )


def check_cluster(spec: SweepSpec, address: str | None, autoscale: bool, log) -> None:
    """Every check of the cluster a sweep runs on, in Ray (already initialized): its processes
    fit the nodes, and its storage and tracking store are reached from every node."""
    check_cluster_resources(spec, autoscale)
    address = address or os.environ.get("RAY_ADDRESS")
    nodes = node_sizes()
    check_cluster_storage(spec, address, len(nodes), log)
    check_cluster_tracking(spec, address, len({n["ip"] for n in nodes}), log)


def dry_run_cluster(spec: SweepSpec, address: str, autoscale: bool, log=print) -> list[dict]:
    """The dry run on a cluster (``--dry-run --address``): join it for the checks a sweep would
    make before its first task (:func:`check_cluster`) and leave (the cluster stays as it was);
    its alive nodes (:func:`node_sizes`), which the plan's cost is counted on."""
    import ray

    ray.init(address=ray_address(address), include_dashboard=False, log_to_driver=False)
    try:
        check_cluster(spec, address, autoscale, log)
        nodes = node_sizes()
        log(f"cluster: {describe_nodes(nodes)}: every process of the sweep fits a node")
        return nodes
    finally:
        ray.shutdown()
