"""Measured step times, what the planner costs a sweep with.

``bench/gpu_step.py`` measures the DAKD step of a recipe (networks, batch, crops) on one device
in named speed settings and records each figure in ``step_times.json`` beside this module; the
dry run of a sweep (:mod:`dakd.sweep.driver.cost`) reads the figure of the spec's recipe and setting
on the GPU kind it plans for. A figure says where it comes from (device, torch, date, note);
nothing here is invented: a recipe never measured has no figure, and the plan says so.

Torch-free: the planner reads it before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: The file of figures, shipped with the package.
STEP_TIMES = Path(__file__).with_name("step_times.json")

_FAST = {"deterministic": False, "cudnn_benchmark": True}
_PLAIN = {"amp": "fp32", "channels_last": False, "compile": False}
#: Named speed settings: the ``train.*`` switches each pins. ``default`` pins nothing (it
#: measures what the config's defaults resolve to on the device; the planner never picks it).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "exact": {"deterministic": True, "cudnn_benchmark": False, **_PLAIN},
    "fast": {**_FAST, **_PLAIN},
    "bf16": {**_FAST, "amp": "bf16", "channels_last": True, "compile": False},
    "compile": {**_FAST, "amp": "bf16", "channels_last": True, "compile": True},
}


def setting_overrides(setting: str) -> list[str]:
    """The ``--set`` overrides of a named setting (``train.amp=bf16``, ...)."""
    return [
        f"train.{k}={json.dumps(v) if isinstance(v, bool) else v}"
        for k, v in SETTINGS[setting].items()
    ]


#: What each ``auto`` switch resolves to on a CUDA GPU (with bfloat16): the fast path.
CUDA_AUTO = {"deterministic": False, "amp": "bf16", "channels_last": True, "cudnn_benchmark": True}


def setting_of(train) -> str:
    """The named setting a GPU run of a ``train`` section is in, its ``auto`` switches as they
    resolve on a CUDA GPU (``""``: none of them)."""
    values = {
        k: CUDA_AUTO[k] if getattr(train, k) == "auto" and k in CUDA_AUTO else getattr(train, k)
        for k in SETTINGS["exact"]
    }
    for name, pinned in SETTINGS.items():
        if pinned and all(values[k] == v for k, v in pinned.items()):
            return name
    return ""


def recipe_of(cfg) -> str:
    """What a DAKD step's cost depends on besides the device and setting: the two networks,
    the images a step (per domain) and the crops, e.g. ``drn_d_38 w1 -> drn_d_22 w1, 2+2
    images, source 512x1024, target 512x1024``."""
    t, s, d = cfg.models.teacher, cfg.models.student, cfg.data
    real = d.dataset == "real"
    crop = d.source_crop if real else d.crop_size
    target = d.target_crop if real else d.crop_size
    return (
        f"{t.name} w{t.width:g} -> {s.name} w{s.width:g}, {d.batch_size}+{d.batch_size} images, "
        f"source {crop[0]}x{crop[1]}, target {target[0]}x{target[1]}"
    )


@dataclass
class StepTime:
    """One measured figure: the DAKD step of ``recipe`` in ``setting`` on ``device``."""

    device: str  # the GPU's name as torch gives it (``NVIDIA H200``), or ``cpu``
    recipe: str  # :func:`recipe_of`
    setting: str  # a key of :data:`SETTINGS`
    step_ms: float  # live teacher
    cached_step_ms: float | None = None  # reading the teacher-output cache
    torch: str = ""
    date: str = ""
    note: str = ""

    def source(self) -> str:
        parts = [p for p in (self.torch and f"torch {self.torch}", self.date, self.note) if p]
        return f"{self.device}, measured by bench/gpu_step.py" + (
            f" ({'; '.join(parts)})" if parts else ""
        )


def load(path: Path = STEP_TIMES) -> list[StepTime]:
    """Every recorded figure (none when the file is missing)."""
    try:
        rows = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return []
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err}); remake it with bench/gpu_step.py") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of step times, got {type(rows).__name__}")
    return [StepTime(**row) for row in rows]


def record(figure: StepTime, path: Path = STEP_TIMES) -> None:
    """Add ``figure``, replacing the one of the same device, recipe and setting."""
    key = (figure.device, figure.recipe, figure.setting)
    rows = [f for f in load(path) if (f.device, f.recipe, f.setting) != key] + [figure]
    rows.sort(key=lambda f: (f.recipe, f.device, f.setting))
    tmp = Path(path).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([asdict(f) for f in rows], indent=1) + "\n")
    tmp.replace(path)


def find(recipe: str, setting: str, device: str = "", figures=None) -> tuple[StepTime | None, str]:
    """The figure for ``recipe`` in ``setting`` on ``device`` (any device when ""), and why
    none when there is none. With several devices measured and none named, the fastest is
    not guessed: the slowest is taken (a plan should not promise too little) and said."""
    figures = load() if figures is None else figures
    same = [f for f in figures if f.recipe == recipe and f.setting == setting]
    if device:
        exact = [f for f in same if f.device == device]
        if exact:
            return exact[0], ""
        have = sorted({f.device for f in same})
        return None, (
            f"no step time measured on {device} for this recipe and setting"
            + (f" (measured on: {', '.join(have)})" if have else "")
        )
    if not same:
        settings = sorted({f.setting for f in figures if f.recipe == recipe})
        why = f"no step time measured for {recipe} in setting {setting or 'custom'}"
        return None, why + (f" (measured settings: {', '.join(settings)})" if settings else "")
    return max(same, key=lambda f: f.step_ms), ""
