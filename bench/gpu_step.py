"""The paper-size DAKD step on one device: time, FLOPs and the share of the matmul peak per
speed setting, memory per trial, trial processes sharing the device, the data loader's wait,
and the top operators, all in one run.

The paper's experiment (``sweeps/synth_to_real.yaml``: GTA5 -> Cityscapes, DRN-D-38 teacher,
DRN-D-22 student, 2 + 2 images a step, crops 512x1024) over a generated dataset tree at the
real file sizes (the ``tests/realdata.py`` writers: random pixels), DAKD (c) with a teacher of
random weights (a step costs the same whatever the weights). ``--scale`` shrinks the files and
every size of the recipe alike (0.125 runs on a CPU in minutes).

    uv run python bench/gpu_step.py                                   # on a GPU
    uv run python bench/gpu_step.py --scale 0.125 --images 4 --steps 2 --repeats 1 \\
        --processes 1,2                                               # a try on a CPU
    uv run python bench/gpu_step.py --quick --scale 0.0625            # what the test runs

Printed, per named speed setting (``--settings``; each in a fresh process, so that one
setting's global switches cannot leak into the next):

* the median step time over ``--repeats`` blocks of ``--steps`` steps, live teacher against
  the teacher-output cache (``teacher_cache.mode`` off / on) in alternating blocks, batches
  built ahead (only the step is timed; CUDA is synchronised around each block);
* FLOPs per step (``torch.utils.flop_counter.FlopCounterMode`` over one step, live and
  cached), the achieved TFLOP/s and its share of a matrix-product peak measured in the same
  run (bfloat16 ``torch.mm`` on CUDA; float32 on a CPU, said so);
* the peak memory of a trial: ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU the
  process's peak RSS (VmHWM);
* a setting the device cannot honour still runs (the trainer leaves the switch off, with a
  one-line notice) and is marked ``*`` with the notice below the table.

Then the aggregate throughput of 1, 2 and 4 (``--processes``) trial processes training the
``default`` setting on the one device (a common start through files, steps/s over a common
window; on a CPU each gets ``cpus // N`` threads); the real-data loader's wait per step with
the trainer's prefetching (``data.prefetch``) against a simulated step as long as the
measured ``default`` step (``bench/data_loading.py``'s loop); and a ``torch.profiler`` table
of the top operators over a few steps of the ``bf16`` setting, with the count per step of the
copies the overhead removal targets (``aten::copy_``, ``aten::to``, ``aten::contiguous``,
``aten::clone``).

Targets: the data wait <= 5% of the step. The last line reads
``paper step = X ms (bf16), Y% of matmul peak`` (the bf16 setting's live step).

Needs torch, numpy, pillow, pyyaml, tqdm and filelock only (no Ray, MLflow or Optuna).
"""

from __future__ import annotations

import argparse
import gc
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dakd.config import load_config  # noqa: E402
from dakd.data.loader import DEVICE_KEYS  # noqa: E402
from dakd.engine.state import TrainState  # noqa: E402
from dakd.models import checkpoint as ckpt  # noqa: E402
from dakd.runtime.builders import build_network, prefetch_depth, spec_of  # noqa: E402
from dakd.runtime.device import speed_settings, training_device  # noqa: E402
from dakd.runtime.distributed import current_world  # noqa: E402
from dakd.runtime.step_times import SETTINGS as SPEED_SETTINGS  # noqa: E402
from dakd.runtime.step_times import StepTime, recipe_of, record, setting_overrides  # noqa: E402
from tests import realdata  # noqa: E402  (the fixture-tree writers of the test suite)

#: The real datasets' file sizes (H, W) and the val images written per tree.
FILE_SIZES = {"gta5": (1052, 1914), "cityscapes": (1024, 2048)}
VAL_IMAGES = 2
#: The recipe's sizes that ``--scale`` shrinks.
SIZE_KEYS = ("source_resize", "source_crop", "target_resize", "target_crop", "val_resize")

