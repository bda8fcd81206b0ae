"""Tracking: MLflow runs, the result tables built from them, and the benchmark's calibration.

The layer beside the sweep (docs/architecture.md): it reads and writes MLflow and Arrow, which the core
never imports. This file imports nothing, so that the modules that need neither MLflow nor Arrow
(:mod:`~dakd.tracking.tags`, :mod:`~dakd.tracking.locations`, the calibration study) load without
them; import what you use from its module:

MLflow I/O:

- :mod:`~dakd.tracking.store`: the store, one client per process, retries on a locked SQLite;
  reading runs (``find_runs``, ``search_runs``, ``get_run``).
- :mod:`~dakd.tracking.runs`: logging a run (``RunLogger``, ``finish_run``);
  :mod:`~dakd.tracking.system`: MLflow's system metrics on a run.
- :mod:`~dakd.tracking.tags`: the tag names written and read.
- :mod:`~dakd.tracking.locations`: the default store, the MLflow UI command and link.
- :mod:`~dakd.tracking.load`: a study's MLflow runs -> the runs table (Arrow);
  :mod:`~dakd.tracking.report`: its tables and plots written for a study, or into a sweep's
  parent run.

Built from the runs table alone, never importing MLflow or Ray (PyArrow and matplotlib only), so
that an exported ``runs.parquet`` makes its tables anywhere (``python -m dakd tables --runs``):

- :mod:`~dakd.tracking.runs_table` (its columns, ``runs.parquet`` written and read back),
  :mod:`~dakd.tracking.groups` (seeds averaged), :mod:`~dakd.tracking.tables` (Markdown, LaTeX,
  CSV, Parquet), :mod:`~dakd.tracking.plots` (PNG), :mod:`~dakd.tracking.results` (all of it
  into a folder); :mod:`~dakd.tracking.cli`: ``python -m dakd tables`` and the options of
  ``analysis/tables.py`` and ``analysis/plots.py``.
- :mod:`~dakd.tracking.pareto`: the Pareto front of a search over students, its table, the best
  trial under a budget, its plot; :mod:`~dakd.tracking.drawing` and
  :mod:`~dakd.tracking.placement`: the figure, paradigm colours, ticks and point labels every
  plot shares. Plain Python and matplotlib, like the calibration.
- :mod:`~dakd.recipes.calibration`, :mod:`~dakd.recipes.calibration_targets`: the embedded
  benchmark's calibration (``python -m dakd calibrate``); plain Python, like the core.
"""
