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


def resumed_attempt(spec: SweepSpec, storage: str, uri: str) -> tuple[str, dict[str, Any]]:
    """The Tune experiment ``--resume`` continues (the sweep's latest under ``storage``) and its
    state; :class:`SpecError` when there is none to continue, or it was tracked elsewhere."""
    from ray import tune

    previous = latest_experiment(storage, spec.name)
    # a sweep is resumable from the moment its parent run exists (the state file is
    # written then): killed in its stages, it has no Tune experiment yet
    state = read_state(previous) if previous else {}
    if previous is None or not (state or tune.Tuner.can_restore(previous)):
        raise SpecError(f"{spec.path}: --resume: no interrupted sweep {spec.name!r} in {storage}")
    if state.get("tracking_uri", uri) != uri:
        raise SpecError(
            f"{spec.path}: --resume: the latest sweep {Path(previous).name} was tracked in "
            f"{state['tracking_uri']}, not {uri}; resume with its tracking.uri"
        )
    return previous, state
