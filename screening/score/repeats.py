"""Internal-repeat detection: a residue-level partner map from local self-alignment.

A masked language model can predict residue ``i`` by copying its aligned partner ``j`` in another
copy of an internal repeat. This module finds those partners.

Algorithm
---------
1. **Position-indexed self-alignment.** The sequence is compared with itself through an
   ``L x L`` *position* score matrix ``M[p, q] = BLOSUM62[x_p, x_q]`` in which every cell with
   ``q - p < min_offset`` (the main diagonal, its neighbourhood and the mirror triangle) is
   forbidden (a large negative score). Biopython's ``PairwiseAligner`` (local, affine gaps)
   aligns the index arrays ``0..L-1`` against each other with ``M`` as substitution matrix, so the
   gapped Smith-Waterman-Gotoh alignment runs in Biopython's C code while the trivial self-match
   is excluded. Tandem copies may overlap (copy 1-2 aligned to copy 2-3 at offset = unit length).
2. **Waterman-Eggert suboptimal alignments.** After an alignment is taken, its aligned cells
   (residue pairs) are forbidden and the next best alignment is computed, until the best score
   falls below the significance threshold, ``max_regions`` alignments are kept, or
   ``max_rejections`` alignments in a row fail the length/identity/p-value filters. No residue pair is
   used twice, so the partner relation has no duplicates; a tandem repeat of ``k`` copies of
   length ``u`` yields alignments at offsets ``u, 2u, ...`` that partner every copy with every
   other copy, as far as each offset's alignment is itself significant (partners are not
   inferred transitively). Local alignment can run on past a copy's end into flanks that happen
   to score positively; such pairs have a low ``local_identity``.
3. **Significance against composition-preserving shuffles.** The best off-diagonal score of
   ``n_shuffles`` residue permutations of the same sequence (seeded) is fitted by a Gumbel
   (extreme value) distribution, method of moments. An alignment's p-value is the Gumbel upper
   tail of its score: the chance that a repeat-free sequence of this composition and length has
   an alignment this good anywhere. An alignment with more than ``mosaic_gap_rate`` gaps per
   aligned pair must also pass a second null, fitted the same way on shuffles that permute
   pieces of ``null_block`` (5) consecutive residues; its p-value is the larger of the two.
   Why: a shuffle of pieces keeps local composition and every short word, and when a sequence
   holds the same short words many times (low-complexity or near-identical-repeat proteins), a
   gapped alignment can chain them into a "mosaic" that beats every residue permutation: on
   the structural benchmark the piece-shuffled decoys of such chains were called at p << 1e-3
   (bench/results/repeat_benchmark.md). Against the piece null they score like what they are.
   A real copy is a long run of aligned words in order and stays far above it. Alignments
   with (almost) no gaps cannot be chained from scattered words, so the residue-permutation
   null alone judges them; this keeps tandem arrays of short units (7-16 residues, about two
   to three pieces long), whose own piece shuffles keep their words. The piece null is fitted
   only when a gapped alignment reaches the first threshold, so repeat-free proteins cost the
   same as before. Sub-optimal alignments are tested against the same nulls of the
   *best* score, which is conservative. For sequences longer than ``null_length`` the shuffles are
   computed on ``null_length`` residues (the start of a shuffle of the whole sequence) and the
   Gumbel location is moved to the full search space (Karlin-Altschul: location grows by
   ``scale * ln(search-space ratio)``).
4. **Very long sequences** (``> window``) are scanned in windows of ``window`` residues
   overlapping by half, so every pair of residues closer than ``window / 2`` is in some window;
   the null always refers to the whole sequence. Overlapping windows' duplicate region pairs are
   dropped. Cost is then linear in length instead of quadratic.

Coordinates in the public API are 1-based and inclusive.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from Bio.Align import PairwiseAligner, substitution_matrices

from plmscreen.screening.errors import InputError

__all__ = [
    "InvalidSequenceError",
    "RepeatParams",
    "RegionPair",
    "find_repeats",
    "partner_map",
    "partner_details",
    "region_records",
    "repeat_residues",
    "encode",
    "REGION_COLUMNS",
]

_log = logging.getLogger(__name__)
_BLOSUM62 = substitution_matrices.load("BLOSUM62")
_ALPHABET: str = _BLOSUM62.alphabet  # "ARNDCQEGHILKMFPSTWYVBZX*"
_MATRIX = np.asarray(_BLOSUM62, dtype=np.float64)
# Letters BLOSUM62 lacks: selenocysteine, pyrrolysine, Leu/Ile ambiguity.
_ALIASES = {"U": "C", "O": "K", "J": "L"}
_CODE = np.full(128, -1, dtype=np.int64)
for _k, _letter in enumerate(_ALPHABET):
    _CODE[ord(_letter)] = _k
for _letter, _target in _ALIASES.items():
    _CODE[ord(_letter)] = _ALPHABET.index(_target)
_X = _ALPHABET.index("X")
_FORBIDDEN = -1.0e6  # score of excluded cells: no local alignment can include one
_EULER_GAMMA = 0.5772156649015329

REGION_COLUMNS = (
    "seq_id",
    "region_id",
    "start",
    "end",
    "partner_start",
    "partner_end",
    "identity",
    "score",
)


class InvalidSequenceError(InputError):
    """The sequence holds a character that is not an amino-acid letter."""


@dataclass(frozen=True)
class RepeatParams:
    """Thresholds and costs of the repeat search, validated on construction.

    Defaults were picked on the tuning half of the Wright-lab structural benchmark and on E. coli
    shuffles (bench/results/repeat_benchmark.md): at max_pvalue 1e-3 about 0.2% of residue-shuffled
    proteins get a call; the significance test, not the identity floor, does the filtering.

    min_length: minimum number of aligned residue pairs (match/mismatch columns) of a region
        pair (12: short motifs of ~10+ residues are enough for the look-up effect).
    min_score: minimum BLOSUM62 alignment score whatever the p-value (guards tiny sequences).
    min_identity: minimum fraction of identical residues over the aligned pairs. A low floor
        (0.2): at a matched decoy call rate, a stricter p-value beats a stricter identity.
    min_offset: minimum j - i of an aligned pair (i, j); closer pairs (the main diagonal and its
        neighbourhood, e.g. a homopolymer shifted by one) are never considered. Repeats with a
        shorter period are still found at multiples of the period.
    max_pvalue: keep an alignment only if the Gumbel-fitted P(best score of a shuffle >= its
        score) is at most this.
    n_shuffles: composition-preserving shuffles used to fit each null.
    null_block: pieces of this many consecutive residues (cut at a random phase) are permuted
        by the shuffles of the second null, which gapped alignments must also pass; 1 = no
        second null (residue permutations only, the behaviour before). 5 keeps local
        composition and short words, so shuffles of low-complexity or near-identical-repeat
        proteins (the benchmark's decoys are 5-residue-piece shuffles) are not called: decoy
        FPR 0.022 -> 0.0015 at p <= 1e-3, 0.003 on the held-out half (4 and 8 do about as well;
        see the benchmark notes).
    mosaic_gap_rate: alignments with more gaps (indel events) per aligned pair than this must
        pass the piece-shuffle null too (0.02: a 12-49-pair alignment without a gap, 50-99
        pairs with one, ... are judged by the residue-permutation null alone); negative: every
        alignment must.
    seed: seed of the shuffles; results are deterministic for a given sequence and params.
    gap_open, gap_extend: affine gap scores (<= 0) of the local alignment, BLAST's BLOSUM62
        defaults; a gap of length n costs gap_open + (n - 1) * gap_extend.
    max_gap_rate: reject alignments with more than this many gaps (indel events) per aligned
        pair (1.0 = off; ~0.04 rejects "mosaic" alignments of short shuffled blocks but also
        many real low-identity repeats).
    max_regions: at most this many region pairs per sequence (per window for long sequences).
    max_rejections: stop after this many alignments in a row that pass the score threshold but
        fail the length/identity/gap/p-value filters.
    local_window: local identity of an aligned pair = identity over the aligned pairs within
        +-local_window pairs of it in the same alignment, clipped at the alignment ends (5: a
        window of 11 aligned pairs).
    null_length: the shuffles are cut to this many residues (the start of a shuffle: a random
        sample of its pieces) and the null extrapolated to the full length, bounding its cost.
    window: sequences longer than this are scanned in windows of this size overlapping by half
        (every pair of residues at most window/2 apart shares a window).
    work_per_residue: dynamic-programming budget per residue (in matrix cells; ~4 ns each on the
        reference 2-core CPU), so repeat-rich giant proteins stop early, with a logged warning,
        instead of running for minutes. Ordinary proteins never reach it.
    """

    min_length: int = 12
    min_score: float = 25.0
    min_identity: float = 0.2
    min_offset: int = 10
    max_pvalue: float = 1e-3
    n_shuffles: int = 20
    seed: int = 0
    gap_open: float = -11.0
    gap_extend: float = -1.0
    max_gap_rate: float = 1.0
    max_regions: int = 50
    max_rejections: int = 5
    local_window: int = 5
    null_length: int = 600
    window: int = 2000
    work_per_residue: float = 5.0e5
    null_block: int = 5
    mosaic_gap_rate: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.min_length < 1:
            problems.append(f"min_length must be >= 1, got {self.min_length}")
        if self.min_offset < 1:
            problems.append(f"min_offset must be >= 1, got {self.min_offset}")
        if not 0.0 <= self.min_identity <= 1.0:
            problems.append(f"min_identity must be in [0, 1], got {self.min_identity}")
        if not 0.0 < self.max_pvalue <= 1.0:
            problems.append(f"max_pvalue must be in (0, 1], got {self.max_pvalue}")
        if self.n_shuffles < 2:
            problems.append(f"n_shuffles must be >= 2 to fit the null, got {self.n_shuffles}")
        if self.gap_open > 0 or self.gap_extend > 0:
            problems.append(
                f"gap_open and gap_extend must be <= 0, got {self.gap_open}, {self.gap_extend}"
            )
        if self.max_regions < 0 or self.max_rejections < 0 or self.local_window < 0:
            problems.append("max_regions, max_rejections and local_window must be >= 0")
        if self.null_length < 4 * self.min_offset:
            problems.append(
                f"null_length ({self.null_length}) must be >= 4 * min_offset ({self.min_offset})"
            )
        if self.window < 4 * self.min_offset:
            problems.append(f"window ({self.window}) must be >= 4 * min_offset ({self.min_offset})")
        if self.null_block < 1:
            problems.append(f"null_block must be >= 1, got {self.null_block}")
        if self.max_gap_rate < 0 or self.work_per_residue <= 0:
            problems.append("max_gap_rate must be >= 0 and work_per_residue > 0")
        if problems:
            raise ValueError("invalid RepeatParams: " + "; ".join(problems))

    def to_dict(self) -> dict:
        """Plain dict, for recording the parameters of a run."""
        return asdict(self)


@dataclass(frozen=True)
class RegionPair:
    """Two aligned copies of an internal repeat (1-based inclusive coordinates).

    ``start..end`` is the first copy and ``partner_start..partner_end`` the second
    (``start < partner_start``; the spans of tandem copies may overlap). ``pairs`` are the aligned
    residue pairs ``(i, j)`` with ``i < j`` (match/mismatch columns only, gaps excluded) and
    ``local_identity[k]`` is the identity over the aligned pairs within
    ``RepeatParams.local_window`` pairs of ``pairs[k]``.
    """

    region_id: int
    start: int
    end: int
    partner_start: int
    partner_end: int
    identity: float
    score: float
    pvalue: float
    pairs: tuple[tuple[int, int], ...]
    local_identity: tuple[float, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class _Null:
    """Gumbel null of the best off-diagonal score for the whole sequence."""

    location: float
    scale: float

    def pvalue(self, score: float) -> float:
        z = (score - self.location) / self.scale
        return float(-math.expm1(-math.exp(-z))) if z > -50 else 1.0

    def score_at(self, pvalue: float) -> float:
        return self.location - self.scale * math.log(-math.log1p(-pvalue))


def encode(sequence: str) -> np.ndarray:
    """BLOSUM62 indices of a protein sequence (case-insensitive; U->C, O->K, J->L, other
    letters -> X). Raises InvalidSequenceError for anything that is not a letter or '*'."""
    raw = np.frombuffer(sequence.upper().encode("ascii", errors="replace"), dtype=np.uint8)
    codes = _CODE[np.minimum(raw, 127)]
    letters = (raw >= ord("A")) & (raw <= ord("Z"))
    codes[(codes < 0) & letters] = _X
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        pos = int(bad[0])
        raise InvalidSequenceError(
            f"invalid character {sequence[pos]!r} at position {pos + 1} of the sequence"
        )
    return codes


def _aligner(params: RepeatParams) -> PairwiseAligner:
    aligner = PairwiseAligner()
    aligner.mode = "local"
    aligner.open_gap_score = params.gap_open
    aligner.extend_gap_score = params.gap_extend
    return aligner


@functools.lru_cache(maxsize=4)
def _forbidden_triangle(length: int, min_offset: int) -> np.ndarray:
    """Additive penalty: _FORBIDDEN where q - p < min_offset, 0 elsewhere (read-only, cached:
    the shuffles of one sequence all reuse it)."""
    penalty = np.zeros((length, length))
    penalty[np.tril_indices(length, min_offset - 1)] = _FORBIDDEN
    penalty.flags.writeable = False
    return penalty


def _position_matrix(codes: np.ndarray, min_offset: int) -> np.ndarray:
    """M[p, q] = BLOSUM62(x_p, x_q) for q - p >= min_offset, forbidden (<= _FORBIDDEN + 11)
    elsewhere."""
    matrix = np.take(_MATRIX[codes], codes, axis=1)
    matrix += _forbidden_triangle(codes.size, min_offset)
    return matrix


def _index_arrays(length: int, min_offset: int) -> tuple[np.ndarray, np.ndarray]:
    # Rows that can pair with anything and columns that can: trims the forbidden borders.
    return (
        np.arange(0, length - min_offset, dtype=np.int32),
        np.arange(min_offset, length, dtype=np.int32),
    )


def _shuffle(codes: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """A composition-preserving shuffle of ``codes``: a residue permutation (``block`` 1), or a
    permutation of consecutive ``block``-residue pieces cut at a random phase, which also keeps
    every word of up to ``block`` residues inside a piece (local composition, short motifs)."""
    length = codes.size
    if block <= 1 or length <= block:
        return codes[rng.permutation(length)]
    phase = int(rng.integers(block))
    cuts = np.arange(phase, length, block)
    cuts = cuts[cuts > 0]
    pieces = np.split(codes, cuts)
    return np.concatenate([pieces[k] for k in rng.permutation(len(pieces))])


def _fit_null(codes: np.ndarray, params: RepeatParams) -> _Null:
    """Gumbel fit (method of moments) of the best off-diagonal score over seeded shuffles."""
    length = codes.size
    sample = min(length, params.null_length)
    rng = np.random.default_rng(params.seed)
    aligner = _aligner(params)
    rows, cols = _index_arrays(sample, params.min_offset)
    best = np.empty(params.n_shuffles)
    for k in range(params.n_shuffles):
        shuffled = _shuffle(codes, params.null_block, rng)[:sample]
        aligner.substitution_matrix = _position_matrix(shuffled, params.min_offset)
        best[k] = aligner.score(rows, cols)
    # A floor on the scale keeps degenerate nulls (e.g. homopolymers: every shuffle identical)
    # from turning every score above the mean into p = 0.
    scale = max(float(np.std(best, ddof=1)) * math.sqrt(6.0) / math.pi, 1.0)
    location = float(np.mean(best)) - _EULER_GAMMA * scale
    if sample < length:
        space_full = (length - params.min_offset) ** 2
        space_sample = (sample - params.min_offset) ** 2
        location += scale * math.log(space_full / space_sample)
    return _Null(location, scale)


def _local_identity(identical: np.ndarray, half_window: int) -> np.ndarray:
    n = identical.size
    csum = np.concatenate([[0], np.cumsum(identical, dtype=np.int64)])
    idx = np.arange(n)
    lo = np.maximum(idx - half_window, 0)
    hi = np.minimum(idx + half_window + 1, n)
    return (csum[hi] - csum[lo]) / (hi - lo)


class _Test:
    """Significance of an alignment. Every alignment is tested against the residue-permutation
    null; one with more than ``mosaic_gap_rate`` gaps per aligned pair (which could be a mosaic
    of shuffled short words) must also pass the piece-shuffle null, fitted only when needed."""

    def __init__(self, codes: np.ndarray, params: RepeatParams) -> None:
        self.params = params
        self.codes = codes
        self.null = _fit_null(codes, dataclasses.replace(params, null_block=1))
        self._piece_null: _Null | None = None
        self.stop_score = max(self.null.score_at(params.max_pvalue), params.min_score)

    def piece_null(self) -> _Null:
        if self._piece_null is None:
            self._piece_null = _fit_null(self.codes, self.params)
        return self._piece_null

    def pvalue(self, score: float, gaps: int, n_pairs: int) -> float:
        p = self.null.pvalue(score)
        if self.params.null_block > 1 and gaps > self.params.mosaic_gap_rate * n_pairs:
            p = max(p, self.piece_null().pvalue(score))
        return p


def _scan(
    codes: np.ndarray, params: RepeatParams, test: _Test, budget: float
) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
    """Waterman-Eggert loop on one sequence or window: (score, pvalue, i, j) of the accepted
    alignments, 0-based positions within ``codes``. ``budget`` caps the dynamic-programming work
    in cell units (a score-only pass costs 1 per cell, a pass with traceback 3)."""
    stop_score = test.stop_score
    length = codes.size
    found: list[tuple[float, float, np.ndarray, np.ndarray]] = []
    if length <= params.min_offset:
        return found
    matrix = _position_matrix(codes, params.min_offset)
    rows, cols = _index_arrays(length, params.min_offset)
    cells = float(rows.size) * cols.size
    aligner = _aligner(params)
    aligner.substitution_matrix = matrix
    # Most sequences have no repeat: a score-only pass (~3x cheaper) settles those.
    work = cells
    if aligner.score(rows, cols) < stop_score:
        return found
    rejections = 0
    while len(found) < params.max_regions:
        if work + 3 * cells > budget:
            _log.warning(
                "repeat search stopped after %d region pairs: work budget of %.3g cells spent "
                "(length %d; raise RepeatParams.work_per_residue to search further)",
                len(found), budget, length,
            )
            break
        work += 3 * cells
        aligner.substitution_matrix = matrix  # re-set: the matrix was edited in place
        alignments = aligner.align(rows, cols)
        score = alignments.score
        if score < stop_score:
            break
        blocks_i, blocks_j = alignments[0].aligned
        i = np.concatenate([np.arange(a, b) for a, b in blocks_i]).astype(np.int64)
        j = np.concatenate([np.arange(a, b) for a, b in blocks_j]).astype(np.int64)
        j += params.min_offset
        matrix[i, j] = _FORBIDDEN  # Waterman-Eggert: no residue pair is aligned twice
        identical = (codes[i] == codes[j]) & (codes[i] != _X)
        gaps = np.count_nonzero((np.diff(i) != 1) | (np.diff(j) != 1))
        pvalue = test.pvalue(float(score), gaps, i.size)
        if (
            i.size < params.min_length
            or identical.mean() < params.min_identity
            or gaps > params.max_gap_rate * i.size
            or pvalue > params.max_pvalue
        ):
            rejections += 1
            if rejections > params.max_rejections:
                break
            continue
        rejections = 0
        found.append((float(score), pvalue, i, j))
    return found


def _region(
    region_id: int, score: float, pvalue: float, i: np.ndarray, j: np.ndarray, codes: np.ndarray,
    params: RepeatParams,
) -> RegionPair:
    identical = (codes[i] == codes[j]) & (codes[i] != _X)
    local = _local_identity(identical, params.local_window)
    return RegionPair(
        region_id=region_id,
        start=int(i.min()) + 1,
        end=int(i.max()) + 1,
        partner_start=int(j.min()) + 1,
        partner_end=int(j.max()) + 1,
        identity=round(float(identical.mean()), 6),
        score=float(score),
        pvalue=pvalue,
        pairs=tuple(zip((i + 1).tolist(), (j + 1).tolist())),
        local_identity=tuple(round(float(v), 6) for v in local),
    )


def find_repeats(sequence: str, params: RepeatParams = RepeatParams()) -> list[RegionPair]:
    """Significant internal repeats of ``sequence`` as aligned region pairs, best score first.

    Region ids are 0-based in that order. Deterministic for a given sequence and ``params``.
    Raises InvalidSequenceError for characters that are not amino-acid letters.
    """
    codes = encode(sequence)
    length = codes.size
    if length < 2 * params.min_offset or length < 2 * params.min_length:
        return []
    test = _Test(codes, params)

    budget = params.work_per_residue * length
    if length <= params.window:
        found = _scan(codes, params, test, budget)
    else:
        found = []
        used: set[tuple[int, int]] = set()
        step = params.window // 2
        starts = list(range(0, length - params.window, step)) + [length - params.window]
        hits = []
        for w0 in starts:
            window = codes[w0 : w0 + params.window]
            for score, pvalue, i, j in _scan(window, params, test, budget / len(starts)):
                hits.append((score, pvalue, i + w0, j + w0))
        # The same repeat seen in two overlapping windows: keep the best, drop copies that share
        # most of their residue pairs with a kept one, and strip shared pairs from the rest.
        hits.sort(key=lambda h: -h[0])
        for score, pvalue, i, j in hits:
            keys = list(zip(i.tolist(), j.tolist()))
            fresh = np.array([k not in used for k in keys], dtype=bool)
            if fresh.mean() < 0.5 or fresh.sum() < params.min_length:
                continue
            used.update(keys)
            found.append((score, pvalue, i[fresh], j[fresh]))
        found = found[: params.max_regions * len(starts)]

    return [
        _region(rid, score, pvalue, i, j, codes, params)
        for rid, (score, pvalue, i, j) in enumerate(found)
    ]


def partner_details(
    length: int, regions: Sequence[RegionPair]
) -> list[tuple[tuple[int, int, float], ...]]:
    """Per residue (index p-1 for residue p): sorted tuple of ``(partner_pos, region_id,
    local_identity)`` over all its partners, 1-based positions. Symmetric (a pair (i, j) appears
    at i and at j with the same region id and local identity); a residue is never its own
    partner; if two regions pair the same residues the higher local identity is kept."""
    best: list[dict[int, tuple[int, float]]] = [{} for _ in range(length)]
    for region in regions:
        for (i, j), ident in zip(region.pairs, region.local_identity):
            if i == j:
                continue
            if not (1 <= i <= length and 1 <= j <= length):
                raise ValueError(f"pair ({i}, {j}) of region {region.region_id} outside 1..{length}")
            for a, b in ((i, j), (j, i)):
                old = best[a - 1].get(b)
                if old is None or ident > old[1]:
                    best[a - 1][b] = (region.region_id, ident)
    return [
        tuple((pos, rid, ident) for pos, (rid, ident) in sorted(entry.items())) for entry in best
    ]


def partner_map(length: int, regions: Sequence[RegionPair]) -> list[tuple[int, ...]]:
    """Index p-1 -> sorted tuple of the 1-based partner positions of residue p (symmetric,
    unique, never p itself)."""
    return [tuple(pos for pos, _, _ in entry) for entry in partner_details(length, regions)]


def repeat_residues(length: int, regions: Sequence[RegionPair]) -> np.ndarray:
    """Boolean mask (index p-1) of residues inside any region span, either copy."""
    mask = np.zeros(length, dtype=bool)
    for r in regions:
        mask[r.start - 1 : r.end] = True
        mask[r.partner_start - 1 : r.partner_end] = True
    return mask


def region_records(seq_id: str, regions: Sequence[RegionPair]) -> list[dict[str, object]]:
    """One row per region pair with exactly ``REGION_COLUMNS`` (1-based inclusive), for the
    ``plmscreen repeats`` Parquet output."""
    return [
        {
            "seq_id": seq_id,
            "region_id": r.region_id,
            "start": r.start,
            "end": r.end,
            "partner_start": r.partner_start,
            "partner_end": r.partner_end,
            "identity": r.identity,
            "score": r.score,
        }
        for r in regions
    ]
