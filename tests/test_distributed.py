"""Data-parallel training on CPU (gloo, 2 processes) against single-process training.

One spawn of two worker processes runs every distributed scenario (the start-up of a process
is most of the cost); the single-process references run in the test process.

BatchNorm and the comparison. Without SyncBatchNorm (CUDA only in torch) each process
normalises over its own share of the batch, and at these sizes that changes the gradient about
as much as drawing another batch does (cosine about 0.6 at initialisation), so no weight
tolerance against a full-batch run would mean anything. Two comparisons instead:

* exact: with BatchNorm replaced by GroupNorm (per-image statistics), 2 processes with b images
  each end with the weights of 1 process with 2b images (float tolerance 1e-5 relative);
* BatchNorm: 2 processes with b images each equal 1 process with 2b images whose student
  normalises each share of b images separately (what per-process BatchNorm computes), same
  tolerance; the plain full-batch run differs from both by far more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

import dakd.engine.state
import dakd.evaluation.run_metrics
import dakd.runtime.builders
import dakd.teacher.outputs
from dakd.config import from_dict
from dakd.engine.trainer import train
from dakd.models import checkpoint as ckpt
from dakd.runtime.device import check_world
from dakd.runtime.distributed import World
from dakd.runtime.performance import TIMING_KEYS
from tests.conftest import TINY

WORLD = 2
BATCH = 4  # global: 2 images per process
BASE = {
    **TINY,
    "stage": "dakd",
    "paradigm": "c",
    "data": {**TINY["data"], "batch_size": BATCH, "val_size": 5, "val_batch_size": 2},
    "train": {**TINY["train"], "steps": 3, "eval_interval": 3},
}
RTOL, ATOL = 1e-5, 1e-6


def config(root: Path, name: str, teacher: Path, **dotted):
    cfg = from_dict(
        {**BASE, "out_dir": str(root), "teacher": str(teacher)},
        {k.replace("__", "."): v for k, v in dotted.items()},
    )
    cfg.name = name
    return cfg


# -- networks for the comparisons -------------------------------------------------------------
build_network = dakd.runtime.builders.build_network


def _use_network(build) -> None:
    """Every builder of a run's networks (student, teacher) builds with ``build``."""
    for module in (dakd.runtime.builders, dakd.engine.state, dakd.teacher.outputs):
        module.build_network = build


def group_norm_network(spec):
    """The registered network with every BatchNorm2d replaced by GroupNorm(1, C)."""
    model = build_network(spec)

    def swap(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(1, child.num_features))
            else:
                swap(child)

    swap(model)
    return model


def per_share_network(spec):
    """The registered network, run on each process's share of a batch separately."""
    model = build_network(spec)
    whole = model.forward

    def forward(images):
        outs = [whole(part) for part in images.chunk(WORLD)]
        return {level: torch.cat([o[level] for o in outs]) for level in outs[0]}

    model.forward = forward
    return model


