"""MLflow tracking on a SQLite store under tmp_path: runs, reopening, artifacts, concurrency."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import re
import resource
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy.event
import sqlalchemy.exc
import yaml
from mlflow.exceptions import MlflowException

from dakd.tracking import locations, tags
from dakd.tracking import store as tracking_store
from dakd.tracking.locations import default_uri
from dakd.tracking.runs import RunLogger, finish_run, save_view
from dakd.tracking.store import find_runs, prepare, retry_locked


@dataclass
class Store:
    """A SQLite store shared by this file's tests, and one experiment of the current test."""

    uri: str
    runs: Path  # the folder of mlflow.db
    name: str  # the experiment
    experiment_id: str

    @property
    def artifacts(self) -> Path:
        """Where the experiment's run artifacts should land: next to the db."""
        return self.runs / "mlartifacts" / self.name


@pytest.fixture(scope="module")
def _database(tmp_path_factory):
    runs = tmp_path_factory.mktemp("tracking") / "runs"
    return default_uri(runs), runs  # one schema creation (~1 s) for the whole file


@pytest.fixture
def store(_database, tmp_path, monkeypatch, request):
    """An experiment of its own for each test; the cwd is an empty folder, so that anything
    written to ./mlruns would show."""
    uri, runs = _database
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    name = re.sub(r"\W+", "_", request.node.name)
    return Store(uri, runs, name, prepare(uri, name))


def _history(logger: RunLogger, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in logger.client.get_metric_history(logger.run_id, key)]


