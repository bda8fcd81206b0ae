"""The config tree: YAML, dotted overrides, and errors that name the key."""

from pathlib import Path

import pytest

from dakd.config import (
    ConfigError,
    ExperimentConfig,
    current_tree,
    from_dict,
    load_config,
    parse_override,
    renamed,
)


def test_defaults_are_the_paper_weights():
    cfg = ExperimentConfig()
    assert (cfg.loss.kl, cfg.loss.mse, cfg.loss.pseudo, cfg.loss.target) == (0.1, 0.01, 1.0, 1.0)
    assert (cfg.loss.adv_feature, cfg.loss.adv_output, cfg.loss.seg_aux) == (2e-4, 1e-3, 0.1)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (2.5e-4, 0.9, 5e-4)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("stage: student_da\nloss: {kl: 0.5}\nmodels: {teacher: {width: 0.5}}\n")
    cfg = load_config(path, ["loss.kl=0.25", "distill.levels=[feature]", "seed=3"])
    assert cfg.stage == "student_da" and cfg.loss.kl == 0.25 and cfg.seed == 3
    assert cfg.distill.levels == ["feature"]
    # a partial section keeps the defaults of the keys it does not name
    assert cfg.models.teacher.name == "drn_d_38" and cfg.models.teacher.width == 0.5
    assert cfg.flat()["loss.kl"] == 0.25


