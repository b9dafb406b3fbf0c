"""What a worker process keeps between shards: its loaded models, keyed by checkpoint digest."""

from __future__ import annotations

import logging

from plmscreen.screening.model.checkpoints import (
    load_model,
)
from plmscreen.screening.run.claims import this_worker
from plmscreen.screening.run.plan import RunPlan
from plmscreen.screening.score.scorer import Scorer

WORKER_LOG = logging.getLogger("plmscreen.worker")
class ScorerCache:
    """The models one worker process holds, keyed by checkpoint sha256, device and scoring options.

    Long-lived workers (``--scheduler``) serve many runs: at most ``capacity`` models stay loaded
    (the least recently used is dropped first), and a model is looked up by the digest the run was
    planned with, so a replaced checkpoint file is never scored under its old digest (loading
    verifies the file against the plan, see ``load_model``)."""

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._scorers: dict[tuple, Scorer] = {}

    def __len__(self) -> int:
        return len(self._scorers)

    def for_plan(self, plan: RunPlan) -> Scorer:
        settings = plan.settings
        key = (plan.checkpoint_sha256, settings.device, settings.scoring)
        scorer = self._scorers.pop(key, None)
        if scorer is None:
            while len(self._scorers) >= self.capacity:
                self._scorers.pop(next(iter(self._scorers)))  # least recently used
            loaded = load_model(settings.model, settings.weights_dir, settings.device,
                                expected_sha256=plan.checkpoint_sha256, planned_identity=plan.checkpoint_identity)
            scorer = Scorer(loaded, settings.scoring)
            # One line per load: an operator (and the cluster tests) can see each worker loads once.
            WORKER_LOG.info("worker %s loaded %s (sha256 %s, verified) on %s", this_worker(), loaded.name,
                            loaded.checkpoint_sha256, loaded.device)
        self._scorers[key] = scorer  # most recently used last
        return scorer
