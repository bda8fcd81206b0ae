"""Sweeps on Ray Tune, in three layers: the spec (:mod:`dakd.sweep.spec`: the YAML file, its search
space and sections), what runs inside Ray (:mod:`dakd.sweep.remote`: trials, stage and cache
tasks, the loop's hooks) and what runs in the driver (:mod:`dakd.sweep.driver`: plan, waves,
Tuner, summary). Every trial is tracked in MLflow (:mod:`dakd.tracking`)."""

import os

# Under `uv run`, Ray would rebuild the project's environment for every worker from a packaged
# copy of the working tree (slow, and it needs the package index). Local workers run the
# driver's interpreter instead; on a cluster, give Ray a runtime_env of your own. Ray reads this
# when it is first imported, so it is set before any submodule imports ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# A reused trial actor waits this long for the previous trial's thread to end (Tune's default,
# 2 s, is shorter than closing a stopped trial's MLflow run can take; the new trial would fail).
THREAD_TIMEOUT_S = "60"
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", THREAD_TIMEOUT_S)

# MLflow's usage telemetry starts a thread in every process that imports it; with many trial
# processes it races on its session id (a KeyError in a worker's log) and it reaches for the
# network the machines of a cluster often do not have. A user may still turn it on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
