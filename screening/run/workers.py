"""What a worker process keeps between shards: its loaded models, keyed by checkpoint digest."""

from __future__ import annotations

import logging

from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.backends.resolve import load_backend
from plmscreen.screening.model.backends.scorer import scorer_for
from plmscreen.screening.model.checkpoints import ModelLoadError
from plmscreen.screening.run.claims import this_worker
from plmscreen.screening.run.plan import RunPlan
from plmscreen.screening.score.scorer import Scorer

WORKER_LOG = logging.getLogger("plmscreen.worker")


def load_planned_backend(plan: RunPlan) -> Backend:
    """The model ``plan`` was planned with, through its family's backend, refused unless its weight
    files have the planned digest (each loader checks ``expected_sha256``; checked again here for
    every family) and its family is the planned one. Hub ids are never downloaded here: the
    planner did that, so a worker finds them in the local cache."""
    settings = plan.settings
    backend = load_backend(settings.model, settings.weights_dir, settings.device,
                           expected_sha256=plan.checkpoint_sha256, planned_identity=plan.checkpoint_identity)
    if backend.checkpoint_sha256 != plan.checkpoint_sha256 or backend.family != plan.model_family:
        raise ModelLoadError(
            f"{settings.model} loaded as {backend.family} with sha256 {backend.checkpoint_sha256}, but run "
            f"{plan.run_id} was planned with {plan.model_family} sha256 {plan.checkpoint_sha256}")
    return backend


class ScorerCache:
    """The models one worker process holds, keyed by checkpoint sha256, device and scoring options.

    Long-lived workers (``--scheduler``) serve many runs: at most ``capacity`` models stay loaded
    (the least recently used is dropped first), and a model is looked up by the digest the run was
    planned with, so a replaced checkpoint file is never scored under its old digest (loading
    verifies the files against the plan, see ``load_planned_backend``)."""

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._scorers: dict[tuple, Scorer] = {}

    def __len__(self) -> int:
        return len(self._scorers)

    def for_plan(self, plan: RunPlan) -> Scorer:
        settings = plan.settings
        key = (plan.model_family, plan.checkpoint_sha256, settings.device, settings.scoring)
        scorer = self._scorers.pop(key, None)
        if scorer is None:
            while len(self._scorers) >= self.capacity:
                self._scorers.pop(next(iter(self._scorers)))  # least recently used
            backend = load_planned_backend(plan)
            scorer = scorer_for(backend, settings.scoring)
            # One line per load: an operator (and the cluster tests) can see each worker loads once.
            WORKER_LOG.info("worker %s loaded %s (%s, sha256 %s, verified) on %s", this_worker(), backend.name,
                            backend.family, backend.checkpoint_sha256, backend.device)
        self._scorers[key] = scorer  # most recently used last
        return scorer
