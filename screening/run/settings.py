"""ScreenSettings: every parameter of a screen (scoring, repeats, flag rule, shards, mode), with the only copy of each default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.score.repeats import RepeatParams
from plmscreen.screening.score.scorer import ScoringOptions

MODES = ("exact", "triage")
# Triage runs about a ninth of exact mode's tokens (9.4x fewer on an E. coli sample,
# bench/results/triage_*): its shards hold 8x the exact cost so tasks stay long enough that
# Prefect and Dask overhead remains small.
TRIAGE_SHARD_SCALE = 8
@dataclass(frozen=True)
class ScreenSettings:
    """Everything that decides a screen's numbers; validated once, recorded with every output."""

    model: str = "plmscreen-mini"
    weights_dir: str | None = None
    device: str = "auto"
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    repeats: RepeatParams = field(default_factory=RepeatParams)
    flag: FlagRule = field(default_factory=FlagRule)
    shard_tokens: int = 4_000_000  # shard cost budget: Σ L·min(L, window) over its sequences
    mode: str = "exact"  # "triage": masked/ablated scoring only where it can change the flag
    diagnostics: bool = True  # copy-following and null co-mask columns for flagged sequences

    def __post_init__(self):
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {self.shard_tokens}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{self.mode}'")

    @property
    def shard_budget(self) -> int:
        """Exact-mode cost (Σ L·min(L, window)) one shard may hold in this mode."""
        return self.shard_tokens * (TRIAGE_SHARD_SCALE if self.mode == "triage" else 1)

    def identity(self) -> dict:
        """What names a run: the settings that change its numbers or flags. Batch size, engine and
        shard size only change how fast it goes, so a rerun with another ``--batch-tokens`` after
        an out-of-memory failure resumes the same run instead of throwing its shards away."""
        return {
            "scoring": {"precision": self.scoring.precision, "masks_per_copy": self.scoring.masks_per_copy},
            "repeats": dataclasses.asdict(self.repeats),
            "flag": dataclasses.asdict(self.flag),
            "mode": self.mode,
            "diagnostics": self.diagnostics,
        }

    def parameters(self) -> dict:
        return {
            "scoring": dataclasses.asdict(self.scoring),
            "repeats": dataclasses.asdict(self.repeats),
            "flag": dataclasses.asdict(self.flag),
            "shard_tokens": self.shard_tokens,
            "mode": self.mode,
            "diagnostics": self.diagnostics,
        }
