"""MLflow's system metrics on a run: CPU, memory, disk, network and GPU use over time.

:func:`start_system_metrics` starts MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.
SystemMetricsMonitor` on a run given by id (this package never uses ``mlflow.start_run``'s
global state, so not ``start_run(log_system_metrics=True)``): a daemon thread samples every
``interval`` seconds and logs ``system/<name>`` metrics (``cpu_utilization_percentage``,
``system_memory_usage_megabytes``, ``disk_usage_percentage``, ``network_receive_megabytes``, ...
and, with nvidia-ml-py and an NVIDIA GPU, ``gpu_0_utilization_percentage``,
``gpu_0_memory_usage_megabytes``, ``gpu_0_power_usage_watts``, ...; psutil is needed for any),
at steps 0, 1, 2, ... continuing after an earlier attempt's. ``monitor.finish()`` stops the
thread (it wakes at once and is joined) and logs what it sampled; the thread also ends by
itself when it sees the run ended. A run shorter than one interval logs nothing.

NVML sees every GPU of the machine, whichever ones the process may use: given the run's
``device``, the GPU metrics are those of that GPU alone (as ``gpu_0_...``), matched by UUID; a
GPU NVML cannot match (a MIG slice) leaves every GPU in. The metrics are written through
:func:`dakd.tracking.store.retry_locked`, like every other write, so a busy SQLite store does not
stop them.
"""

from __future__ import annotations

import logging
from typing import Any

from dakd.tracking.store import client_for, retry_locked

__all__ = ["start_system_metrics"]

_logger = logging.getLogger(__name__)


class _RetryingClient:
    """The part of an MlflowClient that MLflow's metrics batcher calls, retried while locked."""

    def __init__(self, client):
        self.client = client

    def log_batch(self, *args, **kwargs):
        return retry_locked(self.client.log_batch, *args, **kwargs)


def start_system_metrics(
    uri: str,
    run_id: str,
    interval: float = 10.0,
    device: Any = None,
    node_id: str | None = None,
):
    """Start logging system metrics to run ``run_id`` of the store at ``uri`` every ``interval``
    seconds; the GPU metrics of the torch ``device`` alone when it is a GPU; names prefixed
    ``system/<node_id>/`` when ``node_id`` is given (one run, several processes). Returns the
    monitor (stop it with ``finish()``), or None when MLflow cannot monitor (no psutil)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:  # psutil missing: the sweep extra installs it
        _logger.warning("no system metrics: %s", err)
        return None
    client_for(uri)  # the store's schema is made under this package's lock, not MLflow's
    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=interval,
        samples_before_logging=1,
        resume_logging=True,  # a retried trial continues the steps of its earlier attempt
        node_id=node_id,
        tracking_uri=uri,
    )
    batcher = getattr(monitor, "mlflow_logger", None)
    if batcher is not None and hasattr(batcher, "client"):
        batcher.client = _RetryingClient(batcher.client)
    if device is not None and getattr(device, "type", None) == "cuda":
        _only_gpu(monitor, device)
    monitor.start()
    return monitor


def _only_gpu(monitor, device) -> None:
    """Keep the NVML handle of torch's ``device`` alone in the monitor's GPU monitor."""
    gpus = [m for m in monitor.monitors if hasattr(m, "gpu_handles")]
    if not gpus:
        return
    try:
        import pynvml
        import torch

        wanted = _uuid(torch.cuda.get_device_properties(device).uuid)
        mine = [h for h in gpus[0].gpu_handles if _uuid(pynvml.nvmlDeviceGetUUID(h)) == wanted]
    except Exception as err:  # an old torch without uuid, NVML errors: keep every GPU
        _logger.debug("system metrics of every GPU: %s", err)
        return
    if len(mine) == 1:
        gpus[0].gpu_handles = mine
        gpus[0].num_gpus = 1


def _uuid(value) -> str:
    """``GPU-1a2b...`` (NVML, str or bytes) and ``1a2b...`` (torch) alike."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.lower().removeprefix("gpu-")
