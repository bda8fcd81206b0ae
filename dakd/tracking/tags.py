"""The MLflow tags the project writes and reads, named once.

A tag written by the sweep under one spelling and read by the result tables under another is a
table that silently loses its rows; every writer and reader therefore takes the name from here.
Plain strings, no MLflow import: the sweep driver names tags before MLflow has loaded, and
``python -m dakd`` never loads it.

The run tags (docs/architecture.md): every run of a sweep carries :data:`SWEEP` and
:data:`GIT_COMMIT` (the sweep's tags), :data:`SCENARIO`, :data:`PARADIGM`, :data:`LEVELS`,
:data:`SEED` and :data:`STAGE`; a child run points at its sweep's parent run through MLflow's
own :data:`MLFLOW_PARENT_RUN_ID`.
"""

from __future__ import annotations

#: MLflow's own tag of a child run: the id of its parent run (the sweep's), which the MLflow UI
#: nests runs by. The same string as ``mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID``.
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
#: MLflow's own tag of a run's description: Markdown the UI renders on the run's page (the
#: sweep's summary on its parent run). ``mlflow.utils.mlflow_tags.MLFLOW_RUN_NOTE``.
MLFLOW_NOTE = "mlflow.note.content"
#: The prefix of the experiment tags MLflow 3's UI keeps the runs table's saved views in
#: (``mlflow.sharedViewState.<key>``: the "Views" menu, and ``?viewStateShareKey=<key>``). The UI
#: alone defines it: no MLflow Python constant names it.
MLFLOW_SAVED_VIEW = "mlflow.sharedViewState."

# -- what every run of a sweep carries ---------------------------------------------------------

#: The sweep's name (its spec's ``name``): a sweep's parent run and every run under it.
SWEEP = "sweep"
#: The commit the sweep ran from (``unknown`` outside a git work tree).
GIT_COMMIT = "git_commit"
#: MLflow's own tag of a run's commit, which its UI shows on the run's page (Source, Git
#: Commit): ``mlflow.utils.mlflow_tags.MLFLOW_GIT_COMMIT``. Set beside :data:`GIT_COMMIT`.
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
#: The config's ``stage`` (``teacher_da``, ``dakd``, ...), or :data:`SWEEP_STAGE` /
#: :data:`TEACHER_CACHE_STAGE` for runs that train nothing.
STAGE = "stage"
#: ``data.scenario`` (``synth_to_real``, ``real_to_real``).
SCENARIO = "scenario"
#: The DAKD paradigm (``a``-``d``); :data:`NOT_SET` on runs that do not distil.
PARADIGM = "paradigm"
#: ``distill.levels`` joined by ``+`` (``output+feature``); :data:`NOT_SET` on runs that do not
#: distil.
LEVELS = "levels"
#: The run's ``seed``.
SEED = "seed"

#: The value of :data:`PARADIGM` and :data:`LEVELS` on a run that does not distil.
NOT_SET = "-"

# -- values of STAGE on runs that are not table rows -------------------------------------------

#: :data:`STAGE` of a sweep's parent run.
SWEEP_STAGE = "sweep"
#: :data:`STAGE` of a teacher-output cache build.
TEACHER_CACHE_STAGE = "teacher_cache"

# -- a sweep's parent run ----------------------------------------------------------------------

#: The host and process id of the sweep's driver: a later start closes the runs of an attempt
#: whose driver is gone (KILLED) and leaves a live one alone.
DRIVER_HOST = "driver_host"
DRIVER_PID = "driver_pid"
#: The Ray Tune experiment folder the sweep writes (what ``--resume`` continues).
TUNE_EXPERIMENT = "tune_experiment"

# -- trials, stages and cache builds -----------------------------------------------------------

#: A trial's readable label (``paradigm=d kl=0.1 seed=0``); only trial runs carry it.
TRIAL = "trial"
#: Ray Tune's id of the trial: a retried attempt finds the run of the first one by it.
RAY_TRIAL_ID = "ray.trial_id"
#: The Ray node an attempt ran on (trial placement on a cluster).
RAY_NODE_ID = "ray.node_id"
#: Data-parallel workers of a trial (``resources.workers`` > 1).
WORKERS = "workers"
#: ``true`` on a trial run that replays a reused stage as a table row.
REUSED = "reused"
#: ``true`` on a trial a scheduler stopped before its last step.
EARLY_STOPPED = "early_stopped"
#: Where a DAKD run's teacher outputs came from: the cached domains joined by ``+``, or ``live``.
TEACHER_CACHE = "teacher_cache"
#: The domain role (``source``/``target``) of a teacher-output cache build.
DOMAIN = "domain"
#: Why a run failed, in one line.
ERROR = "error"
#: The trained network, e.g. ``drn_d_22 w0.125 os2``.
NETWORK = "network"
#: Where the trained network's weights started: ``init checkpoint``, ``pretrained <file>`` or
#: ``random initialisation`` (with why, where ``pretrained: auto`` found no shipped weights).
START = "start"
#: Where and how a trial's deployment figures were measured (``512x1024 batch 1 on cpu``).
DEPLOY = "deploy"
#: Why a trial is infeasible (a constraint its figures break, or out of memory while measured);
#: such a trial is recorded, not trained.
INFEASIBLE = "infeasible"
#: ``true`` on the trial runs on the sweep's Pareto front (several objectives).
PARETO_FRONT = "pareto_front"
#: The trial whose weights PBT last started a trial from (``kl=0.1 ... (trial 1a2b_00001)``).
PBT_EXPLOITED = "pbt_exploited"
#: Every time PBT started a trial from another's weights, a line each: the step, the trial, the
#: values it went on with.
PBT_HISTORY = "pbt_history"


def commit_tags(commit: str | None) -> dict[str, str]:
    """The tags of the commit a run comes from: :data:`GIT_COMMIT` (``unknown`` outside a git
    work tree) and MLflow's :data:`MLFLOW_GIT_COMMIT` where it is known."""
    if not commit:
        return {GIT_COMMIT: "unknown"}
    return {GIT_COMMIT: commit, MLFLOW_GIT_COMMIT: commit}


def tag_filter(tag: str, value: str) -> str:
    """The MLflow search clause ``tag = 'value'``, the name quoted in backticks where it holds
    a dot (``tags.`ray.trial_id` = '...'``)."""
    name = f"`{tag}`" if "." in tag else tag
    return f"tags.{name} = '{value}'"
