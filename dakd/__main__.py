"""Command line: ``dakd {train,eval,calibrate,pretrain,scenes,models,deploy,data,sweep,sweeps,
compare,tables,plots,cluster} ...`` (``python -m dakd`` is the same; docs/cli.md)."""

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
  python -m dakd pretrain configs/embedded.yaml --networks student teacher
  python -m dakd scenes --domain city --out samples/
  python -m dakd models
  python -m dakd deploy configs/embedded.yaml --network student --size 1024 2048 --device cpu
  python -m dakd data check --dataset cityscapes --root /data/cityscapes
  dakd sweep sweeps/quickstart.yaml --dry-run           (python sweeps/run.py is the same)
  dakd sweeps                                            (past sweeps, newest first, their ids)
  dakd sweep sweeps/quickstart.yaml --resume 3f2a        (continue the sweep of that id)
  dakd compare 3f2a 9c41                                 (two sweeps' best trials and tables)
  python -m dakd tables --runs runs/analysis/paradigms/runs.parquet --plots   (no MLflow needed)
  dakd plots --experiment loss_weights --sweep latest
  python -m dakd cluster local up --nodes 3      (PostgreSQL, an MLflow server, 3 Ray nodes)
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
    from dakd.engine.trainer import train
    from dakd.recipes.stages import requirements, run_stage, with_stages
    from dakd.runtime.device import check_device
    from dakd.runtime.distributed import torchrun_group

    cfg = load_config(args.config, args.overrides)
    check_device(cfg.train.device)  # before the process group, the stages and the data
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
    from dakd.evaluation.run_metrics import evaluate_checkpoint

    overrides = dict(parse_override(item) for item in args.overrides)
    cfg, network, metrics = evaluate_checkpoint(args.checkpoint, overrides)
    target = cfg.domains[1]
    if cfg.data.dataset == "real":
        shown = f"images at {cfg.data.val_resize}, labels at full resolution"
    else:
        shown = f"{cfg.data.crop_size} crops"
    print(f"{network['name']} (width {network['width']}) on {target} val, {shown}")
    print(metrics.table())
    from dakd.data.datasets import protocols

    for name, classes in protocols(cfg.data).items():
        print(f"{name:<14} {100 * metrics.miou_over(classes):6.2f}   ({len(classes)} classes)")
    return 0


def cmd_data_check(args) -> int:
    from dakd.config import ConfigError
    from dakd.data.datasets import ENV, check_dataset, default_root, reader

    root = args.root or default_root(args.dataset)
    if root is None:
        raise ConfigError(
            f"--root: give the {args.dataset} folder, or set the {ENV} environment variable "
            f"(the folder is then ${ENV}/{reader(args.dataset).folder})"
        )
    report = check_dataset(
        args.dataset, root, args.split or None, sample=args.sample, workers=args.workers
    )
    print(report.text(limit=None if args.all else 50))
    return 0 if report.ok else 1


def cmd_calibrate(args) -> int:
    from dakd.recipes.calibration import calibrate
    from dakd.recipes.pretrain import command_line

    calibrate(
        args.config,
        args.scenarios,
        args.seeds,
        overrides=args.overrides,
        distill_steps=args.distill_steps,
        teacher_steps=args.teacher_steps,
        teacher=args.teacher,
        out=Path(args.out),
        command=command_line(),
    )
    print(f"written: {args.out}/calibration.md")
    return 0


def _pretrain_teachers(args, command: str) -> int:
    """``pretrain --teacher-da SCENARIO ...``: the shipped domain-adapted teachers."""
    from dakd.models.pretrained import teacher_file
    from dakd.recipes.da_teacher import make_teacher

    overrides = [f"train.threads={args.threads}", f"seed={args.seed}"]
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    if args.eval_interval:
        overrides.append(f"train.eval_interval={args.eval_interval}")
    for scenario in args.teacher_da:
        entry = make_teacher(
            scenario,
            args.config,
            overrides + list(args.overrides or []),
            out_dir=args.out,
            work_dir=args.work_dir,
            command=command,
        )
        if entry is not None:
            miou = entry["target_miou"]
            print(
                f"teacher-DA {scenario}: {args.out}/{teacher_file(scenario)} (target mIoU "
                f"{miou['stored']:.2f} stored, {miou['float32']:.2f} in float32; "
                f"{entry['wall_seconds']:.0f} s)"
            )
    return 0


def cmd_pretrain(args) -> int:
    from dakd.config import load_config
    from dakd.recipes.pretrain import PretrainConfig, command_line, pretrain

    if args.teacher_da:
        return _pretrain_teachers(args, command_line())
    cfg = load_config(args.config, args.overrides)
    recipe = PretrainConfig(
        steps=args.steps or 3000,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_interval=args.eval_interval or 500,
        threads=args.threads,
        seed=args.seed,
        size=tuple(cfg.data.crop_size),
        scene_seed=cfg.data.scene_seed,
        cache_dir=cfg.data.cache_dir,
        work_dir=args.work_dir,
    )
    for role in args.networks:
        model = getattr(cfg.models, role)
        entry = pretrain(model, recipe, Path(args.out), command=command_line())
        if entry.get("sha256"):
            final = entry["history"][-1]["miou"] if entry["history"] else float("nan")
            print(
                f"{role}: {args.out}/{model.name}-w{model.width:g}-os{model.output_stride}.pt "
                f"(proxy mIoU {final:.1f}, {entry['wall_seconds']:.0f} s)"
            )
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


def cmd_deploy(args) -> int:
    from dakd.config import load_config
    from dakd.evaluation.deploy import DeploySettings, measure, network_label

    cfg = load_config(args.config, args.overrides)
    model = getattr(cfg.models, args.network)
    settings = DeploySettings(
        size=list(args.size),
        batch=args.batch,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device or cfg.train.device,
    )
    threads = args.threads if args.threads is not None else cfg.train.threads
    figures = measure(model, settings, threads=threads or None)
    height, width = settings.size
    where = f"on {figures.device}"
    if threads:
        where += f", {threads} thread" + ("s" if threads > 1 else "")
    print(
        f"{args.network} {network_label(model)} at {height}x{width}, batch {settings.batch}, {where}"
    )
    print(f"parameters   {figures.params_m:10.3f} M")
    print(f"peak memory  {figures.peak_memory_mb:10.1f} MiB  (weights and input included)")
    print(f"latency      {figures.latency_ms:10.2f} ms   (median of {settings.repeats})")
    print(f"compute      {figures.gflops:10.2f} GFLOPs")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dakd",
        description="Domain Adaptive Knowledge Distillation for driving-scene segmentation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from dakd.cluster.cli import add_cluster_parser
    from dakd.sweep.driver.cli import add_sweep_parsers
    from dakd.tracking.cli import add_plots_parser, add_tables_parser

    for add in (_train, _eval, _calibrate, _pretrain, _scenes, _models, _deploy, _data):
        add(sub)
    add_sweep_parsers(sub)
    add_tables_parser(sub)
    add_plots_parser(sub)
    add_cluster_parser(sub)
    return parser


def _train(sub) -> None:
    p = sub.add_parser("train", help="train one stage from a YAML config")
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument(
        "--restart", action="store_true", help="ignore an existing last.pt and start over"
    )
    add_overrides(p)
    p.set_defaults(func=cmd_train)


def _eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on the target val split")
    p.add_argument("checkpoint", help="a model.pt or last.pt written by train")
    add_overrides(p)
    p.set_defaults(func=cmd_eval)


def _calibrate(sub) -> None:
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
        "--teacher",
        choices=["shipped", "stage"],
        default="shipped",
        help="what DAKD (a)-(d) distil from: the scenario's shipped teacher (default; "
        "weights/embedded/teacher_da-SCENARIO.pt) or each seed's teacher-DA stage",
    )
    p.add_argument(
        "--teacher-steps",
        type=int,
        default=0,
        help="steps of the teacher-DA stage (default: train.steps)",
    )
    p.add_argument("--out", default="runs/calibration")
    add_overrides(p)
    p.set_defaults(func=cmd_calibrate)


