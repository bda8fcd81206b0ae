"""The tracking layer against real servers: an MLflow tracking server (a subprocess on a free
port, SQLite behind it) killed and restarted under a writer, a lost answer, a server that stays
away longer than the retry budget, the checks a sweep runs before it starts and, where the
binaries are installed, PostgreSQL restarted under a writer. No MLflow call is mocked."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from dakd.config import ConfigError
from dakd.sweep.spec.settings import Tracking, section
from dakd.tracking import store as tracking_store
from dakd.tracking.runs import RunLogger
from dakd.tracking.server import TrackingError, check_tracking
from dakd.tracking.store import (
    MLFLOW_RETRIES_ENV,
    RETRY_ENV,
    configure_retries,
    prepare,
    retry_locked,
    retry_seconds,
)

#: Where the PostgreSQL 15 server binaries are on Debian and Ubuntu.
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a free port of 127.0.0.1, SQLite and artifacts in ``folder``, in a
    process group of its own so that :meth:`kill` ends it (uvicorn included) by its pid."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> float:
        """Start it and wait for ``/health``; the seconds that took."""
        begin = time.monotonic()
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        # the job runner (a handful of huey consumers) is for GenAI jobs, none of ours
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.folder / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        while time.monotonic() - begin < timeout:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.uri}/health", timeout=1).status_code == 200:
                    return time.monotonic() - begin
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.2)
        tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
        self.kill()
        pytest.fail(f"mlflow server did not answer /health within {timeout:g} s:\n{tail}")

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_up(self) -> None:
        if not self.up:
            self.start()

    def kill(self) -> None:
        """SIGKILL its process group (a crash: no goodbye to the clients) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    running.start()
    try:
        yield running
    finally:
        running.kill()


@pytest.fixture(autouse=True)
def _budget(monkeypatch):
    """A 60 s budget (no test waits 300 s for a server that will not come), MLflow's own HTTP
    retries off as :func:`client_for` sets them, both undone after each test."""
    monkeypatch.setattr(tracking_store, "_budget", None)
    monkeypatch.setenv(RETRY_ENV, "60")
    monkeypatch.setenv(MLFLOW_RETRIES_ENV, "0")


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# -- the budget and the spec key ---------------------------------------------------------------


def test_the_retry_budget_comes_from_the_spec_or_the_environment(monkeypatch):
    assert section(None, Tracking, "tracking").retry_seconds == tracking_store.RETRY_SECONDS
    assert section({"retry_seconds": 30}, Tracking, "tracking").retry_seconds == 30
    for bad in (0, -5, math.inf):
        with pytest.raises(ConfigError, match=r"^tracking\.retry_seconds: must be"):
            section({"retry_seconds": bad}, Tracking, "tracking")

    assert retry_seconds() == 60  # the fixture's environment: what a Ray worker is given
    monkeypatch.delenv(RETRY_ENV)
    assert retry_seconds() == tracking_store.RETRY_SECONDS
    configure_retries(12.5)  # the driver: for itself and the processes it starts
    assert retry_seconds() == 12.5 and os.environ[RETRY_ENV] == "12.5"
    with pytest.raises(ValueError, match="tracking.retry_seconds"):
        configure_retries(0)
    monkeypatch.setattr(tracking_store, "_budget", None)
    monkeypatch.setenv(RETRY_ENV, "soon")
    with pytest.raises(ValueError, match=RETRY_ENV):
        retry_seconds()


# -- checks before a sweep starts --------------------------------------------------------------


def test_check_tracking_names_a_dead_server_at_once():
    uri = f"http://127.0.0.1:{_free_port()}"
    begin = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        check_tracking(uri)
    assert time.monotonic() - begin < 5
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"tracking.uri: no MLflow server answers at {uri} (connection refused); "
        "start it (docs/cluster.md) or fix tracking.uri"
    )


def test_check_tracking_names_the_missing_postgres_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if psycopg2-binary were not there
    with pytest.raises(TrackingError, match=r"pip install 'psycopg2-binary'") as caught:
        check_tracking("postgresql+psycopg2://mlflow:secret@127.0.0.1:5432/mlflow")
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("tracking.uri: postgresql+psycopg2://mlflow:***@127.0.0.1:5432")

    monkeypatch.setitem(sys.modules, "psycopg", None)  # SQLAlchemy 2.1's driver of postgresql://
    with pytest.raises(TrackingError, match=r"driver psycopg, .*pip install 'psycopg\[binary\]'"):
        check_tracking("postgresql://mlflow@127.0.0.1:5432/mlflow")


