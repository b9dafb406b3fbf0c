"""What a validation run measures: its settings, the named presets and the bundled protein set."""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plmscreen.screening.errors import InputError
from plmscreen.screening.input import STANDARD_ALPHABET

DEFAULT_FASTA = Path(__file__).resolve().parent.parent / "data" / "validation_proteins.fasta"
AA20 = STANDARD_ALPHABET
MIN_PROTEINS = 3


class ValidationInputError(InputError):
    """The protein set or the settings cannot run the validation; the message says why."""


@dataclass(frozen=True)
class ValidationSettings:
    """Everything a validation run depends on besides the model and the FASTA; recorded with it."""

    n_proteins: int = 24
    crop_length: int = 64  # x in x‖x: central crop of each protein
    identities: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
    persistence_identity: float = 0.5  # the paper reports the look-up down to ~50% identity
    unit_lengths: tuple[int, ...] = (10, 20, 40, 80, 160, 300)
    spacer_lengths: tuple[int, ...] = (0, 50, 200)
    positions_per_copy: int = 16  # unit-length experiment: residues read per copy (all if fewer)
    min_effect: float = 0.05  # nats per residue (a PPPL factor of 1.05)
    min_copy_following: float = 0.05  # probability
    alpha: float = 0.05
    n_bootstrap: int = 2000
    seed: int = 0
    batch_tokens: int = 4096

    def __post_init__(self):
        problems = []
        if self.n_proteins < MIN_PROTEINS:
            problems.append(f"n_proteins must be >= {MIN_PROTEINS} (a sign test needs several proteins), got {self.n_proteins}")
        if self.crop_length < 8:
            problems.append(f"crop_length must be >= 8, got {self.crop_length}")
        if not self.identities or not all(0 < v <= 1 for v in self.identities):
            problems.append(f"identities must be in (0, 1], got {self.identities}")
        if self.persistence_identity not in self.identities:
            problems.append(f"persistence_identity {self.persistence_identity} is not one of the identities {self.identities}")
        if not self.unit_lengths or min(self.unit_lengths) < 2:
            problems.append(f"unit_lengths must be >= 2, got {self.unit_lengths}")
        if not self.spacer_lengths or min(self.spacer_lengths) < 0:
            problems.append(f"spacer_lengths must be >= 0, got {self.spacer_lengths}")
        if self.positions_per_copy < 1 or self.n_bootstrap < 100 or not 0 < self.alpha < 1:
            problems.append("positions_per_copy >= 1, n_bootstrap >= 100 and 0 < alpha < 1 are required")
        if problems:
            raise ValidationInputError("; ".join(problems))

    @property
    def longest_construct(self) -> int:
        return max(2 * self.crop_length, 2 * max(self.unit_lengths) + max(self.spacer_lengths))


# Named presets: "full" is the documented run; "quick" is a smoke run of a few seconds per experiment
# (6 proteins: the fewest for which a one-sided sign test can reach p < 0.05 with a margin).
PRESETS = {
    "full": ValidationSettings(),
    "quick": ValidationSettings(n_proteins=6, crop_length=40, identities=(1.0, 0.7, 0.5, 0.3),
                                unit_lengths=(10, 40, 160), spacer_lengths=(0, 50), positions_per_copy=8,
                                n_bootstrap=1000),
}
