"""Extension points: the loss-term registry, plugins (installed and named by a config) and the
networks' builder arguments (``models.*.args``)."""

import math
import sys
import textwrap

import pytest
import torch

from dakd import loss_terms, losses
from dakd.config import ConfigError, ExperimentConfig, LossConfig, from_dict, load_config
from dakd.config import plugins as plugin_loader
from dakd.config.plugins import PluginError, load_plugins
from dakd.evaluation.run_metrics import reported_metrics
from dakd.loss_terms import LossTerm, TermInputs
from dakd.models import registry as model_registry
from dakd.recipes.stages import dependency_config, distill_only
from dakd.tracking.tables import loss_columns

LN3 = math.log(3.0)


def logits(*pixels):
    """[1, C, 1, N] logits from N per-pixel class-logit lists."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


def l1_term(x: TermInputs) -> torch.Tensor:
    return (x.student - x.teacher).abs().mean()


@pytest.fixture
def registered():
    """Register terms and networks for one test; the registries are as before afterwards."""
    terms, models = dict(loss_terms._TERMS), dict(model_registry._MODELS)
    modules = set(plugin_loader._IMPORTED)
    yield
    loss_terms._TERMS.clear()
    loss_terms._TERMS.update(terms)
    model_registry._MODELS.clear()
    model_registry._MODELS.update(models)
    for name in plugin_loader._IMPORTED - modules:
        sys.modules.pop(name, None)
    plugin_loader._IMPORTED.intersection_update(modules)


def test_the_built_in_terms_are_the_first_entries_with_their_config_defaults():
    builtin = loss_terms.terms()[:3]
    assert [t.name for t in builtin] == ["kl", "mse", "pseudo"] == list(losses.DISTILL_TERMS)
    assert [t.key for t in builtin] == ["loss.kl", "loss.mse", "loss.pseudo"]
    assert {t.name: t.default for t in builtin} == {"kl": 0.1, "mse": 0.01, "pseudo": 1.0}
    loss = LossConfig()
    assert (loss.kl, loss.mse, loss.pseudo) == (0.1, 0.01, 1.0)
    assert {"loss.kl", "loss.mse", "loss.pseudo"} <= set(distill_only())
    names = loss_terms.metric_names()
    assert names[:3] == ["kl_source", "mse_source", "pseudo_source"]
    assert names.index("kl_target") == len(names) // 2
    assert loss_columns() == {"loss.kl": "KL", "loss.mse": "MSE", "loss.pseudo": "pseudo-T"}


def test_the_built_in_terms_through_the_registry_equal_hand_values():
    """Level output: teacher (0, ln 3), student (0, 0); level feature: teacher (ln 3, 0) at
    T = 2 and a pseudo-label threshold of 0.7 (the output level's 0.75 passes)."""
    teacher = {"output": logits([0.0, LN3]), "feature": logits([LN3, 0.0])}
    student = {"output": logits([0.0, 0.0]), "feature": logits([0.0, 0.0])}
    settings = LossConfig(temperature=2.0, pseudo_threshold=0.7)
    terms = losses.distill_terms(
        student, teacher, ["output", "feature"], names=["kl", "mse", "pseudo"], loss=settings
    )
    a, b = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))  # softmax of (0, ln3 / 2)
    kl_t2 = 4 * (a * math.log(a / 0.5) + b * math.log(b / 0.5))
    assert terms["kl"].item() == pytest.approx(2 * kl_t2)
    assert terms["mse"].item() == pytest.approx(2 * LN3**2 / 2)
    assert terms["pseudo"].item() == pytest.approx(2 * math.log(2.0))
    high = LossConfig(pseudo_threshold=0.8)  # no pixel left: 0
    only = losses.distill_terms(student, teacher, ["output"], names=["pseudo"], loss=high)
    assert set(only) == {"pseudo"} and only["pseudo"].item() == 0.0


