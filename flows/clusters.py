"""Which Dask cluster a screen runs on: local processes (default), local GPUs, or an existing scheduler."""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner


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
        # One worker per GPU and one task per worker; dask-cuda pins CUDA_VISIBLE_DEVICES per worker,
        # so CUDA is first initialised inside the workers, never in the flow process.
        return DaskTaskRunner(
            cluster_class="dask_cuda.LocalCUDACluster",
            cluster_kwargs={"n_workers": gpus, "threads_per_worker": 1},
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers or default_workers(),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        },
    )
