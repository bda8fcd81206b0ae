"""The core never imports Ray, MLflow, Optuna or PyArrow (the ``sweep`` extra): it imports and
trains in an interpreter where importing them fails.

Each check runs in a fresh interpreter that installs an import blocker on ``sys.meta_path``
before it imports anything of the project, so a module that imports ``mlflow`` at its top, or
through another module, fails here by name, whatever this test process has already imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dakd.optional_deps import SWEEP_MODULES
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
#: Modules of the tracking package that promise to load without the extra: the calibration
#: study (``python -m dakd calibrate``), the tag names and store locations the sweep driver
#: reads before MLflow has loaded, the options of ``python -m dakd tables``.
EXTRA_FREE_TRACKING = (
    "dakd.recipes.calibration",
    "dakd.recipes.calibration_targets",
    "dakd.tracking.cli",
    "dakd.tracking.locations",
    "dakd.tracking.tags",
)

BLOCKER = """
import sys

BLOCKED = {blocked!r}
early = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not early, f"imported before the blocker: {{early}}"


class SweepExtraBlocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: the core imports {{name}}", name=name)
        return None


sys.meta_path.insert(0, SweepExtraBlocker())
"""

#: Modules of the tracking package that build tables and plots from a runs table: they may
#: import PyArrow, never MLflow, Ray or Optuna (``python -m dakd tables --runs``).
TABLE_MODULES = (
    "dakd.tracking.cli",
    "dakd.tracking.drawing",
    "dakd.tracking.groups",
    "dakd.tracking.pareto",
    "dakd.tracking.placement",
    "dakd.tracking.plots",
    "dakd.tracking.results",
    "dakd.tracking.runs_table",
    "dakd.tracking.tables",
)
#: What the table modules never import.
NOT_FOR_TABLES = ("mlflow", "ray", "optuna")


def core_modules() -> list[str]:
    """Every module of ``dakd`` outside the sweep and tracking layers, plus the tracking modules
    that promise to load without the extra."""
    names = []
    for path in sorted((ROOT / "dakd").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[1:2] in (("sweep",), ("tracking",)):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names + list(EXTRA_FREE_TRACKING)


def run_blocked(
    code: str, cwd: Path, blocked: tuple[str, ...] = tuple(SWEEP_MODULES)
) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in which importing ``blocked`` (default: the sweep
    extra) fails."""
    script = BLOCKER.format(blocked=blocked) + code
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_blocker_blocks_every_module_of_the_extra(tmp_path):
    for name in ("mlflow", "mlflow.entities", "ray", "ray.tune", "optuna", "pyarrow"):
        done = run_blocked(f"import {name}", tmp_path)
        assert done.returncode != 0
        assert f"blocked: the core imports {name.split('.')[0]}" in done.stderr


def test_core_modules_import_and_train_without_the_sweep_extra(tmp_path):
    modules = core_modules()
    assert "dakd.engine.trainer" in modules and "dakd.recipes.stages" in modules
    assert not any(m.startswith(("dakd.sweep", "dakd.tracking.store")) for m in modules)
    cfg = {
        **TINY,
        "stage": "student_da",
        "name": "core",
        "out_dir": str(tmp_path / "runs"),
        "teacher_cache": {"dir": str(tmp_path / "cache")},
        "train": {**TINY["train"], "steps": 1, "eval_interval": 1},
    }
    code = f"""
import importlib
import json

for name in {modules!r}:
    try:
        importlib.import_module(name)
    except ImportError as err:
        raise SystemExit(f"{{name}}: {{err}}") from err

from dakd.config import from_dict
from dakd.engine.trainer import train

cfg = from_dict(json.loads({json.dumps(cfg)!r}))
result = train(cfg)
print(json.dumps({{"step": result.metrics["step"], "miou": result.metrics["miou"]}}))
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
"""
    done = run_blocked(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 1 and 0.0 <= metrics["miou"] <= 100.0
    assert (tmp_path / "runs").is_dir()


def test_the_command_line_runs_without_the_sweep_extra(tmp_path):
    code = """
import runpy

sys.argv = ["python -m dakd", "train", "--help"]
try:
    runpy.run_module("dakd", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
"""
    done = run_blocked(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout and "--set KEY=VALUE" in done.stdout


def test_the_sweep_and_the_tables_say_how_to_install_the_extra(tmp_path):
    """Without the extra, ``sweeps/run.py`` and ``analysis/tables.py`` stop with one line that
    names the install, not a traceback."""
    for script, args in (
        ("sweeps/run.py", ["sweeps/quickstart.yaml"]),
        ("analysis/tables.py", ["--experiment", "quickstart"]),
        ("analysis/tables.py", ["--runs", "runs.parquet"]),
    ):
        code = f"""
import runpy

sys.argv = [{script!r}, *{args!r}]
try:
    runpy.run_path({str(ROOT / script)!r}, run_name="__main__")
except SystemExit as stop:
    print("exit", stop.code)
"""
        done = run_blocked(code, ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] == "exit 2"
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'dakd[sweep]'" in lines[0], done.stderr


def test_the_tables_import_without_mlflow_ray_or_optuna(tmp_path):
    """The modules that build tables and plots from a runs table load where importing MLflow,
    Ray and Optuna fails; reading runs from MLflow does not (the blocker works)."""
    code = f"""
import importlib

for name in {TABLE_MODULES!r}:
    try:
        importlib.import_module(name)
    except ImportError as err:
        raise SystemExit(f"{{name}}: {{err}}") from err
assert "pyarrow" in sys.modules
try:
    import dakd.tracking.load
except ImportError as err:
    print("load:", err)
"""
    done = run_blocked(code, ROOT, NOT_FOR_TABLES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "load: blocked: the core imports mlflow"
