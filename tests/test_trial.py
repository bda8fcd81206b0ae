"""A trial that fails after a checkpoint continues from it when retried: same MLflow run, no
repeated evaluation, and the same final weights as a trial that never failed.

Ray Tune's side (``get_checkpoint``, ``report``, the trial folder) is played by a small fake,
so the trial function itself runs in this process, exactly as a Tune worker runs it."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dakd.sweep  # noqa: F401  (sets Ray's environment before ray is imported)
from dakd.models import checkpoint as ckpt
from dakd.sweep.driver.plan import smoke
from dakd.sweep.remote import trial as trial_module
from dakd.sweep.spec.context import SweepContext
from dakd.sweep.spec.sweep_spec import grid_variants
from dakd.tracking.store import find_runs, prepare

ROOT = Path(__file__).resolve().parents[1]


class WorkerLost(RuntimeError):
    pass


class FakeTune:
    """What a function trainable sees of Ray Tune: its folder, its checkpoint, ``report``."""

    from ray.tune import Checkpoint

    def __init__(
        self,
        trial_dir: Path,
        store: Path,
        checkpoint=None,
        crash_after: int = 0,
        stop_at: int = 0,
        trial_id: str = "",
    ):
        self.trial_dir, self.store = trial_dir, store
        # Tune's trial id: the same for every attempt of a trial, unique among trials
        self.trial_id = trial_id or f"trial_{trial_dir.name}"
        self.checkpoint, self.crash_after, self.stop_at = checkpoint, crash_after, stop_at
        self.reports: list[dict] = []
        self.saved: list = []

    def get_context(self):
        return SimpleNamespace(
            get_trial_dir=lambda: str(self.trial_dir), get_trial_id=lambda: self.trial_id
        )

    def get_checkpoint(self):
        return self.checkpoint

    def report(self, metrics, checkpoint=None):
        self.reports.append(metrics)
        if checkpoint is not None:  # Tune persists the folder before report returns
            kept = self.store / f"checkpoint_{len(list(self.store.iterdir())):06d}"
            shutil.copytree(checkpoint.path, kept)
            self.saved.append(self.Checkpoint.from_directory(str(kept)))
        if self.crash_after and len(self.reports) == self.crash_after:
            raise WorkerLost("the worker died")
        if self.stop_at and metrics["step"] >= self.stop_at:
            raise SystemExit(0)  # how Tune ends a trial that its scheduler stopped


@pytest.fixture
def sweep(tmp_path):
    spec = smoke(ROOT / "sweeps" / "quickstart.yaml", [f"experiment.out_dir={tmp_path}/stages"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = SweepContext(
        spec=spec,
        root=str(ROOT),
        tracking_uri=uri,
        experiment_id=prepare(uri, spec.experiment_name),
        parent_run_id="",
        tags={"sweep": spec.name, "git_commit": "test"},
    )
    return spec, context, grid_variants(spec)[0]


def _run(monkeypatch, fake, config, context):
    monkeypatch.setattr(trial_module, "tune", fake)
    trial_module.run_trial(config, context)


def test_retried_trial_continues_from_its_checkpoint(sweep, tmp_path, monkeypatch):
    spec, context, config = sweep
    # a trial that never fails
    whole = FakeTune(tmp_path / "whole", tmp_path / "store-whole")
    (tmp_path / "store-whole").mkdir()
    _run(monkeypatch, whole, config, context)
    assert [r["step"] for r in whole.reports] == [2, 4]

    # the same trial, lost after its first evaluation, then retried on a fresh worker
    (tmp_path / "store").mkdir()
    first = FakeTune(tmp_path / "first", tmp_path / "store", crash_after=1)
    with pytest.raises(WorkerLost):
        _run(monkeypatch, first, config, context)
    retry = FakeTune(
        tmp_path / "retry", tmp_path / "store", checkpoint=first.saved[-1], trial_id=first.trial_id
    )
    _run(monkeypatch, retry, config, context)

    assert [r["step"] for r in retry.reports] == [4]  # nothing evaluated twice
    assert retry.reports[0]["mlflow_run_id"] == first.reports[0]["mlflow_run_id"]
    final = ckpt.load(tmp_path / "retry" / "run" / "model.pt")["model"]
    expected = ckpt.load(tmp_path / "whole" / "run" / "model.pt")["model"]
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key

    runs = {
        r.info.run_id: r
        for r in find_runs(context.tracking_uri, spec.experiment_name)
        if "trial" in r.data.tags
    }
    assert len(runs) == 2  # the uninterrupted trial and the retried one: no third run
    resumed = runs[retry.reports[0]["mlflow_run_id"]]
    assert resumed.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    history = MlflowClient(context.tracking_uri).get_metric_history(resumed.info.run_id, "miou")
    assert sorted(m.step for m in history) == [2, 4]
    # what the steps cost, at every evaluation (gpu_peak_mb on CUDA only)
    assert {"sec_per_step", "step_ms", "tflops"} <= set(resumed.data.metrics)
    assert {"step_ms", "tflops"} <= set(whole.reports[-1])  # and to Tune


def test_a_failing_trial_marks_its_run_failed(sweep, tmp_path, monkeypatch):
    spec, context, config = sweep
    (tmp_path / "store").mkdir()
    fake = FakeTune(tmp_path / "t", tmp_path / "store", crash_after=1)
    with pytest.raises(WorkerLost):
        _run(monkeypatch, fake, config, context)
    (run,) = [
        r for r in find_runs(context.tracking_uri, spec.experiment_name) if "trial" in r.data.tags
    ]
    assert run.info.status == "FAILED"
    assert run.data.tags["trial"] == "levels=output seed=0"


def test_a_trial_out_of_gpu_memory_says_what_to_change_in_one_line(sweep, tmp_path, monkeypatch):
    """The trial's run is FAILED with the out-of-memory line as its error tag (what the sweep's
    summary shows too); its retry, which trains, takes the tag off again."""
    from dakd.engine.state import TrainState
    from dakd.engine.trainer import OutOfMemory
    from dakd.recipes.stages import error_line

    spec, context, config = sweep
    (tmp_path / "store").mkdir()
    fake = FakeTune(tmp_path / "t", tmp_path / "store")
    step = TrainState.train_step
    with monkeypatch.context() as patch:

        def oom(self):
            if self.cfg.name != "run":  # the stage the trial starts from trains as it does
                return step(self)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        patch.setattr(TrainState, "train_step", oom)
        with pytest.raises(OutOfMemory) as caught:
            _run(patch, fake, config, context)
    line = error_line(caught.value)
    assert line.startswith("OutOfMemory: out of memory on cpu in step 0; batch ")
    assert "\n" not in line and line.endswith("smaller crops (data.crop_size)")
    (run,) = _trial_runs(context, spec)
    assert run.info.status == "FAILED" and run.data.tags["error"] == line
    retry = FakeTune(tmp_path / "retry", tmp_path / "store", trial_id=fake.trial_id)
    _run(monkeypatch, retry, config, context)
    (run,) = _trial_runs(context, spec)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


def _trial_runs(context, spec):
    return [
        r for r in find_runs(context.tracking_uri, spec.experiment_name) if "trial" in r.data.tags
    ]


def test_a_trial_stopped_at_its_last_report_still_keeps_its_final_artifacts(
    sweep, tmp_path, monkeypatch
):
    """ASHA stops every trial that reaches max_t at that report: the final weights and
    evaluation artifacts must already be logged by then. The stop (SystemExit) still ends the
    function: swallowed, Tune's wrapper would report again and a reused actor would hang."""
    spec, context, config = sweep
    (tmp_path / "store").mkdir()
    fake = FakeTune(tmp_path / "t", tmp_path / "store", stop_at=4)
    with pytest.raises(SystemExit):
        _run(monkeypatch, fake, config, context)
    assert [r["step"] for r in fake.reports] == [2, 4]
    (run,) = _trial_runs(context, spec)
    assert run.info.status == "FINISHED" and "early_stopped" not in run.data.tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(context.tracking_uri)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "weights")] == [
        "weights/model.pt"
    ]
    assert "eval/predictions.png" in {
        a.path for a in client.list_artifacts(run.info.run_id, "eval")
    }


