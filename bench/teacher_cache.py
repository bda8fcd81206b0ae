"""The teacher-output cache against the live teacher, side by side in one run.

Default (the step): DAKD (c) on the embedded default (configs/embedded.yaml), the same batches
for a trainer reading the cache and one running the teacher, timed in alternating blocks so
that machine noise hits both alike; the cache's build time and size; and the peak memory of a
trial process that trains a few steps each way (a fresh process per contender: CPU RSS, and on
CUDA the peak allocated GPU memory).

    uv run python bench/teacher_cache.py [--steps 20] [--repeats 3] [--set key=value ...]
    uv run python bench/teacher_cache.py --formats     # final mIoU per storage format
    uv run python bench/teacher_cache.py --main-job    # the main job's wall time, off vs auto
    uv run python bench/teacher_cache.py --sizes       # cache sizes of the real datasets

``--formats`` trains DAKD (c) from the calibration's seed-0 stages (one thread, as
``python -m dakd calibrate`` trains them; missing stages are trained first) reading float32,
float16 and top-k caches, next to the live teacher's run. ``--main-job`` runs
``sweeps/loss_weights.yaml`` twice from the same trained stages, ``teacher_cache.mode`` off
and auto (the second builds its caches as stages, inside the timed run).

Target: step ratio cached/live <= 0.6 on the embedded default. The last line reads
``step ratio cached/live = R``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dakd.config import from_dict, load_config  # noqa: E402
from dakd.engine.state import TrainState  # noqa: E402
from dakd.engine.trainer import train  # noqa: E402
from dakd.models import checkpoint as ckpt  # noqa: E402
from dakd.runtime.builders import build_network, spec_of  # noqa: E402
from dakd.tabular import markdown_table  # noqa: E402
from dakd.teacher import cache as tcache  # noqa: E402

#: Real datasets at the paper's recipe (AdaptSegNet's, the real-data specs): training images,
#: the size the cache stores each image at (the resized image), flips off.
REAL = {
    "GTA5 (source)": (24966, (720, 1280)),
    "BDD100K (source)": (7000, (720, 1280)),
    "Cityscapes train (target)": (2975, (512, 1024)),
}


def _configs(args, tmp: Path):
    """The DAKD (c) config of the embedded default with a teacher checkpoint (random weights:
    the step's cost does not depend on them), live and cached."""
    base = load_config(args.config, ["stage=student_da", f"out_dir={tmp}", *args.overrides])
    spec = spec_of(base.models.teacher)
    teacher_path = tmp / "teacher.pt"
    ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, teacher_path)
    common = [
        "stage=dakd",
        "paradigm=c",
        f"teacher={teacher_path}",
        f"out_dir={tmp}",
        f"teacher_cache.dir={tmp / 'cache'}",
        "train.progress=false",
        *args.overrides,
    ]
    live = load_config(args.config, [*common, "teacher_cache.mode=off"])
    cached = load_config(args.config, [*common, "teacher_cache.mode=on"])
    return live, cached


def crop_text(data) -> str:
    """The training crop: ``crop_size`` for the embedded scenes; a real-data config crops by
    ``source_crop`` and ``target_crop`` (``crop_size`` does not apply to it)."""
    if data.dataset != "real":
        return f"{data.crop_size[0]}x{data.crop_size[1]}"
    (sh, sw), (th, tw) = data.source_crop, data.target_crop
    if (sh, sw) == (th, tw):
        return f"{sh}x{sw}"
    return f"{sh}x{sw} (source) / {th}x{tw} (target)"


def _peak_memory(cfg_path: Path, steps: int) -> dict[str, float]:
    """Train ``steps`` steps of the pickled config in a fresh process; its peak memory."""
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from dakd.config import from_dict
from dakd.engine.state import TrainState
cfg = from_dict(json.loads(open({str(cfg_path)!r}).read()))
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
trainer = TrainState(cfg)
trainer.train_step()
setup = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
for _ in range({steps}):
    trainer.train_step()
out = {{"rss_mb": setup, "peak_mb": status("VmHWM:"), "anon_mb": status("RssAnon:"),
       "file_mb": status("RssFile:"), "teacher_resident": trainer.teacher is not None}}
