"""Tracking: MLflow runs and where they are stored.

The layer beside the sweep (DESIGN.md): it reads and writes MLflow and Arrow, the core never
imports it. This file imports nothing, so that the modules that need neither MLflow nor Arrow
(:mod:`~dakd.tracking.locations`) load without them; import what you use from its module:

- :mod:`~dakd.tracking.store`: the store, one client per process, retries on a locked SQLite;
  reading runs (``find_runs``, ``search_runs``, ``get_run``).
- :mod:`~dakd.tracking.runs`: logging a run (``RunLogger``, ``finish_run``).
- :mod:`~dakd.tracking.locations`: the default store, the MLflow UI command and link.
"""
