"""Stages trained once and reused; the calibration study end to end on a tiny config."""

import json

import yaml

from dakd.config import from_dict, load_config
from dakd.pipeline import CALIBRATION_ROWS, calibrate
from tests.conftest import TINY


def test_calibration_runs_every_row_and_reuses_finished_stages(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "runs")}))
    logs = []
    summary = calibrate(
        str(config), ["synth_to_real"], [0], distill_steps=2, out=tmp_path / "cal", log=logs.append
    )
    rows = summary["results"]["synth_to_real"]
    assert list(rows) == [name for name, _ in CALIBRATION_ROWS]
    assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in rows.values())
    assert sum(line.startswith("training") for line in logs) == len(CALIBRATION_ROWS)
    for name in ("calibration.md", "calibration.json", "calibration.png"):
        assert (tmp_path / "cal" / name).stat().st_size > 0
    assert "| DAKD (c) |" in (tmp_path / "cal" / "calibration.md").read_text()

    logs.clear()
    again = calibrate(str(config), ["synth_to_real"], [0], distill_steps=2, log=logs.append)
    assert not any(line.startswith("training") for line in logs)  # every stage reused
    assert again["results"] == summary["results"]
    saved = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert saved["results"] == summary["results"]


def test_stages_ignore_the_network_they_do_not_train():
    """Two DAKD configs that differ only in the teacher share one student-DA baseline (and the
    other way round); the stage that trains the changed network is not shared."""
    from dakd.pipeline import requirements

    base = load_config(None, ["stage=dakd", "teacher=auto", "init=auto"])
    wide_teacher = from_dict(base.to_dict(), {"models.teacher.width": 0.5})
    wide_student = from_dict(base.to_dict(), {"models.student.width": 0.25})
    deps = requirements(base)
    assert requirements(wide_teacher)["init"].name == deps["init"].name
    assert requirements(wide_teacher)["teacher"].name != deps["teacher"].name
    assert requirements(wide_student)["teacher"].name == deps["teacher"].name
    assert requirements(wide_student)["init"].name != deps["init"].name
    # the stage config keeps the network it trains, whatever the defaults are
    assert requirements(wide_teacher)["teacher"].models.teacher.width == 0.5
    assert requirements(wide_student)["init"].models.student.width == 0.25


def test_calibration_targets_by_hand():
    from dakd.pipeline import calibration_targets, format_calibration

    results = {
        "s": {
            "source-only": [5.0, 9.0],
            "oracle": [20.0, 20.0],  # gaps 15 and 11: mean 13, met in every seed
            "teacher-DA": [14.0, 10.0],
            "student-DA": [10.0, 9.0],  # leads 4 and 1: mean 2.5, not met
            "student-DA + extra steps": [10.0, 12.0],
            "DAKD (c)": [12.0, 11.0],  # +2 and -1: mean +0.5, met, not in every seed
        }
    }
    checks = {c["target"].split()[0]: c for c in calibration_targets(results)}
    so, teacher, dakd = checks["source-only"], checks["teacher-DA"], checks["DAKD"]
    assert so["difference"] == 13.0 and so["per_seed"] == [15.0, 11.0]
    assert so["met"] and so["every_seed"]
    assert teacher["difference"] == 2.5 and not teacher["met"] and not teacher["every_seed"]
    assert dakd["difference"] == 0.5 and dakd["per_seed"] == [2.0, -1.0]
    assert dakd["met"] and not dakd["every_seed"]
    table = format_calibration(results, [0, 1])
    assert "| s | DAKD (c) beats the fair baseline | +0.5 | +2.0, -1.0 | yes | no |" in table
