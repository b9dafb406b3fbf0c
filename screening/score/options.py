"""How the scorer runs (batch budget, precision, masks per copy, engine): plain values, without
torch, so that settings and the CLI can name them without importing the model code."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16", "fp16")
CPU_BATCH_TOKENS = 4096  # measured best on this project's CPUs (bench/results/scoring_*_cpu2t.md)
ENGINES = ("plmscreen", "fair-esm")


@dataclass(frozen=True)
class ScoringOptions:
    batch_tokens: int | None = None  # None: 4096 on CPU, sized from free GPU memory on CUDA
    precision: str = "fp32"  # bf16/fp16 autocast is opt-in: it moves log-probs (bench/results/precision_*)
    masks_per_copy: int = 1  # >1 is an approximation: far-apart, non-partner positions share a copy
    engine: str = "plmscreen"  # "fair-esm" runs the stock forward (reference, slower)

    def __post_init__(self):
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive (or None for automatic), got {self.batch_tokens}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.masks_per_copy < 1:
            raise ValueError(f"masks_per_copy must be >= 1, got {self.masks_per_copy}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got '{self.engine}'")

    @property
    def exact(self) -> bool:
        return self.precision == "fp32" and self.masks_per_copy == 1