def test_default_uri_and_ui_command(tmp_path):
    uri = default_uri(tmp_path / "runs")
    assert uri == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    assert uri.startswith("sqlite:////")
    assert locations.ui_command(uri) == (
        f"uv run mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )
    assert "'sqlite:///a b/mlflow.db'" in locations.ui_command("sqlite:///a b/mlflow.db")
    # outside a uv project (an installed dakd), the environment's own mlflow
    assert locations.ui_command(uri, cwd=tmp_path) == (
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )


def test_a_servers_ui_is_the_server():
    """A tracking server serves its own UI: the summary sends the user there, not to a
    ``mlflow ui`` on this machine pointed at an http URI (which MLflow refuses)."""
    server = "http://10.0.0.5:5000/"
    assert locations.ui_command(server) == "the server's UI: http://10.0.0.5:5000"
    assert locations.ui_link("7", "abc", address=server) == (
        "http://10.0.0.5:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
    assert locations.ui_link("7").startswith("http://127.0.0.1:5000/#/experiments/7/runs?")


def test_the_tag_vocabulary_is_mlflows_where_mlflow_names_it():
    """The parent-run and description tags are MLflow's own (the UI nests runs by one, shows the
    other as Markdown); the tags module spells them without importing MLflow, so the two must
    agree."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

    assert tags.MLFLOW_PARENT_RUN_ID == MLFLOW_PARENT_RUN_ID
    assert tags.MLFLOW_NOTE == MLFLOW_RUN_NOTE
    assert tags.tag_filter(tags.STAGE, tags.SWEEP_STAGE) == "tags.stage = 'sweep'"
    assert tags.tag_filter(tags.MLFLOW_PARENT_RUN_ID, "abc") == "tags.`mlflow.parentRunId` = 'abc'"


def test_ui_links_sort_the_runs_table_by_url_and_show_columns_by_a_saved_view():
    """MLflow 3.17's runs table reads its sort from the URL (``orderByKey``: the column as the UI
    keys it, ``orderByAsc``) and its columns only from a saved view, named by the URL's
    ``viewStateShareKey``; a URL that sorts too would make the UI pass over the view."""
    base = f"{locations.UI_ADDRESS}/#/experiments/7"
    assert locations.ui_link("7") == f"{base}/runs?workflowType=machine_learning"
    assert locations.ui_link("7", "abc") == f"{base}/runs/abc?workflowType=machine_learning"
    assert locations.ui_link("7", order_by="metrics.miou") == (
        f"{base}/runs?orderByKey=metrics.%60miou%60&orderByAsc=false&workflowType=machine_learning"
    )
    assert "orderByKey=metrics.%60loss%60&orderByAsc=true&" in locations.ui_link(
        "7", order_by="loss", ascending=True
    )
    view = locations.runs_view("miou", columns=["best_miou", "miou", "params.optim.lr"])
    assert view == {
        "orderByKey": "metrics.`miou`",
        "orderByAsc": False,
        "selectedColumns": ["metrics.`best_miou`", "metrics.`miou`", "params.`optim.lr`"],
        "columnOrder": ["metrics.`best_miou`", "metrics.`miou`", "params.`optim.lr`"],
    }
    assert locations.runs_view("miou", columns=["best_miou"])["columnOrder"] == [
        "metrics.`miou`",  # the sort column, first when not given
        "metrics.`best_miou`",
    ]
    link = locations.ui_link("7", order_by="miou", columns=["best_miou", "miou", "params.optim.lr"])
    key = locations.view_key(view)
    assert link == f"{base}/runs?viewStateShareKey={key}&workflowType=machine_learning"
    assert re.fullmatch(r"dakd-[0-9a-f]{12}", key)
    assert key != locations.view_key(locations.runs_view("miou", True, ["best_miou", "miou"]))
    assert [locations.ui_column(c) for c in ("miou", "metrics.`iou/road`", "tags.stage")] == [
        "metrics.`miou`",
        "metrics.`iou/road`",
        "tags.`stage`",
    ]
    assert locations.ui_column("attributes.start_time") == "attributes.start_time"
    with pytest.raises(ValueError, match="run's page"):
        locations.ui_link("7", "abc", order_by="miou")


def test_a_saved_view_is_the_experiment_tag_the_ui_reads(store):
    """The UI lists a saved view under "Views" and opens it by its key: the tag
    ``mlflow.sharedViewState.<key>`` holds its name, times and state (JSON in JSON). The same
    view saved again overwrites its tag; the link names the tag's key."""
    link = save_view(store.uri, store.experiment_id, "runs by miou", "miou", columns=["best_miou"])
    save_view(store.uri, store.experiment_id, "runs by miou", "miou", columns=["best_miou"])
    experiment = tracking_store.client_for(store.uri).get_experiment(store.experiment_id)
    saved = {k: v for k, v in experiment.tags.items() if k.startswith(tags.MLFLOW_SAVED_VIEW)}
    assert len(saved) == 1
    ((name, value),) = saved.items()
    assert link.endswith(
        f"?viewStateShareKey={name[len(tags.MLFLOW_SAVED_VIEW) :]}&workflowType=machine_learning"
    )
    envelope = json.loads(value)
    assert envelope["name"] == "runs by miou"
    assert envelope["createdAt"] == envelope["updatedAt"] > 1.6e12  # ms
    assert json.loads(envelope["state"]) == locations.runs_view("miou", columns=["best_miou"])
    with pytest.raises(ValueError, match="needs columns"):
        save_view(store.uri, store.experiment_id, "sorted", "miou")


def test_a_description_is_the_runs_markdown_note(store):
    """The UI renders the tag ``mlflow.note.content`` as the run's description, Markdown; a text
    over MLflow's limit ends at the last whole line that fits."""
    logger = RunLogger(store.uri, store.experiment_id, run_name="sweep")
    text = "best trials:\n\n| trial | miou |\n|---|---|\n| a | 16.00 |\n\n- seed=0: +2.50"
    logger.set_description(text)
    assert logger.client.get_run(logger.run_id).data.tags[tags.MLFLOW_NOTE] == text
    row = "| trial with a long label | 16.00 |\n"
    logger.set_description("| trial | miou |\n|---|---|\n" + row * 1000)
    cut = logger.client.get_run(logger.run_id).data.tags[tags.MLFLOW_NOTE]
    assert 7900 < len(cut) <= 8000 and cut.endswith("| 16.00 |")
    assert cut.count("\n") == len(cut.splitlines()) - 1  # whole rows only


def test_git_commit(tmp_path):
    commit = locations.git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    if (Path(locations.__file__).parents[2] / ".git").exists():
        assert commit is not None
    assert locations.git_commit(tmp_path) is None


def test_prepare_is_idempotent_and_puts_artifacts_next_to_the_db(store, tmp_path):
    uri, experiment_id, runs = store.uri, store.experiment_id, store.runs
    assert (runs / "mlflow.db").is_file()
    assert prepare(uri, store.name) == experiment_id
    other = prepare(uri, "other study/2")
    assert other != experiment_id
    experiment = tracking_store.client_for(uri).get_experiment(experiment_id)
    assert experiment.artifact_location == store.artifacts.as_uri()

    source = tmp_path / "weights.pt"
    source.write_bytes(b"\x00weights")
    with RunLogger(uri, experiment_id, run_name="a") as logger:
        logger.log_artifact(source, "checkpoints")
        logger.log_text("hello", "notes/readme.txt")
    stored = store.artifacts / logger.run_id / "artifacts"
    assert (stored / "checkpoints" / "weights.pt").read_bytes() == b"\x00weights"
    assert (stored / "notes" / "readme.txt").read_text() == "hello"
    assert not (Path.cwd() / "mlruns").exists()
    assert not (Path.cwd() / "mlartifacts").exists()
    with pytest.raises(FileNotFoundError):
        RunLogger(uri, other).log_artifact(tmp_path / "missing.bin")


def test_run_logging_params_metrics_tags_and_parent(store, tmp_path):
    uri, experiment_id = store.uri, store.experiment_id
    parent = RunLogger(uri, experiment_id, run_name="sweep", tags={"sweep": "kl"})
    child = RunLogger(
        uri,
        experiment_id,
        run_name="paradigm=d kl=0.1 seed=0",
        parent_run_id=parent.run_id,
        tags={"stage": "dakd", "seed": 0},
    )
    params = {"loss": {"kl": 0.1, "mse": 0.0}, "distill.levels": ["output", "feature"]}
    params.update({f"extra.p{i:03d}": i for i in range(150)})  # more than one 100-param batch
    child.log_params(params)
    logged = child.log_metrics(
        {"miou": 41.5, "iou/road": 90.0, "loss/kl": float("nan"), "loss/mse": math.inf, "x": "a"},
        step=3,
    )
    assert logged == {"miou": 41.5, "iou/road": 90.0}
    child.log_metrics({"miou": 43.0, "loss/kl": 0.25}, step=6)
    child.set_tags({"paradigm": "d"})
    child.log_dict({"a": 1, "b": [1, 2]}, "config.yaml")
    child.log_dict({"a": 1}, "config.json")
    child.finish()
    parent.finish()

    run = child.client.get_run(child.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.info.run_name == "paradigm=d kl=0.1 seed=0"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["stage"] == "dakd" and run.data.tags["seed"] == "0"
    assert run.data.tags["paradigm"] == "d"
    assert run.data.params["loss.kl"] == "0.1"
    assert run.data.params["distill.levels"] == "['output', 'feature']"
    assert len(run.data.params) == 153
    assert _history(child, "miou") == [(3, 41.5), (6, 43.0)]
    assert _history(child, "iou/road") == [(3, 90.0)]
    assert _history(child, "loss/kl") == [(6, 0.25)]  # the NaN was skipped
    assert _history(child, "loss/mse") == []
    assert "x" not in run.data.metrics

    artifacts = store.artifacts / child.run_id / "artifacts"
    assert yaml.safe_load((artifacts / "config.yaml").read_text()) == {"a": 1, "b": [1, 2]}
    assert json.loads((artifacts / "config.json").read_text()) == {"a": 1}

    children = find_runs(uri, store.name, f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert [r.info.run_id for r in children] == [child.run_id]
    assert [r.info.run_id for r in find_runs(uri, store.name)] == [parent.run_id, child.run_id]
    assert find_runs(uri, "no such study") == []


def test_reopening_a_run_continues_it(store):
    uri, experiment_id = store.uri, store.experiment_id
    first = RunLogger(uri, experiment_id, run_name="trial", tags={"seed": 1})
    first.log_params({"loss.kl": 0.1})
    first.log_metrics({"miou": 10.0}, step=0)
    first.log_metrics({"miou": 20.0}, step=1)
    first.finish("FAILED")
    assert first.client.get_run(first.run_id).info.status == "FAILED"

    again = RunLogger(uri, experiment_id, run_id=first.run_id, tags={"attempt": 2})
    assert again.run_id == first.run_id
    run = again.client.get_run(again.run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "trial"
    assert run.data.tags["seed"] == "1" and run.data.tags["attempt"] == "2"
    again.log_params({"loss.kl": 0.1})  # same value: accepted
    with pytest.raises(MlflowException, match="Changing param values"):
        again.log_params({"loss.kl": 0.5})
    again.log_metrics({"miou": 30.0}, step=2)
    again.finish()
    run = again.client.get_run(again.run_id)
    assert run.info.status == "FINISHED"
    assert _history(again, "miou") == [(0, 10.0), (1, 20.0), (2, 30.0)]
    assert len(find_runs(uri, store.name)) == 1

    other = prepare(uri, "elsewhere")
    with pytest.raises(ValueError, match="belongs to experiment"):
        RunLogger(uri, other, run_id=first.run_id)


def test_a_reopened_run_logs_each_step_once(store):
    """A trial retried from a checkpoint older than its last logged steps replays them: the
    reopened run keeps one value per (metric, step), the first attempt's, and logs what is new."""
    first = RunLogger(store.uri, store.experiment_id, run_name="trial")
    for step in range(3):
        first.log_metrics({"loss": float(step), "miou": 10.0 + step}, step=step)
    first.finish("FAILED")

    again = RunLogger(store.uri, store.experiment_id, run_id=first.run_id)
    # the checkpoint was at step 1: steps 1 and 2 come again (a new metric at 2 is kept)
    assert again.log_metrics({"loss": 1.0, "miou": 11.0}, step=1) == {}
    assert again.log_metrics({"loss": 2.0, "miou": 12.0, "lr": 0.1}, step=2) == {"lr": 0.1}
    assert again.log_metrics({"loss": 3.0}, step=3) == {"loss": 3.0}
    assert again.log_metrics({"loss": 3.0}, step=3) == {}  # this attempt's own steps too
    again.finish()
    assert _history(again, "loss") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert _history(again, "miou") == [(0, 10.0), (1, 11.0), (2, 12.0)]
    assert _history(again, "lr") == [(2, 0.1)]

    # a new run is not deduplicated: logging a step twice is the caller's choice there
    fresh = RunLogger(store.uri, store.experiment_id)
    fresh.log_metrics({"x": 1.0}, step=0)
    assert fresh.log_metrics({"x": 2.0}, step=0) == {"x": 2.0}
    fresh.finish()


def test_finish_statuses_and_context_manager(store):
    uri, experiment_id = store.uri, store.experiment_id
    with pytest.raises(RuntimeError):
        with RunLogger(uri, experiment_id) as failing:
            raise RuntimeError("boom")
    assert failing.status == "FAILED"
    assert failing.client.get_run(failing.run_id).info.status == "FAILED"

    logger = RunLogger(uri, experiment_id)
    finish_run(uri, logger.run_id, "KILLED")
    assert logger.client.get_run(logger.run_id).info.status == "KILLED"
    with pytest.raises(ValueError, match="FINISHED"):
        logger.finish("DONE")
    with pytest.raises(ValueError):
        finish_run(uri, logger.run_id, "RUNNING")


def test_log_evaluation_writes_tables_and_pictures(store):
    from dakd.data.labels import CLASS_NAMES
    from dakd.evaluation.segmentation import SegMetrics

    uri, experiment_id = store.uri, store.experiment_id
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, size=(19, 19)) + np.diag(np.full(19, 500))
    matrix[5] = 0
    matrix[:, 5] = 0  # class 5 absent: n/a
    metrics = SegMetrics.from_matrix(matrix)
    panel = np.zeros((10, 20, 3), dtype=np.uint8)
    with RunLogger(uri, experiment_id) as logger:
        paths = logger.log_evaluation(metrics, panel, prefix="eval/final")
    assert paths == [
        "eval/final/confusion.csv",
        "eval/final/confusion.png",
        "eval/final/per_class_iou.csv",
        "eval/final/per_class_iou.md",
        "eval/final/predictions.png",
    ]
    folder = store.artifacts / logger.run_id / "artifacts" / "eval" / "final"
    assert (folder / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (folder / "per_class_iou.md").read_text()
    assert f"| road | {100 * metrics.iou[0]:.2f} |" in table
    assert f"| {CLASS_NAMES[5]} | n/a |" in table
    rows = (folder / "per_class_iou.csv").read_text().splitlines()
    assert rows[0] == "class,iou" and rows[6] == f"{CLASS_NAMES[5]},"
    assert float(rows[1].split(",")[1]) == pytest.approx(100 * metrics.iou[0], abs=1e-3)
    counts = (folder / "confusion.csv").read_text().splitlines()
    assert counts[1].split(",")[1:] == [str(v) for v in matrix[0]]

    with RunLogger(uri, experiment_id) as plain:
        assert "eval/predictions.png" not in plain.log_evaluation(metrics)


def test_retry_locked_retries_lock_errors_quietly(capfd):
    mlflow_log = logging.getLogger("mlflow.store.db.utils")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            error = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
            mlflow_log.error(
                "SQLAlchemy database error. The following exception is caught.\n%s", error
            )
            raise MlflowException(message=error, error_code="TEMPORARILY_UNAVAILABLE") from error
        return "ok"

    before = tracking_store.retry_count
    assert retry_locked(flaky) == "ok"
    assert len(calls) == 3 and tracking_store.retry_count == before + 2
    assert "locked" not in capfd.readouterr().err

    def broken():
        calls.append(1)
        raise MlflowException("Run 'busy-owl-3' not found", error_code="RESOURCE_DOES_NOT_EXIST")

    calls.clear()
    with pytest.raises(MlflowException, match="not found"):
        retry_locked(broken)
    assert len(calls) == 1

    def always_locked():
        raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        retry_locked(always_locked, timeout=0.3)

    # outside a retry, MLflow's own report of a lock error is left alone
    mlflow_log.error("SQLAlchemy database error: database is locked")
    assert "database is locked" in capfd.readouterr().err


def _impatient(uri: str, busy_ms: int) -> Callable[[], None]:
    """Cut the busy timeout MLflow sets on every SQLite session (20 s) to ``busy_ms``, so that a
    collision surfaces at once as a real "database is locked" error; returns the undo."""
    engine = tracking_store.client_for(uri)._tracking_client.store.engine

    def rewrite(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("PRAGMA BUSY_TIMEOUT"):
            statement = f"PRAGMA busy_timeout = {busy_ms};"
        return statement, parameters

    sqlalchemy.event.listen(engine, "before_cursor_execute", rewrite, retval=True)
    return lambda: sqlalchemy.event.remove(engine, "before_cursor_execute", rewrite)


def test_a_really_locked_database_is_waited_out(store, capfd):
    uri, experiment_id = store.uri, store.experiment_id
    logger = RunLogger(uri, experiment_id)
    undo = _impatient(uri, 10)
    holder = sqlite3.connect(
        store.runs / "mlflow.db", isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN EXCLUSIVE")  # what another process committing a big write does
    timer = threading.Timer(0.8, holder.execute, ("COMMIT",))
    before = tracking_store.retry_count
    timer.start()
    try:
        logger.log_metrics({"miou": 1.0}, step=0)
        logger.set_tags({"after": "lock"})
    finally:
        timer.join()
        undo()
        holder.close()
    assert tracking_store.retry_count > before
    assert _history(logger, "miou") == [(0, 1.0)]
    assert logger.client.get_run(logger.run_id).data.tags["after"] == "lock"
    assert "locked" not in capfd.readouterr().err


# -- four processes writing at once --------------------------------------------------------

WORKERS = 4
STEPS = 20
PARAMS = 120
CLASSES = 19


def _worker(uri: str, experiment_id: str, parent_id: str, index: int, out: str, barrier) -> None:
    """One trial: a run with PARAMS params, STEPS metric batches and two artifacts."""
    logger = RunLogger(
        uri, experiment_id, run_name=f"trial {index}", parent_run_id=parent_id, tags={"i": index}
    )
    _impatient(uri, 0)  # every collision with another writer now fails until retried
    barrier.wait(timeout=120)  # everyone imported and connected: now write all at once
    start = time.monotonic()
    logger.log_params({f"p{k:03d}": k * index for k in range(PARAMS)})
    for step in range(STEPS):
        metrics = {"loss/total": step + index / 10, "miou": float(index)}
        metrics.update({f"iou/c{c}": c + step for c in range(CLASSES)})
        logger.log_metrics(metrics, step)
        if step % 5 == 0:
            logger.set_tags({"last_step": step})
    file = Path(out) / f"weights{index}.bin"
    file.write_bytes(bytes([index]) * 64)
    logger.log_artifact(file, "model")
    logger.log_text(f"trial {index}", "notes.txt")
    logger.finish()
    (Path(out) / f"{index}.json").write_text(
        json.dumps(
            {
                "run_id": logger.run_id,
                "retries": tracking_store.retry_count,
                "seconds": round(time.monotonic() - start, 2),
            }
        )
    )


@pytest.mark.slow
def test_four_processes_log_at_once_without_losing_anything(tmp_path, capfd):
    uri = default_uri(tmp_path / "runs")
    experiment_id = prepare(uri, "concurrent")  # once, in the driver, before the workers
    parent = RunLogger(uri, experiment_id, run_name="sweep")
    out = tmp_path / "out"
    out.mkdir()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    processes = [
        context.Process(
            target=_worker, args=(uri, experiment_id, parent.run_id, i, str(out), barrier)
        )
        for i in range(WORKERS)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    wall = time.monotonic() - started
    assert [p.exitcode for p in processes] == [0] * WORKERS
    parent.finish()
    err = capfd.readouterr().err
    assert "locked" not in err.lower(), err

    reports = [json.loads((out / f"{i}.json").read_text()) for i in range(WORKERS)]
    retries = [r["retries"] for r in reports]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\n{WORKERS} workers: {wall:.1f} s wall, {cpu.ru_utime + cpu.ru_stime:.1f} s CPU in all; "
        f"logging phase {[r['seconds'] for r in reports]} s; lock retries {retries}"
    )
    children = find_runs(uri, "concurrent", f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(r["run_id"] for r in reports)
    client = parent.client
    # the writers did collide (each collision failed at once and was retried) ...
    assert sum(retries) >= 1, retries
    # ... and every param, every (metric, step, value) and every artifact arrived, once
    for run in children:
        index = int(run.data.tags["i"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["last_step"] == "15"
        assert run.data.params == {f"p{k:03d}": str(k * index) for k in range(PARAMS)}
        expected = set()
        for step in range(STEPS):
            expected |= {("loss/total", step, step + index / 10), ("miou", step, float(index))}
            expected |= {(f"iou/c{c}", step, float(c + step)) for c in range(CLASSES)}
        logged = []
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            logged += [(key, m.step, m.value) for m in history]
        assert len(logged) == len(expected) and set(logged) == expected
        stored = tmp_path / "runs" / "mlartifacts" / "concurrent" / run.info.run_id / "artifacts"
        assert (stored / "model" / f"weights{index}.bin").read_bytes() == bytes([index]) * 64
        assert (stored / "notes.txt").read_text() == f"trial {index}"