def save_teacher(path: Path, build) -> Path:
    spec = ckpt.network_spec(BASE["models"]["teacher"]["name"], 0.0625, 19)
    torch.manual_seed(7)
    ckpt.save({"network": spec, "model": build(spec).state_dict()}, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the worker processes -----------------------------------------------------------------------
def _cli_as_torchrun(rank: int, root: Path, port: int) -> None:
    """``python -m dakd train`` with the variables torchrun sets for each process."""
    from dakd.__main__ import main

    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": WORLD, "MASTER_ADDR": "127.0.0.1"}
    os.environ.update({k: str(v) for k, v in env.items()} | {"MASTER_PORT": str(port)})
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", str(root / "cli.yaml"), "--set", "train.sync_bn=true"])
    for key in env:
        os.environ.pop(key)
    result = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    (root / f"cli-rank{rank}.json").write_text(json.dumps(result))


def _worker(rank: int, root: Path, ports: tuple[int, int]) -> None:
    torch.set_num_threads(1)
    _cli_as_torchrun(rank, root, ports[0])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=WORLD
    )
    try:
        # exact comparison: no batch statistics
        _use_network(group_norm_network)
        train(config(root, "gn-ddp", root / "teacher-gn.pt"))
        _use_network(build_network)

        # BatchNorm; each rank writes to its own folder: only rank 0 may write anything
        reports = []
        own = config(root / f"rank{rank}", "bn-ddp", root / "teacher.pt")
        train(own, report=lambda m, p: reports.append([m, None if p is None else str(p)]))
        (root / f"reports-rank{rank}.json").write_text(json.dumps(reports))
        try:  # rank 0 now finds a finished last.pt in its folder, rank 1 none in its own
            train(own)
        except ckpt.CheckpointError as err:
            (root / f"resume-error-rank{rank}.txt").write_text(str(err))

        # the teacher-output cache, built by both processes at once (they take turns on its
        # lock) and read by both, against the live teacher
        small = {"data__train_size": 8, "teacher_cache__dir": str(root / "cache")}
        train(config(root, "live-small", root / "teacher.pt", teacher_cache__mode="off", **small))
        cached = config(
            root, "cached-small", root / "teacher.pt", teacher_cache__mode="on", **small
        )
        result = train(cached)
        (root / f"cached-rank{rank}.json").write_text(json.dumps(result.cached_domains))

        # resume in a shared folder: stop after 2 steps, continue to 3 (evaluated at every
        # step, so that the metrics file shows which steps each call ran)
        split = config(root, "bn-split", root / "teacher.pt", train__eval_interval=1)
        train(split, stop_after=2)
        resumed = []
        train(split, report=lambda m, p: resumed.append(m["step"]))
        (root / f"resumed-steps-rank{rank}.json").write_text(json.dumps(resumed))

        # this process's share of the first global batch, through the trainer
        shared = dakd.engine.state.TrainState(config(root, "x", root / "teacher.pt"))
        torch.save(shared.source.batch(0), root / f"batch-rank{rank}.pt")

        # distributed evaluation of a finished network
        model, _ = dakd.runtime.builders.network_from_checkpoint(root / "bn-single" / "model.pt")
        cfg = config(root, "eval", root / "teacher.pt")
        _, _, val = dakd.runtime.builders.build_data(cfg)
        metrics = dakd.evaluation.run_metrics.evaluate_on(model, val, cfg, torch.device("cpu"))
        if rank == 0:
            np.save(root / "eval-ddp.npy", metrics.matrix)

        # a NaN loss on one process stops both at the same step (none waits for the other)
        if rank == 1:
            dakd.engine.state.losses.seg_ce = lambda logits, labels: logits.sum() * torch.nan
        try:
            train(config(root, "nan", root / "teacher.pt"))
        except dakd.engine.state.NonFiniteLossError as err:
            (root / f"nan-rank{rank}.txt").write_text(str(err))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process references here, then both processes through every scenario."""
    root = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        save_teacher(root / "teacher.pt", build_network)
        save_teacher(root / "teacher-gn.pt", group_norm_network)
        refs = {"bn-single": train(config(root, "bn-single", root / "teacher.pt"))}
        _use_network(group_norm_network)
        refs["gn-single"] = train(config(root, "gn-single", root / "teacher-gn.pt"))
        _use_network(per_share_network)
        refs["bn-per-share"] = train(config(root, "bn-per-share", root / "teacher.pt"))
    finally:
        _use_network(build_network)
        torch.set_num_threads(threads)
    cli = {**BASE, "out_dir": str(root), "teacher": str(root / "teacher.pt"), "name": "cli"}
    (root / "cli.yaml").write_text(yaml.safe_dump(cli))
    mp.spawn(_worker, args=(root, (free_port(), free_port())), nprocs=WORLD)
    return root, refs


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Trained parameters of a checkpoint: student and discriminators, no BatchNorm statistics."""
    state = ckpt.load(path)
    out = {f"model.{k}": v for k, v in state["model"].items() if "running" not in k}
    out.update({f"disc.{k}": v for k, v in state.get("discriminators", {}).items()})
    return {k: v for k, v in out.items() if "num_batches" not in k}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=RTOL, atol=ATOL, msg=key)


