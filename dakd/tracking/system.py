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
stop them. Both need attributes of MLflow's monitor that MLflow does not document: they are
touched in :func:`adapt_monitor` alone, which names any that an installed MLflow lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dakd.tracking.store import client_for, retry_locked

__all__ = ["adapt_monitor", "start_system_metrics"]

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
    adapt_monitor(monitor, _own_gpu(device) if getattr(device, "type", None) == "cuda" else None)
    monitor.start()
    return monitor


def adapt_monitor(monitor, keep_gpus: Callable[[list], list] | None = None) -> list[str]:
    """Fit MLflow's ``monitor`` to this package: its metrics batcher's client
    (``monitor.mlflow_logger.client``) is wrapped so that every write retries while the store
    is locked, and, given ``keep_gpus``, its NVIDIA GPU monitor samples the NVML handles
    ``keep_gpus(handles)`` returns (``gpu_handles``, ``num_gpus``).

    The one place that touches these attributes, which MLflow does not document. One that an
    installed MLflow lacks is a warning naming it (the monitor then runs as MLflow made it), and
    is returned."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    missing = []
    batcher = getattr(monitor, "mlflow_logger", None)
    if hasattr(batcher, "client"):
        batcher.client = _RetryingClient(batcher.client)
    else:
        missing.append("SystemMetricsMonitor.mlflow_logger.client")
    gpus = [m for m in getattr(monitor, "monitors", ()) if isinstance(m, GPUMonitor)]
    if keep_gpus is not None and gpus:
        if hasattr(gpus[0], "gpu_handles") and hasattr(gpus[0], "num_gpus"):
            gpus[0].gpu_handles = keep_gpus(list(gpus[0].gpu_handles))
            gpus[0].num_gpus = len(gpus[0].gpu_handles)
        else:
            missing.append("GPUMonitor.gpu_handles, num_gpus")
    for name in missing:
        _logger.warning("MLflow %s has no %s: system metrics without it", _version(), name)
    return missing


def _version() -> str:
    import mlflow

    return mlflow.__version__


def _own_gpu(device) -> Callable[[list], list]:
    """Of NVML's handles, the one of torch's ``device``, matched by UUID; every handle when none
    or several match, or NVML or torch cannot tell (an old torch without uuid, a MIG slice)."""

    def keep(handles: list) -> list:
        try:
            import pynvml
            import torch

            wanted = _uuid(torch.cuda.get_device_properties(device).uuid)
            mine = [h for h in handles if _uuid(pynvml.nvmlDeviceGetUUID(h)) == wanted]
        except Exception as err:  # NVML errors: keep every GPU
            _logger.debug("system metrics of every GPU: %s", err)
            return handles
        return mine if len(mine) == 1 else handles

    return keep


def _uuid(value) -> str:
    """``GPU-1a2b...`` (NVML, str or bytes) and ``1a2b...`` (torch) alike."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.lower().removeprefix("gpu-")
