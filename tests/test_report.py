"""The HTML report: contents checked against the Parquet files, self-contained, and rendered by
headless Chromium into a non-blank page."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from browser import assert_not_blank, screenshot
from plmscreen.cli.main import app
from store_fixtures import SEQ_IDS, parquet_rows, shared_store

runner = CliRunner()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_checkpoint):
    return shared_store(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="module")
def report_b(shared, tmp_path_factory):
    """The report of run b (three flagged sequences), written through the CLI."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = runner.invoke(app, ["report", str(shared.root), "--run", shared.run_b, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, out.read_text()


def test_report_shows_the_run_summary(shared, report_b):
    _, page = report_b
    sequences = [r for r in parquet_rows(shared.root, "sequences") if r["run"] == shared.run_b]
    assert f"plmscreen report: run {shared.run_b}" in page
    assert "esm2_t2_tiny_b" in page
    for label, value in [("Sequences scored", len(sequences)),
                         ("Residues scored", sum(r["length"] for r in sequences)),
                         ("Sequences flagged", sum(r["flagged"] for r in sequences)),
                         ("Sequences with repeats", sum(r["repeat_fraction"] > 0 for r in sequences))]:
        assert f"<th>{label}</th><td>{value}</td>" in page, label
    assert f"{max(r['inflation_factor'] for r in sequences):.4f}" in page
    assert "inflation factor ≥ 1 and repeat fraction ≥ 0.05" in page
    assert shared.run_a in page  # the other run is named, with how to choose it


def test_report_flagged_table_and_tracks(shared, report_b):
    _, page = report_b
    sequences = [r for r in parquet_rows(shared.root, "sequences") if r["run"] == shared.run_b]
    flagged = sorted((r for r in sequences if r["flagged"]), key=lambda r: -r["inflation_factor"])
    assert len(flagged) >= 2
    assert f"Flagged sequences ({len(flagged)})" in page
    table = page.split("<h2>Flagged sequences")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td><a href=\"#(seq-\d+)\">([^<]+)</a></td>(.*?)</tr>", table)
    assert [name for _, name, _ in rows] == [r["seq_id"] for r in flagged]  # ranked by inflation factor
    for (anchor, _, cells), row in zip(rows, flagged):
        assert f">{row['length']}<" in cells
        assert f">{row['inflation_factor']:.4f}<" in cells and f">{row['pppl']:.4f}<" in cells
        assert f">{row['mean_copy_following']:.4f}<" in cells and f">{row['mean_net_inflation']:.4f}<" in cells
        assert f'id="{anchor}"' in page
    pairs = [p for p in parquet_rows(shared.root, "repeats") if p["run"] == shared.run_b]
    for p in pairs:
        if p["seq_id"] in {r["seq_id"] for r in flagged}:
            assert f"{p['start']}-{p['end']}~{p['partner_start']}-{p['partner_end']}" in table
    for seq_id in set(SEQ_IDS) - {r["seq_id"] for r in flagged}:
        assert f">{seq_id}<" not in page  # only flagged sequences are listed
    assert page.count("<svg") == 1 + len(flagged)  # histogram + one track each
    assert "masked log p" in page and "partner-ablated log p" in page and "flag threshold" in page


def test_report_is_self_contained(report_b):
    _, page = report_b
    references = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    assert references and all(ref.startswith("#") for ref in references), sorted(set(references))
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", page)
    assert "@import" not in page and "<script" not in page and "<link" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)


def test_report_caps_tracks_and_defaults_to_the_latest_run(shared, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(shared.root), "--out", str(out), "--max-sequences", "1"])
    assert result.exit_code == 0, result.output
    assert f"Report on run {shared.run_b}" in result.stdout  # run b was created last
    page = out.read_text()
    assert page.count("<svg") == 2 and "most inflated of" in page


def test_report_errors_are_one_line(shared, tmp_path):
    result = runner.invoke(app, ["report", str(shared.root), "--run", "nope", "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "no run nope" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["report", str(empty), "--out", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "no runs to report on" in result.stderr
    assert not (tmp_path / "x.html").exists()


def test_report_renders_in_headless_chromium(report_b, tmp_path):
    path, _ = report_b
    assert_not_blank(screenshot(path.resolve().as_uri(), tmp_path / "out.png"))