def distance(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


# -- (a) two processes with b images each = one process with 2b images -------------------------
def test_two_processes_match_one_with_the_global_batch_exactly_without_batch_norm(runs):
    root, refs = runs
    assert_same_weights(root / "gn-single" / "last.pt", root / "gn-ddp" / "last.pt")
    single, ddp = refs["gn-single"].metrics, ckpt.load(root / "gn-ddp" / "last.pt")["history"][-1]
    for term in ("loss/total", "loss/seg", "loss/kl_source", "loss/kl_target", "loss/disc"):
        assert ddp[term] == pytest.approx(single[term], rel=RTOL), term


def test_two_processes_with_batch_norm_match_one_that_normalises_each_share(runs):
    root, _ = runs
    ddp = root / "rank0" / "bn-ddp" / "last.pt"
    assert_same_weights(root / "bn-per-share" / "last.pt", ddp)
    # full-batch statistics are another computation: far outside the tolerance
    assert distance(root / "bn-single" / "last.pt", ddp) > 1000 * ATOL


def test_each_process_takes_a_disjoint_share_of_the_global_batch(runs):
    root, _ = runs
    shares = [torch.load(root / f"batch-rank{r}.pt") for r in range(WORLD)]
    assert all(s["image"].shape[0] == BATCH // WORLD for s in shares)
    single = dakd.runtime.builders.build_data(config(root, "x", root / "teacher.pt"))[0].batch(0)
    for key in ("image", "label"):
        assert torch.equal(torch.cat([s[key] for s in shares]), single[key])


def test_resume_under_ddp_ends_with_the_weights_of_an_uninterrupted_run(runs):
    """The resumed call runs the one remaining step (not a restart that happens to end alike):
    every process reports step 3 alone, the metrics file holds each step once, and the whole
    state (BatchNorm statistics and discriminators included) equals the uninterrupted run's."""
    root, _ = runs
    whole, split = root / "rank0" / "bn-ddp" / "last.pt", root / "bn-split" / "last.pt"
    for rank in range(WORLD):
        assert json.loads((root / f"resumed-steps-rank{rank}.json").read_text()) == [3]
    lines = (root / "bn-split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert ckpt.load(split)["step"] == 3
    assert [h["step"] for h in ckpt.load(split)["history"]] == [1, 2, 3]
    a, b = ckpt.load(whole), ckpt.load(split)
    for part in ("model", "discriminators"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert any("running_mean" in k for k in a["model"])


def test_processes_that_see_different_checkpoints_stop_with_one_message(runs):
    root, _ = runs
    for rank in range(WORLD):
        message = (root / f"resume-error-rank{rank}.txt").read_text()
        assert "start from different steps (0 to 3)" in message and "shared filesystem" in message


def test_a_nan_loss_on_one_process_stops_every_process(runs):
    root, _ = runs
    rank0, rank1 = ((root / f"nan-rank{r}.txt").read_text() for r in range(WORLD))
    assert rank0.startswith("step 0: the training loss is not finite on another process")
    assert rank1.startswith("step 0: the training loss is not finite (") and "seg=nan" in rank1


# -- (b) distributed evaluation = single-process evaluation -------------------------------------
def test_distributed_evaluation_equals_single_process_evaluation(runs):
    root, refs = runs
    matrix = np.load(root / "eval-ddp.npy")
    reference = refs["bn-single"].evaluation.matrix
    val = dakd.runtime.builders.build_data(config(root, "x", root / "teacher.pt"))[2]
    labelled = sum(int((val[i]["label"] != 255).sum()) for i in range(5))
    assert matrix.sum() == labelled  # every image of both shares (3 + 2), counted once
    assert np.array_equal(matrix, reference)


def test_a_run_reports_the_evaluation_of_the_weights_it_saves(runs):
    root, _ = runs
    run = root / "rank0" / "bn-ddp"
    model, _ = dakd.runtime.builders.network_from_checkpoint(run / "model.pt")
    cfg = config(root, "x", root / "teacher.pt")
    single = dakd.evaluation.run_metrics.evaluate_on(
        model, dakd.runtime.builders.build_data(cfg)[2], cfg, "cpu"
    )
    reported = ckpt.load(run / "last.pt")["history"][-1]
    assert reported["miou"] == 100.0 * single.miou
    assert reported["pixel_acc"] == 100.0 * single.pixel_accuracy


# -- (c) only rank 0 writes; every rank reports the same metrics --------------------------------
def test_only_rank_zero_writes_files(runs):
    root, _ = runs
    written = {p.name for p in (root / "rank0" / "bn-ddp").iterdir()}
    assert {"last.pt", "model.pt", "metrics.jsonl", "config.json"} <= written
    assert not (root / "rank1").exists()


def test_reports_reach_every_rank_with_the_checkpoint_on_rank_zero(runs):
    root, _ = runs
    (m0, path0), (m1, path1) = (
        json.loads((root / f"reports-rank{r}.json").read_text())[0] for r in range(WORLD)
    )
    assert path0 == str(root / "rank0" / "bn-ddp" / "last.pt") and path1 is None
    shared = {k for k in m0 if k not in TIMING_KEYS}
    assert shared == {k for k in m1 if k not in TIMING_KEYS} and "loss/total" in shared
    assert all(m0[k] == m1[k] for k in shared)


# -- the command line as torchrun starts it ------------------------------------------------------
def test_command_line_under_torchrun_variables(runs):
    root, _ = runs
    rank0, rank1 = (json.loads((root / f"cli-rank{r}.json").read_text()) for r in range(WORLD))
    assert rank0["code"] == rank1["code"] == 0, rank0["stderr"] + rank1["stderr"]
    assert "data-parallel: 2 processes, global batch 4" in rank0["stdout"]
    assert rank1["stdout"] == "" and rank1["stderr"] == ""
    assert rank0["stderr"].count("train.sync_bn needs CUDA") == 1
    # sync_bn is off on CPU: the same weights as the BatchNorm run above
    a, b = weights(root / "cli" / "model.pt"), weights(root / "rank0" / "bn-ddp" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_global_batch_must_split_evenly():
    cfg = from_dict({**TINY, "stage": "student_da"}, {"data.batch_size": 4})
    check_world(cfg, World(0, 2))
    with pytest.raises(ValueError, match=r"data\.batch_size: 4 .* 3 data-parallel processes"):
        check_world(cfg, World(1, 3))


def test_processes_read_the_teacher_cache_they_built_together_as_the_live_teacher(runs):
    root, _ = runs
    for rank in range(WORLD):
        assert json.loads((root / f"cached-rank{rank}.json").read_text()) == ["source", "target"]
    assert len([p for p in (root / "cache").iterdir() if p.is_dir()]) == 2  # one per domain
    live = ckpt.load(root / "live-small" / "last.pt")
    cached = ckpt.load(root / "cached-small" / "last.pt")
    for part in ("model", "discriminators"):
        assert all(torch.equal(live[part][k], cached[part][k]) for k in live[part]), part
