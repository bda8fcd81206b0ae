"""Data-parallel processes: which rank this is, and joining the group ``torchrun`` describes.

The trainer reads the world from torch's default process group (:func:`current_world`), so it
trains data-parallel under whatever started the group: ``torchrun`` through the command line
(:func:`torchrun_group`), ``torch.multiprocessing`` in the tests and the scaling benchmark, or
any launcher that calls ``torch.distributed.init_process_group`` before ``dakd.engine.trainer.train``.
Without a group it is one process, as always.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` data-parallel processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The rank and size of the default process group; one process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def uses_cuda(device: str) -> bool:
    """Whether ``train.device`` (auto, cpu, cuda, cuda:N) puts the ranks on GPUs here."""
    return device != "cpu" and torch.cuda.is_available()


@contextmanager
def torchrun_group(device: str = "auto") -> Iterator[World]:
    """Join the process group described by torchrun's variables (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) for the block, and leave it after.

    Backend ``nccl`` with rank r on ``cuda:LOCAL_RANK`` when ``device`` resolves to CUDA, else
    ``gloo`` on CPU. With ``WORLD_SIZE`` unset or 1 there is nothing to join: one process.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current_world()
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if uses_cuda(device):
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        dist.init_process_group("gloo")
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()