#: Named speed settings: their ``--set`` overrides (``dakd.runtime.step_times.SETTINGS``, which the
#: planner matches a spec against). ``default`` sets nothing, so it measures whatever the
#: config's defaults resolve to on the device; the others pin every switch.
SETTINGS: dict[str, list[str]] = {name: setting_overrides(name) for name in SPEED_SETTINGS}
#: The ops a step's copies go through (what the overhead removal targets).
COPY_OPS = ("aten::copy_", "aten::to", "aten::contiguous", "aten::clone")
MARK = "@@gpu_step "  # prefixes the JSON line a worker process prints


# -- pure helpers ------------------------------------------------------------------------------
def scaled(hw, scale: float) -> list[int]:
    """A [height, width] scaled and rounded (at least 1 pixel)."""
    return [max(1, int(round(v * scale))) for v in hw]


def tflops(flops: float, seconds: float) -> float:
    """Achieved TFLOP/s of ``flops`` floating-point operations done in ``seconds``."""
    return flops / seconds / 1e12


def matmul_flops(n: int) -> int:
    """FLOPs of one product of two n x n matrices (a multiply and an add per term)."""
    return 2 * n**3


def share(achieved: float, peak: float) -> float:
    """``achieved`` as a percentage of ``peak``."""
    return 100.0 * achieved / peak


def copy_counts(rows, steps: int) -> dict[str, float]:
    """Calls per step of each op of ``COPY_OPS`` from ``(op name, calls)`` rows (a profiler's
    ``key_averages()``: one row per op, or several, which add up) over ``steps`` steps."""
    counts = dict.fromkeys(COPY_OPS, 0)
    for name, calls in rows:
        if name in counts:
            counts[name] += calls
    return {name: calls / steps for name, calls in counts.items()}


def window_rate(ends: list[float], window: float) -> float:
    """Steps/s of one process from its step end times (seconds after the common start): the
    steps done inside ``[0, window]`` over the time they took (the first step alone when none
    ended inside the window)."""
    inside = [t for t in ends if t <= window]
    if not inside:
        return 1.0 / ends[0]
    return len(inside) / inside[-1]


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# -- the tree, the config and the teacher ------------------------------------------------------
def write_tree(root: Path, images: int, scale: float) -> float:
    """The GTA5 and Cityscapes trees at the real file sizes times ``scale`` (kept if there);
    seconds spent writing."""
    tic = time.perf_counter()
    if not (root / "cityscapes" / "leftImg8bit").exists():
        realdata.cityscapes(
            root / "cityscapes",
            {"train": images, "val": VAL_IMAGES},
            size=tuple(scaled(FILE_SIZES["cityscapes"], scale)),
        )
    if not (root / "gta5" / "images").exists():
        realdata.gta5(root / "gta5", n=images, size=tuple(scaled(FILE_SIZES["gta5"], scale)))
    return time.perf_counter() - tic


def paper_config(root: Path, scale: float, out: Path) -> Path:
    """``sweeps/synth_to_real.yaml``'s experiment as a plain config over the tree at ``root``:
    no teacher or init stage (the bench gives a teacher), no ImageNet weights, sizes scaled."""
    exp = yaml.safe_load((ROOT / "sweeps" / "synth_to_real.yaml").read_text())["experiment"]
    for key in ("teacher", "init"):
        exp.pop(key, None)
    data = exp["data"]
    data["source_root"], data["target_root"] = str(root / "gta5"), str(root / "cityscapes")
    for key in SIZE_KEYS:
        data[key] = scaled(data[key], scale)
    for role in ("teacher", "student"):
        exp["models"][role]["pretrained"] = ""
    exp["train"]["steps"] = 1000  # the learning rate stays near its base over the bench
    out.write_text(yaml.safe_dump(exp))
    return out


def teacher_checkpoint(config: Path, work: Path) -> Path:
    """A teacher of random weights for the config's teacher network."""
    base = load_config(config, ["stage=student_da", f"out_dir={work / 'out'}"])
    spec = spec_of(base.models.teacher)
    path = work / "teacher.pt"
    ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, path)
    return path


