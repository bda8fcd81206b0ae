"""bench/gpu_step.py: its arithmetic against hand-computed values, the paper config it writes,
and a whole quick run on the CPU in an interpreter where the sweep extra cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.test_core_imports import run_blocked

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^paper step = (\d+\.\d) ms \(bf16\), (\d+\.\d)% of matmul peak$")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_step = _load()


def test_tflops_and_the_share_of_the_peak():
    assert gpu_step.tflops(3e12, 0.5) == pytest.approx(6.0)
    assert gpu_step.tflops(24e9, 0.012) == pytest.approx(2.0)
    assert gpu_step.matmul_flops(3) == 54  # 9 terms of 3 products and 3 sums each
    assert gpu_step.matmul_flops(8192) == 2 * 8192**3
    assert gpu_step.share(0.25, 2.0) == pytest.approx(12.5)


def test_copy_counts_per_step_add_up_rows_and_ignore_other_ops():
    rows = [("aten::copy_", 10), ("aten::mm", 7), ("aten::to", 4), ("aten::copy_", 2)]
    assert gpu_step.copy_counts(rows, 2) == {
        "aten::copy_": 6.0,
        "aten::to": 2.0,
        "aten::contiguous": 0.0,
        "aten::clone": 0.0,
    }


def test_window_rate_counts_the_steps_inside_the_window():
    # 3 steps ended by 1.5 s inside a 2 s window; the one ending at 2.2 s is outside
    assert gpu_step.window_rate([0.5, 1.0, 1.5, 2.2], 2.0) == pytest.approx(2.0)
    # a step longer than the window: that step alone
    assert gpu_step.window_rate([4.0], 2.0) == pytest.approx(0.25)


def test_scaled_sizes():
    assert gpu_step.scaled([1052, 1914], 0.125) == [132, 239]
    assert gpu_step.scaled([512, 1024], 1.0) == [512, 1024]
    assert gpu_step.scaled([4, 4], 0.01) == [1, 1]


def test_paper_config_is_the_sweeps_experiment_without_stages_or_weights(tmp_path):
    out = gpu_step.paper_config(tmp_path / "data", 0.25, tmp_path / "paper.yaml")
    exp = yaml.safe_load(out.read_text())
    assert "teacher" not in exp and "init" not in exp
    assert exp["models"]["teacher"] == {"name": "drn_d_38", "width": 1.0, "pretrained": ""}
    assert exp["models"]["student"]["name"] == "drn_d_22"
    assert exp["models"]["student"]["pretrained"] == ""
    data = exp["data"]
    assert data["dataset"] == "real"
    assert data["source_root"] == str(tmp_path / "data" / "gta5")
    assert data["target_root"] == str(tmp_path / "data" / "cityscapes")
    assert data["source_resize"] == [180, 320]
    assert data["source_crop"] == data["target_crop"] == [128, 256]
    assert data["batch_size"] == 2


def test_settings_default_overrides_nothing_and_the_last_line_settings_always_run():
    assert gpu_step.SETTINGS["default"] == []
    assert "train.amp=bf16" in gpu_step.SETTINGS["bf16"]
    assert "train.compile=true" in gpu_step.SETTINGS["compile"]
    args = gpu_step.parse_args(["--device", "cpu", "--settings", "fast"])
    assert args.settings == ["fast", "default", "bf16"]
    assert args.processes == [1, 2, 4]
    args = gpu_step.parse_args(["--device", "cpu"])
    assert "compile" not in args.settings  # minutes of inductor on a CPU unless asked for
    args = gpu_step.parse_args(["--device", "cuda", "--quick"])
    assert args.settings == ["default", "bf16"]
    with pytest.raises(SystemExit):
        gpu_step.parse_args(["--settings", "turbo"])


def test_quick_run_on_the_cpu_prints_the_table_and_the_last_line(tmp_path, monkeypatch):
    # the main process runs where importing Ray, MLflow, Optuna or PyArrow fails; one torch
    # thread per process: on a shared machine, cores other jobs use make threads wait longest
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    figures = tmp_path / "figures.json"
    argv = [
        "bench/gpu_step.py",
        "--quick",
        "--scale",
        "0.0625",
        "--device",
        "cpu",
        "--data",
        str(tmp_path / "data"),
        "--json",
        str(figures),
    ]
    code = (
        f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path({argv[0]!r}, run_name='__main__')"
    )
    done = run_blocked(code, ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert "float32 torch.mm peak" in lines[-2]  # on a CPU the peak's dtype is said
    rows = {line.split()[0].rstrip("*") for line in lines if line[:1].isalpha()}
    assert {"default", "bf16", "summary"} <= rows
    assert "N=1: " in done.stdout and "data loader (prefetch 4)" in done.stdout
    assert "copies per step: aten::copy_" in done.stdout

    saved = json.loads(figures.read_text())
    assert list(saved["settings"]) == ["default", "bf16"]
    bf16 = saved["settings"]["bf16"]
    assert float(match[1]) == pytest.approx(1000 * bf16["step_s"]["live"], abs=0.06)
    assert float(match[2]) == pytest.approx(bf16["share"]["live"], abs=0.06)
    assert bf16["speed"]["amp"] == "bfloat16" and bf16["speed"]["channels_last"]
    assert bf16["flops"]["live"] > bf16["flops"]["cached"] > 0  # the cache skips the teacher
    assert saved["settings"]["default"]["overrides"][-1] == "train.device=cpu"  # no switch set
    assert [p["processes"] for p in saved["processes"]] == [1]
    assert (tmp_path / "data" / "gta5" / "images" / "00001.png").exists()


def test_the_tracking_load_bench_logs_the_names_a_dakd_b_trial_reports():
    """bench/tracking_load.py writes its metric names out (its writers stay free of torch): they
    are the names a DAKD (b) run reports, so the load it measures is a real trial's."""
    from dakd.config import ExperimentConfig
    from dakd.evaluation.run_metrics import reported_metrics

    spec = importlib.util.spec_from_file_location(
        "tracking_load", ROOT / "bench" / "tracking_load.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reported = set(reported_metrics(ExperimentConfig()))
    logged = {name for name in bench.EVAL_METRICS if name.startswith(("iou/", "loss/"))}
    assert len(logged) == 19 + 8
    assert logged <= reported, sorted(logged - reported)
