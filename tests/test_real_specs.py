"""The specs of the paper's two scenarios on the real datasets: their recipe, and a --dry-run
that checks the data (on fixture trees found through DAKD_DATA) before printing the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.sweep.spec.sweep_spec import load_spec
from tests import realdata
from tests.test_sweep import _cli

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"real_to_real": "bdd100k", "synth_to_real": "gta5"}  # spec -> source dataset


@pytest.fixture
def place(tmp_path, monkeypatch):
    """Fixture trees of the three datasets under $DAKD_DATA, and the weight files the specs
    name, in the folder the sweep runs from."""
    data = tmp_path / "data"
    for name in ("cityscapes", "bdd100k", "gta5"):
        realdata.write(name, data / name)
    (tmp_path / "weights").mkdir()
    for name in ("drn_d_38-eebb45f0.pth", "drn_d_22-4bd2f8ea.pth"):
        (tmp_path / "weights" / name).write_bytes(b"")  # the dry run only checks they exist
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAKD_DATA", str(data))
    return data


@pytest.mark.parametrize("name", sorted(SPECS))
def test_specs_hold_the_paper_recipe(name):
    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    cfg = spec.base
    assert cfg.data.dataset == "real" and cfg.data.scenario == name
    assert cfg.domains == (SPECS[name], "cityscapes")
    assert (cfg.models.teacher.name, cfg.models.teacher.width) == ("drn_d_38", 1.0)
    assert (cfg.models.student.name, cfg.models.student.width) == ("drn_d_22", 1.0)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (2.5e-4, 0.9, 5e-4)
    assert (cfg.loss.adv_output, cfg.loss.adv_feature, cfg.loss.kl, cfg.loss.mse) == (
        1e-3,
        2e-4,
        0.1,
        0.01,
    )
    assert cfg.data.batch_size == 2 and cfg.data.source_crop == [512, 1024]
    assert cfg.train.steps == 50000 and spec.stages["train.steps"] == 50000
    assert spec.tune.seeds == [0, 1, 2]
    labels = spec.search["method"].labels()
    assert [f"stage=dakd paradigm={p}" for p in "abcd"] == labels[-4:]
    assert any("source_only" in label for label in labels) and any("oracle" in x for x in labels)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_dry_run_checks_the_data_and_prints_the_plan(name, place, capsys):
    assert _cli([str(ROOT / "sweeps" / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data (checked):" in out
    assert f"{SPECS[name]} train ({place / SPECS[name]}): 3 pairs, check passed" in out
    assert f"cityscapes val ({place / 'cityscapes'}): 2 pairs, check passed" in out
    assert "trials: 27" in out and "teacher_da" in out


def test_without_data_the_dry_run_plans_and_lists_it_and_a_launch_stops_in_one_line(
    place, monkeypatch, capsys
):
    """Planning needs no data: the dry run lists each missing or broken split (and weight
    file) and prints the plan and its cost; the launch (the plan a sweep makes before Ray)
    stops in one line naming the key, as before."""
    from dakd.sweep.driver.plan import plan
    from dakd.sweep.spec.sweep_spec import SpecError

    spec = str(ROOT / "sweeps" / "real_to_real.yaml")
    monkeypatch.delenv("DAKD_DATA")
    assert _cli([spec, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "inputs not there yet" in out and "stages the trials build on" in out
    assert "bdd100k train: data.source_root: no folder for the source dataset bdd100k" in out
    assert "cost, on " in out
    with pytest.raises(SpecError) as err:
        plan(load_spec(spec))
    line = str(err.value)
    assert line.startswith(f"{spec}: experiment: data.source_root: ") and "DAKD_DATA" in line
    assert len(line.splitlines()) == 1

    monkeypatch.setenv("DAKD_DATA", str(place))
    label = sorted((place / "cityscapes" / "gtFine" / "val").glob("*/*.png"))[0]
    label.unlink()
    assert _cli([spec, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cityscapes val: " in out and "fails its check" in out
    assert _cli([spec]) == 2  # the launch
    err = capsys.readouterr().err
    assert "cityscapes val split fails its check" in err and "missing_label" in err
    assert str(label) in err
    fresh = place / "cityscapes-again"
    realdata.write("cityscapes", fresh)
    (Path("weights") / "drn_d_38-eebb45f0.pth").unlink()
    assert _cli([spec, "--dry-run", "--set", f"experiment.data.target_root={fresh}"]) == 0
    assert "models.teacher.pretrained: " in capsys.readouterr().out
    with pytest.raises(SpecError) as err:
        plan(load_spec(spec, [f"experiment.data.target_root={fresh}"]))
    assert str(err.value).startswith(f"{spec}: experiment: models.teacher.pretrained: ")
    assert "drn_d_38-eebb45f0.pth does not exist" in str(err.value)


def test_the_student_search_on_real_data_checks_its_data_and_students(place, capsys):
    """Its dry run checks the data, the weight files of the students that name one, and the
    deployment resolution against every student; it shares synth_to_real's teacher-DA stage."""
    spec = load_spec(ROOT / "sweeps" / "student_search_real.yaml")
    assert spec.tune.objectives == ["miou", "peak_memory_mb"] and spec.deploy.size == [1024, 2048]
    assert spec.base.data.scenario == "synth_to_real" and spec.resources.gpu == 1
    paper = load_spec(ROOT / "sweeps" / "synth_to_real.yaml")
    teacher_da = {"stage": "teacher_da", "teacher": "", "init": ""}
    from dakd.sweep.spec.tree import experiment_config

    ours = experiment_config(spec.base.to_dict(), {**spec.stages, **teacher_da})
    theirs = experiment_config(paper.base.to_dict(), {**paper.stages, **teacher_da})
    assert ours.fingerprint() == theirs.fingerprint()
    assert _cli([str(ROOT / "sweeps" / "student_search_real.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "gta5 train" in out and "check passed" in out
    assert "deploy: each student measured at 1024x2048, batch 1, on auto" in out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_one_teacher_per_scenario_and_the_seeds_on_the_student_side(name, place):
    """The paper's specs: 1 teacher-DA stage (the first seed's), 3 student-DA stages and 3 fair
    baselines (one per seed), 12 DAKD trials each distilling from that one teacher into their
    own seed's student-DA, and the source-only and oracle rows per seed; ``stages.per_seed``
    brings a teacher per seed back."""
    import collections

    from dakd.sweep.driver.plan import _context, plan
    from dakd.sweep.spec.context import stages_of
    from dakd.sweep.spec.sweep_spec import grid_variants, resolve

    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    assert spec.per_seed == ("student_da",)
    the_plan = plan(spec, Path.cwd())
    kinds = collections.Counter(stage.kind for stage in the_plan.stages)
    assert kinds == {"teacher_da": 1, "student_da": 3, "fair baseline": 3}
    seeds = collections.defaultdict(list)
    for stage in the_plan.stages:
        seeds[stage.kind].append(stage.config.seed)
    assert seeds == {"teacher_da": [0], "student_da": [0, 1, 2], "fair baseline": [0, 1, 2]}
    rows = collections.Counter((v["method"].split()[0], v["seed"]) for v in grid_variants(spec))
    assert sum(n for (stage, _), n in rows.items() if stage == "stage=dakd") == 12
    for row in ("stage=source_only", "stage=oracle"):
        assert sorted(seed for (stage, seed) in rows if stage == row) == [0, 1, 2]
    context = _context(spec, Path.cwd())
    teachers = set()
    for variant in grid_variants(spec):
        cfg = resolve(spec, variant)
        if cfg.stage == "dakd":
            deps = stages_of(cfg, context)
            teachers.add(deps["teacher"].name)
            assert deps["init"].seed == cfg.seed  # its own seed's student-DA
    assert len(teachers) == 1

    every = plan(
        load_spec(ROOT / "sweeps" / f"{name}.yaml", ["stages.per_seed=[teacher_da, student_da]"])
    )
    assert collections.Counter(s.kind for s in every.stages)["teacher_da"] == 3


def test_stages_per_seed_takes_only_the_reused_stages(tmp_path):
    from dakd.sweep.spec.sweep_spec import SpecError

    spec = str(ROOT / "sweeps" / "synth_to_real.yaml")
    assert load_spec(spec, ["stages.per_seed=[]"]).per_seed == ()
    assert load_spec(spec, ["stages.per_seed=teacher_da"]).per_seed == ("teacher_da",)
    with pytest.raises(SpecError, match=r"stages\.per_seed: \['dakd'\]: a list of the reused"):
        load_spec(spec, ["stages.per_seed=[dakd]"])