# -- measurements inside a worker process ------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_mb(key: str) -> float | None:
    """A /proc/self/status memory figure (VmRSS:, VmHWM:) in MiB; None where there is none."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_memory_mb(run, device: torch.device, baseline: int = 0) -> float | None:
    """Peak memory while ``run()`` trains: GPU bytes allocated beyond ``baseline`` on CUDA, the
    process's peak RSS on a CPU (reset first where the kernel allows it)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    run()
    return status_mb("VmHWM:")


def replay(trainer: TrainState, batches) -> None:
    """Serve ``batches`` (built ahead) to the trainer's step, cycling by step, as its
    prefetching serves them: on CUDA pinned and always ready, so the trainer's feed copies
    the next step's batch while a step computes (``dakd.data.loader.DeviceFeed``)."""
    if trainer.device.type == "cuda":
        batches = [
            tuple(
                {k: v.pin_memory() if k in DEVICE_KEYS else v for k, v in batch.items()}
                for batch in pair
            )
            for pair in batches
        ]
    for i, stream in enumerate((trainer.source, trainer.target)):
        stream.batch = lambda step, i=i: batches[step % len(batches)][i]
        stream.ready = lambda step: True


def steps(trainer: TrainState, n: int) -> None:
    for _ in range(n):
        trainer.train_step()


def block(trainer: TrainState, n: int) -> float:
    """Seconds per step over ``n`` steps, the device synchronised around them."""
    trainer.step = 0
    synchronize(trainer.device)
    tic = time.perf_counter()
    steps(trainer, n)
    synchronize(trainer.device)
    return (time.perf_counter() - tic) / n


def count_flops(trainer: TrainState) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    trainer.step = 0
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return counter.get_total_flops()


