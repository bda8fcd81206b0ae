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

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dakd.config.build import ConfigError
from dakd.config.weights import check_published
from dakd.models.checkpoint import CheckpointError
from dakd.paradigms import AUTO

MANIFEST = "manifest.json"
"""Name of the file beside shipped weights that records each file's sha256 and network."""

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


#: Where the shipped teachers live, relative to the project root.
SHIPPED_DIR = "weights/embedded"


def teacher_file(scenario: str) -> str:
    """File name of a scenario's shipped teacher, e.g. ``teacher_da-synth_to_real.pt``."""
    return f"teacher_da-{scenario}.pt"


def shipped_dir() -> Path:
    """The folder of the shipped weights: in this clone, or in the installed package."""
    from dakd.models.shipped import shipped_root

    return shipped_root() / SHIPPED_DIR


def shipped_backbone(model, folder: Path | None = None) -> Path | None:
    """The shipped backbone weights of ``model`` (a ``models.<network>`` config): a file in the
    shipped folder's manifest pretrained for the same network name and width, of the same output
    stride when there is one (the encoder does not depend on it); None when none is shipped."""
    folder = folder or shipped_dir()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    found = []
    for name, entry in sorted(manifest.items()):
        network = entry.get("network") if isinstance(entry, dict) else None
        if entry.get("stage") or not isinstance(network, dict):
            continue  # a domain-adapted teacher, not a backbone
        if network.get("name") == model.name and network.get("width") == float(model.width):
            found.append((network.get("output_stride") != model.output_stride, name))
    return folder / min(found)[1] if found else None


def resolve_pretrained(model) -> str:
    """The weights file a ``models.<network>`` config starts from: its ``pretrained`` file, the
    shipped backbone for ``auto`` (:func:`shipped_backbone`; "" when none is shipped: random
    initialisation), or ""."""
    if model.pretrained != AUTO:
        return model.pretrained
    path = shipped_backbone(model)
    return str(path) if path is not None else ""


def no_shipped(model, key: str) -> str:
    """The note of a network that ``auto`` found no shipped weights for."""
    return (
        f"{key}: no shipped weights for {model.name} width {model.width:g}: it starts from "
        "random initialisation"
    )


def network_of(model) -> dict[str, Any]:
    """The architecture a weights file is made for, from a ``models.<network>`` config."""
    return {"name": model.name, "width": float(model.width), "output_stride": model.output_stride}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_entry(path: str | Path) -> dict[str, Any] | None:
    """The manifest entry of a weights file (from ``manifest.json`` beside it), or None when
    the folder has no manifest (e.g. ImageNet weights)."""
    path = Path(path)
    manifest_path = path.parent / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{manifest_path} cannot be read: {err}") from None
    if not isinstance(manifest, dict) or path.name not in manifest:
        raise CheckpointError(
            f"{path}: not listed in {manifest_path} (a weights file beside a manifest must be "
            "one it describes)"
        )
    return manifest[path.name]


def check_manifest(
    path: str | Path, network: dict[str, Any] | None, key: str, backbone: bool = False
) -> dict[str, Any] | None:
    """Refuse a weights file that does not match its manifest: another sha256 (changed or
    corrupt) or another architecture than ``network`` (:func:`network_of`; with ``backbone``,
    the encoder's: name and width, any output stride). Returns the entry (None: the folder
    has no manifest)."""
    entry = manifest_entry(path)
    if entry is None:
        return None
    found = sha256(Path(path))
    if found != entry.get("sha256"):
        raise CheckpointError(
            f"{key}: {path} does not match its manifest (sha256 {found[:12]}..., manifest "
            f"{str(entry.get('sha256'))[:12]}...): the file is corrupt or was changed; "
            "restore it (git checkout) or remake it with python -m dakd pretrain"
        )
    wanted = network
    found_network = entry.get("network")
    if backbone and isinstance(found_network, dict) and wanted is not None:
        # the encoder does not depend on the output stride (only the decoder does)
        found_network = {k: v for k, v in found_network.items() if k != "output_stride"}
        wanted = {k: v for k, v in wanted.items() if k != "output_stride"}
    if wanted is not None and found_network != wanted:
        raise CheckpointError(
            f"{key}: {path} holds weights for {entry.get('network')}, not for {wanted}"
        )
    return entry


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


def load_pretrained(
    model: nn.Module, path: str | Path, key: str, network: dict[str, Any] | None = None
) -> PretrainedReport:
    """Load the tensors of ``path`` that fit ``model`` (by name and shape); return the report.

    ``key`` names the config key in errors: a missing or unreadable file, a file that does not
    match the ``manifest.json`` beside it (its sha256 always, ``network`` when given), and one that
    leaves any encoder tensor of ``model`` at its random initialisation (absent from the file
    or of another shape: weights of another architecture) raise
    :class:`~dakd.models.checkpoint.CheckpointError`. Heads and a decoder may be absent (ImageNet files
    have neither); they keep their initialisation and the report lists them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{key}: {path} does not exist (backbone weights are read from a local file; "
            "nothing is downloaded)"
        )
    check_manifest(path, network, key, backbone=True)
    try:
        check_published(path, key)  # a published file's name gives its sha256's first digits
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
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
    report.missing = [k for k in own if k not in chosen and not k.endswith(_COUNTERS)]
    unfilled = [k for k in report.missing if k.startswith("encoder.")]
    if unfilled:
        raise CheckpointError(
            f"{key}: {path} leaves {len(unfilled)} encoder tensors at their random "
            f"initialisation (weights of another architecture or width?): {report}"
        )
    model.load_state_dict(chosen, strict=False)
    return report