def test_ints_accepted_for_floats_but_not_the_reverse():
    assert from_dict({"stage": "student_da", "loss": {"kl": 1}}).loss.kl == 1.0
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer"):
        from_dict({"stage": "student_da", "train": {"steps": 2.5}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"loss": {"kk": 1.0}}, r"^loss\.kk: unknown key; valid keys under loss: adv_feature"),
        ({"los": {}}, r"^los: unknown key; valid keys: data, distill"),
        ({"loss": {"kl": "big"}}, r"loss\.kl: expected a number"),
        ({"loss": {"kl": -1.0}}, r"loss\.kl: must be >= 0"),
        ({"paradigm": "e"}, r"paradigm: 'e' is not one of"),
        ({"distill": {"levels": ["output", "middle"]}}, r"distill\.levels"),
        ({"distill": {"levels": "output"}}, r"distill\.levels: expected a list"),
        ({"data": {"scenario": "mars"}}, r"data\.scenario"),
        ({"data": {"crop_size": [60, 128]}}, r"data\.crop_size"),
        (
            {"models": {"student": {"name": "vgg"}}},
            r"models\.student\.name: 'vgg' is not registered",
        ),
        ({"train": {"steps": 0}}, r"train\.steps: must be >= 1"),
        (
            {"train": {"deterministic": "yes"}},
            r"train\.deterministic: must be true, false or auto, got 'yes'",
        ),
        ({"train": {"channels_last": 1}}, r"train\.channels_last: 1 matches none of bool \| str"),
        ({"stage": "dakd"}, r"teacher: stage 'dakd' needs"),
        ({"train": {"amp": "fp8"}}, r"train\.amp: 'fp8' is not one of auto, fp32, bf16, fp16"),
        ({"train": {"amp": False}}, r"train\.amp: expected a string"),
        (
            {"train": {"cudnn_benchmark": True, "deterministic": True}},
            r"train\.cudnn_benchmark: needs train\.deterministic=false",
        ),
    ],
)
def test_bad_values_name_the_key(data, message):
    data = {"stage": "student_da", **data}
    with pytest.raises(ConfigError, match=message):
        from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: student_da\ntrain: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.stepz: unknown key"):
        load_config(bad)
    bad.write_text("stage: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_override_syntax():
    assert parse_override("loss.kl=0.5") == ("loss.kl", 0.5)
    assert parse_override("distill.levels=[output, feature]") == (
        "distill.levels",
        ["output", "feature"],
    )
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("loss.kl")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        from_dict({"stage": "student_da", "seed": 1}, {"seed.x": 1})
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        from_dict({"stage": "student_da"}, {"seed.x": 1})


def test_fingerprint_ignores_name_but_not_weights():
    a = from_dict({"stage": "student_da", "name": "a"})
    b = from_dict({"stage": "student_da", "name": "b"})
    c = from_dict({"stage": "student_da", "loss": {"adv_output": 0.01}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_thread_count_is_part_of_the_fingerprint():
    # CPU results depend on the thread count (float reduction order), so stages are not shared
    one = from_dict({"stage": "student_da", "train": {"threads": 1}})
    two = from_dict({"stage": "student_da", "train": {"threads": 2}})
    assert one.fingerprint() != two.fingerprint()


def test_speed_switches_enter_the_fingerprint_only_when_on():
    # at their defaults they are left out, so stages stored before the switches existed are
    # still found; switched on they change float arithmetic, hence the weights
    base = from_dict({"stage": "student_da"})
    off = from_dict({"stage": "student_da", "train": {"amp": "fp32", "sync_bn": False}})
    assert base.fingerprint() == off.fingerprint()
    for switch in ({"amp": "bf16"}, {"channels_last": True}, {"sync_bn": True}):
        on = from_dict({"stage": "student_da", "train": switch})
        assert on.fingerprint() != base.fingerprint(), switch


def test_a_config_that_is_not_text_is_named_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text \(byte 0xff at offset 6\)"):
        load_config(path)


def test_teacher_cache_keys_are_checked_and_yaml_booleans_mean_on_off():
    def config(section):
        return from_dict({"stage": "student_da", "teacher_cache": section})

    assert config({"mode": True}).teacher_cache.mode == "on"
    assert config({"mode": False}).teacher_cache.mode == "off"
    for key, value, message in (
        ("mode", "sometimes", "teacher_cache.mode: 'sometimes' is not one of auto, on, off"),
        ("dtype", "int8", "teacher_cache.dtype: 'int8' is not one of float32, float16"),
        ("topk", 19, "teacher_cache.topk: must be 0"),
        ("if_full", "wait", "teacher_cache.if_full: 'wait' is not one of stop, live"),
        ("dir", "s3://bucket/cache", "teacher_cache.dir: 's3://bucket/cache': caches are"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            config({key: value})
    with pytest.raises(ConfigError, match="data.train_size: must be in 0..2000"):
        from_dict({"stage": "student_da", "data": {"train_size": 2001}})


def test_each_section_checks_itself_naming_the_dotted_key():
    from dakd.config import (
        DataConfig,
        DistillConfig,
        LossConfig,
        ModelConfig,
        OptimConfig,
        TeacherCacheConfig,
        TrainConfig,
    )

    for section, message in (
        (DataConfig(batch_size=0), r"^data\.batch_size: must be >= 1"),
        (DataConfig(dataset="real", target="moon"), r"^data\.target: 'moon' is not a real dataset"),
        (LossConfig(temperature=0.0), r"^loss\.temperature: must be > 0"),
        (DistillConfig(levels=["middle"]), r"^distill\.levels: \['middle'\] has a level not in"),
        (OptimConfig(disc_betas=[0.9]), r"^optim\.disc_betas: must be two numbers"),
        (TrainConfig(cudnn_benchmark=True, deterministic=True), r"^train\.cudnn_benchmark: needs"),
        (TeacherCacheConfig(topk=19), r"^teacher_cache\.topk: must be 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            section.check()
    with pytest.raises(ConfigError, match=r"^models\.student\.name: 'vgg' is not registered"):
        ModelConfig("vgg").check("models.student")
    ExperimentConfig(stage="student_da").check()  # the defaults pass


def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- stage: dakd\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level"):
        load_config(path)
    path.write_text("")
    assert load_config(path, ["stage=oracle"]).loss == ExperimentConfig().loss  # empty: defaults


def test_the_vocabulary_has_one_home():
    """Stages, paradigms, levels and auto are dakd.paradigms' words; the orders of the levels
    are fixed (the trainer's module order; the default and stored order)."""
    from dakd.models.registry import Segmenter
    from dakd.paradigms import (
        AUTO,
        AUTO_STAGES,
        DEFAULT_LEVELS,
        LEVELS,
        PARADIGMS,
        STAGES,
        paradigm_phases,
    )
    from dakd.teacher.cache import CacheSpec

    assert LEVELS == ("feature", "output") and DEFAULT_LEVELS == ("output", "feature")
    assert Segmenter.levels == LEVELS
    assert ExperimentConfig().distill.levels == list(DEFAULT_LEVELS)
    assert CacheSpec.__dataclass_fields__["levels"].default == DEFAULT_LEVELS
    assert set(AUTO_STAGES.values()) <= set(STAGES) and AUTO == "auto"
    assert all(paradigm_phases(p) for p in PARADIGMS)
    with pytest.raises(ConfigError, match=r"^stage: 'x' is not one of source_only, oracle, "):
        from_dict({"stage": "x"})


# -- keys renamed since runs were first stored -------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.yaml"
OLD_AND_NEW = {
    "old": ("train.precise_bn", "train.ema"),
    "current": ("train.precise_bn_images", "train.ema_decay"),
}


@pytest.fixture
def notes(monkeypatch, capsys):
    """``notes()`` -> the ``note:`` lines on stderr so far; every old name is noted afresh
    (once per process otherwise)."""
    monkeypatch.setattr(renamed, "_NOTED", set())
    capsys.readouterr()
    return lambda: [line for line in capsys.readouterr().err.splitlines() if "note:" in line]


@pytest.mark.parametrize("names", list(OLD_AND_NEW))
def test_a_rename_keeps_the_fingerprints_of_stored_stages(names, monkeypatch):
    """The fingerprints stored stages were keyed by before ``train.precise_bn`` and
    ``train.ema`` were renamed (recorded then), under either name. A new scene renderer or
    shipped weight file is other data, so other stages: only such a change may move them."""
    monkeypatch.chdir(ROOT)  # the shipped weights by the relative paths the config names
    images, decay = OLD_AND_NEW[names]
    assert ExperimentConfig().fingerprint() == "88eaeb9f72aa"
    assert load_config(EMBEDDED).fingerprint() == "51d5c972718c"  # precise BN on 400 images
    off = load_config(EMBEDDED, [f"{images}=0"])
    assert off.fingerprint() == "2d7007982bdb"
    averaged = load_config(EMBEDDED, [f"{images}=64", f"{decay}=0.99", "train.ema_warmup=true"])
    assert averaged.fingerprint() == "391b31f2c1b2"
    teacher = load_config(EMBEDDED, ["stage=teacher_da", f"{decay}=0.998"])
    assert teacher.fingerprint() == "cfe42795ff61"


def test_old_key_names_are_read_with_one_note_each(tmp_path, notes):
    path = tmp_path / "old.yaml"
    path.write_text("stage: student_da\ntrain: {precise_bn: 64, ema: 0.99, steps: 7}\n")
    cfg = load_config(path)
    assert (cfg.train.precise_bn_images, cfg.train.ema_decay, cfg.train.steps) == (64, 0.99, 7)
    assert load_config(path).train.ema_decay == 0.99
    dotted = load_config(None, ["stage=student_da", "train.ema=0.5"])
    assert dotted.train.ema_decay == 0.5
    section = from_dict({"stage": "student_da"}, {"train": {"ema": 0.25}})
    assert section.train.ema_decay == 0.25
    assert notes() == [
        "note: train.precise_bn is now train.precise_bn_images; the old name is still read for now",
        "note: train.ema is now train.ema_decay; the old name is still read for now",
    ]
    assert load_config(path, ["train.ema_decay=0.9"]).train.ema_decay == 0.9  # the override wins
    with pytest.raises(ConfigError, match=r"^train\.ema: renamed train\.ema_decay, which is set"):
        from_dict({"stage": "student_da", "train": {"ema": 0.9, "ema_decay": 0.9}})


def test_configs_stored_under_old_names_are_read_without_a_note(notes):
    stored = {"stage": "teacher_da", "train": {"precise_bn": 400, "ema": 0.998, "steps": 600}}
    assert current_tree(stored, note=False) == {
        "stage": "teacher_da",
        "train": {"precise_bn_images": 400, "ema_decay": 0.998, "steps": 600},
    }
    assert notes() == []
