"""Logging MLflow runs: one run per trial or stage, addressed by id, safe with many writers.

:class:`RunLogger` opens (or reopens) a run by id and writes params, metrics, tags and
artifacts to it; every store call goes through :func:`dakd.tracking.store.retry_locked`, so
trials logging at once to one SQLite store wait for each other instead of failing.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from dakd.config import flatten
from dakd.tracking.locations import runs_view, ui_link, view_tag
from dakd.tracking.runs_table import finite_float
from dakd.tracking.store import client_for, retry_locked
from dakd.tracking.tags import ERROR, MLFLOW_NOTE, MLFLOW_PARENT_RUN_ID

if TYPE_CHECKING:
    from dakd.evaluation.segmentation import SegMetrics

__all__ = ["STATUSES", "RunLogger", "finish_run", "save_view", "set_run_tags"]

#: Terminal statuses accepted by :meth:`RunLogger.finish` and :func:`finish_run`.
STATUSES = ("FINISHED", "FAILED", "KILLED")

T = TypeVar("T")


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"run status must be one of {STATUSES}, got {status!r}")
    return status


class RunLogger:
    """One MLflow run, addressed by id, that any process may (re)open and log to.

    ``run_id=None`` creates a run in ``experiment_id`` (named ``run_name``, tagged
    ``mlflow.parentRunId = parent_run_id`` when given, plus ``tags``); a ``run_id`` reopens that
    run instead (a retried or resumed trial continues it: status back to RUNNING, new metric
    steps appended, same-valued params accepted, ``run_name``/``tags``/parent applied if given,
    and the ``error`` tag of the attempt that ended it removed: its failure or stop is not this
    attempt's). A reopened run logs each (metric, step) once: an attempt that continues from a
    checkpoint older than the last steps its predecessor logged (a node lost between logging an
    evaluation and saving its checkpoint) replays those steps, with the same values, and they are
    not logged again, so every metric's history has one value per step.
    Use it as a context manager to finish the run FINISHED, or FAILED/KILLED on an exception.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ):
        self.uri = uri
        self.experiment_id = str(experiment_id)
        self.client = client_for(uri)
        all_tags = {str(k): self._tag_value(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = str(parent_run_id)
        if run_id is None:
            run = retry_locked(
                self.client.create_run, self.experiment_id, tags=all_tags, run_name=run_name
            )
        else:
            run = retry_locked(self.client.get_run, run_id)
            if run.info.experiment_id != self.experiment_id:
                raise ValueError(
                    f"run {run_id} belongs to experiment {run.info.experiment_id}, "
                    f"not {self.experiment_id}"
                )
        #: The MLflow run id (store it to reopen the run later).
        self.run_id: str = run.info.run_id
        if run_id is not None:
            retry_locked(self.client.update_run, run_id, status="RUNNING", name=run_name or None)
            if ERROR in run.data.tags:
                retry_locked(self.client.delete_tag, run_id, ERROR)
            if all_tags:
                self.set_tags(all_tags)
            self._logged = self._logged_steps(run)
        #: Where the run's artifacts live (``file://...`` for the default store).
        self.artifact_uri: str = run.info.artifact_uri
        #: The status the run was terminated with, ``None`` while it is open.
        self.status: str | None = None

    #: (metric, step) pairs the run holds from earlier attempts (``None``: a new run).
    _logged: set[tuple[str, int]] | None = None

    def _logged_steps(self, run) -> set[tuple[str, int]]:
        return {
            (key, int(m.step))
            for key in run.data.metrics
            for m in retry_locked(self.client.get_metric_history, self.run_id, key)
        }

    @staticmethod
    def _tag_value(value: Any) -> str:
        return str(value)[:MAX_TAG_VAL_LENGTH]

    # -- values ---------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; nested dicts are flattened to dotted keys, values written as ``str()``
        (cut at MLflow's 6000 characters). Re-logging a param with the same value is fine;
        a different value raises MLflow's "Changing param values is not allowed"."""
        flat = flatten(dict(params))
        items = [Param(str(k), str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flat.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> dict[str, float]:
        """Log ``metrics`` at ``step`` in batches; NaN, inf and non-numbers are skipped. Keys may
        hold ``/`` (``iou/road``, ``loss/kl``). Returns what was logged."""
        stamp = int(time.time() * 1000)
        logged = {
            str(k): v
            for k, v in ((k, finite_float(v)) for k, v in metrics.items())
            if v is not None
        }
        if self._logged is not None:  # a reopened run: what an earlier attempt logged stays once
            logged = {k: v for k, v in logged.items() if (k, int(step)) not in self._logged}
        items = [Metric(k, v, stamp, int(step)) for k, v in logged.items()]
        for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id, metrics=chunk)
            if self._logged is not None:  # marked once stored: a failed batch can be logged again
                self._logged.update((m.key, m.step) for m in chunk)
        return logged

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values written as ``str()``); existing tags are overwritten."""
        items = [RunTag(str(k), self._tag_value(v)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            retry_locked(self.client.log_batch, self.run_id, tags=chunk)

    def set_description(self, text: str) -> None:
        """Set the run's description, Markdown the MLflow UI renders on the run's page (the tag
        ``mlflow.note.content``); a text over MLflow's 8000 characters ends at its last line
        that fits, so a table is cut between rows."""
        if len(text) > MAX_TAG_VAL_LENGTH:
            end = text.rfind("\n", 0, MAX_TAG_VAL_LENGTH + 1)
            text = text[: end if end > 0 else MAX_TAG_VAL_LENGTH]
        retry_locked(self.client.set_tag, self.run_id, MLFLOW_NOTE, text)

    # -- artifacts ------------------------------------------------------------------------------

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder, under its own name) into the run's artifacts, optionally
        under the artifact folder ``artifact_path``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no artifact at {path}")
        retry_locked(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (e.g. ``"eval/table.md"``)."""
        retry_locked(self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``obj`` as the artifact ``artifact_file``: YAML for ``.yaml``/``.yml``, else JSON."""
        retry_locked(self.client.log_dict, self.run_id, dict(obj), artifact_file)

    def log_evaluation(
        self,
        metrics: SegMetrics,
        panel: np.ndarray | None = None,
        prefix: str = "eval",
    ) -> list[str]:
        """Log the pictures and tables of one evaluation under the artifact folder ``prefix``:
        ``confusion.png`` (row-normalised), ``confusion.csv`` (counts), ``per_class_iou.md``
        and ``per_class_iou.csv`` (percent, blank where absent) and, given a ``panel`` from
        :func:`dakd.evaluation.panels.prediction_panel`, ``predictions.png``. Returns the artifact paths.
        Scalars (mIoU, per-class IoU) are :meth:`log_metrics`' job."""
        from dakd.data.labels import CLASS_NAMES
        from dakd.evaluation.panels import confusion_figure, per_class_table, save_png

        matrix = np.asarray(metrics.matrix)
        names = (
            list(CLASS_NAMES)
            if len(matrix) == len(CLASS_NAMES)
            else list(map(str, range(len(matrix))))
        )
        with tempfile.TemporaryDirectory(prefix="dakd-eval-") as tmp:
            folder = Path(tmp)
            confusion_figure(matrix, folder / "confusion.png")
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["ground_truth\\prediction", *names])
            for name, row in zip(names, matrix, strict=True):
                writer.writerow([name, *(int(v) for v in row)])
            (folder / "confusion.csv").write_text(buffer.getvalue())
            (folder / "per_class_iou.md").write_text(per_class_table(metrics))
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["class", "iou"])
            for name, value in zip(CLASS_NAMES, metrics.iou, strict=False):
                writer.writerow([name, "" if math.isnan(value) else f"{100 * float(value):.4f}"])
            (folder / "per_class_iou.csv").write_text(buffer.getvalue())
            if panel is not None:
                save_png(panel, folder / "predictions.png")
            files = sorted(p.name for p in folder.iterdir())
            retry_locked(self.client.log_artifacts, self.run_id, tmp, prefix)
        return [f"{prefix}/{name}" if prefix else name for name in files]

    # -- end ------------------------------------------------------------------------------------

    def finish(self, status: str = "FINISHED") -> None:
        """Terminate the run with ``status`` (FINISHED, FAILED or KILLED) and its end time."""
        retry_locked(self.client.set_terminated, self.run_id, _check_status(status))
        self.status = status

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED")

    def __repr__(self) -> str:
        return f"RunLogger(run_id={self.run_id!r}, experiment_id={self.experiment_id!r})"


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Terminate run ``run_id`` with ``status`` without reopening it (a driver marking a crashed
    trial's run FAILED, say)."""
    retry_locked(client_for(uri).set_terminated, run_id, _check_status(status))


def set_run_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    """Tag run ``run_id`` without reopening it."""
    client = client_for(uri)
    for key, value in tags.items():
        retry_locked(client.set_tag, run_id, key, str(value))


def save_view(
    uri: str,
    experiment_id: str,
    name: str,
    order_by: str | None = None,
    ascending: bool = False,
    columns: Iterable[str] = (),
) -> str:
    """Save a view of experiment ``experiment_id``'s runs table, sorted by ``order_by`` and
    showing ``columns`` (:func:`dakd.tracking.locations.runs_view`), as an experiment tag the
    MLflow UI lists under "Views" as ``name``. The same view saved again overwrites it (its
    name too). Returns its link, :func:`~dakd.tracking.locations.ui_link` with these arguments."""
    columns = tuple(columns)
    if not columns:
        raise ValueError("a saved view needs columns; a link sorts the table by itself (ui_link)")
    key, value = view_tag(runs_view(order_by, ascending, columns), name, int(time.time() * 1000))
    retry_locked(client_for(uri).set_experiment_tag, str(experiment_id), key, value)
    return ui_link(str(experiment_id), order_by=order_by, ascending=ascending, columns=columns)
