"""Where a sweep runs: the Ray it starts or joins, and whether that cluster can host its trials.

Each check stops the sweep before its trials are queued when they could never start (a trial
asking for more than any node has waits forever) or would write where other nodes cannot read.
"""

from __future__ import annotations

import os

from dakd.sweep.spec import SpecError, SweepSpec

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
    env = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"]}
    if os.environ.get("DAKD_DATA"):  # where trials on every node find the datasets
        env["DAKD_DATA"] = os.path.abspath(os.environ["DAKD_DATA"])
    ray.init(
        address=ray_address(address),
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": env},
    )
    return True


def check_cluster_resources(spec: SweepSpec, autoscale: bool = False) -> None:
    """Stop with :class:`SpecError` when no node of the Ray cluster can host one trial process
    (or one Ray Train worker), or the cluster cannot host one trial at all: its trials would wait
    for resources forever. An autoscaling cluster adds nodes on demand: ``autoscale`` skips it."""
    import ray

    if autoscale:
        return
    r = spec.resources
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    per_process = {"CPU": r.cpu, "GPU": r.gpu}
    whole = {
        "CPU": r.cpu * r.workers + (DRIVER_CPU if r.workers > 1 else 0),
        "GPU": r.gpu * r.workers,
    }
    have = f"{total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU"
    for kind, key in (("CPU", "resources.cpu"), ("GPU", "resources.gpu")):
        largest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        if per_process[kind] > largest:
            raise SpecError(
                f"{spec.path}: {key}: a trial process asks for {per_process[kind]:g} {kind}, but "
                f"no node of the Ray cluster has that many (the cluster has {have} in all, the "
                f"largest node {largest:g} {kind}); lower it, or pass --autoscale on a cluster "
                "that adds nodes on demand"
            )
        if whole[kind] > total.get(kind, 0.0):
            raise SpecError(
                f"{spec.path}: resources: a trial of {r.workers} worker(s) asks for "
                f"{whole[kind]:g} {kind} in all, but the Ray cluster has {have}; lower "
                "resources.workers, or pass --autoscale on a cluster that adds nodes on demand"
            )


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
    uri = spec.tracking.uri or ""
    if cluster and (not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri):
        log(
            f"warning: tracking.uri: {uri or 'the default SQLite store'} is a file of this "
            "machine; trials on other nodes need an MLflow server every node reaches "
            "(docs/cluster.md)"
        )