def test_a_trial_stopped_early_is_closed_by_the_driver(sweep, tmp_path, monkeypatch):
    """The stopped trial's thread ends at once (a reused actor waits for it); the driver's
    callback then tags the run early_stopped and closes it."""
    from dakd.sweep.driver.tuner import _Closer

    spec, context, config = sweep
    (tmp_path / "store").mkdir()
    fake = FakeTune(tmp_path / "t", tmp_path / "store", stop_at=2)
    with pytest.raises(SystemExit):
        _run(monkeypatch, fake, config, context)
    (run,) = _trial_runs(context, spec)
    assert run.info.status == "RUNNING"
    closer = _Closer(context.tracking_uri)
    for result in fake.reports:
        closer.result("trial_0", result)
    closer.complete("trial_0")
    (run,) = _trial_runs(context, spec)
    assert run.info.status == "FINISHED" and run.data.tags["early_stopped"] == "true"


def test_the_trial_time_split_adds_up_from_the_loop_hook_times(monkeypatch):
    """``time/*_s``: setup until ``train`` is called, the Tune and MLflow hooks' own time as
    ``report`` and ``logging``, the trainer alone as the rest of ``train``, the artifacts, and a
    total that covers them all; then the run is FINISHED."""
    from dakd.sweep.remote import hooks

    logged = []
    logger = SimpleNamespace(
        log_metrics=lambda metrics, step: logged.append((metrics, step)),
        finish=lambda status: logged.append(status),
    )
    now = iter([1.0, 20.0, 21.0, 22.0])
    monkeypatch.setattr(hooks.time, "perf_counter", lambda: next(now))
    monkeypatch.setattr(hooks, "log_final_artifacts", lambda *args: None)
    report = hooks.TuneReport(lambda metrics, checkpoint: None)
    tracking = hooks.TrialTracking(logger, None, started=0.0, report=report)  # made at 1.0: setup
    seconds = {report: 2.5, tracking: 1.0}  # the loop's time per hook object
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(steps=4)), seconds_of=seconds.__getitem__
    )
    tracking.after_train(trainer, SimpleNamespace(seconds={"train": 10.0}))
    assert logged == [
        (
            {
                "time/setup_s": 1.0,
                "time/report_s": 2.5,
                "time/logging_s": 1.0,
                "time/train_s": 6.5,
                "time/artifacts_s": 1.0,
                "time/total_s": 22.0,
            },
            4,
        ),
        "FINISHED",
    ]