def test_check_tracking_names_a_dead_postgres_and_leaves_local_stores_alone(tmp_path):
    port = _free_port()
    begin = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        check_tracking(f"postgresql://mlflow:secret@127.0.0.1:{port}/mlflow")
    assert time.monotonic() - begin < 5
    message = str(caught.value)
    assert message.startswith(f"tracking.uri: cannot connect to PostgreSQL at 127.0.0.1:{port}/")
    assert "Connection refused" in message and "\n" not in message and "secret" not in message
    for local in (f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "mlruns"), "file:///x"):
        check_tracking(local)
    assert not (tmp_path / "mlflow.db").exists()


# -- a tracking server -------------------------------------------------------------------------


@pytest.mark.slow
def test_run_logger_logs_to_a_tracking_server(server, tmp_path):
    server.ensure_up()
    check_tracking(server.uri)
    experiment_id = prepare(server.uri, "server")
    assert prepare(server.uri, "server") == experiment_id
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"\x00weights")
    with RunLogger(server.uri, experiment_id, run_name="trial", tags={"seed": 0}) as logger:
        logger.log_params({"loss": {"kl": 0.1}, "steps": 4})
        for step in range(3):
            logger.log_metrics({"miou": step / 10, "loss/total": 1 - step / 10}, step)
        logger.log_artifact(weights, "weights")
        logger.log_text("# table", "eval/table.md")
    client = logger.client
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"loss.kl": "0.1", "steps": "4"}
    assert run.data.tags["seed"] == "0"
    assert _steps(client, logger.run_id, "loss/total") == [0, 1, 2]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
    downloaded = Path(client.download_artifacts(logger.run_id, "weights/model.pt", str(tmp_path)))
    assert downloaded.read_bytes() == b"\x00weights"
    assert {a.path for a in client.list_artifacts(logger.run_id, "eval")} == {"eval/table.md"}

    # what waiting cannot mend is raised at once
    begin = time.monotonic()
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        retry_locked(client.get_run, "0" * 32)
    with pytest.raises(MlflowException, match="INVALID_PARAMETER_VALUE"):
        logger.log_params({"steps": 5})  # a param never changes value
    assert time.monotonic() - begin < 5


def _writing(logger, steps: int, metrics):
    """A trial-like writer in a thread, ``metrics(step)`` every 50 ms, once it has logged 5
    steps: (its thread, the steps done, the errors it met; the tests assert on both)."""
    done, errors = [], []

    def write() -> None:
        try:
            for step in range(steps):
                logger.log_metrics(metrics(step), step)
                done.append(step)
                time.sleep(0.05)
        except Exception as exc:  # reported by the test's assertions
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    while len(done) < 5 and writer.is_alive():
        time.sleep(0.02)
    return writer, done, errors


@pytest.mark.slow
def test_a_server_restart_under_a_writer_loses_and_doubles_nothing(server):
    server.ensure_up()
    experiment_id = prepare(server.uri, "restart")
    logger = RunLogger(server.uri, experiment_id, run_name="writer")
    steps = 40
    retries = tracking_store.retry_count
    writer, done, errors = _writing(
        logger, steps, lambda step: {"loss": 1 / (step + 1), "step_mirror": step}
    )
    server.kill()  # mid-stream, as a crash or a redeploy would
    killed_at = len(done)
    time.sleep(1.0)  # the writer now meets a closed port
    server.start()
    writer.join(timeout=60)
    assert not writer.is_alive() and not errors, errors
    assert killed_at < steps and tracking_store.retry_count > retries  # it did wait it out
    assert _steps(logger.client, logger.run_id, "loss") == list(range(steps))
    logger.finish()


