"""Per-residue diagnostics that tell look-up from a mere extra mask (docs: docs/science.md).

For a residue i with partners π(i):
- ``logp_random_comask`` ℓ_i^rand: log P(x_i) with i and |π(i)| random non-partner positions
  masked, each holding the same residue as the partner it stands in for (``null_comask``),
  averaged over ``null_draws`` draws. ``net_inflation`` = ℓ_i^rand − ℓ_i^abl is the
  inflation left after subtracting what masking that many extra positions costs anyway (ESM-2's
  token_dropout rescales embeddings by the mask ratio, so extra masks move scores by themselves).
- ``copy_following`` C_i = P(x_i = b | x_−i, x_π(i) := b) − P(x_i = b | x_−(i∪π(i))), where b is
  the standard residue the model finds least likely at i when the partners are masked too. C_i near
  1 means the prediction at i follows whatever the partner copy says; near 0, it ignores it.

The null co-masks (null_draws forwards per partnered residue) feed the flag rule's partner test
(metrics.partner_pvalue), so screens compute them for every tested sequence; copy-following (2
forwards per partnered residue) only for effect-flagged ones. Draws are seeded by the sequence, so
reruns give the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from plmscreen.screening.input import STANDARD_ALPHABET
from plmscreen.screening.score.scorer import Probe, Scorer

STANDARD = STANDARD_ALPHABET


@dataclass
class ResidueDiagnostics:
    logp_random_comask: np.ndarray  # NaN where the residue has no partner
    copy_following: np.ndarray  # NaN where the residue has no partner
    substitute: list[str | None]  # the residue b planted in the partner copy
    null_masks: dict[int, list[tuple[int, ...]]]  # residue -> the random co-mask sets drawn (audit)


def _rng(sequence: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(sequence.encode()).digest()[:8], "little"))


def planted_residue(truth: str, partner_residues: Sequence[str], ablated_logp: np.ndarray) -> str:
    """The residue b planted in the partner copy: the standard residue least likely at i when the
    partners are masked, among those found at the fewest partners, never the true residue.

    Usually some letter is at no partner and b is simply the least likely of those. A residue with
    about 20 low-identity partners (LRR-, titin- or collagen-like proteins) can have every other
    letter at some partner; planting b then leaves the partners that already hold it unchanged,
    so b is the letter that changes the most partners, and C_i measures following those."""
    at_partners = {aa: 0 for aa in STANDARD}
    for aa in partner_residues:
        if aa in at_partners:
            at_partners[aa] += 1
    rank = {STANDARD[c]: r for r, c in enumerate(np.argsort(ablated_logp))}
    return min((aa for aa in STANDARD if aa != truth), key=lambda aa: (at_partners[aa], rank[aa]))


def null_comask(scorer: Scorer, sequences: Sequence[str], partners: Sequence[Sequence[Sequence[int]]],
                null_draws: int) -> list[tuple[np.ndarray, dict[int, list[tuple[int, ...]]]]]:
    """ℓ_i^rand for every partnered residue of ``sequences`` (0-based partner map, as ``score``):
    log P(x_i) with i and |π(i)| random non-partner positions masked, averaged over ``null_draws``
    seeded draws (NaN where the residue has no partner), and the co-mask sets drawn (audit).

    Each random position holds the same residue as the partner it stands in for (drawn among the
    sequence's other positions with that letter; any position when there is none left). The
    partner of a copied residue usually holds the same letter as i, and masking any copy of that
    letter lowers P(x_i) in a model that merely tracks the context's composition: ESM-2 ties its
    output layer to the token embeddings, so even random weights do. A letter-matched null takes
    that away, leaving what only the partner's position and context give: the look-up. (With
    uniformly drawn positions a random-weight 2 x 64 ESM-2 passed the partner test on 12% of
    doubled proteins: bench/results/calibration_esm2_t2_64d_random_seed0_uniform_null.md.)"""
    if null_draws < 1:
        raise ValueError(f"null_draws must be >= 1, got {null_draws}")
    out = [(np.full(len(q), np.nan), {}) for q in sequences]
    probes: list[Probe] = []
    plan: list[tuple[int, int, int]] = []  # (seq, residue, first probe)
    for s, (sequence, seq_partners) in enumerate(zip(sequences, partners)):
        rng = _rng(sequence)
        letters = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
        by_letter = {int(a): np.flatnonzero(letters == a) for a in np.unique(letters)}
        for i, mates in enumerate(seq_partners):
            if not mates:
                continue
            plan.append((s, i, len(probes)))
            excluded = {i, *mates}
            for _ in range(null_draws):
                taken = set(excluded)
                for j in mates:
                    pick = _draw(rng, by_letter[int(letters[j])], taken)
                    if pick is None:
                        pick = _draw(rng, np.arange(len(sequence)), taken)
                    if pick is None:  # nothing left to mask
                        break
                    taken.add(pick)
                probes.append(Probe(s, tuple(sorted({i, *(taken - excluded)})), (i,)))
                out[s][1].setdefault(i, []).append(probes[-1].masked)
    rows = scorer.probe(sequences, probes) if probes else []
    for s, i, first in plan:
        col = scorer.token_index(sequences[s][i])
        out[s][0][i] = float(np.mean([rows[first + d][0, col] for d in range(null_draws)]))
    return out


def _draw(rng: np.random.Generator, candidates: np.ndarray, taken: set[int]) -> int | None:
    """A uniformly drawn candidate position not yet taken (None if none is left)."""
    free = candidates[~np.isin(candidates, np.fromiter(taken, dtype=np.int64, count=len(taken)))]
    return int(rng.choice(free)) if free.size else None


def copy_following(scorer: Scorer, sequences: Sequence[str], partners: Sequence[Sequence[Sequence[int]]]
                   ) -> list[tuple[np.ndarray, list[str | None]]]:
    """C_i and the planted residue b for every partnered residue (NaN / None elsewhere)."""
    standard_cols = [scorer.token_index(a) for a in STANDARD]
    out = [(np.full(len(q), np.nan), [None] * len(q)) for q in sequences]
    probes: list[Probe] = []
    plan: list[tuple[int, int]] = []
    for s, seq_partners in enumerate(partners):
        for i, mates in enumerate(seq_partners):
            if mates:
                plan.append((s, i))
                probes.append(Probe(s, tuple(sorted({i, *mates})), (i,)))
    rows = scorer.probe(sequences, probes) if probes else []
    mutated: list[str] = []
    follow_probes: list[Probe] = []
    for n, (s, i) in enumerate(plan):
        sequence = sequences[s]
        mates = partners[s][i]
        b = planted_residue(sequence[i], [sequence[j] for j in mates], rows[n][0, standard_cols])
        out[s][1][i] = b
        chars = list(sequence)
        for j in mates:
            chars[j] = b
        mutated.append("".join(chars))
        follow_probes.append(Probe(n, (i,), (i,)))
    followed = scorer.probe(mutated, follow_probes) if follow_probes else []
    for n, (s, i) in enumerate(plan):
        col = scorer.token_index(out[s][1][i])
        out[s][0][i] = float(np.exp(followed[n][0, col])) - float(np.exp(rows[n][0, col]))
    return out


def residue_diagnostics(scorer: Scorer, sequences: Sequence[str], partners: Sequence[Sequence[Sequence[int]]],
                        null_draws: int = 2) -> list[ResidueDiagnostics]:
    """Both diagnostics for every partnered residue of ``sequences`` (0-based partner map, as ``score``)."""
    nulls = null_comask(scorer, sequences, partners, null_draws)
    follows = copy_following(scorer, sequences, partners)
    return [ResidueDiagnostics(logp, follow, planted, masks) for (logp, masks), (follow, planted) in zip(nulls, follows)]