def test_a_stage_with_a_recorded_failure_fails_the_trial_without_training_it(tiny, monkeypatch):
    """A trial that builds on a stage whose training failed (the driver's attempt, or another
    trial's) raises StageFailedError with the recorded line and never trains the stage again."""
    from dakd.recipes.stages import StageFailedError, mark_failed
    from dakd.sweep.remote import stages as stage_tasks

    trained = []
    monkeypatch.setattr(stage_tasks, "train_stage", lambda *args: trained.append(args))
    stage = tiny("student_da")
    message = mark_failed(stage, "NonFiniteLossError: loss is nan", "optim.lr=1e+12")
    with pytest.raises(StageFailedError) as err:
        stage_tasks.ensure_stage(tiny("student_da"), context=None, threads=1)
    assert str(err.value) == message
    assert trained == []


# -- MLflow's system metrics on a trial's run ------------------------------------------------------
def _system_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


def test_system_metrics_reach_the_trial_run_when_asked_and_stay_off_on_cpu_under_auto(tmp_path):
    """``tracking.system_metrics: true`` samples CPU and memory onto the run while the trial
    trains and stops when it ends (a scheduler's stop too: no thread outlives the trial);
    ``auto`` leaves them off on a CPU."""
    import time

    from dakd.sweep.remote.hooks import SystemMetrics
    from dakd.sweep.spec.settings import Tracking
    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import get_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = prepare(uri, "system")
    trainer = SimpleNamespace(state=SimpleNamespace(device=torch.device("cpu")))
    metrics = {}
    for setting, end in ((True, "after_train"), (True, "on_exception"), ("auto", "after_train")):
        logger = RunLogger(uri, experiment, run_name=f"{setting}-{end}")
        tracking = Tracking(system_metrics=setting, system_metrics_interval=0.1)
        hook = SystemMetrics(uri, logger.run_id, tracking)
        hook.before_train(trainer)
        assert (hook.monitor is not None) == (setting is True)
        time.sleep(0.6)
        getattr(hook, end)(trainer, SystemExit(0) if end == "on_exception" else None)
        assert hook.monitor is None and not _system_threads()
        logger.finish()
        metrics[(setting, end)] = get_run(uri, logger.run_id).data.metrics
    for end in ("after_train", "on_exception"):
        assert "system/cpu_utilization_percentage" in metrics[(True, end)], end
        assert "system/system_memory_usage_megabytes" in metrics[(True, end)], end
    assert not any(k.startswith("system/") for k in metrics[("auto", "after_train")])
    assert Tracking().system_metrics_on("cuda") and not Tracking().system_metrics_on("cpu")


