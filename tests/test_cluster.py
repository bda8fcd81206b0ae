"""Sweeps on a Ray cluster: the storage every node must reach, and what a data-parallel trial
(``resources.workers`` > 1) asks of a spec."""

from __future__ import annotations

from pathlib import Path

import pytest

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.sweep.driver import check_cluster_storage
from dakd.sweep.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]


def _spec_file(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "experiment:\n"
        f"  base: {ROOT / 'configs' / 'embedded.yaml'}\n"
        "  stage: source_only\n" + body
    )
    return path


# -- validation (no Ray) ----------------------------------------------------------------------


def test_workers_must_split_the_global_batch(tmp_path):
    path = _spec_file(tmp_path, "w", "resources: {workers: 3}\n")  # embedded batch: 8
    with pytest.raises(SpecError, match=r"experiment\.data\.batch_size.*8.*workers \(3\)"):
        load_spec(path)
    path = _spec_file(
        tmp_path, "w", "search:\n  data.batch_size: {choice: [4, 6]}\nresources: {workers: 4}\n"
    )
    with pytest.raises(SpecError, match=r"search\.data\.batch_size.*6"):
        load_spec(path)
    assert load_spec(path, ["resources.workers=2"]).resources.workers == 2


def test_workers_cannot_share_one_pinned_gpu(tmp_path):
    path = _spec_file(tmp_path, "w", "resources: {workers: 2, gpu: 0.5}\n")
    with pytest.raises(SpecError, match=r"experiment\.train\.device.*cuda:1"):
        load_spec(path, ["experiment.train.device=cuda:1"])
    spec = load_spec(path)  # fractional GPUs per worker are allowed
    assert (spec.resources.workers, spec.resources.gpu) == (2, 0.5)


def test_cluster_storage_must_be_shared(tmp_path):
    path = _spec_file(tmp_path, "s", "")
    relative = load_spec(path, ["storage=runs/ray"])
    with pytest.raises(SpecError, match=r"storage: 'runs/ray' is a relative folder.*2 nodes"):
        check_cluster_storage(relative, "auto", 2, print)
    with pytest.raises(SpecError, match=r"storage: .*relative"):
        check_cluster_storage(relative, "ray://head:10001", 1, print)

    lines: list[str] = []
    check_cluster_storage(relative, None, 1, lines.append)  # one machine: nothing to share
    assert lines == []
    check_cluster_storage(load_spec(path, [f"storage={tmp_path}"]), "auto", 2, lines.append)
    assert any(line.startswith("warning: storage:") for line in lines)
    assert any(line.startswith("warning: tracking.uri:") for line in lines)
    lines.clear()
    uri = load_spec(path, [f"storage={tmp_path.as_uri()}", "tracking.uri=http://mlflow:5000"])
    check_cluster_storage(uri, "auto", 2, lines.append)
    assert lines == []
    sqlite = load_spec(path, [f"storage={tmp_path.as_uri()}", "tracking.uri=sqlite:///x.db"])
    check_cluster_storage(sqlite, "auto", 2, lines.append)
    assert [line.split(":")[1] for line in lines] == [" tracking.uri"]
