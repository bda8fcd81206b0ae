"""Pretraining of the embedded benchmark's backbones: the ImageNet analogue.

Every UDA pipeline on real data starts from ImageNet weights; from random weights a larger
network fits the source domain's low-level cues harder and transfers worse, so the teacher's
capacity never shows on the target. ``python -m dakd pretrain`` trains the embedded networks,
supervised, on a family of scenes that is neither source nor target: the ``randomized``
domain of :mod:`dakd.data.scenes` (a new palette, texture, lighting, weather, sensor and camera
per scene), with a proxy label set, the 7 Cityscapes categories (flat, construction, object,
nature, sky, human, vehicle), not the 19 evaluated classes.

The loop is the trainer's segmentation recipe in a few lines: SGD with poly decay, pixel
cross-entropy on the output level plus 0.1 x on the feature level, batches a pure function of
(seed, step), deterministic on CPU for a given thread count, resumable from ``last.pt``. The
encoder and decoder weights (the proxy heads are dropped) go to ``OUT/<file>.pt`` and an entry
in ``OUT/manifest.json``: sha256, network, command, steps, wall time, thread count, renderer
version and the proxy-task mIoU over the run. ``models.<network>.pretrained`` reads them, and
:func:`dakd.models.pretrained.check_manifest` refuses a file that does not match its entry.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dakd import losses
from dakd.config import ModelConfig
from dakd.data.labels import CATEGORY_NAMES, TRAINID_TO_CATEGORY
from dakd.data.loader import StepSampler, eval_batches
from dakd.data.scenes import PRETRAIN_DOMAIN, SceneDataset, renderer_version
from dakd.evaluation.segmentation import evaluate
from dakd.models import checkpoint as ckpt
from dakd.models import create_model
from dakd.models.pretrained import MANIFEST, network_of, sha256

#: Name prefixes of the proxy-task heads, left out of the shipped weights.
HEADS = ("feature_head.", "output_head.")


@dataclass
class PretrainConfig:
    """The pretraining recipe (``python -m dakd pretrain --help`` names each option)."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    aux_weight: float = 0.1
    eval_interval: int = 500
    seed: int = 0
    threads: int = 1
    size: tuple[int, int] = (64, 128)
    scene_seed: int = 0
    cache_dir: str = "runs/cache/scenes"
    work_dir: str = "runs/pretrain"


class CategoryScenes(torch.utils.data.Dataset):
    """A split of the pretraining family with labels mapped to the 7 categories."""

    def __init__(self, split: str, cfg: PretrainConfig):
        self.scenes = SceneDataset(
            PRETRAIN_DOMAIN,
            split,
            seed=cfg.scene_seed,
            size=tuple(cfg.size),
            cache_dir=cfg.cache_dir or None,
        )
        self._lut = torch.from_numpy(TRAINID_TO_CATEGORY.astype(np.int64))

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.scenes[index]
        return {"image": item["image"], "label": self._lut[item["label"]]}


def weights_name(model: ModelConfig) -> str:
    """File name of a network's pretrained weights, e.g. ``drn_d_22-w0.125-os2.pt``."""
    return f"{model.name}-w{model.width:g}-os{model.output_stride}.pt"


def _recipe(cfg: PretrainConfig) -> dict[str, Any]:
    """What decides the weights, as plain data (the local folders do not)."""
    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()}
    del recipe["work_dir"], recipe["cache_dir"]
    return recipe


def _resume(last: Path, recipe, model_cfg: ModelConfig, model, optimizer):
    """Step, history and seconds of a pretraining run, from ``last`` when it exists (the same
    recipe and network only: the weights, optimiser and random stream are restored)."""
    if not last.exists():
        return 0, [], 0.0
    state = ckpt.load(last)
    if state.get("recipe") != recipe or state.get("network") != network_of(model_cfg):
        raise ckpt.CheckpointError(
            f"{last} is a pretraining run with another recipe or network; remove "
            f"{last.parent} to start again"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["history"]), state["seconds"]