def test_registering_a_term_gives_its_key_weight_metrics_and_stage_keys(registered):
    loss_terms.register_term(LossTerm("l1", l1_term, default=0.5, levels=("output",), label="L1"))
    cfg = from_dict({"stage": "student_da"})
    assert cfg.loss.weight("l1") == 0.5 and "loss.l1" not in cfg.flat()  # the entry's default
    assert cfg.fingerprint() == ExperimentConfig(stage="student_da").fingerprint()
    set_ = from_dict({"stage": "student_da", "loss": {"l1": 2}})
    weights = set_.loss.weights()  # in the registry's order: the built-in terms first
    assert list(weights.items())[:3] == [("kl", 0.1), ("mse", 0.01), ("pseudo", 1.0)]
    assert list(weights)[-1] == "l1" and weights["l1"] == 2.0
    assert set_.flat()["loss.l1"] == 2.0 and set_.fingerprint() != cfg.fingerprint()
    assert from_dict(set_.to_dict()).loss.terms == {"l1": 2.0}  # the tree reads back
    at_default = from_dict({"stage": "student_da"}, {"loss.l1": 0.5})
    assert at_default.fingerprint() == cfg.fingerprint()
    with pytest.raises(ConfigError, match=r"^loss\.l1: must be >= 0, got -1.0$"):
        from_dict({"loss": {"l1": -1}})
    # only distillation reads it: every weight shares the student-DA stage
    dakd = from_dict({"teacher": "t.pt", "init": "auto", "loss": {"l1": 3.0}})
    plain = from_dict({"teacher": "t.pt", "init": "auto"})
    assert "loss.l1" in distill_only()
    assert dependency_config(dakd, "student_da").name == dependency_config(plain, "student_da").name
    assert {"loss/l1_source", "loss/l1_target"} <= set(reported_metrics(cfg))
    assert loss_columns([{"params.loss.l1": 2.0}])["loss.l1"] == "L1"
    assert "loss.l1" not in loss_columns([{"params.loss.kl": 0.1}])


def test_a_registered_term_is_computed_at_its_levels_and_weighted_after_the_built_in_ones(
    registered,
):
    loss_terms.register_term(LossTerm("l1", l1_term, levels=("output",), domains=("target",)))
    teacher = {"output": logits([0.0, 2.0]), "feature": logits([4.0, 0.0])}
    student = {"output": logits([1.0, 0.0]), "feature": logits([0.0, 0.0])}
    weights = {"kl": 0.0, "mse": 0.0, "pseudo": 0.0, "l1": 3.0}
    assert loss_terms.active(weights, "source") == ["kl", "mse", "pseudo"]
    assert loss_terms.active(weights, "target") == ["kl", "mse", "pseudo", "l1"]
    terms = losses.distill_terms(
        student, teacher, ["output", "feature"], names=["mse", "l1"], domain="target"
    )
    assert terms["l1"].item() == pytest.approx(1.5)  # (|1 - 0| + |0 - 2|) / 2, output only
    assert losses.weighted_distill(terms, weights).item() == pytest.approx(3.0 * 1.5)


@pytest.mark.parametrize(
    ("term", "problem"),
    [
        (LossTerm("kl", l1_term), "loss term 'kl' is already registered"),
        (LossTerm("temperature", l1_term), "loss term 'temperature' is already registered"),
        (LossTerm("l1", l1_term, levels=("middle",)), "levels ('middle',) are not among"),
        (LossTerm("l1", l1_term, domains=("val",)), "domains ('val',) are not among"),
        (LossTerm("l-1", l1_term), "a name must be a Python identifier"),
    ],
)
def test_a_bad_term_is_refused_naming_it(term, problem, registered):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        loss_terms.register_term(term)


PLUGIN = """
import torch
from dakd.loss_terms import LossTerm, register_term
from dakd.models import register_model, create_model

register_term(LossTerm("{term}", lambda x: (x.student - x.teacher).abs().mean()))

@register_model("{model}")
def tiny(num_classes=19, width=1.0, depth=1):
    return create_model("drn_d_22", num_classes=num_classes, width=0.0625)
"""


