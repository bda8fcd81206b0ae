"""Command line: ``python -m dakd {train,eval,calibrate,scenes,models} ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  python -m dakd train configs/embedded.yaml --set stage=teacher_da --set seed=1
  torchrun --nproc-per-node 2 -m dakd train configs/embedded.yaml --set stage=teacher_da
  python -m dakd train configs/embedded.yaml --set stage=dakd --set teacher=auto --set init=auto
  python -m dakd eval runs/experiments/NAME/model.pt
  python -m dakd calibrate configs/embedded.yaml --seeds 0 1 2
  python -m dakd scenes --domain city --out samples/
  python -m dakd models
"""


def add_overrides(
    parser: argparse.ArgumentParser, what: str = "a config value", example: str = "loss.kl=0.5"
) -> None:
    """The repeatable ``--set KEY=VALUE`` option, collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what} by its dotted key, e.g. --set {example} (repeatable)",
    )


def cmd_train(args) -> int:
    from dakd.config import load_config
    from dakd.distributed import torchrun_group
    from dakd.pipeline import requirements, run_stage, with_stages
    from dakd.train import train

    cfg = load_config(args.config, args.overrides)
    # under torchrun: one process per rank, joined here; every rank runs the same calls below
    with torchrun_group(cfg.train.device) as world:
        say = print if world.is_main else (lambda *a, **k: None)
        if world.distributed:
            say(f"data-parallel: {world.size} processes, global batch {cfg.data.batch_size}")
        # teacher: auto / init: auto -> train (or reuse) the stages this run builds on
        stages = {
            field: run_stage(dep, log=say)["checkpoint"] for field, dep in requirements(cfg).items()
        }
        cfg = with_stages(cfg, stages)
        say(f"run directory: {cfg.run_dir}")
        result = train(cfg, resume=not args.restart)
    say(json.dumps({k: round(v, 3) for k, v in result.metrics.items() if "/" not in k}, indent=1))
    say(f"checkpoint (resumable): {result.checkpoint}")
    if (cfg.run_dir / "model.pt").exists():
        say(f"final weights: {cfg.run_dir / 'model.pt'}")
    return 0


def cmd_eval(args) -> int:
    from dakd.config import parse_override
    from dakd.train import evaluate_checkpoint

    overrides = dict(parse_override(item) for item in args.overrides)
    cfg, network, metrics = evaluate_checkpoint(args.checkpoint, overrides)
    target = cfg.domains[1]
    print(
        f"{network['name']} (width {network['width']}) on {target} val, {cfg.data.crop_size} crops"
    )
    print(metrics.table())
    return 0


def cmd_calibrate(args) -> int:
    from dakd.pipeline import calibrate

    calibrate(
        args.config,
        args.scenarios,
        args.seeds,
        overrides=args.overrides,
        distill_steps=args.distill_steps,
        teacher_steps=args.teacher_steps,
        out=Path(args.out),
    )
    print(f"written: {args.out}/calibration.md")
    return 0


def cmd_scenes(args) -> int:
    from dakd.data.scenes import save_samples

    paths = save_samples(
        args.domain, args.out, n=args.n, split=args.split, seed=args.seed, size=tuple(args.size)
    )
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def cmd_models(args) -> int:
    from dakd.models import models_table

    rows = models_table(width=args.width)
    print(f"{'model':<22} {'parameters':>12}   (19 classes, width {args.width})")
    for name, params in rows:
        print(f"{name:<22} {params / 1e6:>11.2f}M")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dakd",
        description="Domain Adaptive Knowledge Distillation for driving-scene segmentation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one stage from a YAML config")
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument(
        "--restart", action="store_true", help="ignore an existing last.pt and start over"
    )
    add_overrides(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the target val split")
    p.add_argument("checkpoint", help="a model.pt or last.pt written by train")
    add_overrides(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="the embedded benchmark's calibration table")
    p.add_argument("config", nargs="?", default="configs/embedded.yaml")
    p.add_argument("--scenarios", nargs="+", default=["synth_to_real", "real_to_real"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--distill-steps",
        type=int,
        default=0,
        help="steps of DAKD and the fair baseline (default: train.steps)",
    )
    p.add_argument(
        "--teacher-steps", type=int, default=0, help="steps of the teacher (default: train.steps)"
    )
    p.add_argument("--out", default="runs/calibration")
    add_overrides(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("scenes", help="write sample images and labels of an embedded domain")
    p.add_argument("--domain", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("models", help="list the registered segmenters and their sizes")
    p.add_argument("--width", type=float, default=1.0)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dakd.checkpoint import CheckpointError
    from dakd.config import ConfigError
    from dakd.train import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; the last checkpoint is kept (run the same command to resume)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
