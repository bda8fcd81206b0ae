"""Sweeps: YAML specs (:mod:`dakd.sweep.spec`) run on Ray Tune (:mod:`dakd.sweep.driver`,
:mod:`dakd.sweep.trial`), every trial tracked in MLflow (:mod:`dakd.tracking`)."""

import os

# Under `uv run`, Ray would rebuild the project's environment for every worker from a packaged
# copy of the working tree (slow, and it needs the package index). Local workers run the
# driver's interpreter instead; on a cluster, give Ray a runtime_env of your own. Ray reads this
# when it is first imported, so it is set before any submodule imports ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
