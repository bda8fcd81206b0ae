"""Time per DAKD training step: the trainer against a minimal hand-written loop, side by side.

Both run the same models (same initial weights), the same losses and the same batches, on the
embedded default (configs/embedded.yaml, stage dakd, paradigm c). Blocks of steps alternate
between the two so that machine noise hits both alike. Also measures the scene generator's
throughput against what training consumes.

    uv run python bench/train_step.py [--steps 20] [--repeats 3] [--set key=value ...]

Targets: trainer / hand loop <= 1.10; generation / consumption >= 10.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dakd import losses  # noqa: E402
from dakd.config import load_config  # noqa: E402
from dakd.data.scenes import render_scene  # noqa: E402
from dakd.engine.state import TrainState  # noqa: E402
from dakd.models import checkpoint as ckpt  # noqa: E402
from dakd.paradigms import LEVELS  # noqa: E402
from dakd.runtime.builders import build_network, spec_of  # noqa: E402


def hand_loop(trainer: TrainState, batches, steps: int) -> float:
    """The DAKD step written out plainly: no schedule, no logging, no checks. Returns seconds."""
    cfg = trainer.cfg
    lw = cfg.loss
    model, teacher, discs = trainer.model, trainer.teacher, trainer.discriminators
    opt, d_opt = trainer.optimizer, trainer.d_optimizer
    weights = {"kl": lw.kl, "mse": lw.mse, "pseudo": lw.pseudo}
    levels = cfg.distill.levels

    def up(out, size):
        return {
            k: F.interpolate(v, size=size, mode="bilinear", align_corners=False)
            for k, v in out.items()
        }

    synchronize(trainer.device)
    tic = time.perf_counter()
    for i in range(steps):
        src, tgt = batches[i % len(batches)]
        # onto the trainer's device and memory format, as the trainer's step moves its batches
        src_image, tgt_image = trainer.images(src), trainer.images(tgt)
        src_label = src["label"].to(trainer.device)
        size = src_image.shape[-2:]
        ps = up(model(src_image), size)
        pt = up(model(tgt_image), size)
        with torch.no_grad():
            ts = up(teacher(src_image), size)
            tt = up(teacher(tgt_image), size)
        loss = losses.seg_ce(ps["output"], src_label) + lw.seg_aux * losses.seg_ce(
            ps["feature"], src_label
        )
        discs.requires_grad_(False)
        loss = loss + lw.adv_output * losses.adversarial(
            discs["output"](F.softmax(pt["output"], 1)), True
        )
        loss = loss + lw.adv_feature * losses.adversarial(
            discs["feature"](F.softmax(pt["feature"], 1)), True
        )
        loss = loss + losses.distillation_objective(
            losses.distill_terms(ps, ts, levels),
            losses.distill_terms(pt, tt, levels),
            weights,
            lw.target,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        discs.requires_grad_(True)
        d_opt.zero_grad()
        d_loss = 0.0
        for level in LEVELS:
            d = discs[level]
            d_loss = (
                d_loss
                + (
                    losses.adversarial(d(F.softmax(ps[level].detach(), 1)), True)
                    + losses.adversarial(d(F.softmax(pt[level].detach(), 1)), False)
                )
                / 2
            )
        d_loss.backward()
        d_opt.step()
    synchronize(trainer.device)
    return time.perf_counter() - tic


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that timing is fair."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/embedded.yaml")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per contender")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(args.config, ["stage=student_da", f"out_dir={tmp}", *args.overrides])
        spec = spec_of(base.models.teacher)
        teacher_path = Path(tmp) / "teacher.pt"
        ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, teacher_path)
        cfg = load_config(
            args.config,
            [
                "stage=dakd",
                "paradigm=c",
                f"teacher={teacher_path}",
                f"out_dir={tmp}",
                *args.overrides,
            ],
        )
        trainer = TrainState(cfg)
        hand = copy.deepcopy(trainer)
        n = args.steps
        # the same batches for both; rendering happens here, outside the timed blocks
        batches = [(trainer.source.batch(i), trainer.target.batch(i)) for i in range(n)]
        trainer.train_step()  # warm-up both
        hand_loop(hand, batches, 1)
        trainer.step = 0

        ours, theirs = [], []
        for _ in range(args.repeats):
            synchronize(trainer.device)
            tic = time.perf_counter()
            for _ in range(n):
                trainer.train_step()
            synchronize(trainer.device)
            ours.append((time.perf_counter() - tic) / n)
            trainer.step = 0
            theirs.append(hand_loop(hand, batches, n) / n)
        t_ours, t_hand = statistics.median(ours), statistics.median(theirs)

        domain = cfg.domains[1]
        size = tuple(cfg.data.crop_size)
        count = 200
        tic = time.perf_counter()
        for i in range(count):
            render_scene(domain, "train", i, seed=99, size=size)  # a seed no cache holds
        render_rate = count / (time.perf_counter() - tic)
        served = trainer.target.dataset  # what training reads: the split cache when configured
        tic = time.perf_counter()
        for i in range(2000):
            served[i % len(served)]
        serve_rate = 2000 / (time.perf_counter() - tic)
        consume_rate = 2 * cfg.data.batch_size / t_ours

    print(
        f"config: {args.config} stage dakd (c), batch {cfg.data.batch_size}+{cfg.data.batch_size}, "
        f"{cfg.data.crop_size[0]}x{cfg.data.crop_size[1]}, {torch.get_num_threads()} threads"
    )
    print(f"trainer step     {1000 * t_ours:8.1f} ms   (median of {args.repeats} blocks of {n})")
    print(f"hand-written     {1000 * t_hand:8.1f} ms")
    print(f"ratio trainer/hand = {t_ours / t_hand:.3f}   (target <= 1.10)")
    cached = "split cache" if cfg.data.cache_dir else "memoised after first use"
    print(f"training consumes    {consume_rate:8.0f} images/s")
    print(f"data served ({cached}) {serve_rate:8.0f} images/s")
    print(f"renderer, uncached   {render_rate:8.0f} images/s (one process)")
    print(f"ratio served/consumption   = {serve_rate / consume_rate:.1f}   (target >= 10)")
    print(
        f"ratio renderer/consumption = {render_rate / consume_rate:.1f}   (why splits are cached)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
