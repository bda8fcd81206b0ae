"""Backbone weights from a local file (``models.<network>.pretrained``), matched by name and shape.

The file is read with ``torch.load(weights_only=True)``; it may hold a plain state dict (an
ImageNet DRN or torchvision ResNet file), one under ``state_dict`` or ``model`` (a dakd
checkpoint), with or without DataParallel's ``module.`` prefix. A tensor named ``k`` in the file
goes to the network's ``k`` or, for classifier-form files, to ``encoder.k`` (where the
segmenters keep their backbone), when the shapes agree. What matched, what the network kept
from its own initialisation, what the file had in excess and what had another shape is
reported; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dakd.checkpoint import CheckpointError

#: Buffers that count BatchNorm updates: not weights, so never reported as missing.
_COUNTERS = "num_batches_tracked"


@dataclass
class PretrainedReport:
    """How a weights file matched a network: names loaded, left at their initialisation
    (``missing``), unused in the file (``unexpected``), and ``(name, file shape, network shape)``
    of tensors whose shapes differ (not loaded)."""

    key: str
    path: str
    total: int
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def __str__(self) -> str:
        def some(names: list[str]) -> str:
            shown = ", ".join(names[:4])
            return f" ({shown}{', ...' if len(names) > 4 else ''})" if names else ""

        shapes = [f"{n} {list(a)} vs {list(b)}" for n, a, b in self.mismatched]
        return (
            f"{self.key}: {self.path}: loaded {len(self.matched)} of the network's "
            f"{self.total} tensors; {len(self.missing)} not in the file{some(self.missing)}; "
            f"{len(self.unexpected)} in the file unused{some(self.unexpected)}; "
            f"{len(self.mismatched)} with another shape{some(shapes)}"
        )


def _state_dict(data, key: str, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]  # a dakd checkpoint
    elif isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{key}: {path} holds no state dict of tensors")
    return {
        (name[len("module.") :] if name.startswith("module.") else name): tensor
        for name, tensor in data.items()
        if isinstance(tensor, torch.Tensor)
    }


def load_pretrained(model: nn.Module, path: str | Path, key: str) -> PretrainedReport:
    """Load the tensors of ``path`` that fit ``model`` (by name and shape); return the report.

    ``key`` names the config key in errors: a missing or unreadable file, or one of which no
    tensor fits, raises :class:`~dakd.checkpoint.CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{key}: {path} does not exist (backbone weights are read from a local file; "
            "nothing is downloaded)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the same thing here
        raise CheckpointError(
            f"{key}: {path} cannot be read ({type(err).__name__}: {err})"
        ) from None
    weights = _state_dict(data, key, path)
    own = model.state_dict()
    report = PretrainedReport(key, str(path), total=sum(not k.endswith(_COUNTERS) for k in own))
    chosen: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        target = next((c for c in (name, f"encoder.{name}") if c in own), None)
        if target is None:
            report.unexpected.append(name)
        elif own[target].shape != tensor.shape:
            report.mismatched.append((target, tuple(tensor.shape), tuple(own[target].shape)))
        else:
            chosen[target] = tensor
    report.matched = [k for k in chosen if not k.endswith(_COUNTERS)]
    if not report.matched:
        raise CheckpointError(f"no tensor fits the network: {report}")
    model.load_state_dict(chosen, strict=False)
    report.missing = [k for k in own if k not in chosen and not k.endswith(_COUNTERS)]
    return report
