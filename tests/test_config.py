"""The config tree: YAML, dotted overrides, and errors that name the key."""

import pytest

from dakd.config import ConfigError, ExperimentConfig, from_dict, load_config, parse_override


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
