"""Dask worker preload: import what a shard task needs while the cluster starts.

Started by plmscreen's local clusters (``preload=["plmscreen.flows.worker_preload"]``), so each worker pays
for torch, Prefect's task engine and the scoring code while the temporary Prefect server is
still starting, not when the first shard arrives."""

import prefect.task_engine  # noqa: F401
import torch  # noqa: F401

import plmscreen.flows.screen  # noqa: F401
import plmscreen.screening.score.scorer  # noqa: F401
import plmscreen.screening.run.lifecycle  # noqa: F401