@pytest.mark.slow
def test_a_batch_sent_again_after_a_restart_is_logged_once(server):
    """MLflow's SQL store drops a metric the run already has (same key, value, step and
    timestamp): a log_batch redone after its answer was lost logs nothing twice."""
    server.ensure_up()
    logger = RunLogger(server.uri, prepare(server.uri, "idempotent"), run_name="replay")
    stamp = int(time.time() * 1000)
    batch = [Metric("loss", 1 / (step + 1), stamp, step) for step in range(5)]
    retry_locked(logger.client.log_batch, logger.run_id, metrics=batch)
    server.kill()
    server.start()
    retry_locked(logger.client.log_batch, logger.run_id, metrics=batch)
    history = logger.client.get_metric_history(logger.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1 / (s + 1)) for s in range(5)]


class _AnswerLosingProxy:
    """A TCP proxy to ``target`` that, once, lets a ``log-batch`` request reach the server,
    waits for the server's answer and then closes the client's connection instead of passing
    it on: the write landed, its answer was lost (what a connection reset looks like)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            drop = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, drop), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, drop), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, drop: threading.Event) -> None:
        with client, upstream:
            while data := self._recv(client):
                if b"/runs/log-batch" in data and not self.dropped.is_set():
                    drop.set()
                upstream.sendall(data)

    def _down(self, upstream: socket.socket, client: socket.socket, drop: threading.Event) -> None:
        while data := self._recv(upstream):
            if drop.is_set() and not self.dropped.is_set():
                self.dropped.set()  # the server answered: it committed; the client never hears
                client.shutdown(socket.SHUT_RDWR)
                client.close()
                upstream.close()
                return
            client.sendall(data)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        self.listener.close()


@pytest.mark.slow
def test_a_batch_whose_answer_was_lost_is_retried_and_logged_once(server):
    server.ensure_up()
    proxy = _AnswerLosingProxy(server.port)
    uri = f"http://127.0.0.1:{proxy.port}"
    try:
        logger = RunLogger(uri, prepare(uri, "lost-answer"), run_name="lost")
        retries = tracking_store.retry_count
        logger.log_metrics({"miou": 0.5, "loss": 0.25}, step=7)
        assert proxy.dropped.is_set() and tracking_store.retry_count > retries
        for key, value in (("miou", 0.5), ("loss", 0.25)):
            history = logger.client.get_metric_history(logger.run_id, key)
            assert [(m.step, m.value) for m in history] == [(7, value)]
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_server_away_longer_than_the_budget_is_one_clear_error(server):
    server.ensure_up()
    logger = RunLogger(server.uri, prepare(server.uri, "budget"), run_name="gives up")
    server.kill()
    configure_retries(3)
    begin = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        logger.log_metrics({"miou": 0.5}, step=0)
    waited = time.monotonic() - begin
    assert 3 <= waited < 8
    assert str(caught.value) == (
        f"MLflow tracking server {server.uri} did not answer for 3 s (connection refused); "
        "check that it is running (tracking.retry_seconds sets how long a trial waits for it)"
    )


# -- PostgreSQL --------------------------------------------------------------------------------


class Postgres:
    """A throwaway PostgreSQL 15 cluster on a free port, trust authentication, database
    ``mlflow``; run as the ``postgres`` user when this process is root (initdb refuses root)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="dakd-pg-"))  # under /tmp: postgres reaches it
        self.port = _free_port()
        self.uri = f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(PG_BIN / tool), *args], check=True, capture_output=True, timeout=60
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "mlflow", "--auth=trust")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.folder / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.folder / "data"), "-l", log, "-w", "-o", options, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 server binaries in {PG_BIN}")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    cluster = Postgres()
    try:
        cluster.init()
        yield cluster
    finally:
        if (cluster.folder / "data" / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                cluster.stop("immediate")
        shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.mark.slow
def test_postgres_restarted_under_a_writer_loses_and_doubles_nothing(postgres):
    check_tracking(postgres.uri)
    logger = RunLogger(postgres.uri, prepare(postgres.uri, "pg"), run_name="writer")
    steps = 30
    retries = tracking_store.retry_count
    writer, done, errors = _writing(logger, steps, lambda step: {"loss": 1 / (step + 1)})
    postgres.stop("fast")  # closes every connection, as a restart or a failover does
    time.sleep(1.0)
    postgres.start()
    writer.join(timeout=60)
    assert not writer.is_alive() and not errors, errors
    assert tracking_store.retry_count > retries
    assert _steps(logger.client, logger.run_id, "loss") == list(range(steps))
    logger.finish()
