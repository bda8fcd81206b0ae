"""The example plugin (examples/dakd-plugin-example): installed by ``uv sync``, found through
its entry point, its term against a hand-computed value, and its sweep spec in smoke mode."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dakd.config import from_dict
from dakd.config.plugins import GROUP, installed_modules
from dakd.loss_terms import TermInputs, get_term
from dakd.models import count_parameters, create_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dakd-plugin-example"

pytestmark = pytest.mark.skipif(
    ("dakd_plugin_example", "example") not in installed_modules(),
    reason="the example plugin is not installed (uv sync installs it with the dev group)",
)


def test_the_entry_point_registers_both_in_a_fresh_process():
    """Nothing imports the plugin by name: reading a registry imports it."""
    code = (
        "from dakd.models import list_models; from dakd import loss_terms; "
        "print('tiny_fcn' in list_models(), loss_terms.names()[-1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "at"], (out.stdout, out.stderr, GROUP)


def test_attention_transfer_against_a_hand_computed_value():
    """Two channels on a 1x2 map. Student: squares (1, 1) and (4, 0) -> means (2.5, 0.5) ->
    unit norm (5, 1) / sqrt 26. Teacher: (0, 0) and (0, 2) squared (0, 4) -> means (0, 2) ->
    (0, 1). Loss: the mean of the squared differences."""
    student = torch.tensor([[[[1.0, 1.0]], [[2.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 0.0]], [[0.0, 2.0]]]])
    a = 5 / 26**0.5
    b = 1 / 26**0.5
    by_hand = (a**2 + (b - 1) ** 2) / 2
    term = get_term("at")
    inputs = TermInputs(student, teacher, teacher, "output", "target", None)
    assert term.function()(inputs).item() == pytest.approx(by_hand)
    assert term.function()(TermInputs(teacher, teacher, teacher, "output", "target", None)) == 0
    assert (term.default, term.title, term.distill_only) == (0.0, "AT", True)


def test_the_student_takes_its_builder_arguments_from_the_config():
    cfg = from_dict(
        {
            "stage": "student_da",
            "models": {"student": {"name": "tiny_fcn", "args": {"channels": 8, "depth": 1}}},
        }
    )
    net = create_model("tiny_fcn", num_classes=19, **cfg.models.student.args)
    pred = net(torch.zeros(2, 3, 32, 64))
    assert {k: tuple(v.shape) for k, v in pred.items()} == {
        "feature": (2, 19, 4, 8),
        "output": (2, 19, 4, 8),
    }
    # stem 3 * (conv + BN) + 1 block + two 1x1 heads with bias
    convs = 3 * 8 * 9 + 2 * 8 * 8 * 9 + 3 * 2 * 8 + 8 * 8 * 9 + 2 * 8
    assert count_parameters(net) == convs + 2 * (8 * 19 + 19)


@pytest.mark.slow
def test_the_example_sweep_runs_its_student_and_term_in_smoke_mode(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    command = [
        sys.executable,
        str(ROOT / "sweeps" / "run.py"),
        str(EXAMPLE / "sweep.yaml"),
        "--smoke",
        "--set",
        f"experiment.out_dir={tmp_path / 'stages'}",
        "--set",
        f"storage={tmp_path / 'ray'}",
        "--set",
        f"tracking.uri=sqlite:///{db}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("plugin_example")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.params.get("stage") == "dakd"]
    assert len(trials) == 2, [r.data.params.get("stage") for r in runs]
    for run in trials:
        params, metrics = run.data.params, run.data.metrics
        assert params["models.student.name"] == "tiny_fcn"
        assert int(params["models.student.args.channels"]) in (8, 16, 32)
        assert 10.0 <= float(params["loss.at"]) <= 1000.0
        assert metrics["loss/at_target"] > 0 and metrics["loss/at_source"] > 0
