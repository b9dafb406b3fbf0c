"""Flags in SQL: a stored run re-flagged under any thresholds without rescoring, by the same rule
definition that flagged it (FlagRule.CONDITIONS)."""

from __future__ import annotations

import itertools

import pytest

from conftest import REPO
from plmscreen.screening.input import ProteinRecord, read_fasta
from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.run.lifecycle import run_screen
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.store.connection import open_store, query_named


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Real proteins and two repeat constructs, screened exactly and in triage by the bundled control."""
    real = read_fasta(REPO / "examples" / "sample.fasta").records[:14]
    records = [ProteinRecord(r.seq_id, r.sequence[:80], "") for r in real]
    records.append(ProteinRecord("doubled", real[13].sequence[:40] * 2, ""))
    tmp = tmp_path_factory.mktemp("reflag")
    fasta = tmp / "in.fasta"
    fasta.write_text("".join(f">{r.seq_id}\n{r.sequence}\n" for r in records))
    root = tmp / "store"
    runs = {mode: run_screen(fasta, root, ScreenSettings(device="cpu", mode=mode, diagnostics=False)).run_id
            for mode in ("exact", "triage")}
    return root, runs


def test_reflag_at_the_runs_own_thresholds_reproduces_its_flags(store):
    root, runs = store
    for mode, run in runs.items():
        rows = query_named(root, "reflag", {"run": run}).to_pylist()
        assert len(rows) == 15
        assert any(r["flagged"] for r in rows) and not all(r["flagged"] for r in rows), mode
        assert [r["flagged"] for r in rows] == [r["flagged_in_run"] for r in rows], mode
        assert {(r["min_inflation_factor"], r["min_repeat_fraction"], r["max_qvalue"]) for r in rows} == {(1.05, 0.05, 0.05)}


def test_reflag_under_other_thresholds_equals_the_python_rule(store):
    root, runs = store
    with open_store(root) as st:
        stored = st.sql("SELECT run, seq_id, inflation_factor, repeat_fraction, partner_qvalue FROM sequences").to_pylist()
        factors = sorted({r["inflation_factor"] for r in stored if r["inflation_factor"] is not None})
        fractions = sorted({r["repeat_fraction"] for r in stored})
        # Thresholds exactly at stored values too: the boundary is where two copies of a rule drift.
        grid = itertools.product([1.0, 1.1, 1.5, *factors[::3]], [0.0, 0.3, 1.0, *fractions[::3]])
        for factor, fraction in grid:
            rule = FlagRule(min_inflation_factor=max(factor, 1.0), min_repeat_fraction=fraction)
            for run in runs.values():
                rows = st.named("reflag", run=run, min_inflation_factor=rule.min_inflation_factor,
                                min_repeat_fraction=rule.min_repeat_fraction).to_pylist()
                want = {r["seq_id"]: rule.flags(r["inflation_factor"], r["repeat_fraction"], r["partner_qvalue"])
                        for r in stored if r["run"] == run}
                assert {r["seq_id"]: r["flagged"] for r in rows} == want, (run, factor, fraction)


def test_reflag_from_the_command_line(store):
    import subprocess
    import sys

    root, runs = store
    out = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "query", str(root), "--name", "reflag",
                          "--param", f"run={runs['exact']}", "--param", "min_inflation_factor=1000", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads(out.stdout)
    assert len(rows) == 15 and not any(r["flagged"] for r in rows)
