"""What changed since the last screen: a weekly rescreen of a new release of the same proteome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from plmscreen.screening.input import read_fasta
from plmscreen.screening.run.lifecycle import run_screen
from plmscreen.screening.run.settings import ScreenSettings
from plmscreen.screening.store.runs import run_changes


def write_fasta(path: Path, records: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    return path


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Two releases of one proteome (same file name) screened into one store with the bundled control."""
    real = read_fasta(REPO / "examples" / "sample.fasta").records
    base = {r.seq_id: r.sequence[:60] for r in real[12:17]}
    ids = list(base)
    second = dict(base)
    del second[ids[4]]  # removed
    second["sp|NEW1|NEW_ECOLI"] = real[20].sequence[:60]  # added
    edited = list(second[ids[1]])
    for k in (5, 20, 40):
        edited[k] = "W" if edited[k] != "W" else "A"
    second[ids[1]] = "".join(edited)  # same id, other residues
    second[ids[2]] = second[ids[2]][:40] * 2  # same id, now a doubled sequence: newly flagged
    tmp = tmp_path_factory.mktemp("releases")
    store = tmp / "store"
    settings = ScreenSettings(device="cpu")
    first_run = run_screen(write_fasta(tmp / "2026-11" / "proteome.fasta", base), store, settings)
    second_run = run_screen(write_fasta(tmp / "2026-12" / "proteome.fasta", second), store, settings)
    expected = {"removed": {ids[4]}, "added": {"sp|NEW1|NEW_ECOLI"}, "newly_flagged": {ids[2]},
                "sequence_changed": {ids[1]}}
    return store, first_run, second_run, expected, ids


def test_changes_name_exactly_the_sequences_that_changed(releases):
    store, first_run, second_run, expected, ids = releases
    assert ids[2] in {r["seq_id"] for r in second_run.flagged}, "the doubled sequence must be flagged"
    assert ids[2] not in {r["seq_id"] for r in first_run.flagged}
    changes = run_changes(store)  # newest run, compared with the previous run of the same input name
    assert (changes.run, changes.since) == (second_run.run_id, first_run.run_id)
    by_change: dict[str, set] = {}
    for row in changes.rows:
        by_change.setdefault(row["change"], set()).add(row["seq_id"])
    assert by_change == expected, by_change
    assert changes.counts() == {"newly_flagged": 1, "no_longer_flagged": 0, "added": 1, "removed": 1,
                                "sequence_changed": 1, "scores_changed": 0}
    assert run_changes(store, run=first_run.run_id).since is None  # nothing before the first release


def test_scores_changed_beyond_the_tolerance(releases):
    store, first_run, second_run, _, ids = releases
    everything = run_changes(store, since=first_run.run_id, tolerance=0.0)
    assert {r["seq_id"] for r in everything.rows if r["change"] == "scores_changed"} <= {ids[0], ids[3]}
    unchanged = [r for r in everything.rows if r["seq_id"] in (ids[0], ids[3])]
    assert unchanged == [], "identical sequences under the same model score identically"


def test_cli_changes_and_report_section(releases, tmp_path):
    store, first_run, second_run, expected, _ = releases
    out = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "changes", str(store), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"Run {second_run.run_id} since {first_run.run_id}: 1 newly flagged, 0 no longer flagged, 1 added, 1 removed" in out.stderr
    rows = json.loads(out.stdout)
    assert {(r["seq_id"], r["change"]) for r in rows} == {(s, c) for c, ids in expected.items() for s in ids}
    first = subprocess.run([sys.executable, "-m", "plmscreen.cli.main", "changes", str(store), "--run", first_run.run_id],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "no earlier run of the same screen" in first.stdout
    from plmscreen.screening.render.report import write_report

    write_report(store, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    section = page.split("<h2>Changes since the previous screen</h2>")[1].split("<h2>")[0]
    assert f"Since run <code>{first_run.run_id}</code>" in section
    for ids in expected.values():
        for seq_id in ids:
            assert seq_id in section
