"""The shipped domain-adapted teachers: the command that makes them (reproducible, resumable,
recorded in the manifest), the checks that refuse a wrong file or scenario, and the files
shipped in weights/embedded/."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dakd.config import SCENARIOS, ConfigError, from_dict, load_config
from dakd.models import checkpoint as ckpt
from dakd.models.pretrained import MANIFEST, SHIPPED_DIR, sha256, teacher_file
from dakd.recipes.da_teacher import CHECK_STEPS, first_steps_digest, make_teacher, recipe_config
from dakd.runtime.builders import check_teacher
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "configs" / "embedded.yaml"
SMALL = ["train.steps=4", "train.eval_interval=2", "train.precise_bn_images=4"]


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def _make(tiny_config, tmp_path, where, **kw):
    return make_teacher(
        "synth_to_real",
        tiny_config,
        SMALL,
        out_dir=tmp_path / where / "out",
        work_dir=tmp_path / where / "work",
        log=lambda *_: None,
        **kw,
    )


def test_the_command_reproduces_resumes_and_records(tiny_config, tmp_path):
    one = _make(tiny_config, tmp_path, "a")
    two = _make(tiny_config, tmp_path, "b")
    assert one["sha256"] == two["sha256"]  # bit for bit, the file itself
    assert one["history"] == two["history"]
    assert _make(tiny_config, tmp_path, "c", stop_after=3) is None  # stopped at step 3 of 4
    resumed = _make(tiny_config, tmp_path, "c")
    assert resumed["sha256"] == one["sha256"]
    # another recipe in the same work folder is refused, not silently continued
    with pytest.raises(ckpt.CheckpointError, match="another recipe"):
        make_teacher(
            "synth_to_real",
            tiny_config,
            [*SMALL, "optim.lr=0.02"],
            out_dir=tmp_path / "c" / "out",
            work_dir=tmp_path / "c" / "work",
            log=lambda *_: None,
        )
    entry = json.loads((tmp_path / "a" / "out" / MANIFEST).read_text())[
        teacher_file("synth_to_real")
    ]
    path = tmp_path / "a" / "out" / teacher_file("synth_to_real")
    assert entry["sha256"] == sha256(path) and entry["scenario"] == "synth_to_real"
    assert entry["domains"] == ["game", "city"] and entry["threads"] == 1
    assert [row["step"] for row in entry["history"]] == [2, 4]
    assert all({"miou", "raw/miou"} <= set(row) for row in entry["history"])  # averaged and raw
    assert entry["recipe"]["train.ema_decay"] > 0
    assert entry["first_steps"]["steps"] == CHECK_STEPS
    # float16 on disk, the averaged weights of the run, loadable as a teacher
    state = ckpt.load(path)
    final = ckpt.load(tmp_path / "a" / "work" / "teacher_da-synth_to_real" / "model.pt")
    for name, value in final["model"].items():
        if value.is_floating_point():
            assert state["model"][name].dtype == torch.float16
            assert torch.equal(state["model"][name], value.half())
    assert abs(entry["target_miou"]["stored"] - entry["target_miou"]["float32"]) < 1.0


def _folder_with(tiny_config, tmp_path):
    _make(tiny_config, tmp_path, "made")
    return tmp_path / "made" / "out"


def _distil(tiny_config, folder, scenario="synth_to_real"):
    teacher = folder / teacher_file("synth_to_real")
    return load_config(
        tiny_config, ["stage=dakd", f"data.scenario={scenario}", f"teacher={teacher}"]
    )


def test_a_teacher_of_another_scenario_file_or_network_is_refused(tiny_config, tmp_path):
    folder = _folder_with(tiny_config, tmp_path)
    assert check_teacher(_distil(tiny_config, folder))["scenario"] == "synth_to_real"
    with pytest.raises(ConfigError) as err:
        check_teacher(_distil(tiny_config, folder, "real_to_real"))
    message = str(err.value)
    assert "\n" not in message and "synth_to_real" in message and "real_to_real" in message
    assert teacher_file("synth_to_real") in message
    # another network than the config's teacher
    wide = from_dict(_distil(tiny_config, folder).to_dict(), {"models.teacher.width": 0.125})
    with pytest.raises(ckpt.CheckpointError, match="holds weights for"):
        check_teacher(wide)
    # a changed file
    path = folder / teacher_file("synth_to_real")
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=f"{path.name} does not match its manifest"):
        check_teacher(_distil(tiny_config, folder))


def test_the_trainer_refuses_a_teacher_of_another_scenario(tiny_config, tmp_path):
    from dakd.engine.trainer import train

    folder = _folder_with(tiny_config, tmp_path)
    cfg = _distil(tiny_config, folder, "real_to_real")
    cfg = from_dict(cfg.to_dict(), {"out_dir": str(tmp_path / "runs"), "teacher_cache.mode": "off"})
    with pytest.raises(ConfigError, match="adapted to synth_to_real"):
        train(from_dict(cfg.to_dict(), {"init": ""}))


def test_recipe_refuses_an_unknown_scenario():
    with pytest.raises(ConfigError, match="not one of"):
        recipe_config("game_to_city")


# -- the shipped teachers ------------------------------------------------------------------


def _entry(scenario):
    folder = ROOT / SHIPPED_DIR
    return json.loads((folder / MANIFEST).read_text())[teacher_file(scenario)]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_shipped_teacher_matches_its_manifest_and_the_embedded_teacher(scenario):
    path = ROOT / SHIPPED_DIR / teacher_file(scenario)
    assert path.is_file(), f"{path} is not in the repository"
    entry = _entry(scenario)
    cfg = load_config(EMBEDDED, ["stage=dakd", f"data.scenario={scenario}", f"teacher={path}"])
    assert check_teacher(cfg) is entry or check_teacher(cfg) == entry
    assert entry["scenario"] == scenario and entry["stage"] == "teacher_da"
    from dakd.data.scenes import renderer_version

    assert entry["renderer"] == renderer_version(), (
        f"{path.name} was trained on renderer {entry['renderer']}'s scenes: run python -m dakd "
        f"pretrain --teacher-da {scenario} and commit the new file and manifest.json"
    )
    # no checkpoint was picked by its target score: the file is the run's last average
    assert entry["history"][-1]["step"] == entry["steps"]
    assert entry["target_miou"]["float32"] == entry["history"][-1]["miou"]
    # float16 storage does not move the mIoU
    assert abs(entry["target_miou"]["stored"] - entry["target_miou"]["float32"]) < 0.1


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_retraining_reproduces_the_first_steps_of_the_shipped_teacher(scenario):
    """The documented command, at the recorded thread count, repeats the shipped run: its
    first steps' weights equal the recorded digest bit for bit on the CPU model that made it,
    with the same torch and CPU kernels. On another machine the same torch and AVX512 kernels
    gave other last bits (measured), which the digest cannot tell from a changed recipe, so
    there the test says so instead (the next test checks determinism on any machine)."""
    from dakd.recipes.pretrain import machine

    entry = _entry(scenario)
    cfg = recipe_config(scenario, EMBEDDED, [f"train.threads={entry['threads']}"])
    made = (entry["torch"], entry.get("cpu_capability"), entry.get("cpu"))
    here = (torch.__version__, torch.backends.cpu.get_cpu_capability(), machine()["cpu"])
    if made != here:
        pytest.skip(f"made with (torch, kernels, CPU) {made}, this is {here}")
    assert first_steps_digest(cfg, entry["first_steps"]["steps"]) == entry["first_steps"]["sha256"]


def test_the_teacher_recipe_is_deterministic_per_thread_count():
    """Two runs of the recipe's first steps at one thread give the same weights bit for bit
    (what makes a remade teacher equal to the shipped one on the machine that made it)."""
    cfg = recipe_config("synth_to_real", EMBEDDED, ["train.threads=1"])
    assert first_steps_digest(cfg, 2) == first_steps_digest(cfg, 2)


def test_embedded_weights_fit_the_size_budget():
    folder = ROOT / SHIPPED_DIR
    total = sum(p.stat().st_size for p in folder.glob("*.pt"))
    assert total <= 40 * 2**20, f"weights/embedded/ holds {total / 2**20:.1f} MiB"


def test_a_clone_at_another_path_finds_the_same_stages(tmp_path):
    """Shipped files enter fingerprints by content: another checkout path, same stage names;
    a changed file, another name."""
    from dakd.recipes.stages import requirements

    def names(root):
        cfg = load_config(
            EMBEDDED,
            [
                "stage=dakd",
                "init=auto",
                f"teacher={root / SHIPPED_DIR / teacher_file('synth_to_real')}",
                f"models.student.pretrained={root / SHIPPED_DIR / 'drn_d_22-w0.125-os2.pt'}",
            ],
        )
        return requirements(cfg)["init"].name, cfg.fingerprint()

    clone = tmp_path / "elsewhere"
    shutil.copytree(ROOT / SHIPPED_DIR, clone / SHIPPED_DIR)
    assert names(clone) == names(ROOT)
    student = clone / SHIPPED_DIR / "drn_d_22-w0.125-os2.pt"
    data = bytearray(student.read_bytes())
    data[-100] ^= 0xFF
    student.write_bytes(bytes(data))
    assert names(clone)[0] != names(ROOT)[0]
