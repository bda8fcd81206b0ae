"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitives: the format tag, the trained network's
description (registry name, width, classes), the resolved config, the step reached, and the
state of every model and optimiser needed to resume.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "dakd-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not fit the model asked for."""


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename.

    A crash mid-write leaves the previous file intact; readers never see a partial checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; one clear error for each way it can be wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .pt file inside it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the same thing here
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a dakd checkpoint (no '{FORMAT}' format tag)"
        )
    return state


def network_spec(
    name: str,
    width: float,
    num_classes: int,
    output_stride: int = 8,
    args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a checkpoint says it holds; ``output_stride`` is named only when it is not 8 and the
    builder's ``args`` only when there are some, so checkpoints written before the options
    existed describe the same network as before."""
    spec = {"name": name, "width": float(width), "num_classes": int(num_classes)}
    if output_stride != 8:
        spec["output_stride"] = int(output_stride)
    if args:
        spec["args"] = dict(args)
    return spec


def load_network(
    model: torch.nn.Module, state: dict[str, Any], expected: dict[str, Any], path
) -> None:
    """Load ``state["model"]`` into ``model`` after checking it holds the expected network."""
    found = state.get("network", {})
    if found != expected:
        raise CheckpointError(
            f"checkpoint {path} holds {describe(found)} but {describe(expected)} was asked for"
        )
    from dakd.models.domain_bn import prepare_for_state

    try:
        prepare_for_state(model, state["model"])
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit {describe(expected)}: {err}"
        ) from None


def describe(spec: dict[str, Any]) -> str:
    if not spec:
        return "an unknown network"
    stride = f", output stride {spec['output_stride']}" if "output_stride" in spec else ""
    args = f", args {spec['args']}" if spec.get("args") else ""
    return (
        f"{spec.get('name')} (width {spec.get('width')}, {spec.get('num_classes')} classes"
        f"{stride}{args})"
    )
