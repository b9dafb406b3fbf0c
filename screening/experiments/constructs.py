"""Constructs whose repeat partners are known by design: crops, copies mutated to an identity, shuffles."""


from __future__ import annotations

import hashlib
import math

import numpy as np
from plmscreen.screening.experiments.settings import AA20, ValidationSettings


def central_segment(sequence: str, length: int) -> str:
    start = (len(sequence) - length) // 2
    return sequence[start : start + length]


def mutate_to_identity(segment: str, identity: float, rng: np.random.Generator) -> str:
    """round((1 - identity) L) distinct positions, each changed to a different standard residue."""
    letters = list(segment)
    n_changed = int(round((1 - identity) * len(letters)))
    for pos in rng.choice(len(letters), size=n_changed, replace=False):
        letters[pos] = rng.choice([a for a in AA20 if a != letters[pos]])
    return "".join(letters)


def shuffled(segment: str, rng: np.random.Generator) -> str:
    """Composition-matched control: the same residues in a random order."""
    return "".join(np.array(list(segment))[rng.permutation(len(segment))])


def block_shuffled(segment: str, block: int, rng: np.random.Generator) -> str:
    """Composition-matched decoy that keeps short words: consecutive ``block``-residue pieces in a
    random order (as the tandem-repeat benchmark's decoys are made, docs/science.md), so a
    low-complexity protein's recurring words stay while any repeat's order is broken."""
    pieces = [segment[i : i + block] for i in range(0, len(segment), block)]
    return "".join(pieces[i] for i in rng.permutation(len(pieces)))


def insert_copy(sequence: str, unit: int, identity: float, gap: int, rng: np.random.Generator) -> tuple[str, int, int]:
    """``sequence`` with a copy of one of its ``unit``-residue segments, mutated to ``identity``,
    inserted at least ``gap`` residues after the segment; (construct, segment start, insert
    position), 0-based. The segment lies in the part of the sequence that leaves room for the gap."""
    if len(sequence) < unit + gap:
        raise ValueError(f"a sequence of {len(sequence)} residues has no room for a {unit}-residue unit and a {gap}-residue gap")
    start = int(rng.integers(0, len(sequence) - unit - gap + 1))
    at = int(rng.integers(start + unit + gap, len(sequence) + 1))
    copy = mutate_to_identity(sequence[start : start + unit], identity, rng)
    return sequence[:at] + copy + sequence[at:], start, at


def copy_partners(length: int, unit: int, offset: int) -> list[tuple[int, ...]]:
    """Partner map of a construct with copies of a ``unit``-residue unit at 0 and ``offset``."""
    partners: list[tuple[int, ...]] = [()] * length
    for i in range(unit):
        partners[i], partners[i + offset] = (i + offset,), (i,)
    return partners


def pppl(logp: np.ndarray) -> float:
    return math.exp(-float(np.mean(logp)))


def _rng(settings: ValidationSettings, *key: object) -> np.random.Generator:
    """An independent, reproducible stream per (experiment, protein, condition)."""
    digest = hashlib.sha256(repr((settings.seed, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