def _module(tmp_path, monkeypatch, name: str, text: str) -> str:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    return name


def test_a_config_names_its_plugins_and_they_are_imported_once(tmp_path, monkeypatch, registered):
    name = _module(tmp_path, monkeypatch, "plugin_ok", PLUGIN.format(term="l1", model="tiny_p"))
    tree = {"plugins": [name], "stage": "student_da", "loss": {"l1": 0.2}}
    cfg = from_dict(tree, {"models.student.name": "tiny_p"})
    assert cfg.loss.weight("l1") == 0.2 and cfg.to_dict()["plugins"] == [name]
    assert "plugins" not in ExperimentConfig().to_dict()  # configs without keep their shape
    assert (
        cfg.fingerprint()
        == from_dict({**tree, "plugins": []}, {"models.student.name": "tiny_p"}).fingerprint()
    )
    load_plugins([name])  # once: registering again would fail
    assert from_dict(cfg.to_dict()).models.student.name == "tiny_p"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("raise RuntimeError('needs a GPU')\n", "needs a GPU"),
        ("import not_a_module_anywhere\n", "No module named 'not_a_module_anywhere'"),
        (PLUGIN.format(term="kl", model="tiny_q"), "loss term 'kl' is already registered"),
        (PLUGIN.format(term="l2", model="drn_d_22"), "model 'drn_d_22' is already registered"),
    ],
)
def test_a_plugin_that_fails_is_one_line_naming_the_module(
    text, problem, tmp_path, monkeypatch, registered
):
    name = _module(tmp_path, monkeypatch, "plugin_bad", text)
    with pytest.raises(PluginError) as err:
        from_dict({"plugins": [name]})
    message = str(err.value)
    assert message.startswith("plugin plugin_bad (plugins): ") and problem in message
    assert "\n" not in message and isinstance(err.value, ConfigError)


def test_the_train_command_prints_a_failing_plugin_as_one_line(tmp_path, monkeypatch, capsys):
    from dakd.__main__ import main

    name = _module(tmp_path, monkeypatch, "plugin_broken", "raise ImportError('no such thing')\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"stage: student_da\nplugins: [{name}]\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {config}: plugin plugin_broken (plugins): no such thing"


def test_builder_arguments_reach_the_network_and_key_only_its_stages():
    plain = load_config(None, ["stage=dakd", "teacher=auto", "init=auto"])
    wide = load_config(None, ["stage=dakd", "teacher=auto", "init=auto"])
    wide.models.student.args = {"feature_stage": 5}
    assert plain.to_dict()["models"]["student"]["args"] == {}
    assert "models.student.args.feature_stage" in wide.flat()
    assert wide.fingerprint() != plain.fingerprint()
    for stage, changed in (("teacher_da", False), ("student_da", True)):
        assert (
            dependency_config(wide, stage).name != dependency_config(plain, stage).name
        ) is changed, stage
    from dakd.runtime.builders import build_network, spec_of

    spec = spec_of(wide.models.student)
    assert spec["args"] == {"feature_stage": 5} and "args" not in spec_of(plain.models.student)
    assert build_network(spec).encoder.feature_stage == 5


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"chanels": 8}, "drn_d_22 takes no argument 'chanels'"),
        ({"width": 2}, "'width' is not a builder argument (set models.student.width)"),
        ({"output_stride": 4}, "set models.student.output_stride"),
    ],
)
def test_a_bad_builder_argument_is_one_line_naming_the_network(args, problem):
    with pytest.raises(ConfigError) as err:
        from_dict({"models": {"student": {"args": args}}})
    assert str(err.value) == f"models.student.args: {problem}" or problem in str(err.value)
    assert str(err.value).startswith("models.student.args: ")