def profile_steps(trainer: TrainState, n: int) -> dict:
    """A ``torch.profiler`` table of the top operators over ``n`` steps and the copy counts."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trainer.step = 0
    with profile(activities=activities) as prof:
        steps(trainer, n)
        synchronize(trainer.device)
    averages = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return {
        "sort": sort,
        "table": averages.table(sort_by=sort, row_limit=15, max_name_column_width=48),
        "copies": copy_counts(((e.key, e.count) for e in averages), n),
    }


def measure_setting(job: dict) -> dict:
    """One speed setting in this (fresh) process: memory, FLOPs, timing, the profile."""
    live_cfg = load_config(job["config"], [*job["overrides"], "teacher_cache.mode=off"])
    cached_cfg = load_config(job["config"], [*job["overrides"], "teacher_cache.mode=on"])
    world = current_world()
    device = training_device(live_cfg.train.device, world)
    speed, notices = speed_settings(live_cfg.train, device, world)
    warm = max(job["warmup"], 3 if speed.compile else 1)
    live = TrainState(live_cfg)
    streams = [getattr(s, "sampler", s) for s in (live.source, live.target)]
    batches = [tuple(s.batch(i) for s in streams) for i in range(max(1, job["steps"]))]
    replay(live, batches)
    # a trial's peak: its warm-up steps (the first steps allocate what the later ones reuse)
    memory = {"live": peak_memory_mb(lambda: steps(live, warm), device)}
    synchronize(device)
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    tic = time.perf_counter()
    cached = TrainState(cached_cfg)  # builds (or finds) the cache of both domains
    build_s = time.perf_counter() - tic
    replay(cached, batches)
    gc.collect()
    memory["cached"] = peak_memory_mb(lambda: steps(cached, warm), device, baseline=resident)
    flops = {}
    if job["count_flops"] and not speed.compile:  # a compiled graph and the counter's mode
        flops = {"live": count_flops(live), "cached": count_flops(cached)}  # do not mix
    times: dict[str, list[float]] = {"live": [], "cached": []}
    for _ in range(job["repeats"]):
        times["live"].append(block(live, job["steps"]))
        times["cached"].append(block(cached, job["steps"]))
    result = {
        "setting": job["setting"],
        "overrides": job["overrides"],
        "device": str(device),
        "notices": notices,
        "speed": {
            "amp": str(speed.amp_dtype).replace("torch.", "") if speed.amp_dtype else "fp32",
            "channels_last": speed.channels_last,
            "compile": speed.compile,
            "cudnn_benchmark": speed.cudnn_benchmark,
            "deterministic": live_cfg.train.deterministic,
        },
        "step_s": {k: statistics.median(v) for k, v in times.items()},
        "blocks_s": times,
        "flops": flops,
        "memory_mb": memory,
        "cache_build_s": build_s,
        "threads": torch.get_num_threads(),
    }
    if job.get("profile_steps"):
        result["profile"] = profile_steps(live, job["profile_steps"])
    for trainer in (live, cached):
        trainer.close()
    return result


def pack_worker(job: dict) -> dict:
    """One of N trial processes sharing the device: build, warm up, say ready, wait for the
    common start, step until the common window has passed; the end time of every step."""
    cfg = load_config(job["config"], [*job["overrides"], "teacher_cache.mode=off"])
    trainer = TrainState(cfg)
    streams = [getattr(s, "sampler", s) for s in (trainer.source, trainer.target)]
    replay(trainer, [tuple(s.batch(i) for s in streams) for i in range(4)])
    speed, _ = speed_settings(cfg.train, trainer.device, trainer.world)
    steps(trainer, max(job["warmup"], 3 if speed.compile else 1))
    synchronize(trainer.device)
    folder = Path(job["folder"])
    (folder / f"ready{job['rank']}").touch()
    go = folder / "go"
    while not go.exists():
        time.sleep(0.005)
    start = float(go.read_text())
    while time.time() < start:
        time.sleep(0.0005)
    ends = []
    while not ends or ends[-1] < job["window"]:
        trainer.train_step()
        synchronize(trainer.device)
        ends.append(time.time() - start)
    trainer.close()
    return {"rank": job["rank"], "ends": ends, "threads": torch.get_num_threads()}


def worker_main(kind: str, path: str) -> int:
    job = json.loads(Path(path).read_text())
    result = measure_setting(job) if kind == "setting" else pack_worker(job)
    print(MARK + json.dumps(result), flush=True)
    return 0


# -- the driver --------------------------------------------------------------------------------
def command(kind: str, job_path: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(job_path)]


def result_of(stdout: str, stderr: str, what: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise SystemExit(f"{what} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")


def run_setting(job: dict, work: Path, timeout: float) -> dict:
    path = work / f"job-{job['setting']}.json"
    path.write_text(json.dumps(job))
    done = subprocess.run(
        command("setting", path), capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    return result_of(done.stdout, done.stderr, f"setting {job['setting']}")


def run_pack(n: int, job: dict, work: Path, timeout: float) -> dict:
    """N processes of ``job`` sharing the device, started together; their steps/s."""
    folder = work / f"pack{n}"
    folder.mkdir()
    processes = []
    for rank in range(n):
        path = folder / f"job{rank}.json"
        path.write_text(json.dumps({**job, "rank": rank, "folder": str(folder)}))
        out, err = open(folder / f"out{rank}", "w+"), open(folder / f"err{rank}", "w+")
        processes.append(
            (subprocess.Popen(command("pack", path), stdout=out, stderr=err, cwd=ROOT), out, err)
        )
    deadline = time.monotonic() + timeout
    try:
        while len(list(folder.glob("ready*"))) < n:
            if any(p.poll() is not None for p, _, _ in processes) or time.monotonic() > deadline:
                raise RuntimeError("a trial process stopped before the start")
            time.sleep(0.01)
        go = folder / "go.tmp"
        go.write_text(repr(time.time() + 0.2))
        go.rename(folder / "go")
        for p, _, _ in processes:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (RuntimeError, subprocess.TimeoutExpired):
        for p, _, _ in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for _, out, err in processes:
        out.seek(0), err.seek(0)
        results.append(result_of(out.read(), err.read(), f"trial process of {n}"))
        out.close(), err.close()
    rates = [window_rate(r["ends"], job["window"]) for r in results]
    return {"processes": n, "rates": rates, "total": sum(rates), "threads": results[0]["threads"]}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    """The best TFLOP/s of ``torch.mm`` of two n x n matrices of ``dtype`` (3 timed rounds)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        tic = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        synchronize(device)
        best = min(best, (time.perf_counter() - tic) / iters)
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return tflops(matmul_flops(n), best)


