"""The cluster recipes under cluster/: each one's file parses, validates where its tool offers a
validator (Ray's cluster-config schema for `ray up`, `bash -n` for the Slurm script), starts
what a sweep needs (a tracking server on PostgreSQL with served artifacts, Ray nodes sized for
a trial), and points the sweep at what it starts; the sweep command of each runs as a dry run
here (its spec, flags and every --set key checked, with the cost for the recipe's nodes)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.sweep.driver.cluster import unmet_request
from dakd.sweep.spec.sweep_spec import load_spec
from tests.test_sweep import _cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "cluster"


def _sweep_args(command: str, values: dict[str, str]) -> list[str]:
    """The arguments after ``sweeps/run.py`` of a shell command, its variables filled in."""
    for name, value in values.items():
        command = command.replace(f'"${name}"', value).replace(f"${name}", value)
    words = shlex.split(command)
    return words[words.index("sweeps/run.py") + 1 :]


def _dry_run(args: list[str], tmp_path: Path, capsys, *plan_for: str) -> str:
    """The recipe's sweep as a dry run here (no cluster: --address dropped)."""
    if "--address" in args:
        at = args.index("--address")
        del args[at : at + 2]
    args = [a for a in args if a not in ("--autoscale",)]
    assert _cli([*args, "--dry-run", *plan_for]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _set(args: list[str], key: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    assert values, (key, args)
    return values[-1]


def _nodes(cpu: float, gpu: float, n: int = 1) -> list[dict]:
    return [{"ip": f"10.0.0.{i}", "CPU": cpu, "GPU": gpu} for i in range(n)]


def test_the_ray_up_file_is_a_valid_cluster_config_whose_gpu_nodes_hold_a_trial(
    tmp_path, capsys, monkeypatch
):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((RECIPES / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(raw))  # what `ray up` checks before it starts anything
    worker = raw["available_node_types"]["gpu_worker"]
    assert worker["max_workers"] >= 1 and worker["resources"]["GPU"] >= 1  # declared: autoscale
    head = "\n".join(raw["head_setup_commands"])
    assert "--serve-artifacts" in head and "--backend-store-uri postgresql://" in head
    assert "--host 0.0.0.0" not in head  # the private address, never every interface
    assert all(".venv/bin/ray start" in c for c in raw["head_start_ray_commands"][1:])
    assert "uv sync --frozen" in "\n".join(raw["setup_commands"])
    # the run command of the header: the sweep with --autoscale, its trials fit a GPU node
    header = "".join(
        line[1:].strip() + " "
        for line in (RECIPES / "aws-gpu.yaml").read_text().splitlines()
        if line.startswith("#")
    )
    command = re.search(r"ray exec \S+ '(.*?)'", header).group(1).replace("\\", "")
    command = re.sub(r"\$\(hostname[^)]*\)", "10.0.0.5", command)  # the head's address
    args = _sweep_args(command, {})
    assert "--autoscale" in args and _set(args, "tracking.uri") == "http://10.0.0.5:5000"
    monkeypatch.setenv("HOME", str(tmp_path))
    out = _dry_run(args, tmp_path, capsys, "--nodes", "4", "--gpus-per-node", "1")
    assert "cost, on 4 x" in out
    spec = load_spec(ROOT / args[0], [a for a in args[1:] if "=" in a])
    assert (
        unmet_request(spec, _nodes(worker["resources"]["CPU"], worker["resources"]["GPU"])) is None
    )


def test_the_slurm_script_starts_everything_it_points_the_sweep_at(tmp_path, capsys):
    script = (RECIPES / "slurm.sbatch").read_text()
    done = subprocess.run(["bash", "-n", str(RECIPES / "slurm.sbatch")], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^#SBATCH --signal=B:TERM@\d+$", script, re.M)  # SIGTERM before the limit
    assert "initdb" in script and '"$PG_BIN/postgres"' in script  # PostgreSQL, unless DB_URI
    server = re.search(r"mlflow server (.*?)&\n", script, re.S).group(1)
    assert '--backend-store-uri "$DB_URI"' in server and "--serve-artifacts" in server
    host = re.search(r'--host "\$(\w+)" --port (\d+)', server)
    assert "ray start --head" in script and 'ray start --address="$head_ip:6379"' in script
    driver = re.search(r"^exec (.*?sweeps/run\.py.*?)(?:\n(?!\s)|\Z)", script, re.M | re.S)
    assert driver, "the driver must be the script's own process (exec), for the early SIGTERM"
    values = {"SPEC": "sweeps/synth_to_real.yaml", "RESUME": "", "runs": str(tmp_path / "runs")}
    values["head_ip"] = "10.0.0.1"
    args = _sweep_args(driver.group(1).replace("\\\n", " "), values)
    uri = _set(args, "tracking.uri")
    assert uri == f"http://10.0.0.1:{host.group(2)}" and host.group(1) == "head_ip"
    out = _dry_run(args, tmp_path, capsys, "--nodes", "3", "--gpus-per-node", "4")
    assert "stages the trials build on" in out and "cost, on 3 x" in out


def test_the_kuberay_manifest_wires_the_sweep_to_its_server_and_gpus(tmp_path, capsys):
    docs = list(yaml.safe_load_all((RECIPES / "kuberay-rayjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "RayJob"}
    deployment, service, job = kinds["Deployment"], kinds["Service"], kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--serve-artifacts" in server["command"]
    assert "--backend-store-uri=$(DB_URI)" in server["command"]
    assert server["env"][0]["valueFrom"]["secretKeyRef"]["key"] == "uri"  # not in the file
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    port = service["spec"]["ports"][0]
    assert port["targetPort"] == server["ports"][0]["containerPort"]

    command = job["spec"]["entrypoint"].split("&&", 1)[1]
    args = _sweep_args(command, {})
    assert _set(args, "tracking.uri") == f"http://{service['metadata']['name']}:{port['port']}"
    cluster = job["spec"]["rayClusterSpec"]
    images = {
        server["image"],
        cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
    }
    for group in cluster["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        images.add(container["image"])
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert int(group["rayStartParams"]["num-gpus"]) == gpus
        cpus = float(container["resources"]["limits"]["cpu"])
        spec = load_spec(ROOT / args[0], [a for a in args[1:] if "=" in a])
        assert unmet_request(spec, _nodes(cpus, gpus)) is None  # a trial fits one worker pod
    assert len(images) == 1  # the driver, the server and the workers run the same code
    workers = sum(g["replicas"] for g in cluster["workerGroupSpecs"])
    out = _dry_run(args, tmp_path, capsys, "--nodes", str(workers), "--gpus-per-node", "1")
    assert f"cost, on {workers} x" in out


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "slurm.sbatch", "kuberay-rayjob.yaml"])
def test_every_recipe_names_what_every_node_must_see(name):
    text = (RECIPES / name).read_text()
    for what in ("storage", "tracking.uri", "DAKD_DATA", "weights"):
        assert what in text, (name, what)
