"""Which Dask cluster a screen runs on: local processes (default), local GPUs, or an existing scheduler."""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner


def local_cuda_cluster(**kwargs):
    """dask-cuda's LocalCUDACluster, imported only when a GPU cluster is really started."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise RuntimeError("GPU screens need dask-cuda: pip install 'plmscreen[gpu]'") from exc
    return LocalCUDACluster(**kwargs)


def gpu_task_runner(gpus: int | None = None) -> DaskTaskRunner:
    """One dask-cuda worker per GPU (all visible GPUs when ``gpus`` is None), one task at a time each.

    dask-cuda pins CUDA_VISIBLE_DEVICES per worker, so CUDA is first initialised inside the
    workers, never in the flow process."""
    kwargs = {"threads_per_worker": 1}
    if gpus:
        kwargs["n_workers"] = gpus
    return DaskTaskRunner(cluster_class=local_cuda_cluster, cluster_kwargs=kwargs)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def task_runner(workers: int | None = None, gpus: int | None = None, scheduler: str | None = None) -> DaskTaskRunner:
    """A prefect-dask runner; conflicting choices are refused before anything starts."""
    chosen = [name for name, value in (("--workers", workers), ("--gpus", gpus), ("--scheduler", scheduler)) if value]
    if len(chosen) > 1:
        raise ValueError(f"choose one of {' and '.join(chosen)}: they name different clusters")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if gpus is not None and gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    if scheduler:
        return DaskTaskRunner(address=scheduler)
    if gpus:
        return gpu_task_runner(gpus)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers or default_workers(),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        },
    )