def _proxy_step(model, optimizer, batch, cfg: PretrainConfig, step: int, name: str):
    """One SGD step on the proxy labels (both levels, poly learning rate); the total loss."""
    lr = cfg.lr * (1 - step / cfg.steps) ** cfg.poly_power
    for group in optimizer.param_groups:
        group["lr"] = lr
    out = model(batch["image"])
    size = batch["image"].shape[-2:]
    loss = losses.seg_ce(losses.upsample(out["output"], size), batch["label"])
    aux = losses.seg_ce(losses.upsample(out["feature"], size), batch["label"])
    total = loss + cfg.aux_weight * aux
    if not math.isfinite(total.item()):
        raise FloatingPointError(f"pretraining {name}: loss not finite at step {step}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return total


def pretrain(
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    out_dir: Path,
    command: str = "",
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Pretrain one network on the proxy task; write its weights and manifest entry.

    Resumes from ``work_dir/<file stem>/last.pt`` when it exists (same recipe). ``stop_after``
    ends the call after that many steps (the state is saved; used to test resumption).
    Returns the manifest entry (``None`` values before the last step).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    name = weights_name(model_cfg)
    work = Path(cfg.work_dir) / Path(name).stem
    last = work / "last.pt"
    model = create_model(
        model_cfg.name,
        num_classes=len(CATEGORY_NAMES),
        width=model_cfg.width,
        output_stride=model_cfg.output_stride,
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    recipe = _recipe(cfg)
    step, history, seconds = _resume(last, recipe, model_cfg, model, optimizer)
    if step:
        log(f"{name}: resuming at step {step}")
    train_set, val_set = CategoryScenes("train", cfg), CategoryScenes("val", cfg)
    sampler = StepSampler(train_set, cfg.batch_size, cfg.seed, "pretrain", hflip=True)
    stop = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {name}", dynamic_ncols=True)

    def save_state() -> None:
        state = {
            "network": network_of(model_cfg),
            "recipe": recipe,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "seconds": seconds,
        }
        ckpt.save(state, last)

    model.train()
    try:
        while step < stop:
            tic = time.perf_counter()
            total = _proxy_step(model, optimizer, sampler.batch(step), cfg, step, name)
            step += 1
            seconds += time.perf_counter() - tic
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{total.item():.3f}", refresh=False)
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                result = evaluate(model, eval_batches(val_set, 50), num_classes=len(CATEGORY_NAMES))
                model.train()
                history.append({"step": step, "loss": total.item(), "miou": 100 * result.miou})
                bar.write(f"{name}: step {step} proxy mIoU {100 * result.miou:.1f}")
                save_state()
    finally:
        bar.close()
    if step < cfg.steps:
        save_state()
        return {"step": step, "sha256": None}
    return write_weights(model, model_cfg, out_dir, cfg, history, seconds, command)


def write_weights(model, model_cfg, out_dir, cfg, history, seconds, command) -> dict[str, Any]:
    """Save the encoder and decoder of a pretrained network and record it in the manifest."""
    out_dir = Path(out_dir)
    name = weights_name(model_cfg)
    weights = {k: v for k, v in model.state_dict().items() if not k.startswith(HEADS)}
    path = ckpt.save({"network": network_of(model_cfg), "model": weights}, out_dir / name)
    entry = {
        "network": network_of(model_cfg),
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "parameters": sum(v.numel() for k, v in weights.items() if v.is_floating_point()),
        "renderer": renderer_version(),
        "proxy_task": f"{len(CATEGORY_NAMES)} Cityscapes categories on '{PRETRAIN_DOMAIN}' scenes",
        "steps": cfg.steps,
        "recipe": _recipe(cfg),
        "wall_seconds": round(seconds, 1),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "history": history,
        "command": command,
    }
    manifest_path = out_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry


def machine() -> dict[str, Any]:
    """What a number measured here depends on: CPU, core count, torch, its CPU kernels."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if names:
            cpu = names[0].split(":", 1)[1].strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def command_line() -> str:
    return "python -m dakd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