def test_system_metrics_of_a_gpu_trial_keep_its_own_gpu(monkeypatch):
    """NVML lists every GPU of the machine; the trial's run keeps the one it trains on."""
    import pynvml

    from dakd.tracking import system

    uuids = {"h0": "GPU-0000", "h1": b"GPU-1A2B", "h2": "GPU-2222", "h3": "GPU-1a2b"}
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", uuids.get)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: SimpleNamespace(uuid="1a2b")
    )
    keep = system._own_gpu(torch.device("cuda", 1))
    assert keep(["h0", "h1", "h2"]) == ["h1"]
    assert keep(["h0", "h2"]) == ["h0", "h2"]  # none matches: every GPU
    assert keep(["h1", "h3"]) == ["h1", "h3"]  # two match: every GPU


def _nvml(monkeypatch, handles: list[str]) -> None:
    """NVML answered by hand, without a GPU: handle ``hK`` uses K+1 MB of 4 MB, 10*K % of its
    time and (K+1) W of 10 W."""
    import pynvml

    calls = {
        "nvmlInit": lambda: None,
        "nvmlDeviceGetCount": lambda: len(handles),
        "nvmlDeviceGetHandleByIndex": lambda i: handles[i],
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(used=(int(h[1]) + 1) * 1e6, total=4e6),
        "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=10 * int(h[1])),
        "nvmlDeviceGetPowerUsage": lambda h: 1000 * (int(h[1]) + 1),
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 10000,
    }
    for name, call in calls.items():
        monkeypatch.setattr(pynvml, name, call)


def test_mlflow_still_has_what_adapt_monitor_touches(tmp_path, monkeypatch, caplog):
    """``adapt_monitor`` writes attributes MLflow does not document: the installed MLflow's
    monitor still writes its metrics through ``mlflow_logger.client.log_batch``, and its GPU
    monitor still makes and samples ``gpu_handles`` (and ``num_gpus``)."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from dakd.tracking.runs import RunLogger
    from dakd.tracking.store import get_run
    from dakd.tracking.system import adapt_monitor

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = RunLogger(uri, prepare(uri, "system"), run_name="adapted").run_id
    monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
    _nvml(monkeypatch, ["h0", "h1", "h2"])
    gpu = GPUMonitor()
    assert (gpu.gpu_handles, gpu.num_gpus) == (["h0", "h1", "h2"], 3)
    monitor.monitors = [m for m in monitor.monitors if not isinstance(m, GPUMonitor)] + [gpu]
    assert adapt_monitor(monitor, lambda handles: handles[1:2]) == []
    assert (gpu.gpu_handles, gpu.num_gpus) == (["h1"], 1)
    gpu.collect_metrics()
    sampled = gpu.aggregate_metrics()
    assert sampled["gpu_0_memory_usage_megabytes"] == 2.0  # h1's, as GPU 0
    assert sampled["gpu_0_utilization_percentage"] == 10.0
    assert sampled["gpu_0_power_usage_watts"] == 2.0
    assert not [k for k in sampled if not k.startswith("gpu_0_")]

    batches = []
    store = monitor.mlflow_logger.client.client  # MLflow's client, wrapped by adapt_monitor
    monitor.mlflow_logger.client.client = SimpleNamespace(
        log_batch=lambda *a, **k: batches.append(1) or store.log_batch(*a, **k)
    )
    monitor.mlflow_logger.record_metrics({"system/cpu_utilization_percentage": 5.0}, 0)
    monitor.mlflow_logger.flush()
    assert batches == [1]
    assert get_run(uri, run_id).data.metrics["system/cpu_utilization_percentage"] == 5.0

    with caplog.at_level("WARNING", logger="dakd.tracking.system"):
        assert adapt_monitor(SimpleNamespace(monitors=[])) == [
            "SystemMetricsMonitor.mlflow_logger.client"
        ]
    assert "has no SystemMetricsMonitor.mlflow_logger.client" in caplog.text
