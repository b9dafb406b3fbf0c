"""End-to-end screens on a tiny checkpoint: files read back, cross-checked, and the CLI's contract."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from plmscreen.schema.arrow import RESIDUES_SCHEMA, SCHEMA_VERSION, SEQUENCES_SCHEMA
from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.store.parquet import read_metadata
from plmscreen.screening.run.lifecycle import run_screen
from plmscreen.screening.run.settings import ScreenSettings

from sequences import SINGLE_DOUBLED_SHORT as FASTA
from sequences import UNIT


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "plmscreen.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PLMSCREEN_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def part(store, table, shard=0):
    """The one shard file of ``table`` in a store holding a single run."""
    found = list(store.glob(f"{table}/model=*/run=*/part-{shard:05d}.parquet"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def screen_out(tmp_path_factory, tiny_checkpoint):
    tmp = tmp_path_factory.mktemp("screen")
    fasta = tmp / "in.fasta"
    fasta.write_text(FASTA)
    out = tmp / "out"
    summary = run_screen(fasta, out, ScreenSettings(model=str(tiny_checkpoint), device="cpu"))
    return fasta, out, summary


def test_outputs_follow_the_contract(screen_out, tiny_checkpoint):
    _, out, summary = screen_out
    residues = pq.read_table(part(out, "residues"))
    sequences = pq.read_table(part(out, "sequences"))
    assert residues.schema.remove_metadata() == RESIDUES_SCHEMA
    assert sequences.schema.remove_metadata() == SEQUENCES_SCHEMA
    assert sequences.column("seq_id").to_pylist() == ["single", "doubled", "short"]
    assert residues.num_rows == len(UNIT) * 3 + 27 == summary.n_residues
    meta = read_metadata(part(out, "residues"))
    assert meta["model_name"] == "esm2_t2_tiny_test"
    assert part(out, "residues").parent == out / "residues" / "model=esm2_t2_tiny_test" / f"run={summary.run_id}"
    assert meta["run_id"] == summary.run_id
    import hashlib

    assert meta["checkpoint_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert meta["plmscreen_version"] == "0.1.0" and meta["schema_version"] == SCHEMA_VERSION
    assert meta["parameters"]["scoring"]["precision"] == "fp32"
    assert meta["parameters"]["repeats"]["min_length"] > 0
    assert not list(out.rglob("*.tmp")), "temp files left behind"


def test_sequence_table_agrees_with_residue_table(screen_out):
    _, out, _ = screen_out
    res = pq.read_table(part(out, "residues")).to_pylist()
    seqs = {row["seq_id"]: row for row in pq.read_table(part(out, "sequences")).to_pylist()}
    for seq_id, row in seqs.items():
        rows = [r for r in res if r["seq_id"] == seq_id]
        assert [r["pos"] for r in rows] == list(range(1, row["length"] + 1))
        masked = np.array([r["logp_masked"] for r in rows])
        ablated = np.array([r["logp_ablated"] if r["logp_ablated"] is not None else np.nan for r in rows])
        assert row["pll"] == pytest.approx(masked.sum())
        assert row["pppl"] == pytest.approx(math.exp(-masked.mean()))
        assert row["pppl_ablated"] == pytest.approx(math.exp(-np.where(np.isnan(ablated), masked, ablated).mean()))
        assert row["repeat_fraction"] == pytest.approx(np.mean([bool(r["partner_pos"]) for r in rows]))
        assert row["inflation_factor"] == pytest.approx(row["pppl_ablated"] / row["pppl"])
        for r in rows:
            assert (r["logp_ablated"] is None) == (not r["partner_pos"])
            assert len(r["partner_region"]) == len(r["partner_identity"]) == len(r["partner_pos"])
            if r["partner_pos"]:
                assert r["inflation"] == pytest.approx(r["logp_masked"] - r["logp_ablated"])


def test_doubled_protein_gets_partners_across_copies(screen_out):
    _, out, _ = screen_out
    rows = [r for r in pq.read_table(part(out, "residues")).to_pylist() if r["seq_id"] == "doubled"]
    n = len(UNIT)
    for r in rows:
        i = r["pos"]
        expected = i + n if i <= n else i - n
        assert expected in r["partner_pos"], (i, r["partner_pos"])
        assert i not in r["partner_pos"]
    by_pos = {r["pos"]: set(r["partner_pos"]) for r in rows}
    assert all(i in by_pos[j] for i, ps in by_pos.items() for j in ps), "partner map must be symmetric"
    single = [r for r in pq.read_table(part(out, "residues")).to_pylist() if r["seq_id"] == "single"]
    assert sum(bool(r["partner_pos"]) for r in single) == 0
    regions = pq.read_table(part(out, "repeats")).to_pylist()
    assert {(r["seq_id"], r["start"], r["end"], r["partner_start"], r["partner_end"]) for r in regions} >= {("doubled", 1, n, n + 1, 2 * n)}


def test_rerun_resumes_the_same_run_without_rewriting(screen_out, tiny_checkpoint, tmp_path):
    import shutil

    fasta, shared_out, first_summary = screen_out
    out = tmp_path / "store"
    shutil.copytree(shared_out, out)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("part-*.parquet")}
    again = run_screen(fasta, out, ScreenSettings(model=str(tiny_checkpoint), device="cpu"))
    assert again.run_id == first_summary.run_id
    assert again.n_shards_skipped == again.n_shards == 1
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("part-*.parquet")} == before
    assert [r["seq_id"] for r in again.flagged] == [r["seq_id"] for r in first_summary.flagged]
    # --overwrite redoes the run: same files, same numbers, nothing left of the old run (it goes
    # through the same delete_run as `plmscreen runs delete`, stale part files included).
    stale = part(out, "residues").with_name("part-00099.parquet")
    stale.write_bytes(part(out, "residues").read_bytes())
    redone = run_screen(fasta, out, ScreenSettings(model=str(tiny_checkpoint), device="cpu"), overwrite=True)
    assert redone.n_shards_skipped == 0
    assert not stale.exists() and not (out / ".trash").exists()
    np.testing.assert_allclose(pq.read_table(part(out, "residues")).column("logp_masked").to_numpy(),
                               pq.read_table(part(shared_out, "residues")).column("logp_masked").to_numpy(), atol=1e-6)
    # Different parameters are a different run: it lands beside the first, which stays untouched.
    other = run_screen(fasta, out, ScreenSettings(model=str(tiny_checkpoint), device="cpu", flag=FlagRule(min_inflation_factor=2.0)))
    runs = sorted(p.name for p in (out / "sequences" / "model=esm2_t2_tiny_test").iterdir())
    assert runs == sorted([f"run={other.run_id}", f"run={first_summary.run_id}"])


def test_shards_split_the_input_without_loss(tmp_path, tiny_checkpoint, screen_out):
    fasta, out_one, _ = screen_out
    out = tmp_path / "sharded"
    run_screen(fasta, out, ScreenSettings(model=str(tiny_checkpoint), device="cpu", shard_tokens=10_000))
    parts = sorted((out / "sequences").glob("model=*/run=*/part-*.parquet"))
    assert len(parts) == 3
    ids = [i for p in parts for i in pq.read_table(p).column("seq_id").to_pylist()]
    assert ids == ["single", "doubled", "short"]
    one = pq.read_table(part(out_one, "residues")).column("logp_masked").to_numpy()
    many = np.concatenate([pq.read_table(p).column("logp_masked").to_numpy() for p in sorted((out / "residues").glob("model=*/run=*/*.parquet"))])
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_cli_screen_prints_summary_and_flagged_table(tmp_path, tiny_checkpoint):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(FASTA)
    result = _run_cli("screen", str(fasta), "--in-process", "--out", str(tmp_path / "o"), "--model", str(tiny_checkpoint),
                      "--device", "cpu", "--min-inflation-factor", "1.0", "--min-repeat-fraction", "0.5", "--max-qvalue", "1")
    assert result.returncode == 0, result.stderr
    assert "Screened 3 sequences (237 residues)" in result.stdout
    assert "0 rejected" in result.stdout
    rows = pq.read_table(part(tmp_path / "o", "sequences")).to_pylist()
    expected = [r["seq_id"] for r in rows if r["repeat_fraction"] >= 0.5 and r["inflation_factor"] >= 1.0]
    assert expected == [r["seq_id"] for r in rows if r["effect_flagged"]]
    table = result.stdout.split("most inflated first:")[1]
    assert f"{len(expected)} flagged" in result.stdout
    for seq_id in ("single", "doubled", "short"):
        assert (seq_id in table) == (seq_id in expected)
    # The tqdm bar on stderr ends complete: all 237 residues of the 3 sequences, with a rate.
    final = result.stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"scoring 3 sequences: 100%\|.*\| 237/237 \[.*res/s, .*seqs=3\]", final), final


def test_cli_invalid_input_scores_nothing_and_fails(tmp_path, tiny_checkpoint):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(FASTA + ">broken\nMK1V\n>single\nMKV\n")
    out = tmp_path / "o"
    result = _run_cli("screen", str(fasta), "--in-process", "--out", str(out), "--model", str(tiny_checkpoint), "--device", "cpu")
    assert result.returncode == 2
    assert "record 4 'broken': invalid residue '1' at position 3" in result.stderr
    assert "record 5 'single': duplicate ID (first seen at record 1)" in result.stderr
    assert not out.exists()


def test_cli_skip_invalid_writes_rejects_and_goes_on(tmp_path, tiny_checkpoint):
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(FASTA + ">broken\nMK1V\n")
    out = tmp_path / "o"
    result = _run_cli("screen", str(fasta), "--in-process", "--out", str(out), "--model", str(tiny_checkpoint), "--device", "cpu",
                      "--skip-invalid", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "1 rejected" in result.stdout
    run_dir = next((out / "runs").iterdir())
    assert (run_dir / "rejects.tsv").read_text().splitlines()[1].startswith("4\tbroken\tinvalid residue '1'")
    assert pq.read_table(part(out, "sequences")).num_rows == 3
    run = json.loads((run_dir / "run.json").read_text())
    assert run["n_scored"] == 3 and run["n_rejected"] == 1


def test_cli_missing_model_is_one_clear_error(tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(FASTA)
    result = _run_cli("screen", str(fasta), "--in-process", "--out", str(tmp_path / "o"), "--model", "esm2_t6_8M_UR50D",
                      "--weights-dir", str(tmp_path), "--device", "cpu")
    assert result.returncode == 2
    assert "model 'esm2_t6_8M_UR50D' not found" in result.stderr
    assert str(tmp_path / "esm2_t6_8M_UR50D.pt") in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bad_option_is_refused(tmp_path, tiny_checkpoint):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(FASTA)
    result = _run_cli("screen", str(fasta), "--in-process", "--out", str(tmp_path / "o"), "--model", str(tiny_checkpoint), "--precision", "fp8")
    assert result.returncode == 2 and "precision must be one of" in result.stderr


def test_cli_repeats_writes_region_pairs(tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(FASTA)
    out = tmp_path / "rep.parquet"
    result = _run_cli("repeats", str(fasta), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert pq.read_schema(out).names == ["seq_id", "region_id", "start", "end", "partner_start", "partner_end",
                                         "identity", "score", "pvalue"]  # the README's column list
    assert read_metadata(out)["schema_version"] == SCHEMA_VERSION
    doubled = [r for r in rows if r["seq_id"] == "doubled"]
    assert any(r["start"] == 1 and r["end"] == 70 and r["partner_start"] == 71 and r["partner_end"] == 140 and r["identity"] == 1.0 for r in doubled)
    assert all(0 < r["pvalue"] <= 1e-3 for r in rows)  # the detector's default cut-off
    assert not [r for r in rows if r["seq_id"] == "single"]


def test_cli_version_and_help():
    assert _run_cli("--version").stdout.strip() == "plmscreen 0.1.0"
    help_text = _run_cli("screen", "--help").stdout
    for option in ("--out", "--model", "--device", "--batch-tokens", "--skip-invalid"):
        assert option in help_text


def test_only_settings_that_change_numbers_or_flags_name_a_run():
    from plmscreen.screening.score.metrics import FlagRule
    from plmscreen.screening.score.scorer import ScoringOptions
    from plmscreen.screening.run.plan import run_id_for

    def run_id(**changes):
        return run_id_for("in" * 32, "ck" * 32, ScreenSettings(**changes))

    base = run_id()
    for speed_only in (dict(scoring=ScoringOptions(batch_tokens=1024)), dict(scoring=ScoringOptions(engine="fair-esm")),
                       dict(shard_tokens=123), dict(device="cpu"), dict(weights_dir="/elsewhere")):
        assert run_id(**speed_only) == base, speed_only
    for numbers in (dict(scoring=ScoringOptions(precision="bf16")), dict(scoring=ScoringOptions(masks_per_copy=2)),
                    dict(flag=FlagRule(min_inflation_factor=1.2)), dict(mode="triage"), dict(diagnostics=False)):
        assert run_id(**numbers) != base, numbers


def test_rerun_with_a_smaller_batch_resumes_and_keeps_finished_shards(tmp_path, tiny_checkpoint):
    """After an out-of-memory failure the user reruns with a smaller --batch-tokens (and perhaps a
    new shard size): finished shards are kept, the others are scored, the numbers are the same."""
    from plmscreen.screening.run.catalog import Catalog
    from plmscreen.screening.score.scorer import Scorer, ScoringOptions
    from plmscreen.screening.run.lifecycle import process_shard
    from plmscreen.screening.run.plan import prepare_run

    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">p{k}\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ{'AG' * k}\n" for k in range(8)))
    first = ScreenSettings(model=str(tiny_checkpoint), device="cpu", shard_tokens=3000,
                           scoring=ScoringOptions(batch_tokens=4096))
    plan = prepare_run(fasta, tmp_path / "store", first)
    assert len(plan.shards) >= 3
    from plmscreen.screening.model.checkpoints import load_model

    with plan.open_catalog() as catalog:
        process_shard(Scorer(load_model(str(tiny_checkpoint), device="cpu"), first.scoring), plan, 0, catalog)
    kept = next((tmp_path / "store").glob("sequences/**/part-00000.parquet"))
    mtime = kept.stat().st_mtime_ns

    smaller = ScreenSettings(model=str(tiny_checkpoint), device="cpu", shard_tokens=1500,
                             scoring=ScoringOptions(batch_tokens=512))
    summary = run_screen(fasta, tmp_path / "store", smaller)
    assert summary.run_id == plan.run_id
    assert summary.n_shards == len(plan.shards) and summary.n_shards_skipped == 1
    assert kept.stat().st_mtime_ns == mtime, "the finished shard was recomputed"
    fresh = run_screen(fasta, tmp_path / "fresh", first)
    got = {r["seq_id"]: r["pppl"] for r in pq.read_table(tmp_path / "store" / "sequences").to_pylist()}
    want = {r["seq_id"]: r["pppl"] for r in pq.read_table(tmp_path / "fresh" / "sequences").to_pylist()}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6) for k in got)
    with Catalog.open(None, tmp_path / "store") as catalog:
        assert [s.status for s in catalog.shards(plan.run_id)] == ["done"] * len(plan.shards)
