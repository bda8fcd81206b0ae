"""The command line as a user runs it: train, eval, scenes, models, tables, and its error messages."""

import pytest
import yaml
from PIL import Image

from dakd.__main__ import main
from tests.conftest import TINY


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump({**TINY, "stage": "student_da", "out_dir": str(tmp_path / "runs")})
    )
    return path


def test_train_then_eval(config_file, tmp_path, capsys):
    assert main(["train", str(config_file), "--set", "name=cli", "--set", "seed=2"]) == 0
    model = tmp_path / "runs" / "cli" / "model.pt"
    assert model.exists()
    assert main(["eval", str(model), "--set", "data.val_size=8"]) == 0
    out = capsys.readouterr().out
    assert "drn_d_22" in out and "mIoU" in out and "traffic light" in out


def test_bad_config_and_checkpoint_exit_with_one_message(config_file, tmp_path, capsys):
    assert main(["train", str(config_file), "--set", "loss.kl=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "loss.kl: must be >= 0" in err and "Traceback" not in err
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_cuda_on_a_machine_without_it_stops_in_one_line_before_any_work(
    config_file, tmp_path, capsys, monkeypatch
):
    """``train.device: cuda`` without CUDA: one line, no traceback, nothing written, and the
    stages it builds on (``init: auto``) are not trained first."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", str(config_file), "--set", "train.device=cuda", "--set", "stage=dakd"]
    assert main([*argv, "--set", "teacher=auto", "--set", "init=auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.device: 'cuda' but torch sees no CUDA device (")
    assert err.endswith("; use auto or cpu\n") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_running_out_of_memory_stops_in_one_line(config_file, capsys, monkeypatch):
    import torch

    from dakd.engine.state import TrainState

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainState, "train_step", oom)
    assert main(["train", str(config_file), "--set", "name=oom"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory on cpu in step 0; ") and err.count("\n") == 1
    assert "smaller crops (data.crop_size)" in err and "Traceback" not in err


def test_scenes_writes_pngs(tmp_path, capsys):
    assert main(["scenes", "--domain", "game", "--out", str(tmp_path), "--n", "2"]) == 0
    overview = tmp_path / "game_overview.png"
    assert Image.open(overview).size[0] >= 128
    assert main(["scenes", "--domain", "moon", "--out", str(tmp_path)]) == 2
    assert "moon" in capsys.readouterr().err


def test_models_lists_sizes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert (
        "drn_d_22" in out and "15.90M" in out and "26.01M" in out and "deeplabv2_resnet101" in out
    )


def _record(name, row, stage, seed, miou, status="FINISHED", paradigm=None):
    """One run as the runs table holds it (the columns ``load_runs`` writes, by hand)."""
    params = {"models.student.name": "drn_d_22", "models.student.width": "0.125"}
    return {
        "run_id": name,
        "run_name": name,
        "status": status,
        "start_time": seed,
        "linked": False,
        "row": row,
        "stage": stage,
        "scenario": "synth_to_real",
        "paradigm": paradigm,
        "levels": "output" if stage == "dakd" else None,
        "seed": seed,
        "config": f"{row}-config",
        **{f"params.{k}": v for k, v in params.items()},
        "metrics.miou": miou,
    }


def test_tables_from_a_runs_table_written_by_hand(tmp_path, capsys):
    """``tables --runs``: student-DA over 10 and 14 (std 2.83), DAKD (c) over 15 and 17 (std
    1.41), a failed DAKD run counted but not averaged; tables beside the file by default."""
    from dakd.tracking.runs_table import mark_duplicates, records_table, write_runs

    records = [
        _record("s0", "student-DA", "student_da", 0, 10.0),
        _record("s1", "student-DA", "student_da", 1, 14.0),
        _record("d0", "DAKD (c)", "dakd", 0, 15.0, paradigm="c"),
        _record("d1", "DAKD (c)", "dakd", 1, 17.0, paradigm="c"),
        _record("d2", "DAKD (c)", "dakd", 2, 90.0, "FAILED", paradigm="c"),
    ]
    mark_duplicates(records)
    path = write_runs(records_table(records), tmp_path)
    assert main(["tables", "--runs", str(path), "--format", "md"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"{path}: 5 runs (0 linked stage runs, 0 duplicate records), 2 configurations, 2 files written"
    )
    assert out[1:] == [str(tmp_path / "scenario_synth_to_real.md"), str(tmp_path / "tables.md")]
    lines = (tmp_path / "scenario_synth_to_real.md").read_text().splitlines()
    dashes = " – |" * 19
    assert lines[6:] == [
        f"| student-DA |{dashes} 12.00 ± 2.83 | – | 0.25 | +0.00 | 2 |",
        f"| DAKD (c) |{dashes} 16.00 ± 1.41 | – | 0.25 | +4.00 | 2 |",
        "",
        "- DAKD (c): 1 failed run(s), not averaged",
    ]


def test_tables_name_a_missing_runs_table_and_forbid_a_store_with_it(tmp_path, capsys):
    assert main(["tables", "--runs", str(tmp_path / "runs.parquet")]) == 2
    assert capsys.readouterr().err == f"error: no runs table at {tmp_path / 'runs.parquet'}\n"
    with pytest.raises(SystemExit):
        main(["tables", "--runs", str(tmp_path), "--sweep", "latest"])
    assert "--sweep: a tracking store's option, not one of --runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tables", "--runs", str(tmp_path), "--format", "html"])
    assert "--format: unknown format 'html'" in capsys.readouterr().err


def test_resume_before_the_spec_reads_a_file_as_the_spec_and_hex_as_an_id(tmp_path, monkeypatch):
    from dakd.sweep.driver.cli import is_sweep_id

    assert is_sweep_id("3f2a9c") and not is_sweep_id("sweeps/quickstart.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abc").write_text("name: x\n")  # a spec whose name is hex digits
    assert is_sweep_id("abc") and not is_sweep_id("abc", exists=True)
