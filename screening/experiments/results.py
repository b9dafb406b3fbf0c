"""An experiment's outcome and the whole validation report."""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from plmscreen import screening
from plmscreen.screening.experiments.settings import ValidationSettings
from plmscreen.screening.experiments.statistics import Check


@dataclass
class Experiment:
    key: str
    title: str
    method: str
    expected: str  # what the paper leads us to expect
    observed: str  # headline numbers
    checks: list[Check]
    rows: list[dict]  # per protein (and condition): <key>.csv
    summary: list[dict]  # the table shown on the page: <key>_summary.csv
    plot: str = ""  # PNG file name, set when the page is written
    plot_data: dict = field(default_factory=dict, repr=False)  # what the plot needs beyond the rows

    @property
    def shown(self) -> bool:
        return all(c.shown for c in self.checks if c.decisive)


@dataclass
class ValidationReport:
    model: dict
    settings: ValidationSettings
    fasta: str
    fasta_sha256: str
    proteins: list[dict]
    experiments: list[Experiment]
    seconds: float
    command: str | None = None
    plmscreen_version: str = screening.__version__

    def experiment(self, key: str) -> Experiment:
        return next(e for e in self.experiments if e.key == key)

    @property
    def verdicts(self) -> dict[str, bool]:
        return {e.key: e.shown for e in self.experiments}

    def to_dict(self) -> dict:
        return {
            "plmscreen_version": self.plmscreen_version,
            "command": self.command,
            "model": self.model,
            "settings": dataclasses.asdict(self.settings),
            "fasta": self.fasta,
            "fasta_sha256": self.fasta_sha256,
            "proteins": self.proteins,
            "seconds": round(self.seconds, 1),
            "verdicts": self.verdicts,
            "experiments": [
                {
                    "key": e.key, "title": e.title, "method": e.method, "expected": e.expected,
                    "observed": e.observed, "shown": e.shown, "plot": e.plot,
                    "checks": [dataclasses.asdict(c) | {"n": c.n} for c in e.checks],
                    "summary": e.summary,
                }
                for e in self.experiments
            ],
        }
