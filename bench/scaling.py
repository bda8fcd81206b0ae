"""Data-parallel scaling: training throughput of 1 against N processes, side by side, and the
share of a step that goes to communication.

    uv run python bench/scaling.py [--workers 1 2] [--steps 8] [--repeats 3] [--set key=value]
    uv run python bench/scaling.py --device cuda --paper --amp bf16 --channels-last

The trainer's DAKD step (stage dakd, paradigm c; a teacher of random weights) on the embedded
default (configs/embedded.yaml). For every world size in ``--workers`` that many processes are
started once (a gloo group on CPU, nccl on GPUs; ``--threads`` torch threads each); blocks of
``--steps`` steps then run in turn on each group (1, N, 1, N, ...) so that machine noise hits
all alike, and the median block is reported. Every world size trains with the same global
batch (``data.batch_size`` is global): throughput = (source + target images of a step) / step
time. Communication: the same group runs blocks under DDP's ``no_sync`` (no gradient
all-reduce), and the share is 1 - t(no_sync) / t(with all-reduce): what the all-reduce adds to
a step after its overlap with the backward pass. Batches are drawn once per process and
replayed, so data loading is not timed (bench/train_step.py measures it).

``--paper`` is the paper's setting: DRN-D-38 teacher, DRN-D-22 student (full width),
512x1024 crops, 2 source + 2 target images a step, discriminators of base width 64; with
``--device cuda`` it measures one-GPU DAKD throughput. On CUDA the bench turns
``train.deterministic`` off (deterministic kernels cost speed).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dakd.config import load_config  # noqa: E402
from dakd.engine.state import TrainState  # noqa: E402
from dakd.models import checkpoint as ckpt  # noqa: E402
from dakd.runtime.builders import build_network, spec_of  # noqa: E402

PAPER = [
    "models.teacher.name=drn_d_38",
    "models.teacher.width=1.0",
    "models.student.name=drn_d_22",
    "models.student.width=1.0",
    "models.discriminator_ndf=64",
    "data.crop_size=[512, 1024]",
    "data.batch_size=2",
]
REPLAYED = 4  # distinct batches per process, drawn before timing and replayed


class Replay:
    """A sampler that serves batches drawn in advance, ``batch(step)`` cycling through them."""

    def __init__(self, sampler, count: int):
        self.batches = [sampler.batch(step) for step in range(count)]

    def batch(self, step: int):
        return self.batches[step % len(self.batches)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, size, port, config, overrides, threads, commands, results) -> None:
    """One process of a world of ``size``: build the trainer, then time the blocks it is sent."""
    torch.set_num_threads(threads)
    cfg = load_config(config, overrides)
    cuda = cfg.train.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank)
    if size > 1:
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=size,
        )
    try:
        trainer = TrainState(cfg)
        trainer.source = Replay(trainer.source, REPLAYED)
        trainer.target = Replay(trainer.target, REPLAYED)

        def block(steps: int, sync: bool) -> float:
            trainer.step = 0
            with contextlib.ExitStack() as stack:
                if not sync:
                    for module in trainer.ddp_modules:
                        stack.enter_context(module.no_sync())
                if size > 1:
                    dist.barrier()
                if cuda:
                    torch.cuda.synchronize()
                tic = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step()
                if cuda:
                    torch.cuda.synchronize()
                if size > 1:
                    dist.barrier()
                return (time.perf_counter() - tic) / steps

        block(2, True)  # warm-up (and compilation with train.compile)
        if rank == 0:
            results.put(("ready", size, gradient_bytes(trainer)))
        while (command := commands.get()) is not None:
            seconds = block(*command)
            if rank == 0:
                results.put(("block", size, command[1], seconds))
    finally:
        if size > 1:
            dist.destroy_process_group()


def gradient_bytes(trainer: TrainState) -> int:
    """Bytes of gradient a step all-reduces: the student's and the discriminators'."""
    params = [*trainer.model.parameters(), *trainer.discriminators.parameters()]
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)


def wait(results, processes, timeout: float = 1800.0):
    """The next result, or an error as soon as a worker has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=2.0)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                code = dead[0].exitcode
                raise SystemExit(f"a worker exited with code {code}; see its output") from None
    raise SystemExit(f"no result from the workers within {timeout:.0f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/embedded.yaml")
    parser.add_argument("--workers", type=int, nargs="+", help="world sizes (default: 1 2)")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per world size and mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--paper", action="store_true", help="DRN-D-38 -> DRN-D-22, 512x1024")
    parser.add_argument("--amp", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--sync-bn", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error(
                f"--device cuda: torch {torch.__version__} sees no CUDA device "
                f"(built for CUDA {torch.version.cuda or 'none'})"
            )
        gpus = torch.cuda.device_count()
        args.workers = args.workers or sorted({1, min(2, gpus)})
        if max(args.workers) > gpus:
            parser.error(f"--workers {max(args.workers)} needs as many GPUs; {gpus} visible")
    args.workers = sorted(set(args.workers or [1, 2]))
    if min(args.workers) < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--workers, --steps and --repeats must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    switches = [
        f"train.device={args.device}",
        f"train.amp={args.amp}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={str(args.compile).lower()}",
        f"train.cudnn_benchmark={str(args.cudnn_benchmark).lower()}",
        f"train.sync_bn={str(args.sync_bn).lower()}",
        f"train.threads={args.threads}",
        "train.steps=1000000",  # the learning rate stays at its base over the blocks
        "train.progress=false",
        "data.cache_dir=",  # render only the images drawn
    ]
    if args.device == "cuda":
        switches.append("train.deterministic=false")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        base = [*(PAPER if args.paper else []), *args.overrides, f"out_dir={tmp}"]
        cfg = load_config(args.config, [*base, *switches, "stage=student_da"])
        spec = spec_of(cfg.models.teacher)
        teacher = Path(tmp) / "teacher.pt"
        ckpt.save({"network": spec, "model": build_network(spec).state_dict()}, teacher)
        overrides = [*base, *switches, "stage=dakd", "paradigm=c", f"teacher={teacher}"]
        cfg = load_config(args.config, overrides)
        for size in args.workers:  # fail here, not in a worker
            if cfg.data.batch_size % size:
                raise SystemExit(
                    f"data.batch_size {cfg.data.batch_size} does not split between {size} workers"
                )

        results = ctx.Queue()
        groups, processes = {}, []
        for size in args.workers:
            port = free_port()
            groups[size] = [ctx.Queue() for _ in range(size)]
            for rank in range(size):
                process = ctx.Process(
                    target=worker,
                    args=(
                        rank,
                        size,
                        port,
                        args.config,
                        overrides,
                        args.threads,
                        groups[size][rank],
                        results,
                    ),
                )
                process.start()
                processes.append(process)
        grad_bytes = 0
        for _ in args.workers:  # every group built and warmed up
            _, _, grad_bytes = wait(results, processes)

        def run(size: int, sync: bool) -> float:
            for commands in groups[size]:
                commands.put((args.steps, sync))
            kind, got_size, got_sync, seconds = wait(results, processes)
            assert kind == "block" and (got_size, got_sync) == (size, sync)
            return seconds

        times: dict[tuple[int, bool], list[float]] = {}
        try:
            for _ in range(args.repeats):
                for size in args.workers:
                    modes = (True, False) if size > 1 else (True,)
                    for sync in modes:
                        times.setdefault((size, sync), []).append(run(size, sync))
        finally:
            for commands in (q for qs in groups.values() for q in qs):
                commands.put(None)
            for process in processes:
                process.join(timeout=60)

    step = {key: statistics.median(values) for key, values in times.items()}
    images = 2 * cfg.data.batch_size
    h, w = cfg.data.crop_size
    print(
        f"config: {args.config}{' --paper' if args.paper else ''}, stage dakd (c): "
        f"{cfg.models.teacher.name} x{cfg.models.teacher.width} -> "
        f"{cfg.models.student.name} x{cfg.models.student.width}, global batch "
        f"{cfg.data.batch_size}+{cfg.data.batch_size}, {h}x{w}"
    )
    print(
        f"device {args.device}, {args.threads} thread(s) per process, amp {args.amp}, "
        f"channels_last {args.channels_last}, compile {args.compile}, "
        f"cudnn_benchmark {args.cudnn_benchmark}, sync_bn {args.sync_bn}; "
        f"median of {args.repeats} blocks of {args.steps} steps"
    )
    print(f"{'workers':>7} {'per worker':>10} {'step ms':>9} {'images/s':>9} {'vs 1 worker':>12}")
    one = step.get((1, True))
    for size in args.workers:
        seconds = step[(size, True)]
        ratio = f"{one / seconds:11.2f}x" if one else ""
        print(
            f"{size:>7} {cfg.data.batch_size // size:>7}+{cfg.data.batch_size // size:<2} "
            f"{1000 * seconds:>9.1f} {images / seconds:>9.1f} {ratio:>12}"
        )
    for size in args.workers:
        if size > 1:
            synced, alone = step[(size, True)], step[(size, False)]
            share = 1 - alone / synced
            print(
                f"communication, {size} workers: {1000 * synced:.1f} ms a step with the "
                f"all-reduce, {1000 * alone:.1f} ms without (no_sync): share {share:.2f}"
            )
    print(f"gradients all-reduced a step: {grad_bytes / 2**20:.2f} MiB")
    if one and max(args.workers) > 1:
        n = max(args.workers)
        speedup = one / step[(n, True)]
        print(f"ratio throughput {n}/1 workers = {speedup:.2f}   (efficiency {speedup / n:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
