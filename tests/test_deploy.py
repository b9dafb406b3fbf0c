"""Cluster specs in flows/ and deploy/ build what they claim (no jobs are submitted)."""

import pytest

from flows.clusters import task_runner


def test_local_cluster_is_one_single_threaded_worker_per_requested_process():
    runner = task_runner(workers=3)
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["threads_per_worker"] == 1


@pytest.mark.parametrize("kwargs", [{"workers": 2, "gpus": 1}, {"gpus": 1, "scheduler": "tcp://x:8786"}])
def test_conflicting_cluster_choices_are_refused(kwargs):
    with pytest.raises(ValueError, match="choose one of"):
        task_runner(**kwargs)


def test_existing_scheduler_address_is_used_as_is():
    assert task_runner(scheduler="tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


def test_gpu_runner_builds_without_dask_cuda():
    import sys

    runner = task_runner(gpus=2)  # building it must not import dask_cuda (or touch CUDA)
    assert runner.cluster_kwargs == {"threads_per_worker": 1, "n_workers": 2}
    assert "dask_cuda" not in sys.modules


def test_slurm_spec_writes_a_one_gpu_one_task_job_script():
    from deploy.slurm_cluster import slurm_cluster, slurm_task_runner

    cluster = slurm_cluster(scheduler_options={"dashboard_address": None}, account="bio")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script and "#SBATCH -A bio" in script
    assert "--nthreads 1" in script and "source ~/plmscreen/.venv/bin/activate" in script
    assert slurm_task_runner(jobs=8).adapt_kwargs == {"minimum": 1, "maximum": 8}
