#!/usr/bin/env python3
"""Choose the packaged validation proteins (screening/data/validation_proteins.fasta).

Rule, applied to the E. coli K-12 reference proteome (UniProt UP000000625, CC BY 4.0):
- held out of plmscreen-mini's training: int(md5(accession).hexdigest(), 16) % 10 == 0, the rule
  of training/train_plmscreen_mini.py, so the bundled model never saw them;
- reviewed (sp|) entries of 300-600 residues, only the 20 standard residues: long enough for the
  300-residue repeat units of the unit-length experiment, short enough to keep the run cheap;
- no internal repeat found by plmscreen.screening.score.repeats.find_repeats (default parameters), so every repeat
  in a validation construct is one the experiment put there;
- the first --n of these in a seeded random order (seed 0).

Usage: python validation/select_proteins.py [--fasta PATH] [--n 24] [--out PATH]
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from plmscreen.screening.input import STANDARD_RESIDUES, read_fasta
from plmscreen.screening.score.repeats import find_repeats

ROOT = Path(__file__).resolve().parents[1]


def is_heldout(accession: str) -> bool:
    return int(hashlib.md5(accession.encode()).hexdigest(), 16) % 10 == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", required=True, help="UniProt UP000000625 (E. coli K-12) FASTA; see docs/data-sources.md")
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--out", default=str(ROOT / "screening/data/validation_proteins.fasta"))
    args = parser.parse_args()

    records = read_fasta(args.fasta).records
    eligible = [
        r for r in records
        if r.seq_id.startswith("sp|") and is_heldout(r.seq_id.split("|")[1])
        and 300 <= len(r.sequence) <= 600 and set(r.sequence) <= STANDARD_RESIDUES
    ]
    order = np.random.default_rng(0).permutation(len(eligible))
    chosen = []
    for k in order:
        record = eligible[int(k)]
        if find_repeats(record.sequence):
            continue
        chosen.append(record)
        if len(chosen) == args.n:
            break
    with open(args.out, "w") as out:
        for r in chosen:
            out.write(f">{r.seq_id} {r.description}\n")
            for start in range(0, len(r.sequence), 60):
                out.write(r.sequence[start : start + 60] + "\n")
    print(f"{len(eligible)} eligible held-out proteins; wrote {len(chosen)} without detected repeats to {args.out}")


if __name__ == "__main__":
    main()
