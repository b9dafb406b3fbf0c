"""Exact masked pseudo-likelihoods with repeat-partner ablation (docs: docs/science.md).

For every residue i of a sequence x (residue i is token i+1: BOS comes first):
- ``logp_masked[i]``   = log P(x_i | x with only i masked), one masked copy per residue;
- ``logp_unmasked[i]`` = log P(x_i | x), read from one unmasked pass;
- ``logp_ablated[i]``  = log P(x_i | x with i and all its partners masked together), NaN
  without partners. Residues whose mask sets coincide (i and j partnered only with each other)
  share one copy: the copy is the same, so the numbers are exactly those of separate copies.

Masked copies become "jobs" that are bucketed by length and packed into batches of at most
``batch_tokens`` tokens. Sequences longer than the model window are scored in a window centred
on each masked position (clamped at the ends) and marked ``windowed``; nothing is truncated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from plmscreen.screening.input import EXTRA_RESIDUES, STANDARD_ALPHABET
from plmscreen.screening.model.forward import logprobs_at
from plmscreen.screening.model.checkpoints import LoadedModel
from plmscreen.screening.model.memory import keep_activation_memory
from plmscreen.screening.score.options import CPU_BATCH_TOKENS, ENGINES, PRECISIONS, ScoringOptions  # noqa: F401 - re-exported

MASKED, ABLATED, UNMASKED, PROBE = 0, 1, 2, 3
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SequenceScores:
    logp_masked: np.ndarray
    logp_unmasked: np.ndarray
    logp_ablated: np.ndarray  # NaN where the residue has no partner
    windowed: bool
    forward_rows: int = 0  # masked/unmasked copies run for this sequence


@dataclass(frozen=True)
class _Job:
    seq: int
    start: int  # residue window [start, stop)
    stop: int
    masked: tuple[int, ...]  # 0-based residue indices masked in this copy
    read: tuple[int, ...]  # 0-based residue indices whose log-probs this copy gives
    kind: int


@dataclass(frozen=True)
class Probe:
    """One masked copy of ``sequences[seq]``: ``masked`` residues (0-based) are masked and the full
    log-probability rows at ``read`` come back. For sequences longer than the model window the
    copy is the window centred on ``read[0]``; masked residues outside it are out of view anyway."""

    seq: int
    masked: tuple[int, ...]
    read: tuple[int, ...]


@dataclass
class _Pending:
    scores: SequenceScores
    jobs_left: int
    tokens: torch.Tensor = field(repr=False)


def window_start(center: int, length: int, window: int) -> int:
    """Start of the ``window``-residue window centred on ``center``, clamped inside the sequence."""
    if length <= window:
        return 0
    return min(max(center - window // 2, 0), length - window)


def _unmasked_jobs(seq: int, length: int, window: int) -> list[_Job]:
    if length <= window:
        return [_Job(seq, 0, length, (), tuple(range(length)), UNMASKED)]
    # Half-overlapping windows; each residue is read from the window whose centre is nearest.
    starts = sorted(set(range(0, length - window, window // 2)) | {length - window})
    reads: dict[int, list[int]] = {s: [] for s in starts}
    for i in range(length):
        best = min((s for s in starts if s <= i < s + window), key=lambda s: abs(s + window / 2 - i))
        reads[best].append(i)
    return [_Job(seq, s, s + window, (), tuple(r), UNMASKED) for s, r in reads.items() if r]


def _masked_jobs(seq: int, length: int, window: int, partners: Sequence[Sequence[int]], per_copy: int,
                 positions: Sequence[int] | None = None) -> list[_Job]:
    windowed = length > window
    if per_copy == 1 or windowed:
        groups = [[i] for i in (range(length) if positions is None else positions)]
    else:
        # Approximate mode: positions n_groups apart share a copy, never with one of their partners.
        n_groups = math.ceil(length / per_copy)
        groups = []
        for g in range(n_groups):
            group: list[int] = []
            for i in range(g, length, n_groups):
                if any(j in group for j in partners[i]):
                    groups.append([i])
                else:
                    group.append(i)
            groups.append(group)
    jobs = []
    wanted = None if positions is None else set(positions)
    for group in groups:
        # A subset (triage) keeps the copies exact mode would run, so its numbers are exact mode's,
        # and reads only the wanted residues of each.
        read = tuple(group) if wanted is None else tuple(i for i in group if i in wanted)
        if not read:
            continue
        start = window_start(group[0], length, window)
        jobs.append(_Job(seq, start, start + min(length, window), tuple(group), read, MASKED))
    return jobs


def _ablated_jobs(seq: int, length: int, window: int, partners: Sequence[Sequence[int]],
                  positions: Sequence[int] | None = None) -> list[_Job]:
    jobs = []
    wanted = range(length) if positions is None else positions
    if length > window:
        for i in wanted:
            if partners[i]:
                start = window_start(i, length, window)
                masked = tuple(j for j in sorted({i, *partners[i]}) if start <= j < start + window)
                jobs.append(_Job(seq, start, start + window, masked, (i,), ABLATED))
        return jobs
    by_mask_set: dict[tuple[int, ...], list[int]] = {}
    for i in wanted:
        if partners[i]:
            by_mask_set.setdefault(tuple(sorted({i, *partners[i]})), []).append(i)
    return [_Job(seq, 0, length, mask_set, tuple(members), ABLATED) for mask_set, members in by_mask_set.items()]


def _batches(jobs: list[_Job], batch_tokens: int) -> list[list[_Job]]:
    """Bucket by window length (unmasked passes apart: they read every position) and pack."""
    jobs = sorted(jobs, key=lambda j: (j.kind == UNMASKED, j.stop - j.start, j.seq))
    batches: list[list[_Job]] = []
    current: list[_Job] = []
    for job in jobs:
        width = max([job.stop - job.start] + [j.stop - j.start for j in current]) + 2
        same_group = not current or (current[0].kind == UNMASKED) == (job.kind == UNMASKED)
        if current and (not same_group or (len(current) + 1) * width > batch_tokens):
            batches.append(current)
            current = []
        current.append(job)
    if current:
        batches.append(current)
    return batches


def auto_batch_tokens(loaded: LoadedModel, memory_fraction: float = 0.6) -> int:
    """Token budget per batch: CPU_BATCH_TOKENS on CPU; on CUDA, what fits in ``memory_fraction`` of
    the free memory. Inference keeps about 12 activations of width d per token alive at once (the
    residual stream, q/k/v, attention output and the 4d feed-forward), in the compute dtype; SDPA's
    fused kernels need no L x L matrix. A batch that still runs out of memory is split in two."""
    if loaded.device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(loaded.device)
    width = loaded.model.embed_dim
    bytes_per_token = 12 * width * 4
    return int(min(max(memory_fraction * free / bytes_per_token, 1024), 1 << 20))


class Scorer:
    """Scores sequences with one loaded model; reuse it across shards (the model is loaded once)."""

    def __init__(self, loaded: LoadedModel, options: ScoringOptions = ScoringOptions()):
        self.loaded = loaded
        keep_activation_memory()  # glibc would hand each batch's buffers back and fault them in again
        if options.precision == "fp16" and loaded.device.type != "cuda":
            raise ValueError("fp16 autocast needs a CUDA device; on CPU use fp32 (exact) or bf16")
        self.options = options
        self.batch_tokens = options.batch_tokens or auto_batch_tokens(loaded)
        alphabet = loaded.alphabet
        self._bos, self._eos = alphabet.cls_idx, alphabet.eos_idx
        self._pad, self._mask = alphabet.padding_idx, alphabet.mask_idx
        self._index = {aa: alphabet.get_idx(aa) for aa in STANDARD_ALPHABET + "".join(sorted(EXTRA_RESIDUES))}

    def encode(self, sequence: str) -> torch.Tensor:
        return torch.tensor([self._index[aa] for aa in sequence], dtype=torch.long)

    def _forward(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        device = self.loaded.device
        autocast = (
            torch.autocast(device_type=device.type, dtype=_AUTOCAST[self.options.precision])
            if self.options.precision in _AUTOCAST
            else nullcontext()
        )
        with autocast:
            if self.options.engine == "plmscreen":
                return logprobs_at(self.loaded.model, tokens, query)
            logits = self.loaded.model(tokens)["logits"]
            logp = torch.log_softmax(logits.float(), dim=-1)
            return torch.gather(logp, 1, query.unsqueeze(-1).expand(-1, -1, logp.shape[-1]))

    def _batch_logprobs(self, batch: list[_Job], tokens_of: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """Log-probabilities [copy, read, vocab] of one batch of masked copies."""
        width = max(j.stop - j.start for j in batch) + 2
        n_query = max(len(j.read) for j in batch)
        tokens = torch.full((len(batch), width), self._pad, dtype=torch.long)
        query = torch.zeros((len(batch), n_query), dtype=torch.long)
        for row, job in enumerate(batch):
            residues = tokens_of(job.seq)[job.start : job.stop]
            tokens[row, 0] = self._bos
            tokens[row, 1 : 1 + len(residues)] = residues
            tokens[row, 1 + len(residues)] = self._eos
            for i in job.masked:
                tokens[row, i - job.start + 1] = self._mask
            query[row, : len(job.read)] = torch.tensor(job.read) - job.start + 1
        device = self.loaded.device
        return self._forward(tokens.to(device), query.to(device)).float().cpu()

    def _run_jobs(self, jobs: list[_Job], run: Callable[[list[_Job]], None]) -> None:
        """Pack ``jobs`` into batches of ``self.batch_tokens`` and ``run`` each. If the GPU runs out
        of memory, the budget is halved to below that batch and every job not yet run is packed
        again. Results are per copy, so nothing changes but speed."""
        pending = _batches(jobs, self.batch_tokens)
        while pending:
            batch = pending.pop(0)
            try:
                run(batch)
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                if self.loaded.device.type == "cuda":
                    torch.cuda.empty_cache()
                width = max(j.stop - j.start for j in batch) + 2
                self.batch_tokens = max(width, min(self.batch_tokens, len(batch) // 2 * width))
                pending = _batches([j for b in [batch, *pending] for j in b], self.batch_tokens)

    def _run_batch(self, batch: list[_Job], pending: dict[int, _Pending]) -> None:
        logp = self._batch_logprobs(batch, lambda s: pending[s].tokens)
        for row, job in enumerate(batch):
            state = pending[job.seq]
            read = torch.tensor(job.read)
            values = logp[row, : len(job.read)].gather(1, state.tokens[read].unsqueeze(1)).squeeze(1).numpy()
            target = {MASKED: state.scores.logp_masked, ABLATED: state.scores.logp_ablated, UNMASKED: state.scores.logp_unmasked}[job.kind]
            target[list(job.read)] = values
            state.jobs_left -= 1
            state.scores.forward_rows += 1

    def score(
        self,
        sequences: Sequence[str],
        partners: Sequence[Sequence[Sequence[int]]] | None = None,
        on_sequence_done: Callable[[int, SequenceScores], None] | None = None,
        positions: Sequence[Sequence[int] | None] | None = None,
    ) -> list[SequenceScores]:
        """Score ``sequences``; ``partners[s][i]`` are the 0-based partner residues of residue i.

        ``positions[s]`` restricts masked and ablated scoring of sequence s to those residues (the
        rest stay NaN; None scores all): triage mode scores only what can change a verdict. The
        unmasked pass always covers every residue."""
        window = self.loaded.max_residues
        pending: dict[int, _Pending] = {}
        jobs: list[_Job] = []
        for s, sequence in enumerate(sequences):
            length = len(sequence)
            seq_partners = partners[s] if partners is not None else [()] * length
            if len(seq_partners) != length:
                raise ValueError(f"sequence {s}: partner map has {len(seq_partners)} entries for {length} residues")
            subset = None if positions is None or positions[s] is None else sorted(set(positions[s]))
            if subset is not None and subset and not 0 <= subset[0] <= subset[-1] < length:
                raise ValueError(f"sequence {s}: positions outside 0..{length - 1}")
            seq_jobs = (
                _unmasked_jobs(s, length, window)
                + _masked_jobs(s, length, window, seq_partners, self.options.masks_per_copy, subset)
                + _ablated_jobs(s, length, window, seq_partners, subset)
            )
            nan = np.full(length, np.nan, dtype=np.float64)
            scores = SequenceScores(nan.copy(), nan.copy(), nan.copy(), length > window)
            pending[s] = _Pending(scores, len(seq_jobs), self.encode(sequence))
            jobs += seq_jobs
        def run(batch: list[_Job]) -> None:
            self._run_batch(batch, pending)
            if on_sequence_done is not None:
                for s in sorted({j.seq for j in batch}):
                    if pending[s].jobs_left == 0:
                        on_sequence_done(s, pending[s].scores)

        with torch.inference_mode():
            self._run_jobs(jobs, run)
        return [pending[s].scores for s in range(len(sequences))]

    def probe(self, sequences: Sequence[str], probes: Sequence[Probe]) -> list[np.ndarray]:
        """Full log-probability rows for arbitrary masked copies, batched like ``score``.

        Returns one float64 array ``[len(read), len(alphabet)]`` per probe, in order; columns are
        the alphabet's token indices (``Scorer.token_index``). The experiments of ``validate`` and
        the per-residue diagnostics are built on this."""
        window = self.loaded.max_residues
        tokens = [self.encode(s) for s in sequences]
        jobs = []
        for k, probe in enumerate(probes):
            length = len(sequences[probe.seq])
            if not probe.read or not all(0 <= i < length for i in (*probe.read, *probe.masked)):
                raise ValueError(f"probe {k}: positions outside sequence {probe.seq} (length {length}) or nothing read")
            start = window_start(probe.read[0], length, window)
            stop = start + min(length, window)
            if not all(start <= i < stop for i in probe.read):
                raise ValueError(f"probe {k}: read positions do not fit one {window}-residue window")
            masked = tuple(sorted({i for i in probe.masked if start <= i < stop}))
            jobs.append(_Job(k, start, stop, masked, tuple(probe.read), PROBE))
        out: list[np.ndarray | None] = [None] * len(probes)

        def run(batch: list[_Job]) -> None:
            logp = self._batch_logprobs(batch, lambda k: tokens[probes[k].seq])
            for row, job in enumerate(batch):
                out[job.seq] = logp[row, : len(job.read)].double().numpy()

        with torch.inference_mode():
            self._run_jobs(jobs, run)
        return out

    def token_index(self, aa: str) -> int:
        """Column of residue letter ``aa`` in ``probe`` rows."""
        return self._index[aa]
