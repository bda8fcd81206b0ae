"""Tracking: MLflow runs, the result tables built from them, and the benchmark's calibration.

The layer beside the sweep (docs/architecture.md): it reads and writes MLflow and Arrow, which the core
never imports. This file imports nothing, so that the modules that need neither MLflow nor Arrow
(:mod:`~dakd.tracking.tags`, :mod:`~dakd.tracking.locations`, the calibration study) load without
them; import what you use from its module:

- :mod:`~dakd.tracking.store`: the store, one client per process, retries on a locked SQLite;
  reading runs (``find_runs``, ``search_runs``, ``get_run``).
- :mod:`~dakd.tracking.runs`: logging a run (``RunLogger``, ``finish_run``).
- :mod:`~dakd.tracking.tags`: the tag names written and read.
- :mod:`~dakd.tracking.locations`: the default store, the MLflow UI command and link.
- :mod:`~dakd.tracking.load` (runs -> Arrow table), :mod:`~dakd.tracking.groups` (seeds
  averaged), :mod:`~dakd.tracking.tables` (Markdown, LaTeX, CSV, Parquet),
  :mod:`~dakd.tracking.plots` (PNG), :mod:`~dakd.tracking.report` (all of it for a study, or
  into a sweep's parent run).
- :mod:`~dakd.tracking.pareto`: the Pareto front of a search over students, its table, the best
  trial under a budget, its plot; :mod:`~dakd.tracking.drawing` and
  :mod:`~dakd.tracking.placement`: the figure, paradigm colours, ticks and point labels every
  plot shares. Plain Python and matplotlib, like the calibration.
- :mod:`~dakd.recipes.calibration`, :mod:`~dakd.recipes.calibration_targets`: the embedded
  benchmark's calibration (``python -m dakd calibrate``); plain Python, like the core.
"""
