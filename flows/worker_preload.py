"""Dask worker preload: import what a shard task needs before the first shard arrives.

plmscreen's local CPU clusters fork their workers from a forkserver that imported this module once
(``flows/orchestration.start_worker_forkserver``), while the CLI was still reading the input;
spawned workers (GPU clusters, ``preload=["plmscreen.flows.worker_preload"]``) import it while the
temporary Prefect server starts. Either way no shard pays for torch, Prefect's task engine, the
scoring code or scipy.stats (the partner test; ~0.7 s on its own)."""

import prefect.task_engine  # noqa: F401
import scipy.stats  # noqa: F401
import torch  # noqa: F401

import plmscreen.flows.screen  # noqa: F401
import plmscreen.screening.score.scorer  # noqa: F401
import plmscreen.screening.run.lifecycle  # noqa: F401
