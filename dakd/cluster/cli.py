"""``python -m dakd cluster local {up,down,status}``: the local cluster of :mod:`dakd.cluster.local`."""

from __future__ import annotations

import argparse
import sys


def add_cluster_parser(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="a local cluster of the real parts: PostgreSQL, an MLflow server, Ray nodes",
    )
    kinds = p.add_subparsers(dest="cluster_kind", required=True)
    local = kinds.add_parser(
        "local",
        help="on this machine (docs/cluster.md)",
        description="PostgreSQL, an MLflow server on it (--serve-artifacts) and Ray nodes "
        "started with `ray start`, each with its own address (127.0.0.1, 127.0.0.2, ...), "
        "all on 127.0.0.1's loopback. `down` stops what `up` started, by the process ids it "
        "recorded in FOLDER/cluster.json, and keeps the database and the artifacts.",
    )
    actions = local.add_subparsers(dest="cluster_action", required=True)
    up = actions.add_parser("up", help="start the cluster")
    up.add_argument("--nodes", type=int, default=3, help="Ray nodes, the head included (3)")
    up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each worker node (1)")
    up.add_argument(
        "--head-cpus", type=int, default=0, help="CPUs of the head node (0: it hosts no trial)"
    )
    up.add_argument("--ray-port", type=int, default=6379)
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--postgres-port", type=int, default=5432)
    up.add_argument(
        "--sqlite",
        action="store_true",
        help="the MLflow server keeps its runs in a SQLite file instead of PostgreSQL",
    )
    for action in (up, actions.add_parser("down", help="stop what `up` started")):
        action.add_argument(
            "--folder", default="runs/cluster", help="the cluster's folder (runs/cluster)"
        )
    status = actions.add_parser("status", help="what runs, and how to join it")
    status.add_argument("--folder", default="runs/cluster")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    from dakd.cluster.local import ClusterError, LocalCluster

    try:
        if args.cluster_action == "up":
            cluster = LocalCluster(
                folder=args.folder,
                nodes=args.nodes,
                cpus_per_node=args.cpus_per_node,
                head_cpus=args.head_cpus,
                postgres=not args.sqlite,
                ray_port=args.ray_port,
                mlflow_port=args.mlflow_port,
                postgres_port=args.postgres_port,
            )
            try:
                cluster.up()
            except BaseException:
                if cluster.services or cluster.ray_nodes:  # what this `up` started, only
                    print("stopping what started", file=sys.stderr)
                    cluster.down()
                raise
            return 0
        cluster = LocalCluster.load(args.folder)
        if args.cluster_action == "down":
            cluster.down()
        else:
            print(cluster.describe())
        return 0
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
