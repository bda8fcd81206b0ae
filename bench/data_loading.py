"""How long a training step waits for real-dataset batches: built in the loop against built
ahead in background threads (``data.prefetch``), side by side in one run.

The paper's recipe reads full-size PNGs every step (GTA5 1052x1914 resized to 720x1280 and
cropped to 512x1024, Cityscapes 1024x2048 resized to 512x1024; 2 source + 2 target images).
No dataset ships with the project, so the benchmark writes a few pairs of each at those sizes
in the published layouts (random pixels: they compress worse than photographs, so decoding
here is, if anything, slower than on the real files). The accelerator step is simulated by
sleeping ``--step-ms`` (a GPU step leaves the CPU free for the loader); on the CPU the step
itself would take the cores the threads decode on.

    uv run python bench/data_loading.py [--step-ms 150] [--steps 12] [--prefetch 4]

Printed: the data wait per step (time the loop blocks on ``batch()``), steps per second with
each, and their ratio. Target: with prefetching the step waits for data at most 10% of the
simulated step time (the loader keeps up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dakd.config import load_config  # noqa: E402
from dakd.runtime.builders import build_data  # noqa: E402
from tests import realdata  # noqa: E402  (the fixture-tree writers of the test suite)

SIZES = {"gta5": (1052, 1914), "cityscapes": (1024, 2048)}


def run(cfg, steps: int, step_s: float) -> tuple[float, list[float]]:
    """Wall time of ``steps`` simulated steps and the data wait of each (the first step, which
    nothing could have built ahead, is left out of the waits)."""
    source, target, _ = build_data(cfg)
    waits = []
    try:
        tic = time.perf_counter()
        for step in range(steps):
            start = time.perf_counter()
            source.batch(step)
            target.batch(step)
            waits.append(time.perf_counter() - start)
            time.sleep(step_s)  # the accelerator's step
        wall = time.perf_counter() - tic
    finally:
        for stream in (source, target):
            if hasattr(stream, "close"):
                stream.close()
    return wall, waits[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step-ms", type=float, default=150.0, help="simulated step (ms)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=6, help="pairs written per dataset")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dakd-bench-data-") as tmp:
        root = Path(tmp)
        tic = time.perf_counter()
        for name, size in SIZES.items():
            realdata.write(name, root / name, train=args.pairs, val=1, size=size)
        print(f"wrote {args.pairs} pairs of gta5 and cityscapes at full size in "
              f"{time.perf_counter() - tic:.1f} s", flush=True)  # fmt: skip
        base = [
            "stage=source_only",
            "data.dataset=real",
            "data.source=gta5",
            "data.target=cityscapes",
            f"data.source_root={root / 'gta5'}",
            f"data.target_root={root / 'cityscapes'}",
            "data.batch_size=2",
            "data.hflip=false",
            "data.check_sample=0",
            f"train.steps={args.steps}",
            f"train.threads={os.cpu_count() or 1}",
        ]
        step_s = args.step_ms / 1000
        rows = {}
        for label, depth in (("in the loop", 0), (f"{args.prefetch} ahead", args.prefetch)):
            cfg = load_config(None, [*base, f"data.prefetch={depth}"])
            wall, waits = run(cfg, args.steps, step_s)
            rows[label] = (wall, statistics.fmean(waits), args.steps / wall)
            print(f"  {label}: {wall:.1f} s for {args.steps} steps", flush=True)

    loop, ahead = rows["in the loop"], rows[f"{args.prefetch} ahead"]
    print()
    print(f"GTA5 -> Cityscapes at the paper's sizes, 2 + 2 images a step, simulated step "
          f"{args.step_ms:.0f} ms, {os.cpu_count()} CPU(s)")  # fmt: skip
    print(f"{'':32}{'in the loop':>14}{f'{args.prefetch} ahead':>14}")
    print(f"{'data wait per step (ms)':32}{1000 * loop[1]:>14.0f}{1000 * ahead[1]:>14.0f}")
    print(f"{'wait / step time':32}{loop[1] / step_s:>14.2f}{ahead[1] / step_s:>14.2f}"
          "   (target with prefetching <= 0.10)")  # fmt: skip
    print(f"{'steps per second':32}{loop[2]:>14.2f}{ahead[2]:>14.2f}")
    print(f"speed-up from prefetching: {ahead[2] / loop[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