def loader_wait(config: Path, steps_n: int, step_s: float) -> dict:
    """The real-data loader's wait per step at the trainer's prefetch depth, against a step of
    ``step_s`` simulated by sleeping (``bench/data_loading.py``'s loop)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from data_loading import run

    cfg = load_config(config, ["stage=source_only"])
    _, waits = run(cfg, steps_n, step_s)
    wait = statistics.fmean(waits)
    return {"prefetch": prefetch_depth(cfg), "wait_s": wait, "share": wait / step_s}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="file and recipe sizes")
    parser.add_argument("--images", type=int, help="training images per dataset (default 12)")
    parser.add_argument("--steps", type=int, help="steps per timed block (default 10)")
    parser.add_argument("--repeats", type=int, help="blocks per contender (default 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; memory)")
    parser.add_argument("--device", default="auto", help="auto (cuda when there), cpu, cuda")
    parser.add_argument("--settings", help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--processes", help="trial processes (default 1,2,4; --quick: 1)")
    parser.add_argument("--window", type=float, help="seconds of the shared window (default 15)")
    parser.add_argument("--loader-steps", type=int, help="simulated steps (default 12)")
    parser.add_argument("--profile-steps", type=int, help="profiled bf16 steps (default 3)")
    parser.add_argument("--data", type=Path, help="the dataset tree (written when missing)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="on a GPU at scale 1, do not record the step times in dakd/runtime/step_times.json (the "
        "figures the dry run costs sweeps with)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    parser.add_argument("--quick", action="store_true", help="the smallest run (for a test)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    quick = args.quick
    defaults = {
        "images": (2, 12),
        "warmup": (1, 2),
        "steps": (1, 10),
        "repeats": (1, 3),
        "window": (1.0, 15.0),
        "loader_steps": (3, 12),
        "profile_steps": (1, 3),
        "processes": ("1", "1,2,4"),
    }
    for key, (small, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    if args.settings is None:  # compile on a CPU: minutes of inductor before the first step
        args.settings = ",".join(
            s
            for s in SETTINGS
            if not (quick and s not in ("default", "bf16")) and (cuda or s != "compile")
        )
    args.settings = parse_list(args.settings)
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    for needed in ("default", "bf16"):  # the loader's step and the last line
        if needed not in args.settings:
            args.settings.append(needed)
    args.processes = [int(n) for n in parse_list(args.processes)]
    if min(args.processes, default=1) < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--processes, --steps and --repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(*args.worker)
    os.chdir(ROOT)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch {torch.__version__} sees no CUDA device "
            f"(built for CUDA {torch.version.cuda or 'none'})"
        )
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="dakd-gpu-step-"))
    try:
        return bench(args, device, cuda, cpus, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(args, device: torch.device, cuda: bool, cpus: int, work: Path) -> int:
    data = args.data or work / "data"
    written = write_tree(data, args.images, args.scale)
    config = paper_config(data, args.scale, work / "paper.yaml")
    teacher = teacher_checkpoint(config, work)
    cfg = load_config(config, [f"teacher={teacher}"])
    d = cfg.data
    print(
        f"paper experiment x{args.scale:g}: {cfg.models.teacher.name} -> "
        f"{cfg.models.student.name}, DAKD (c), {d.batch_size}+{d.batch_size} images a step, "
        f"crops {d.source_crop[0]}x{d.source_crop[1]} (source) "
        f"{d.target_crop[0]}x{d.target_crop[1]} (target); {args.images} images per dataset "
        f"in {data} (written in {written:.1f} s)",
        flush=True,
    )
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {cpus} cores"
    print(f"device {args.device} ({name}), torch {torch.__version__}", flush=True)
    common = [
        "paradigm=c",
        f"teacher={teacher}",
        f"out_dir={work / 'out'}",
        f"teacher_cache.dir={work / 'cache'}",
        "train.progress=false",
        f"train.device={args.device}",
    ]

    peak_dtype = torch.bfloat16 if cuda else torch.float32
    n, iters = (8192, 20) if cuda else (1024 if args.quick else 2048, 2)
    peak = matmul_peak(device, peak_dtype, n, iters)
    dtype_name = str(peak_dtype).replace("torch.", "")
    print(f"matmul peak: {peak:.2f} TFLOP/s ({dtype_name} torch.mm, {n}x{n})", flush=True)

    results = {}
    counted = None  # FLOPs are counted once: every setting runs the same operations
    for setting in args.settings:
        job = {
            "setting": setting,
            "config": str(config),
            "overrides": [*common, *SETTINGS[setting]],
            "steps": args.steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "count_flops": not counted and setting != "compile",
            "profile_steps": args.profile_steps if setting == "bf16" else 0,
        }
        tic = time.perf_counter()
        r = results[setting] = run_setting(job, work, args.timeout)
        counted = counted or (setting if r["flops"] else None)
        print(
            f"  {setting}: live {1000 * r['step_s']['live']:.1f} ms, cached "
            f"{1000 * r['step_s']['cached']:.1f} ms ({time.perf_counter() - tic:.0f} s)",
            flush=True,
        )
    peak = max(peak, matmul_peak(device, peak_dtype, n, iters))  # the better of two rounds
    print(f"matmul peak (best of two rounds): {peak:.2f} TFLOP/s", flush=True)
    for r in results.values():
        r["flops_from"] = counted
        r["flops"] = results[counted]["flops"]
        r["tflops"] = {k: tflops(r["flops"][k], r["step_s"][k]) for k in r["flops"]}
        r["share"] = {k: share(v, peak) for k, v in r["tflops"].items()}

    packs = []
    for count in args.processes:
        overrides = [*common, *SETTINGS["default"]]
        if not cuda:
            overrides.append(f"train.threads={max(1, cpus // count)}")
        job = {
            "config": str(config),
            "overrides": overrides,
            "window": args.window,
            "warmup": args.warmup,
        }
        packs.append(run_pack(count, job, work, args.timeout))
        print(f"  {count} trial process(es): {packs[-1]['total']:.2f} steps/s", flush=True)

    step_s = results["default"]["step_s"]["live"]
    loader = loader_wait(config, args.loader_steps, step_s)

    report(args, results, packs, loader, peak, dtype_name, cuda)
    if args.json:
        figures = {
            "scale": args.scale,
            "images": args.images,
            "device": args.device,
            "torch": torch.__version__,
            "matmul_peak_tflops": peak,
            "matmul_peak_dtype": dtype_name,
            "settings": results,
            "processes": packs,
            "loader": loader,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    if cuda and args.scale == 1 and args.record:
        # the figures the planner costs sweeps with (dakd/runtime/step_times.json), per setting
        for setting, r in results.items():
            if setting == "default":
                continue  # what "default" resolves to is one of the named settings
            record(
                StepTime(
                    device=name,
                    recipe=recipe_of(cfg),
                    setting=setting,
                    step_ms=round(1000 * r["step_s"]["live"], 1),
                    cached_step_ms=round(1000 * r["step_s"]["cached"], 1),
                    torch=torch.__version__,
                    date=time.strftime("%Y-%m-%d"),
                )
            )
        print(f"step times recorded in dakd/runtime/step_times.json for {recipe_of(cfg)} on {name}")
    bf16 = results["bf16"]
    if not cuda:
        print(f"(on a CPU: the share is of a {dtype_name} torch.mm peak; no bf16 peak measured)")
    print(
        f"paper step = {1000 * bf16['step_s']['live']:.1f} ms (bf16), "
        f"{bf16['share']['live']:.1f}% of matmul peak"
    )
    return 0


def report(args, results, packs, loader, peak, dtype_name, cuda) -> None:
    print()
    memory = "GPU peak MiB" if cuda else "peak RSS MiB"
    print(
        f"per speed setting: median of {args.repeats} block(s) of {args.steps} step(s); "
        f"matmul peak {peak:.2f} TFLOP/s ({dtype_name}); memory: {memory}"
        + ("" if cuda else " (the process's; the cached column has the live trainer resident)")
    )
    header = (
        f"{'setting':10} {'live ms':>9} {'cached ms':>10} {'GFLOP live':>11} {'GFLOP cached':>13} "
        f"{'TFLOP/s live':>13} {'TFLOP/s cached':>15} {'% peak live':>12} {'% peak cached':>14} "
        f"{'mem live':>9} {'mem cached':>11}"
    )
    print(header)
    notes = []
    for setting, r in results.items():
        label = setting + ("*" if r["notices"] else "")
        notes += [f"* {setting}: {notice}" for notice in r["notices"]]
        step, flops, tf, pc, mem = (
            r["step_s"],
            r["flops"],
            r["tflops"],
            r["share"],
            r["memory_mb"],
        )
        print(
            f"{label:10} {1000 * step['live']:>9.1f} {1000 * step['cached']:>10.1f} "
            f"{flops.get('live', 0) / 1e9:>11.1f} {flops.get('cached', 0) / 1e9:>13.1f} "
            f"{tf.get('live', 0):>13.3f} {tf.get('cached', 0):>15.3f} "
            f"{pc.get('live', 0):>11.1f}% {pc.get('cached', 0):>13.1f}% "
            f"{mem['live'] or 0:>9.0f} {mem['cached'] or 0:>11.0f}"
        )
    for setting, r in results.items():
        s = r["speed"]
        notes.append(
            f"  {setting}: amp {s['amp']}, channels_last {s['channels_last']}, compile "
            f"{s['compile']}, cudnn_benchmark {s['cudnn_benchmark']}, deterministic "
            f"{s['deterministic']}"
        )
    counted = next(iter(results.values()))["flops_from"]
    notes.append(
        f"  FLOPs counted once, on one {counted} step each way (every setting runs the same ops)"
    )
    print("\n".join(notes))

    print()
    print("trial processes sharing the device (default setting, live teacher):")
    one = packs[0]["total"] if packs and packs[0]["processes"] == 1 else None
    for p in packs:
        ratio = f"{p['total'] / one:.2f}x of 1" if one else ""
        rates = ", ".join(f"{rate:.2f}" for rate in p["rates"])
        print(
            f"  N={p['processes']}: {p['total']:.2f} steps/s in total ({rates}; "
            f"{p['threads']} thread(s) each) {ratio}"
        )

    step_ms = 1000 * results["default"]["step_s"]["live"]
    print()
    print(
        f"data loader (prefetch {loader['prefetch']}) against a {step_ms:.0f} ms step (the "
        f"default live step): wait {1000 * loader['wait_s']:.1f} ms a step, "
        f"{100 * loader['share']:.1f}% of the step (target <= 5%)"
    )

    profile = results["bf16"].get("profile")
    if profile:
        print()
        print(f"torch.profiler, bf16 setting, live teacher, sorted by {profile['sort']}:")
        print(profile["table"])
        copies = ", ".join(f"{k} {v:.0f}" for k, v in profile["copies"].items())
        print(f"copies per step: {copies}")

    print()
    print(f"{'summary':10} {'live ms':>9} {'cached ms':>10} {'TFLOP/s':>8} {'% peak':>7}")
    for setting, r in results.items():
        label = setting + ("*" if r["notices"] else "")
        print(
            f"{label:10} {1000 * r['step_s']['live']:>9.1f} {1000 * r['step_s']['cached']:>10.1f} "
            f"{r['tflops'].get('live', 0):>8.3f} {r['share'].get('live', 0):>6.1f}%"
        )


if __name__ == "__main__":
    sys.exit(main())
