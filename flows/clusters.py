"""Which Dask cluster a screen runs on: local processes (default), local GPUs, or an existing scheduler.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``). Setting it turns off glibc's adaptive mmap threshold,
so each of torch's large activation buffers is mmapped and unmapped again on every forward pass:
measured on the 8M ESM-2 architecture, 15x the page faults and 1.4x (up to 2.3x) the CPU time of
the same scoring in a plain process. The local clusters here start workers without it; in every
scoring process, workers of clusters plmscreen did not start included (``--scheduler``, SLURM),
the Scorer fixes glibc's thresholds itself (``screening/model/memory.py``), which overrides the
variable.
"""

from __future__ import annotations

import contextlib
import os

from prefect_dask import DaskTaskRunner

from plmscreen.flows.orchestration import WORKER_PRELOAD, check_cluster_choice  # noqa: F401 - re-exported
from plmscreen.flows.resources import ClusterPlan, cpu_cores

MULTIPROCESSING_METHOD = "distributed.worker.multiprocessing-method"
NANNY_MALLOC_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def _without_nanny_malloc_trim():
    import dask

    # dask drops pre-spawn variables whose value is None.
    with dask.config.set({NANNY_MALLOC_TRIM: None}):
        yield


def local_cpu_cluster(**kwargs):
    """distributed.LocalCluster whose workers keep glibc's adaptive malloc thresholds and are forked
    from plmscreen's worker forkserver (``start_worker_forkserver``; started here unless the CLI
    started it already): torch, Prefect's task engine and the scoring code are imported once, not
    once per worker (~5 CPU s each), and a worker the nanny restarts is forked the same way.

    The multiprocessing method is set for this whole process (Dask's nanny reads it at every
    worker start and restart); ``local_gpu_cluster`` sets it back to spawn. Nannies read the
    pre-spawn environment when they are created, which LocalCluster does before returning.
    A forked worker inherits the forkserver's environment, fixed when it started, so every worker
    also gets this process's environment now (``env``), as a spawned worker would."""
    import dask
    from distributed import LocalCluster

    from plmscreen.flows.orchestration import start_worker_forkserver

    start_worker_forkserver(kwargs.get("env"))
    kwargs["env"] = {**os.environ, **(kwargs.get("env") or {})}
    dask.config.set({MULTIPROCESSING_METHOD: "forkserver"})
    with _without_nanny_malloc_trim():
        return LocalCluster(**kwargs)


def local_gpu_cluster(n_workers: int | None = None, threads_per_worker: int = 1, **kwargs):
    """One worker per GPU, each seeing only its own device (so ``cuda`` means its GPU).

    dask-cuda's LocalCUDACluster when installed (``plmscreen[gpu]``); otherwise plain
    distributed nannies, each started with ``CUDA_VISIBLE_DEVICES`` set to its GPU."""
    import dask

    # Each GPU worker is a fresh interpreter that initialises CUDA for its own device.
    dask.config.set({MULTIPROCESSING_METHOD: "spawn"})
    with _without_nanny_malloc_trim():
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            return pinned_gpu_cluster(n_workers or _count_gpus(), threads_per_worker, **kwargs)
        if n_workers:
            kwargs["n_workers"] = n_workers
        return LocalCUDACluster(threads_per_worker=threads_per_worker, **kwargs)


def _count_gpus() -> int:
    from plmscreen.flows.resources import visible_gpus

    count = visible_gpus()
    if not count:
        raise RuntimeError("a GPU cluster was requested but torch sees no CUDA device")
    return count


def gpu_worker_specs(n_gpus: int, threads_per_worker: int = 1, visible: str | None = None, env: dict | None = None,
                     **options) -> dict:
    """SpecCluster worker specs: worker i is a nanny whose worker sees only GPU i of ``visible``
    (``CUDA_VISIBLE_DEVICES`` of this process, or 0..n-1)."""
    from distributed import Nanny

    devices = [d.strip() for d in (visible or os.environ.get("CUDA_VISIBLE_DEVICES", "")).split(",") if d.strip()]
    devices = devices or [str(i) for i in range(n_gpus)]
    if len(devices) < n_gpus:
        raise ValueError(f"{n_gpus} GPU workers requested but only {len(devices)} devices are visible: {devices}")
    return {
        f"gpu-{i}": {"cls": Nanny, "options": {"nthreads": threads_per_worker, "dashboard_address": None, **options,
                                                "env": {**(env or {}), "CUDA_VISIBLE_DEVICES": devices[i]}}}
        for i in range(n_gpus)
    }


def pinned_gpu_cluster(n_workers: int, threads_per_worker: int = 1, env: dict | None = None, preload=None, **kwargs):
    import dask
    from distributed import Scheduler, SpecCluster

    dask.config.set({MULTIPROCESSING_METHOD: "spawn"})

    worker_options = {"preload": preload} if preload else {}
    kwargs.pop("dashboard_address", None)
    with _without_nanny_malloc_trim():
        return SpecCluster(workers=gpu_worker_specs(n_workers, threads_per_worker, env=env, **worker_options),
                           scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, **kwargs)


def gpu_task_runner(gpus: int | None = None) -> DaskTaskRunner:
    """One worker per GPU (all visible GPUs when ``gpus`` is None), one task at a time each.

    Each worker sees only its own GPU, so CUDA is first initialised inside the workers, never in
    the flow process."""
    kwargs = {"threads_per_worker": 1}
    if gpus:
        kwargs["n_workers"] = gpus
    return DaskTaskRunner(cluster_class=local_gpu_cluster, cluster_kwargs=kwargs)


def default_workers() -> int:
    return cpu_cores()


def cpu_task_runner(workers: int) -> DaskTaskRunner:
    # Dask threads per worker stay 1 (one shard at a time per model copy); torch threads per
    # worker are set by the shard task (ClusterPlan.threads_per_worker).
    return DaskTaskRunner(
        cluster_class=local_cpu_cluster,
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
    )


def task_runner(workers: int | None = None, gpus: int | None = None, scheduler: str | None = None) -> DaskTaskRunner:
    """A prefect-dask runner; conflicting choices are refused before anything starts."""
    check_cluster_choice(workers, gpus, scheduler)
    if scheduler:
        return DaskTaskRunner(address=scheduler)
    if gpus:
        return gpu_task_runner(gpus)
    return cpu_task_runner(workers or default_workers())


def start_planned_cluster(plan: ClusterPlan, env: dict | None = None):
    """Start the local cluster a ``ClusterPlan`` describes, now (the CLI starts it while the
    temporary Prefect server starts); ``env`` goes to every worker, including restarted ones."""
    common = {"threads_per_worker": 1, "env": env or {}, "preload": [WORKER_PRELOAD], "dashboard_address": None}
    if plan.gpus:
        return local_gpu_cluster(plan.gpus, **common)
    return local_cpu_cluster(n_workers=plan.workers, processes=True, **common)


def plan_task_runner(plan: ClusterPlan) -> DaskTaskRunner:
    """The local cluster a ``ClusterPlan`` describes."""
    return gpu_task_runner(plan.gpus) if plan.gpus else cpu_task_runner(plan.workers)
