"""The sweep's state file, beside Tune's own state in its experiment folder.

Tune can restore its trials; what it does not keep is the sweep's MLflow parent run, which a
resumed sweep must continue rather than open anew. The folder may be local or a URI (pyarrow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dakd.sweep.spec.sweep_spec import SpecError, SweepSpec

STATE_FILE = "dakd_sweep.json"
"""Written into each Tune experiment folder: what ``--resume`` needs to continue the sweep."""


def latest_experiment(storage: str, name: str) -> str | None:
    """The newest ``<name>-<time>`` Tune experiment under ``storage`` (a folder or a URI)."""
    import pyarrow.fs

    fs, base = _fs(storage)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    except OSError:
        return None
    names = sorted(
        e.base_name
        for e in entries
        if e.type == pyarrow.fs.FileType.Directory and e.base_name.startswith(f"{name}-")
    )  # <name>-YYYYmmdd-HHMMSS sorts by time
    return f"{storage.rstrip('/')}/{names[-1]}" if names else None


def _fs(path: str):
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def write_state(experiment: str, state: dict[str, Any]) -> None:
    """What ``--resume`` needs (the MLflow parent run), beside Tune's own experiment state."""
    fs, path = _fs(experiment)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{STATE_FILE}") as out:
        out.write(json.dumps(state, indent=1).encode())


def read_state(experiment: str) -> dict[str, Any]:
    fs, path = _fs(experiment)
    try:
        with fs.open_input_stream(f"{path}/{STATE_FILE}") as stream:
            return json.loads(stream.read().decode())
    except (FileNotFoundError, OSError):
        return {}


def resumed_attempt(
    spec: SweepSpec, storage: str, uri: str, sweep_id: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The Tune experiment ``--resume`` continues (the sweep's latest under ``storage``, or with
    ``sweep_id`` that sweep's: :func:`sweep_experiment`) and its state; :class:`SpecError` when
    there is none to continue, or it was tracked elsewhere."""
    from ray import tune

    if sweep_id:
        previous = sweep_experiment(spec, storage, uri, sweep_id)
    else:
        previous = latest_experiment(storage, spec.name)
    # a sweep is resumable from the moment its parent run exists (the state file is
    # written then): killed in its stages, it has no Tune experiment yet
    state = read_state(previous) if previous else {}
    if previous is None or not (state or tune.Tuner.can_restore(previous)):
        which = f"sweep {sweep_id!r}" if sweep_id else f"interrupted sweep {spec.name!r}"
        raise SpecError(f"{spec.path}: --resume: no {which} in {storage}")
    if state.get("tracking_uri", uri) != uri:
        raise SpecError(
            f"{spec.path}: --resume: the latest sweep {Path(previous).name} was tracked in "
            f"{state['tracking_uri']}, not {uri}; resume with its tracking.uri"
        )
    return previous, state


def sweep_experiment(spec: SweepSpec, storage: str, uri: str, sweep_id: str) -> str:
    """The Tune experiment of the sweep whose parent run id is (or starts with) ``sweep_id``, in
    ``storage``; :class:`SpecError` (one line, the nearest ids) for an id the store does not
    have, or the sweep of another spec."""
    from dakd.sweep.driver.history import SweepLookupError, SweepRecord, find_sweep
    from dakd.tracking.runs_table import AnalysisError

    try:
        record = SweepRecord(find_sweep(uri, sweep_id))
    except (SweepLookupError, AnalysisError) as err:
        raise SpecError(f"{spec.path}: --resume: {err}") from None
    if record.name != spec.name or not record.tune_experiment:
        raise SpecError(
            f"{spec.path}: --resume: sweep {record.run_id} is a run of {record.name!r}, not of "
            f"{spec.name!r}; resume it with its own spec"
        )
    return f"{storage.rstrip('/')}/{record.tune_experiment}"
