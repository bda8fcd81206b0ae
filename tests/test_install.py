"""``pip install 'dakd[sweep]'`` outside the clone: the installed ``dakd sweep`` runs a spec given
by path, reading the base config and the weights the package ships (``dakd/_shipped``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _uv(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["uv", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _outside_env() -> dict[str, str]:
    """The environment without the clone's virtual environment or import path."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "RAY_ADDRESS", "UV_PROJECT_ENVIRONMENT")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.mark.slow
def test_an_installed_dakd_runs_a_spec_outside_the_clone(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: it makes the fresh virtual environment")
    env = _outside_env()
    constraints = tmp_path / "constraints.txt"  # the versions of uv.lock: what the cache holds
    _uv(
        "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev", "--extra", "sweep",
        "-q", "-o", str(constraints),
    )  # fmt: skip
    venv = tmp_path / "venv"
    _uv("venv", "-q", "--python", sys.executable, str(venv), cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _uv(
        "pip", "install", "-q", "--python", str(python), "-c", str(constraints), f"{ROOT}[sweep]",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    specs, work = tmp_path / "specs", tmp_path / "work"
    specs.mkdir()
    work.mkdir()
    shutil.copy(ROOT / "sweeps" / "quickstart.yaml", specs)  # base: ../configs/embedded.yaml
    where = subprocess.run(
        [str(python), "-c", "import dakd; print(dakd.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv)  # not the clone
    one = "search.distill.levels={grid: [[output]]}"  # one trial
    done = subprocess.run(
        [str(venv / "bin" / "dakd"), "sweep", "../specs/quickstart.yaml", "--smoke", "--set", one],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best trials of quickstart by final miou (of 1; 0 failed)" in done.stdout
    assert f"MLflow:   sqlite:///{work / 'runs' / 'mlflow.db'}" in done.stdout
    shipped = venv.glob("lib/python*/site-packages/dakd/_shipped/weights/embedded")
    assert "_shipped/weights/embedded/drn_d_22-w0.125-os2.pt" in done.stderr  # its student
    assert next(shipped, None) is not None
    assert (work / "runs" / "ray").is_dir() and (work / "runs" / "experiments").is_dir()


@pytest.mark.slow
def test_the_wheel_carries_the_shipped_files(tmp_path):
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: it builds the wheel")
    _uv("build", "-q", "--wheel", "-o", str(tmp_path), env=_outside_env())
    (wheel,) = tmp_path.glob("dakd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    weights = sorted(p.name for p in (ROOT / "weights" / "embedded").glob("*.pt"))
    assert "dakd/_shipped/configs/embedded.yaml" in names
    assert "dakd/_shipped/weights/embedded/manifest.json" in names
    assert {f"dakd/_shipped/weights/embedded/{n}" for n in weights} <= names
    assert "dakd/runtime/step_times.json" in names
    assert wheel.stat().st_size < 40e6  # the weights (37 MB) compress a little