def _pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the embedded backbones on domain-randomised scenes (ImageNet analogue)",
        description="Pretrain the config's networks on the 'randomized' scene family with the "
        "7 Cityscapes categories as labels, and write their weights and manifest.json to --out "
        "(what models.*.pretrained reads). Resumes an interrupted run from --work-dir.",
    )
    p.add_argument("config", nargs="?", default="configs/embedded.yaml")
    p.add_argument(
        "--networks", nargs="+", choices=["teacher", "student"], default=["student", "teacher"]
    )
    p.add_argument(
        "--teacher-da",
        nargs="+",
        metavar="SCENARIO",
        choices=["synth_to_real", "real_to_real"],
        help="instead of the backbones, make the shipped domain-adapted teacher of each "
        "scenario (dakd.recipes.da_teacher: its recipe, the teacher-DA stage with a weight average)",
    )
    p.add_argument("--steps", type=int, default=0, help="default: 3000 (teacher-DA: its recipe)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--eval-interval", type=int, default=0, help="default: 500 (teacher-DA: 100)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="weights/embedded")
    p.add_argument("--work-dir", default="runs/pretrain")
    add_overrides(p)
    p.set_defaults(func=cmd_pretrain)


def _scenes(sub) -> None:
    p = sub.add_parser("scenes", help="write sample images and labels of an embedded domain")
    p.add_argument("--domain", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    p.set_defaults(func=cmd_scenes)


def _models(sub) -> None:
    p = sub.add_parser("models", help="list the registered segmenters and their sizes")
    p.add_argument("--width", type=float, default=1.0)
    p.set_defaults(func=cmd_models)


def _deploy(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="measure a network's deployment figures: parameters, peak memory, latency, FLOPs",
        description="Build the config's student or teacher with random weights and measure, at "
        "a deployment input, its parameters, the peak memory of one inference pass (weights "
        "and input included), the median latency and the FLOPs (dakd.evaluation.deploy).",
    )
    p.add_argument("config", nargs="?", default="configs/embedded.yaml")
    p.add_argument("--network", choices=["student", "teacher"], default="student")
    p.add_argument(
        "--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"), help="input size"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2, help="untimed passes (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed passes (default 10)")
    p.add_argument(
        "--device", default=None, help="auto, cpu, cuda or cuda:N (default: train.device)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: train.threads)"
    )
    add_overrides(p)
    p.set_defaults(func=cmd_deploy)


def _data(sub) -> None:
    p = sub.add_parser("data", help="real datasets (docs/datasets.md)")
    data = p.add_subparsers(dest="data_command", required=True)
    p = data.add_parser(
        "check",
        help="check a dataset tree: layout, pairs, unreadable and wrongly sized files, labels",
        description="Check a dataset tree and print every problem with its path, then a "
        "summary (counts per split, sizes, class pixel frequencies). Exit status 1 when the "
        "check fails.",
    )
    p.add_argument("--dataset", required=True, help="cityscapes, gta5, bdd100k or synthia")
    p.add_argument("--root", default=None, help="the dataset folder (default: $DAKD_DATA/NAME)")
    p.add_argument(
        "--split", action="append", default=[], help="a split to check (repeatable; default: all)"
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="decode N pairs per split, spread evenly (default: every pair)",
    )
    p.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    p.add_argument("--all", action="store_true", help="list every problem (default: first 50)")
    p.set_defaults(func=cmd_data_check)


def main(argv: list[str] | None = None) -> int:
    from dakd.config import ConfigError
    from dakd.engine.state import NonFiniteLossError
    from dakd.models.checkpoint import CheckpointError
    from dakd.runtime.performance import OutOfMemory

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, OutOfMemory, ValueError) as err:
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
