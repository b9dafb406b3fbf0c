"""``Scorer`` over any backend: the same jobs, windows, batches and partner co-masking as
``plmscreen.screening.score.scorer.Scorer``, with tokens, masks and the forward pass taken from a ``Backend``.

This subclass only replaces the four places where ``Scorer`` reads fair-esm directly (its alphabet
in ``__init__``/``encode``/``token_index``, BOS/EOS/padding in ``_batch_logprobs`` and the forward in
``_forward``); job planning, batching, the out-of-memory split, ``score`` and ``probe`` are
inherited unchanged. Once ``Scorer`` takes a backend itself, this file goes away.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.score.scorer import _AUTOCAST, Scorer, ScoringOptions, _Job


class BackendScorer(Scorer):
    """``engine="fair-esm"`` in the options selects each backend's reference forward (the library's
    own stock model call) instead of its fast path, as it selects fair-esm's for ``Scorer``."""

    def __init__(self, backend: Backend, options: ScoringOptions = ScoringOptions()):
        if options.precision == "fp16" and backend.device.type != "cuda":
            raise ValueError("fp16 autocast needs a CUDA device; on CPU use fp32 (exact) or bf16")
        self.backend = backend
        self.loaded = backend  # what the inherited code reads: .device and .max_residues
        self.options = options
        self.batch_tokens = options.batch_tokens or backend.auto_batch_tokens()

    def encode(self, sequence: str) -> torch.Tensor:
        return self.backend.encode(sequence)

    def token_index(self, aa: str) -> int:
        return self.backend.token_index(aa)

    def _forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        device = self.backend.device
        autocast = (
            torch.autocast(device_type=device.type, dtype=_AUTOCAST[self.options.precision])
            if self.options.precision in _AUTOCAST
            else nullcontext()
        )
        with autocast:
            return self.backend.logprobs_at(tokens, query, reference=self.options.engine == "fair-esm")

    def _batch_logprobs(self, batch: list[_Job], tokens_of: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """Log-probabilities [copy, read, vocab] of one batch of masked copies."""
        backend = self.backend
        windows = [tokens_of(job.seq)[job.start : job.stop] for job in batch]
        tokens = backend.assemble(windows, [[i - job.start for i in job.masked] for job in batch])
        query = torch.zeros((len(batch), max(len(j.read) for j in batch)), dtype=torch.long)
        for row, job in enumerate(batch):
            query[row, : len(job.read)] = torch.tensor(job.read) - job.start + backend.offset
        device = backend.device
        return self._forward(tokens.to(device), query.to(device)).float().cpu()


def scorer_for(backend: Backend, options: ScoringOptions = ScoringOptions()) -> Scorer:
    """The scorer a screen uses for ``backend``: fair-esm ESM-2 keeps the native ``Scorer`` on its
    ``LoadedModel`` (today's code path, so today's numbers to the bit); every other family scores
    through ``BackendScorer``."""
    from plmscreen.screening.model.backends.fair_esm import FairEsmBackend

    if isinstance(backend, FairEsmBackend) and backend.normalise == "vocabulary":
        return Scorer(backend.loaded, options)
    return BackendScorer(backend, options)
