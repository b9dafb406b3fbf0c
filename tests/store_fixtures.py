"""A small real store shared by the store, report and catalog tests (built once per session).

Two runs of the same FASTA with two tiny random ESM-2 checkpoints (different models), a lenient
flag rule so each run flags a few sequences, and small shards so every run has several files.
Tests that change a store work on a copy (:func:`copy_store`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.run.lifecycle import run_screen
from plmscreen.screening.run.settings import ScreenSettings

from sequences import SINGLE_DOUBLED_SHORT

FASTA = SINGLE_DOUBLED_SHORT + """>tri
GSAKLEVWQGSAKLEVWQGSAKLEVWQPPLKDEM
>tandem4
MDPRWTLKEYCMDPRWTLKEYCMDPRWTLKEYCMDPRWTLKEYCGG
>split
MKVLHEGTRWPQSAYNDKLMKVLHEGTRWPQSAYNDKLPAG
>plain1
MASNDYTQQATQSYGAYPTQPGQGYSQQSSQPYGQQSYSGYSQSTDTSGYGQSSY
>plain2
MRLLPKVTAEGHWQNDFSYCIRPLE
"""
SEQ_IDS = ["single", "doubled", "short", "tri", "tandem4", "split", "plain1", "plain2"]
# The store tests exercise files, views and queries with a tiny random model, which cannot copy:
# its flags come from the effect size alone, so the partner test's q-value gate is opened (1.0).
FLAG_RULE = FlagRule(min_inflation_factor=1.0, min_repeat_fraction=0.05, max_qvalue=1.0)
SHARD_TOKENS = 12_000  # cost Σ L·min(L, window): three shards per run


@dataclass(frozen=True)
class SharedStore:
    root: Path  # the store: do not modify, copy it
    fasta: Path
    run_a: str  # model esm2_t2_tiny_test (the conftest checkpoint)
    run_b: str  # model esm2_t2_tiny_b (another seed), created after run_a
    checkpoint_a: Path
    checkpoint_b: Path

    def settings(self, run: str) -> ScreenSettings:
        checkpoint = self.checkpoint_a if run == self.run_a else self.checkpoint_b
        return ScreenSettings(model=str(checkpoint), device="cpu", flag=FLAG_RULE, shard_tokens=SHARD_TOKENS)


_CACHE: dict[Path, SharedStore] = {}


def shared_store(tmp_path_factory, tiny_checkpoint: Path) -> SharedStore:
    """Build (once per session) and return the two-run store."""
    from conftest import write_esm2_checkpoint

    if tiny_checkpoint in _CACHE:
        return _CACHE[tiny_checkpoint]
    tmp = tmp_path_factory.mktemp("shared_store")
    fasta = tmp / "in.fasta"
    fasta.write_text(FASTA)
    checkpoint_b = write_esm2_checkpoint(tmp / "weights" / "esm2_t2_tiny_b.pt", seed=1)
    root = tmp / "store"
    runs = []
    for checkpoint in (tiny_checkpoint, checkpoint_b):
        settings = ScreenSettings(model=str(checkpoint), device="cpu", flag=FLAG_RULE, shard_tokens=SHARD_TOKENS)
        runs.append(run_screen(fasta, root, settings).run_id)
    _CACHE[tiny_checkpoint] = SharedStore(root, fasta, runs[0], runs[1], tiny_checkpoint, checkpoint_b)
    return _CACHE[tiny_checkpoint]


def copy_store(store: SharedStore, dest: Path) -> Path:
    """A private copy of the store (its files and SQLite catalog; not its DuckDB file)."""
    shutil.copytree(store.root, dest, ignore=shutil.ignore_patterns("plmscreen.duckdb*"))
    return dest


def parquet_rows(root: Path, table: str) -> list[dict]:
    """Every row of ``table`` read with pyarrow alone, with ``model`` and ``run`` from the path;
    sequences rows also get their run's verdict (partner_qvalue, flagged) from
    runs/<run>/verdicts.parquet, as the sequences view joins it (None before the run ends)."""
    verdicts = {}
    if table == "sequences":
        for path in sorted(root.glob("runs/*/verdicts.parquet")):
            for row in pq.read_table(path).to_pylist():
                verdicts[(row["run"], row["seq_id"])] = row
    rows = []
    for path in sorted(root.glob(f"{table}/model=*/run=*/part-*.parquet")):
        model = path.parent.parent.name.split("=", 1)[1]
        run = path.parent.name.split("=", 1)[1]
        for row in pq.read_table(path).to_pylist():
            rows.append({"run": run, "model": model, **row})
            if table == "sequences":
                verdict = verdicts.get((run, row["seq_id"]), {})
                rows[-1].update(partner_qvalue=verdict.get("partner_qvalue"), flagged=verdict.get("flagged"))
    return rows
