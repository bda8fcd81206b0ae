"""The shipped domain-adapted teachers of the embedded benchmark, one per scenario.

In DAKD the teacher is an *input*: the paper adapts it once and distils from it, and what a
study varies is the student side. The embedded benchmark does the same: ``python -m dakd
pretrain --teacher-da SCENARIO`` trains the teacher-DA stage of ``configs/embedded.yaml`` for
``SCENARIO`` with :data:`RECIPE` (source labels and target images only: no target label is
read, and no checkpoint is picked by its target score, as in unsupervised domain adaptation),
and writes the final weight average to ``weights/embedded/teacher_da-SCENARIO.pt`` with an
entry in the ``manifest.json`` beside it (sha256, network, scenario, recipe, command, steps,
wall time, threads, torch, renderer version, the target-val mIoU of the raw and the averaged
weights at every evaluation). A spec names the file in ``teacher:``.

Why an average: adversarial alignment swings by about +-2.5 mIoU from one evaluation to the
next, so the last iterate of a teacher-DA run is a draw from that band, and a longer schedule
alone does not help. An exponential moving average of the weights (``train.ema_decay``, torch's
``AveragedModel``) holds steady; the measurements behind the recipe are in
``docs/history/benchmark.md``.

The run is the trainer itself, so it resumes from ``WORK/teacher_da-SCENARIO/last.pt`` and is
deterministic for a given thread count. Weights are stored in float16 (half the bytes; the
manifest records the mIoU of the stored weights next to the float32 ones).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dakd.config import SCENARIOS, ConfigError, ExperimentConfig, load_config
from dakd.models import checkpoint as ckpt
from dakd.models.pretrained import MANIFEST, SHIPPED_DIR, network_of, sha256, teacher_file
from dakd.recipes.pretrain import machine

#: The recipe of the shipped teachers (dotted overrides of ``configs/embedded.yaml``).
RECIPE: dict[str, Any] = {
    "train.steps": 1000,
    "train.eval_interval": 100,
    "train.ema_decay": 0.998,
    # mean-teacher self-training on target images from step 300: the average's confident
    # argmax, class-balanced (docs/history/benchmark.md, revision 4)
    "train.self_training": 1.0,
    "train.self_training_threshold": 0.9,
    "train.self_training_class_share": 0.5,
    "train.self_training_start": 300,
    "train.self_training_refresh": 1,
    "train.threads": 1,
    "seed": 0,
}


def recipe_config(
    scenario: str,
    config_path: str | Path | None = "configs/embedded.yaml",
    overrides: Sequence[str] = (),
    work_dir: str | Path = "runs/pretrain",
) -> ExperimentConfig:
    """The teacher-DA run that makes ``scenario``'s shipped teacher."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"--teacher-da: {scenario!r} is not one of {', '.join(SCENARIOS)}")
    fixed = ["stage=teacher_da", "teacher=", "init=", f"data.scenario={scenario}"]
    recipe = [f"{k}={v}" for k, v in RECIPE.items()]
    cfg = load_config(config_path, [*recipe, *overrides, *fixed])
    cfg.out_dir = str(work_dir)
    cfg.name = f"teacher_da-{scenario}"
    return cfg


