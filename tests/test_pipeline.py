"""Stages trained once and reused; the calibration study end to end on a tiny config."""

import json

import numpy as np
import pytest
import yaml

from dakd.config import from_dict, load_config
from dakd.recipes.calibration import CALIBRATION_ROWS, calibrate
from tests.conftest import TINY


def test_calibration_runs_every_row_and_reuses_finished_stages(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "runs")}))
    logs = []
    summary = calibrate(
        str(config),
        ["synth_to_real"],
        [0],
        distill_steps=2,
        out=tmp_path / "cal",
        log=logs.append,
        teacher="stage",  # the tiny teacher: DAKD distils from each seed's teacher-DA stage
    )
    rows = dict(summary["results"]["synth_to_real"])
    assert list(rows) == [name for name, _ in CALIBRATION_ROWS]
    assert rows.pop("teacher (shipped)") == []  # not a row when DAKD distils from the stage
    assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in rows.values())
    assert sum(line.startswith("training") for line in logs) == len(CALIBRATION_ROWS) - 1
    for name in ("calibration.md", "calibration.json", "calibration.png"):
        assert (tmp_path / "cal" / name).stat().st_size > 0
    assert "| DAKD (c) |" in (tmp_path / "cal" / "calibration.md").read_text()
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["torch"]

    logs.clear()
    again = calibrate(
        str(config), ["synth_to_real"], [0], distill_steps=2, log=logs.append, teacher="stage"
    )
    assert not any(line.startswith("training") for line in logs)  # every stage reused
    assert again["results"] == summary["results"]
    saved = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert saved["results"] == summary["results"]


def test_the_fair_baseline_trains_on_from_the_student_da_stage_of_its_dakd_runs():
    """One definition, shared by sweeps and the calibration: stage student_da, init auto (the
    same student-DA stage the DAKD runs start from), DAKD's schedule, no distillation keys."""
    from dakd.recipes.stages import fair_baseline_config, requirements

    dakd = load_config(
        None,
        ["stage=dakd", "teacher=auto", "init=auto", "train.steps=300", "train.eval_interval=100"],
    )
    stages = {"train.steps": 500, "train.eval_interval": 250}
    fair = fair_baseline_config(dakd, stages)
    assert fair.stage == "student_da" and fair.init == "auto"
    assert (fair.train.steps, fair.train.eval_interval) == (300, 100)
    assert requirements(fair, stages)["init"].name == requirements(dakd, stages)["init"].name
    assert requirements(fair, stages)["init"].train.steps == 500
    # DAKD runs that differ only in what they distil share one fair baseline
    other = from_dict(dakd.to_dict(), {"loss.kl": 0.5, "paradigm": "b"})
    assert fair_baseline_config(other, stages).name == fair.name
    longer = from_dict(dakd.to_dict(), {"train.steps": 600})
    assert fair_baseline_config(longer, stages).name != fair.name


