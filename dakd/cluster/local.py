"""A cluster of the real parts on one machine: PostgreSQL, an MLflow server on it, Ray nodes.

``python -m dakd cluster local up --nodes 3`` starts, each as its own set of processes:

* **PostgreSQL** from the machine's server binaries (``initdb`` into a folder the cluster owns,
  ``postgres`` on 127.0.0.1 at a port of its own; as root both run as the ``postgres`` user, since
  PostgreSQL refuses root);
* an **MLflow tracking server** on that database with ``--serve-artifacts`` (clients upload
  artifacts through the server, as a team runs it), on 127.0.0.1;
* a **Ray head** and ``nodes - 1`` **worker nodes**, each started with ``ray start --block`` as a
  user starts one on a real machine, with its own node address (127.0.0.1 for the head, then
  127.0.0.2, 127.0.0.3, ...) and token authentication (the token in the cluster's folder).

Every service is the leader of its own session (:mod:`dakd.cluster.processes`), recorded with
its pid in ``cluster.json`` in the cluster's folder as soon as it starts; ``down`` stops exactly
those sessions, whatever else runs on the machine, and keeps the database and the artifacts
(``up`` again finds them). ``up`` refuses when a port it needs is taken, before starting anything.

The same object drives the faults the cluster tests inflict: :meth:`LocalCluster.kill_node`
(SIGKILL to a node's raylet and workers at once), :meth:`LocalCluster.start_node`,
:meth:`LocalCluster.restart_mlflow` and :meth:`LocalCluster.restart_postgres`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dakd.cluster.processes import (
    alive,
    check_port_free,
    free_port,
    session_members,
    start_session,
    stop_session,
    wait_until,
)

__all__ = ["ClusterError", "LocalCluster", "PostgresMissing", "postgres_bin"]

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
DATABASE = "mlflow"
DB_USER = "dakd"
#: Each node's object store: small, the sweeps move checkpoints through storage, not objects.
OBJECT_STORE_BYTES = 200 * 1024 * 1024
START_TIMEOUT = 120.0


class ClusterError(RuntimeError):
    """The local cluster cannot be brought up (or is already up): one line saying why."""


class PostgresMissing(ClusterError):
    """PostgreSQL's server binaries are not installed on this machine."""


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server binaries (``initdb``, ``postgres``): ``$DAKD_PG_BIN``,
    else the newest ``/usr/lib/postgresql/*/bin``, else ``initdb`` on the PATH."""
    given = os.environ.get("DAKD_PG_BIN")
    candidates = [Path(given)] if given else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresMissing(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: "
        "apt-get install postgresql (Debian, Ubuntu), or set DAKD_PG_BIN to their folder"
    )


class _Started:
    """What the cluster started: a session leader (``pid``) that may still run."""

    pid: int

    def running(self) -> bool:
        return alive(self.pid)


@dataclass
class Service(_Started):
    """One started service: its session leader's pid, its port and its log."""

    pid: int
    port: int
    log: str


@dataclass
class Node(_Started):
    """One Ray node started with ``ray start --block``."""

    index: int  # 0: the head
    ip: str
    cpus: int
    pid: int
    log: str


@dataclass
class LocalCluster:
    """A local cluster in ``folder`` (see the module's docstring). Build one with the sizes and
    ports, call :meth:`up`; :meth:`load` reads a running one back from its folder."""

    folder: Path
    nodes: int = 3
    cpus_per_node: int = 1
    head_cpus: int = 0  # the head runs the sweep's driver; trials go to the workers
    postgres: bool = True  # False: the MLflow server keeps its runs in a SQLite file
    ray_port: int = 6379
    mlflow_port: int = 5000
    postgres_port: int = 5432
    services: dict[str, Service] = field(default_factory=dict)
    ray_nodes: list[Node] = field(default_factory=list)
    pg_data: str = ""

    # -- where things are ----------------------------------------------------------------------

    @property
    def ray_address(self) -> str:
        return f"{HOST}:{self.ray_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def database_uri(self) -> str:
        if not self.postgres:
            return f"sqlite:///{self.folder / 'mlflow.db'}"
        return f"postgresql://{DB_USER}@{HOST}:{self.postgres_port}/{DATABASE}"

    @property
    def token_path(self) -> Path:
        return self.folder / "ray_auth_token"

    def env(self) -> dict[str, str]:
        """What a driver needs in its environment to join the cluster (``env.sh`` exports it)."""
        return {
            "RAY_ADDRESS": self.ray_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
        }

    # -- up, down, state -----------------------------------------------------------------------

    def up(self, log=print) -> LocalCluster:
        """Start PostgreSQL, the MLflow server and the Ray nodes; each is recorded the moment it
        starts, so :meth:`down` stops what a failed ``up`` left running."""
        self.folder = Path(self.folder).resolve()
        if self.nodes < 1 or self.cpus_per_node < 0 or self.head_cpus < 0:
            raise ClusterError("--nodes must be >= 1 and the CPU counts >= 0")
        existing = _read_state(self.folder)
        if existing is not None and existing.running():
            raise ClusterError(
                f"a local cluster is already up in {self.folder} (Ray at "
                f"{existing.ray_address}, MLflow at {existing.tracking_uri}); "
                f"bring it down first: python -m dakd cluster local down --folder {self.folder}"
            )
        if self.postgres:
            postgres_bin()  # a missing PostgreSQL stops here, before anything starts
        wanted = [
            (self.ray_port, "the Ray head (--ray-port)"),
            (self.mlflow_port, "the MLflow server (--mlflow-port)"),
        ]
        if self.postgres:
            wanted.append((self.postgres_port, "PostgreSQL (--postgres-port)"))
        ports = [port for port, _ in wanted]
        if len(set(ports)) != len(ports):
            raise ClusterError(f"the cluster's ports must differ, got {ports}")
        for port, what in wanted:
            try:
                check_port_free(port, what)
            except RuntimeError as err:
                raise ClusterError(str(err)) from None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.services, self.ray_nodes = {}, []
        self._save()
        if self.postgres:
            self._start_postgres(log)
        self._start_mlflow(log)
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        for index in range(self.nodes):
            self.start_node(index, log)
        self._write_env()
        log(self.describe())
        return self

    def down(self, log=print) -> None:
        """Stop what :meth:`up` started (by the sessions it recorded), workers first; the
        database, the artifacts and the logs stay in the folder."""
        for node in reversed(self.ray_nodes):
            if node.running() or session_members(node.pid):
                stop_session(node.pid, grace=5.0)
                log(f"stopped Ray node {node.index} ({node.ip}, pid {node.pid})")
        self.ray_nodes = []
        mlflow = self.services.pop("mlflow", None)
        if mlflow is not None:
            stop_session(mlflow.pid, grace=10.0)
            log(f"stopped the MLflow server (pid {mlflow.pid})")
        pg = self.services.pop("postgres", None)
        if pg is not None:
            # SIGINT: PostgreSQL's fast shutdown (clients disconnected, data flushed)
            stop_session(pg.pid, grace=30.0, first=signal.SIGINT)
            log(f"stopped PostgreSQL (pid {pg.pid}); its data stays in {self.pg_data}")
        self._forget_ray_address()
        self._save()

    def _forget_ray_address(self) -> None:
        """``ray start --head`` records the head in ``/tmp/ray/ray_current_cluster``, where a
        later ``ray.init()`` without an address looks for a cluster to join; ``ray stop`` removes
        it, and so does ``down`` (as ``ray stop`` would, but only when it names this cluster's
        head, whichever of its addresses Ray wrote)."""
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
        try:
            recorded = path.read_text().strip()
        except OSError:
            return
        if recorded.rpartition(":")[2] == str(self.ray_port):
            path.unlink(missing_ok=True)

    def running(self) -> bool:
        """Whether any process this cluster started still runs."""
        pids = [s.pid for s in self.services.values()] + [n.pid for n in self.ray_nodes]
        return any(alive(pid) or session_members(pid) for pid in pids)

    @classmethod
    def load(cls, folder: Path | str) -> LocalCluster:
        """The cluster recorded in ``folder`` (raises :class:`ClusterError` if there is none)."""
        found = _read_state(Path(folder).resolve())
        if found is None:
            raise ClusterError(f"no local cluster was started in {folder} ({STATE_FILE} missing)")
        return found

    def describe(self) -> str:
        lines = [f"local cluster in {self.folder}:"]
        if "postgres" in self.services:
            pg = self.services["postgres"]
            lines.append(
                f"  PostgreSQL      {self.database_uri}  (pid {pg.pid}, data {self.pg_data})"
            )
        if "mlflow" in self.services:
            server = self.services["mlflow"]
            lines.append(f"  MLflow server   {self.tracking_uri}  (pid {server.pid})")
        for node in self.ray_nodes:
            role = "Ray head" if node.index == 0 else f"Ray worker {node.index}"
            state = "up" if node.running() else "DOWN"
            lines.append(f"  {role:<15} {node.ip}  {node.cpus} CPU  (pid {node.pid}, {state})")
        lines.append(f"  join it: source {self.folder / 'env.sh'}  (sets {', '.join(self.env())})")
        return "\n".join(lines)

    def _save(self) -> None:
        data = dataclasses.asdict(self)
        data["folder"] = str(self.folder)
        tmp = self.folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.folder / STATE_FILE)

    def _write_env(self) -> None:
        lines = [f"export {key}={value}" for key, value in self.env().items()]
        (self.folder / "env.sh").write_text("\n".join(lines) + "\n")

    # -- PostgreSQL ----------------------------------------------------------------------------

    def _start_postgres(self, log) -> None:
        binaries = postgres_bin()
        user = _postgres_user()
        data = Path(self.pg_data) if self.pg_data else self._pg_folder(user)
        self.pg_data = str(data)
        if not (data / "PG_VERSION").is_file():
            data.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(data, user, user)
                data.chmod(0o700)
            log(f"initdb {data}")
            _run(
                [str(binaries / "initdb"), "-D", str(data), "-U", DB_USER, "-A", "trust"]
                + ["-E", "UTF8", "--no-instructions"],
                user=user,
            )
        self._launch_postgres(binaries, user)
        made = _run(
            [str(binaries / "createdb"), "-h", HOST, "-p", str(self.postgres_port)]
            + ["-U", DB_USER, DATABASE],
            check=False,
        )
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise ClusterError(f"createdb {DATABASE} failed: {made.stderr.strip()}")
        log(f"PostgreSQL up on {HOST}:{self.postgres_port}")

    def _launch_postgres(self, binaries: Path, user: str | None) -> None:
        command = [
            str(binaries / "postgres"),
            "-D",
            self.pg_data,
            "-p",
            str(self.postgres_port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "unix_socket_directories=",  # TCP on 127.0.0.1 only
        ]
        log_file = self.folder / "logs" / "postgres.log"
        pid = start_session(command, log_file, user=user, cwd=Path("/"))
        self.services["postgres"] = Service(pid, self.postgres_port, str(log_file))
        self._save()
        ready = binaries / "pg_isready"
        probe = [str(ready), "-h", HOST, "-p", str(self.postgres_port), "-U", DB_USER, "-q"]
        try:
            wait_until(
                lambda: alive(pid) and _run(probe, check=False).returncode == 0,
                START_TIMEOUT,
                f"PostgreSQL did not accept connections on {HOST}:{self.postgres_port}",
                interval=0.3,
            )
        except TimeoutError as err:
            raise ClusterError(f"{err}; see {log_file}") from None

    def _pg_folder(self, user: str | None) -> Path:
        """The data folder: in the cluster's folder, unless PostgreSQL's user (running as root)
        cannot reach it; then under /var/tmp, named after the cluster's folder."""
        inside = self.folder / "postgres"
        if user is None or _reachable_by_others(self.folder):
            return inside
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:12]
        base = Path("/var/tmp/dakd-postgres")
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        return base / digest

    def restart_postgres(self, down_for: float = 0.0, log=print) -> None:
        """PostgreSQL stopped (fast shutdown), ``down_for`` seconds of nothing, started again."""
        import time

        pg = self.services["postgres"]
        stop_session(pg.pid, grace=30.0, first=signal.SIGINT)
        log(f"PostgreSQL stopped (pid {pg.pid})")
        time.sleep(down_for)
        self._launch_postgres(postgres_bin(), _postgres_user())
        log(f"PostgreSQL started again (pid {self.services['postgres'].pid})")

    # -- the MLflow server ---------------------------------------------------------------------

    def _start_mlflow(self, log) -> None:
        artifacts = self.folder / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [
            _tool("mlflow"),
            "server",
            "--backend-store-uri",
            self.database_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            HOST,
            "--port",
            str(self.mlflow_port),
            "--workers",
            "1",
        ]
        log_file = self.folder / "logs" / "mlflow.log"
        # the server's job runner serves GenAI features (trace roll-ups), not tracking: off, so
        # the server is one process tree of uvicorn rather than a dozen job consumers beside it
        env = {**_quiet_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        pid = start_session(command, log_file, env=env, cwd=self.folder)
        self.services["mlflow"] = Service(pid, self.mlflow_port, str(log_file))
        self._save()
        try:
            wait_until(
                lambda: _answers(f"{self.tracking_uri}/health") or not alive(pid),
                START_TIMEOUT,
                f"the MLflow server did not answer at {self.tracking_uri}",
                interval=0.5,
            )
        except TimeoutError as err:
            raise ClusterError(f"{err}; see {log_file}") from None
        if not alive(pid):
            raise ClusterError(f"the MLflow server exited at start; see {log_file}")
        log(f"MLflow server up at {self.tracking_uri} (runs in {self.database_uri})")

    def restart_mlflow(self, down_for: float = 0.0, log=print) -> None:
        """The MLflow server stopped, ``down_for`` seconds of nothing, started again."""
        import time

        server = self.services["mlflow"]
        stop_session(server.pid, grace=10.0)
        log(f"MLflow server stopped (pid {server.pid})")
        time.sleep(down_for)
        self._start_mlflow(log)

    # -- Ray nodes -----------------------------------------------------------------------------

    def start_node(self, index: int, log=print) -> Node:
        """Start Ray node ``index`` (0: the head) with ``ray start --block``; wait until it is up."""
        head = index == 0
        ip = HOST if head else f"127.0.0.{index + 1}"
        cpus = self.head_cpus if head else self.cpus_per_node
        taken = [self.ray_port, self.mlflow_port, self.postgres_port]
        agent = [free_port(avoid=taken) for _ in range(4)]
        low = 20000 + 200 * index  # each node's worker ports apart from the others'
        command = [
            _tool("ray"),
            "start",
            f"--node-ip-address={ip}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--dashboard-agent-listen-port={agent[0]}",
            f"--dashboard-agent-grpc-port={agent[1]}",
            f"--runtime-env-agent-port={agent[2]}",
            f"--metrics-export-port={agent[3]}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 199}",
            "--disable-usage-stats",
            "--block",
        ]
        if head:
            command += [
                "--head",
                f"--port={self.ray_port}",
                "--include-dashboard=false",
            ]
        else:
            command.append(f"--address={self.ray_address}")
        log_file = self.folder / "logs" / f"ray-node{index}.log"
        with contextlib.suppress(FileNotFoundError):
            log_file.unlink()  # the readiness line below must be this start's
        env = {**_quiet_env(), **self.env()}
        env.pop("RAY_ADDRESS")  # `ray start` takes --address; a stale one must not interfere
        pid = start_session(command, log_file, env=env, cwd=self.folder)
        node = Node(index, ip, cpus, pid, str(log_file))
        self.ray_nodes = [n for n in self.ray_nodes if n.index != index] + [node]
        self.ray_nodes.sort(key=lambda n: n.index)
        self._save()
        try:
            wait_until(
                lambda: "Ray runtime started" in _text(log_file) or not alive(pid),
                START_TIMEOUT,
                f"Ray node {index} ({ip}) did not start",
                interval=0.5,
            )
        except TimeoutError as err:
            raise ClusterError(f"{err}; see {log_file}") from None
        if not alive(pid):
            raise ClusterError(f"Ray node {index} ({ip}) exited at start; see {log_file}")
        log(f"Ray {'head' if head else 'worker'} node {index} up at {ip} ({cpus} CPU)")
        return node

    def kill_node(self, index: int) -> list[int]:
        """Lose node ``index`` as a machine is lost: SIGKILL to its raylet, its workers and every
        other process of the node at once. Returns the pids killed."""
        node = next(n for n in self.ray_nodes if n.index == index)
        killed = session_members(node.pid)
        stop_session(node.pid, grace=0)
        return killed

    def node_pids(self, index: int) -> list[int]:
        """The running processes of Ray node ``index`` (raylet, agents, workers)."""
        node = next(n for n in self.ray_nodes if n.index == index)
        return session_members(node.pid)


# -- helpers -------------------------------------------------------------------------------------


def _read_state(folder: Path) -> LocalCluster | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["folder"] = Path(data["folder"])
    data["services"] = {k: Service(**v) for k, v in data.get("services", {}).items()}
    data["ray_nodes"] = [Node(**n) for n in data.get("ray_nodes", [])]
    return LocalCluster(**data)


def _tool(name: str) -> str:
    """A console script of this environment (``ray``, ``mlflow``), beside the interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(f"the {name} command is not installed: pip install 'dakd[sweep]'")
    return found


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _postgres_user() -> str | None:
    """The user PostgreSQL runs as: ``postgres`` (else ``nobody``) when this process is root,
    which PostgreSQL refuses; otherwise this user."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ClusterError("running as root, and no 'postgres' user to run PostgreSQL as")


def _reachable_by_others(folder: Path) -> bool:
    """Whether every folder above ``folder`` lets other users through (mode o+x)."""
    for part in [folder, *folder.parents]:
        if part.exists() and not part.stat().st_mode & 0o001:
            return False
    return True


def _run(command: list[str], user: str | None = None, check: bool = True):
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        user=user,
        cwd="/",
        timeout=120,
    )
    if check and done.returncode != 0:
        raise ClusterError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-500:]}")
    return done


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