def _recipe_of(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config less what does not decide its weights (where it writes, its progress);
    keys added since it was written read as their defaults, keys renamed since by their
    current names."""
    from dakd.config import current_tree, from_dict

    config = from_dict(current_tree(config, note=False)).to_dict()
    out = {k: v for k, v in config.items() if k not in ("name", "out_dir")}
    out["train"] = {k: v for k, v in config.get("train", {}).items() if k != "progress"}
    return out


def _wall(cfg: ExperimentConfig, add: float = 0.0) -> float:
    """Seconds spent training this teacher over all of its (resumed) calls."""
    path = cfg.run_dir / "wall_seconds.json"
    seconds = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
    if add:
        seconds += add
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seconds": seconds}))
    return seconds


def make_teacher(
    scenario: str,
    config_path: str | Path | None = "configs/embedded.yaml",
    overrides: Sequence[str] = (),
    out_dir: str | Path = SHIPPED_DIR,
    work_dir: str | Path = "runs/pretrain",
    command: str = "",
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train (or resume) ``scenario``'s teacher and write it with its manifest entry.

    Returns the manifest entry, or None when ``stop_after`` ended the call before the last step.
    """
    from dakd.engine.trainer import train

    cfg = recipe_config(scenario, config_path, overrides, work_dir)
    last = cfg.run_dir / "last.pt"
    if last.exists():
        before = ckpt.load(last).get("config", {})
        if _recipe_of(before) != _recipe_of(cfg.to_dict()):
            raise ckpt.CheckpointError(
                f"{last} is a teacher-DA run with another recipe; remove {cfg.run_dir} to start "
                "again"
            )
        log(f"{cfg.name}: resuming from {last}")
    tic = time.perf_counter()
    result = train(cfg, stop_after=stop_after)
    seconds = _wall(cfg, time.perf_counter() - tic)
    if int(result.metrics.get("step", 0)) < cfg.train.steps:
        return None
    return write_teacher(cfg, Path(out_dir), seconds, command)


#: Steps of the recipe whose weights the manifest records a digest of: retraining with the
#: documented command must reproduce them (tests/test_da_teacher.py checks the shipped files).
CHECK_STEPS = 2


def first_steps_digest(cfg: ExperimentConfig, steps: int = CHECK_STEPS) -> str:
    """sha256 of the raw weights after the first ``steps`` steps of the run ``cfg`` (trained in
    a temporary folder, scenes rendered on the fly: the same pixels as the split cache)."""
    import hashlib
    import tempfile

    from dakd.config import from_dict
    from dakd.engine.trainer import train

    with tempfile.TemporaryDirectory() as folder:
        probe = from_dict(
            cfg.to_dict(),
            {"out_dir": folder, "data.cache_dir": "", "train.progress": False},
        )
        probe.name = "probe"
        train(probe, stop_after=steps)
        state = ckpt.load(probe.run_dir / "last.pt")
    digest = hashlib.sha256()
    for name in sorted(state["model"]):
        tensor = state["model"][name].contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _stored_miou(cfg: ExperimentConfig, weights: dict[str, torch.Tensor]) -> float:
    """Target val mIoU (%) of the network with ``weights`` (the float16 file's, in float32)."""
    from dakd.evaluation.run_metrics import evaluate_on
    from dakd.runtime.builders import build_network, spec_of, val_dataset

    spec = spec_of(cfg.models.teacher)
    model = build_network(spec)
    ckpt.load_network(model, {"network": spec, "model": weights}, spec, "the stored teacher")
    device = torch.device("cpu")
    return 100.0 * evaluate_on(model, val_dataset(cfg), cfg, device).miou


def write_teacher(
    cfg: ExperimentConfig, out_dir: Path, seconds: float, command: str
) -> dict[str, Any]:
    """Store a finished teacher-DA run's final (averaged) weights in float16 and record them."""
    from filelock import FileLock

    from dakd.data.scenes import renderer_version
    from dakd.runtime.builders import spec_of

    final = ckpt.load(cfg.run_dir / "model.pt")
    half = {k: v.half() if v.is_floating_point() else v for k, v in final["model"].items()}
    scenario = cfg.data.scenario
    path = out_dir / teacher_file(scenario)
    spec = spec_of(cfg.models.teacher)
    # the recipe as it decides the weights: not the folder this run happened to write to
    recorded = {**cfg.to_dict(), "out_dir": ExperimentConfig().out_dir}
    ckpt.save(
        {
            "network": spec,
            "stage": "teacher_da",
            "scenario": scenario,
            "config": recorded,
            "step": final["step"],
            "model": half,
        },
        path,
    )
    history = [
        {k: row[k] for k in ("step", "miou", "raw/miou", "loss/seg") if k in row}
        for row in ckpt.load(cfg.run_dir / "last.pt")["history"]
    ]
    entry = {
        "network": network_of(cfg.models.teacher),
        "stage": "teacher_da",
        "scenario": scenario,
        "domains": list(cfg.domains),
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "dtype": "float16",
        "parameters": int(final.get("parameters", 0)),
        "renderer": renderer_version(),
        "steps": cfg.train.steps,
        "recipe": {**RECIPE, "config": "configs/embedded.yaml"},
        "config": recorded,
        "wall_seconds": round(seconds, 1),
        "threads": cfg.train.threads,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # the same torch and kernels on another machine gave other last bits (measured)
        "cpu": machine()["cpu"],
        "first_steps": {"steps": CHECK_STEPS, "sha256": first_steps_digest(cfg)},
        "history": history,
        "target_miou": {
            "float32": float(final["metrics"]["miou"]),
            "stored": _stored_miou(cfg, half),
        },
        "command": command,
    }
    with FileLock(str(out_dir / MANIFEST) + ".lock"):
        manifest_path = out_dir / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        manifest[path.name] = entry
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    Path(str(out_dir / MANIFEST) + ".lock").unlink(missing_ok=True)
    return entry