if torch.cuda.is_available():
    out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_bench(args) -> float:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        live_cfg, cached_cfg = _configs(args, tmp)
        tic = time.perf_counter()
        cached = TrainState(cached_cfg)  # builds the cache of both domains
        build = time.perf_counter() - tic
        live = TrainState(live_cfg)
        sizes = {
            role: sum(
                (c.folder / n).stat().st_size for s in c.manifest["shards"] for n in s["files"]
            )
            for role, c in cached.teacher_caches.items()
        }
        n = args.steps
        batches = [(live.source.batch(i), live.target.batch(i)) for i in range(n)]

        for trainer in (live, cached):  # the same batches, built here, outside the timing
            trainer.source.batch = lambda step: batches[step][0]
            trainer.target.batch = lambda step: batches[step][1]

        def block(trainer) -> float:
            trainer.step = 0
            cuda = trainer.device.type == "cuda"  # CUDA runs queued: wait for it around a block
            if cuda:
                torch.cuda.synchronize(trainer.device)
            tic = time.perf_counter()
            for _ in range(n):
                trainer.train_step()
            if cuda:
                torch.cuda.synchronize(trainer.device)
            return (time.perf_counter() - tic) / n

        block(live), block(cached)  # warm-up
        from torch.utils.flop_counter import FlopCounterMode

        flops = {}
        for name, trainer in (("live", live), ("cached", cached)):
            trainer.step = 0
            with FlopCounterMode(display=False) as counter:
                trainer.train_step()
            flops[name] = counter.get_total_flops()
        t_live, t_cached = [], []
        for _ in range(args.repeats):
            t_live.append(block(live))
            t_cached.append(block(cached))
        live_s, cached_s = statistics.median(t_live), statistics.median(t_cached)

        memory = {}
        for name, cfg in (("live", live_cfg), ("cached", cached_cfg)):
            path = tmp / f"{name}.json"
            cfg.name = f"memory-{name}"
            path.write_text(json.dumps(cfg.to_dict()))
            memory[name] = _peak_memory(path, args.memory_steps)
        cfg = cached_cfg
    device = cached.device
    print(
        f"config: {args.config} stage dakd (c), batch {cfg.data.batch_size}+"
        f"{cfg.data.batch_size}, {crop_text(cfg.data)}, "
        f"teacher {cfg.models.teacher.name} x{cfg.models.teacher.width}, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    for role, size in sizes.items():
        entries = cached.teacher_caches[role].entries
        print(f"cache {role}: {entries} entries, {size / 1e6:.0f} MB (float32)")
    print(f"cache build (both domains): {build:.0f} s")
    print(f"live teacher step  {1000 * live_s:8.1f} ms   (median of {args.repeats} blocks of {n})")
    print(f"cached step        {1000 * cached_s:8.1f} ms")
    for name, m in memory.items():
        gpu = f", GPU peak {m['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in m else ""
        print(
            f"memory, {name:6s} trial process: private {m['anon_mb']:.0f} MB, file-backed "
            f"{m['file_mb']:.0f} MB (shared page cache: split arrays, cache shards); RSS peak "
            f"{m['peak_mb']:.0f} MB while training{gpu} (teacher resident: "
            f"{m['teacher_resident']})"
        )
    print(
        f"FLOPs per step (torch.utils.flop_counter): live {flops['live'] / 1e9:.1f} G, cached "
        f"{flops['cached'] / 1e9:.1f} G, ratio {flops['cached'] / flops['live']:.2f}"
    )
    ratio = cached_s / live_s
    return ratio


def formats_bench(args) -> None:
    """Final mIoU of DAKD (c) per storage format, from the calibration's seed-0 stages."""
    from dakd.recipes.calibration import calibration_configs
    from dakd.recipes.stages import run_stage

    base = load_config(
        args.config, ["stage=student_da", "teacher=", "init=", "train.threads=1", *args.overrides]
    )
    builders = calibration_configs(base, 0, base.train.steps, 0)
    done = {}
    for key in ("teacher_da", "student_da"):
        done[key] = run_stage(builders[key](done), log=lambda line: print(line, flush=True))
    rows = [("live teacher", {"teacher_cache.mode": "off"})]
    rows += [
        (f"cache {fmt}", {"teacher_cache.mode": "on", **changes})
        for fmt, changes in (
            ("float32", {}),
            ("float16", {"teacher_cache.dtype": "float16"}),
            (
                f"float16 top-{args.topk}",
                {"teacher_cache.dtype": "float16", "teacher_cache.topk": args.topk},
            ),
        )
    ]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, changes in rows:
            cfg = builders["dakd_c"](done)
            cfg = from_dict(
                cfg.to_dict(),
                {
                    **changes,
                    "out_dir": folder,
                    "teacher_cache.dir": f"{folder}/cache",
                    "train.progress": False,
                },
            )
            cfg.name = name.replace(" ", "_")
            tic = time.perf_counter()
            result = train(cfg)
            seconds = time.perf_counter() - tic
            size = (
                sum(p.stat().st_size for p in Path(folder, "cache").rglob("*.npy"))
                if changes["teacher_cache.mode"] == "on"
                else 0
            )
            weights = ckpt.load(result.checkpoint)["model"]
            results.append((name, result.metrics["miou"], size, seconds, weights))
            for p in Path(folder, "cache").glob("*"):
                if p.is_dir():
                    shutil.rmtree(p)
    live_weights = results[0][4]
    print("DAKD (c), embedded synth_to_real, seed 0, 1 thread, calibration stages")
    header = ["teacher outputs", "cache size", "final mIoU", "vs live", "same weights as live", "s"]
    rows = []
    for name, miou, size, seconds, weights in results:
        same = all(torch.equal(weights[k], live_weights[k]) for k in weights)
        rows.append(
            [
                name,
                f"{size / 1e6:.0f} MB",
                f"{miou:.2f}",
                f"{miou - results[0][1]:+.2f}",
                "yes" if same else "no",
                f"{seconds:.0f}",
            ]
        )
    print(markdown_table(header, rows))


def main_job_bench(args) -> None:
    """The main job's wall time with teacher_cache.mode off and auto, from the same stages."""
    from dakd.recipes.stages import run_stage
    from dakd.sweep.driver.plan import plan
    from dakd.sweep.spec.sweep_spec import load_spec

    spec_path = ROOT / "sweeps" / "loss_weights.yaml"
    # the stages both sweeps start from, trained first and untimed (as a sweep trains them)
    for stage in plan(load_spec(spec_path), ROOT).stages:
        run_stage(stage.config, log=lambda line: print(line, flush=True))
    with tempfile.TemporaryDirectory() as folder:
        times = {}
        for mode in ("off", "auto"):
            place = Path(folder) / mode
            command = [
                sys.executable,
                str(ROOT / "sweeps" / "run.py"),
                str(spec_path),
                "--set",
                f"storage={place / 'ray'}",
                "--set",
                f"tracking.uri=sqlite:///{place / 'mlflow.db'}",
                "--set",
                f"experiment.teacher_cache.mode={mode}",
                "--set",
                f"experiment.teacher_cache.dir={place / 'cache'}",
            ]
            tic = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            times[mode] = time.perf_counter() - tic
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:])
                raise SystemExit(f"the {mode} sweep failed")
            best = [line for line in done.stdout.splitlines() if line.startswith("| ")][:3]
            print(
                f"main job, teacher_cache.mode={mode}: {times[mode]:.0f} s; " + " ".join(best[2:3])
            )
        print(f"main job ratio auto/off = {times['auto'] / times['off']:.2f}")


def sizes_table(args) -> None:
    """Cache sizes of the real datasets at the paper's recipe (DRN-D-38 teacher, stride 8)."""
    header = ["dataset", "images", "stored at", "float32", "float16", "float16 top-5"]
    rows = []
    for name, (images, (h, w)) in REAL.items():
        shape = (19, -(-h // 8), -(-w // 8))
        cells = []
        for storage in (tcache.Storage(), tcache.Storage("float16"), tcache.Storage("float16", 5)):
            cells.append(images * 2 * storage.entry_bytes(shape) / 1e9)  # output + feature level
        rows.append([name, images, f"{h}x{w}", *(f"{c:.1f} GB" for c in cells)])
    print(markdown_table(header, rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/embedded.yaml")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per contender")
    parser.add_argument("--memory-steps", type=int, default=5)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--formats", action="store_true")
    parser.add_argument("--main-job", action="store_true")
    parser.add_argument("--sizes", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.sizes:
        sizes_table(args)
        return 0
    if args.formats:
        formats_bench(args)
        return 0
    if args.main_job:
        main_job_bench(args)
        return 0
    ratio = step_bench(args)
    print(f"step ratio cached/live = {ratio:.3f}   (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
