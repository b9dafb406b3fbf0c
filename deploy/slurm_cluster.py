"""A dask-jobqueue SLURM cluster for screens on an HPC system (GPU partition), as a DaskTaskRunner.

Use it from a script or a deployment entry point on the cluster's login node:

    from plmscreen.deploy.slurm_cluster import slurm_task_runner
    from plmscreen.flows.screen import screen_proteome

    screen_proteome.with_options(task_runner=slurm_task_runner(jobs=8))(
        input="proteome.fasta", store="/shared/plmscreen-store", model="esm2_t33_650M_UR50D",
        weights_dir="/shared/esm-weights", device="cuda",
        catalog_url="postgresql+psycopg://plmscreen@db-host/plmscreen")

Each SLURM job is one Dask worker with one GPU and one task at a time, so it loads the model once.
Needs ``pip install dask-jobqueue`` on the login node; adjust queue, account and walltime to the site.
"""

from __future__ import annotations

from prefect_dask import DaskTaskRunner


def slurm_cluster(**overrides):
    from dask_jobqueue import SLURMCluster

    options = dict(
        queue="gpu",
        cores=1,  # Dask threads per worker: one shard at a time per GPU ...
        job_cpu=8,  # ... but 8 CPU cores booked per job (tokenising, repeat alignment, Parquet writing)
        processes=1,  # one worker per job ...
        memory="64GB",
        walltime="04:00:00",
        job_extra_directives=["--gres=gpu:1"],  # ... with one GPU
        job_script_prologue=["source ~/plmscreen/.venv/bin/activate"],
        # The job's own interpreter, from the venv the prologue activates; dask-jobqueue's default
        # is the login node's sys.executable, which need not exist on the compute nodes.
        python="python",
        local_directory="$TMPDIR",
    )
    options.update(overrides)
    return SLURMCluster(**options)


def slurm_task_runner(jobs: int = 4, **overrides) -> DaskTaskRunner:
    """``jobs`` GPU jobs; Dask adapts between 1 and ``jobs`` as shards remain."""
    return DaskTaskRunner(cluster_class=slurm_cluster, cluster_kwargs=overrides, adapt_kwargs={"minimum": 1, "maximum": jobs})