def test_stages_ignore_the_network_they_do_not_train():
    """Two DAKD configs that differ only in the teacher share one student-DA baseline (and the
    other way round); the stage that trains the changed network is not shared."""
    from dakd.recipes.stages import requirements

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
    from dakd.recipes.calibration import format_calibration
    from dakd.recipes.calibration_targets import calibration_targets

    results = {
        "synth_to_real": {
            "source-only": [30.0, 8.0],  # below student-DA in seed 1 only
            "oracle": [50.0, 52.0],  # >= 50 in both seeds
            "teacher-DA": [14.0, 10.0],
            "teacher (shipped)": [16.0, 16.0],  # leads student-DA by 6 and 7
            "student-DA": [10.0, 9.0],  # mean 9.5, below the v2 floor of 12.3
            "student-DA + extra steps": [10.0, 12.0],  # above student-DA in seed 1 only
            "DAKD (a)": [9.0, 9.0],
            "DAKD (b)": [9.0, 14.5],
            "DAKD (c)": [12.0, 11.0],  # +2 and -1 over the fair baseline
            "DAKD (d)": [8.0, 13.0],  # -2 and +1
            "oracle teacher": [55.0, 55.0],
            "DAKD (b), oracle teacher": [16.0, 13.0],  # +6 and +4 over student-DA
        }
    }
    checks = {c["target"]: c for c in calibration_targets(results)}
    lead = checks["teacher (shipped) >= student-DA + 5"]
    assert lead["per_seed"] == [6.0, 7.0] and lead["every_seed"]
    best = checks["best DAKD paradigm >= fair baseline + 2"]
    assert best["per_seed"] == [2.0, 2.5] and best["every_seed"]  # (c) in seed 0, (b) in seed 1
    c, d = checks["DAKD (c) >= fair baseline + 1"], checks["DAKD (d) >= fair baseline + 1"]
    assert c["per_seed"] == [2.0, -1.0] and c["met"] is False and not c["every_seed"]
    assert d["per_seed"] == [-2.0, 1.0] and not d["every_seed"]
    order = checks["source-only < student-DA"]
    assert order["per_seed"] == [-20.0, 1.0] and not order["every_seed"]
    fair = checks["student-DA < fair baseline"]
    assert fair["per_seed"] == [0.0, 3.0] and not fair["every_seed"]  # equal is not above
    path = checks["DAKD (b) with an oracle teacher >= student-DA + 5"]
    assert path["per_seed"] == [6.0, 4.0] and path["met"] and not path["every_seed"]
    stretch = checks["stretch: best DAKD paradigm >= its teacher (shipped)"]
    assert stretch["per_seed"] == [-4.0, -1.5] and not stretch["met"]
    floor = checks["student-DA mean >= 12.3 (calibration v2)"]
    assert floor["difference"] == pytest.approx(-2.8) and not floor["met"]
    assert checks["student-DA + extra steps mean >= 14.3 (calibration v2)"]["difference"] == (
        pytest.approx(-3.3)
    )
    spread = next(c for c in checks.values() if c["target"].startswith("every row"))
    # sample std of (30, 8) is 15.56, the largest row's: not met
    assert round(spread["difference"], 2) == 15.56 and not spread["met"]
    assert "largest: source-only" in spread["target"]
    table = format_calibration(
        results, [0, 1], {"synth_to_real": 82.5}, {"synth_to_real": {"student_da": [[10.0, 10.4]]}}
    )
    assert (
        "| synth_to_real | best DAKD paradigm >= fair baseline + 2 | +2.2 | +2.0, +2.5 | yes "
        "| yes |" in table
    )
    assert "logit-grid bound" in table and "82.5 mIoU" in table
    assert "10.0 -> 10.4 (largest change 0.40)" in table


def test_grid_bound_by_hand():
    from dakd.evaluation.segmentation import grid_bound

    # labels constant on every 2x2 cell: the grid holds them exactly
    blocks = np.kron(np.array([[0, 1], [2, 3]]), np.ones((2, 2))).astype(np.uint8)
    assert grid_bound(blocks[None], 2) == 1.0
    # a one-pixel class in a 4x4 cell of class 0 is outvoted: IoU 0 for it, 15/16 for class 0
    one = np.zeros((4, 4), np.uint8)
    one[1, 1] = 5
    assert grid_bound(one[None], 4) == (15 / 16 + 0.0) / 2
    # ignored pixels are neither counted nor voted
    ignored = one.copy()
    ignored[0, :] = 255
    assert grid_bound(ignored[None], 4) == (11 / 12) / 2


def test_a_stage_failure_is_recorded_in_its_folder_read_back_and_cleared(tiny):
    """``mark_failed`` writes one line into the stage's run folder; ``failure_of`` reads it
    back, also from a config of the same stage made anew (as a trial process makes it), and
    None for any other stage; an unreadable record still reads as a failure; ``clear_failure``
    removes the record (and is harmless when there is none)."""
    from dakd.recipes.stages import FAILURE_FILE, clear_failure, failure_of, mark_failed

    cfg = tiny("student_da")
    assert failure_of(cfg) is None
    message = mark_failed(cfg, "NonFiniteLossError: loss is nan", "optim.lr=1e+12")
    assert message == (
        "stage student_da seed=0 synth_to_real (optim.lr=1e+12) failed: "
        "NonFiniteLossError: loss is nan"
    )
    record = cfg.run_dir / FAILURE_FILE
    assert json.loads(record.read_text())["message"] == message
    assert failure_of(tiny("student_da")) == message
    assert failure_of(tiny("student_da", name="another")) is None
    assert mark_failed(tiny("teacher_da"), "OSError: disk") == (
        "stage teacher_da seed=0 synth_to_real failed: OSError: disk"
    )
    record.write_text('{"message": ')  # cut short
    assert failure_of(cfg) == f"stage student_da failed ({record} is unreadable)"
    clear_failure(cfg)
    assert failure_of(cfg) is None and not record.exists()
    clear_failure(cfg)
    assert failure_of(tiny("teacher_da")) is not None  # cleared for its own stage only
