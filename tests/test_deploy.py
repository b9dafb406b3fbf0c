"""Cluster specs in flows/ and deploy/ build what they claim (no jobs are submitted)."""

import pytest

from plmscreen.flows.clusters import task_runner


def test_local_cluster_starts_one_single_threaded_worker_per_requested_process():
    """The cluster the runner starts, not the arguments it was given: two worker processes of one
    thread each, other processes than this one, without the nanny's malloc trim threshold."""
    import os

    from distributed import Client

    runner = task_runner(workers=2)
    with runner.cluster_class(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        assert sorted(client.nthreads().values()) == [1, 1]
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {None}


@pytest.mark.parametrize("kwargs", [{"workers": 2, "gpus": 1}, {"gpus": 1, "scheduler": "tcp://x:8786"}])
def test_conflicting_cluster_choices_are_refused(kwargs):
    with pytest.raises(ValueError, match="choose one of"):
        task_runner(**kwargs)


def test_existing_scheduler_address_is_used_as_is():
    assert task_runner(scheduler="tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"


def test_gpu_runner_builds_without_dask_cuda():
    import sys

    task_runner(gpus=2)  # building it must not import dask_cuda (or touch CUDA): the flow process stays CUDA-free
    assert "dask_cuda" not in sys.modules


def test_slurm_spec_writes_a_one_gpu_one_task_job_script():
    from plmscreen.deploy.slurm_cluster import slurm_cluster, slurm_task_runner

    cluster = slurm_cluster(scheduler_options={"dashboard_address": None}, account="bio")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert {"#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -A bio", "#SBATCH --cpus-per-task=8"} <= set(lines)
    # The venv is activated first, then the worker starts with that venv's python, one thread.
    prologue = lines.index("source ~/plmscreen/.venv/bin/activate")
    (command,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert lines.index(command) > prologue
    words = command.split()
    assert words[:3] == ["python", "-m", "distributed.cli.dask_worker"] and words[3].startswith("tcp://")
    assert words.count("--nthreads") == 1 and words[words.index("--nthreads") + 1] == "1"
    assert words.count("--nworkers") == 0 and "--nanny" in words
    assert words[words.index("--local-directory") + 1] == "$TMPDIR"
    assert slurm_task_runner(jobs=8).adapt_kwargs == {"minimum": 1, "maximum": 8}
