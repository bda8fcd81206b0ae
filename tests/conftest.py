"""Shared fixtures: tiny experiments that train in a second or two on CPU."""

import pytest
import torch

from dakd.config import from_dict

TINY = {
    "data": {
        "crop_size": [32, 64],
        "batch_size": 2,
        "val_batch_size": 4,
        "val_size": 4,
        "cache_dir": "",
    },
    "models": {
        "teacher": {"name": "drn_d_38", "width": 0.0625},
        "student": {"name": "drn_d_22", "width": 0.0625},
        "discriminator_ndf": 4,
    },
    "optim": {"lr": 0.01},
    "train": {"steps": 4, "eval_interval": 2, "threads": 1, "progress": False},
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny(tmp_path):
    """``tiny(stage=..., **dotted)`` -> a validated tiny config writing under ``tmp_path``."""

    def make(stage="student_da", name=None, **changes):
        overrides = {k.replace("__", "."): v for k, v in changes.items()}
        base = {
            **TINY,
            "stage": stage,
            "out_dir": str(tmp_path / "runs"),
            "teacher_cache": {"dir": str(tmp_path / "cache" / "teacher")},
        }
        cfg = from_dict(base, overrides)
        cfg.name = name or stage
        return cfg

    return make
