"""Triage mode reaches exact mode's verdicts; the per-residue diagnostics are what they say they are.

The bundled model copies (it is the positive control), so flags and copy-following are real here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmscreen.screening.score.diagnostics import STANDARD, residue_diagnostics
from plmscreen.screening.input import ProteinRecord, read_fasta
from plmscreen.screening.score.metrics import FlagRule, could_flag
from plmscreen.screening.score.repeats import RepeatParams
from plmscreen.screening.score.scorer import Scorer, ScoringOptions
from plmscreen.screening.run.tables import score_shard
from conftest import REPO


@pytest.fixture(scope="module")
def mini():
    from plmscreen.screening.model.checkpoints import load_model

    return load_model("plmscreen-mini", device="cpu")


@pytest.fixture(scope="module")
def records():
    real = [r for r in read_fasta(REPO / "examples" / "sample.fasta").records[:10]]
    real = [ProteinRecord(r.seq_id, r.sequence[:150], r.description) if len(r.sequence) > 150 else r for r in real]
    unit = real[2].sequence[:45]
    doubled = ProteinRecord("doubled", unit + unit, "")
    mutated = list(unit)
    for k in range(0, 45, 5):  # ~80% identity second copy
        mutated[k] = "W" if mutated[k] != "W" else "A"
    imperfect = ProteinRecord("imperfect", real[3].sequence[:40] + unit + real[4].sequence[:20] + "".join(mutated), "")
    return real + [doubled, imperfect]


@pytest.fixture(scope="module")
def both_modes(mini, records):
    scorer = Scorer(mini, ScoringOptions())
    exact = score_shard(scorer, records, RepeatParams(), FlagRule(), mode="exact", diagnostics=True)
    triage = score_shard(scorer, records, RepeatParams(), FlagRule(), mode="triage", diagnostics=True)
    return exact, triage


def test_triage_flags_exactly_what_exact_mode_flags(both_modes):
    exact, triage = (t.sequences.to_pylist() for t in both_modes)
    assert [r["seq_id"] for r in exact] == [r["seq_id"] for r in triage]
    assert sum(r["effect_flagged"] for r in exact) >= 2, "the constructs must be flagged, or this test proves nothing"
    assert sum(not r["effect_flagged"] for r in exact) >= 5
    for e, t in zip(exact, triage):
        assert t["effect_flagged"] == e["effect_flagged"], e["seq_id"]
        assert (e["mode"], t["mode"]) == ("exact", "triage")
        # The partner test is run on the same sequences (the BH family) with the same seeded draws.
        assert (t["partner_pvalue"] is None) == (e["partner_pvalue"] is None) == (not could_flag(e["repeat_fraction"], FlagRule()))
        if e["partner_pvalue"] is not None:
            assert t["partner_pvalue"] == pytest.approx(e["partner_pvalue"], rel=1e-6, abs=1e-12)
        assert e["pppl"] is not None
        if t["repeat_fraction"] == 1.0 and could_flag(1.0, FlagRule()):  # every residue was masked anyway
            assert t["pppl"] == pytest.approx(e["pppl"], rel=1e-6)
        else:
            assert t["pll"] is None and t["pppl"] is None
        assert t["repeat_fraction"] == e["repeat_fraction"]
        assert t["pppl_unmasked"] == pytest.approx(e["pppl_unmasked"], rel=1e-6)
        if t["inflation_factor"] is not None:
            assert t["inflation_factor"] == pytest.approx(e["inflation_factor"], rel=1e-6)
            assert t["inflation_factor"] == pytest.approx(e["pppl_ablated"] / e["pppl"], rel=1e-6)
        else:  # only where the rule cannot fire whatever the scores
            assert not could_flag(e["repeat_fraction"], FlagRule())
        if e["effect_flagged"]:
            assert t["mean_copy_following"] == pytest.approx(e["mean_copy_following"], abs=1e-6)


def test_triage_masks_only_partnered_residues_of_flaggable_sequences(both_modes):
    exact, triage = (t.residues.to_pylist() for t in both_modes)
    fractions = {r["seq_id"]: r["repeat_fraction"] for r in both_modes[1].sequences.to_pylist()}
    skipped = 0
    for e, t in zip(exact, triage):
        assert (e["seq_id"], e["pos"]) == (t["seq_id"], t["pos"])
        assert t["logp_unmasked"] == pytest.approx(e["logp_unmasked"], abs=1e-5)
        should_score = bool(e["partner_pos"]) and could_flag(fractions[e["seq_id"]], FlagRule())
        if should_score:
            assert t["logp_masked"] == pytest.approx(e["logp_masked"], abs=1e-5)
            assert t["logp_ablated"] == pytest.approx(e["logp_ablated"], abs=1e-5)
        else:
            assert t["logp_masked"] is None and t["inflation"] is None
            skipped += 1
    assert skipped > 0.4 * len(exact), "triage must skip much of the masked scoring on this set"


def naive_logp_row(mini, sequence: str, masked) -> torch.Tensor:
    """Full log-prob row at every token from fair-esm's stock forward, batch 1 (residue i is token i+1)."""
    a = mini.alphabet
    tokens = torch.tensor([[a.cls_idx] + [a.get_idx(c) for c in sequence] + [a.eos_idx]])
    for i in masked:
        tokens[0, i + 1] = a.mask_idx
    with torch.no_grad():
        return torch.log_softmax(mini.model(tokens)["logits"][0], -1)


def test_diagnostics_match_an_independent_forward(mini):
    unit = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"
    seq = "GSDE" + unit + "PNGT" + unit
    offset = len(unit) + 4
    partners = [()] * len(seq)
    partners = [((i + offset,) if 4 <= i < 4 + len(unit) else (i - offset,) if i >= 4 + offset else ()) for i in range(len(seq))]
    diag = residue_diagnostics(Scorer(mini, ScoringOptions(batch_tokens=300)), [seq], [partners], null_draws=2)[0]
    a = mini.alphabet
    for i in (5, 20, 4 + offset + 3):
        j = partners[i][0]
        # Null co-masks: i plus one random non-partner position, twice.
        masks = diag.null_masks[i]
        assert len(masks) == 2 and all(len(m) == 2 and i in m and j not in m for m in masks)
        expected = np.mean([naive_logp_row(mini, seq, m)[i + 1, a.get_idx(seq[i])].item() for m in masks])
        assert diag.logp_random_comask[i] == pytest.approx(expected, abs=1e-4)
        # Copy-following: b is the least likely standard residue at i with the partner masked too.
        ablated = naive_logp_row(mini, seq, [i, j])[i + 1]
        b = diag.substitute[i]
        candidates = [c for c in STANDARD if c not in (seq[i], seq[j])]
        assert b == min(candidates, key=lambda c: ablated[a.get_idx(c)].item())
        planted = seq[:j] + b + seq[j + 1 :]
        followed = naive_logp_row(mini, planted, [i])[i + 1, a.get_idx(b)].exp().item()
        assert diag.copy_following[i] == pytest.approx(followed - ablated[a.get_idx(b)].exp().item(), abs=1e-4)
    assert np.isnan(diag.copy_following[:4]).all() and np.isnan(diag.logp_random_comask[:4]).all()
    # The positive-control model copies: planting b in the partner copy raises P(b) at i nearly
    # everywhere. (Only by ~0.02 in probability: this small model does not override its priors.)
    following = diag.copy_following[~np.isnan(diag.copy_following)]
    assert (following > 0).mean() > 0.9 and following.mean() > 0.005
    again = residue_diagnostics(Scorer(mini), [seq], [partners], null_draws=2)[0]
    np.testing.assert_allclose(again.logp_random_comask, diag.logp_random_comask, atol=1e-5)  # seeded draws


def test_random_weights_do_not_follow_the_copy(tiny_model):
    """The index can be ~0: a model that does not copy does not follow a planted partner residue."""
    unit = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"
    seq = unit + unit
    partners = [((i + 32,) if i < 32 else (i - 32,)) for i in range(64)]
    diag = residue_diagnostics(Scorer(tiny_model), [seq], [partners], null_draws=1)[0]
    assert abs(np.nanmean(diag.copy_following)) < 0.002


def test_diagnostics_fill_only_flagged_sequences(both_modes):
    residues = both_modes[0].residues.to_pylist()
    sequences = both_modes[0].sequences.to_pylist()
    flagged = {r["seq_id"] for r in sequences if r["effect_flagged"]}
    tested = {r["seq_id"] for r in sequences if r["partner_pvalue"] is not None}
    assert flagged < tested, "the partner test covers more than the effect-flagged sequences"
    for row in residues:
        has = row["copy_following"] is not None
        assert has == (row["seq_id"] in flagged and bool(row["partner_pos"]))
        assert (row["logp_random_comask"] is not None) == (row["seq_id"] in tested and bool(row["partner_pos"]))
        if row["logp_random_comask"] is not None:
            assert row["net_inflation"] == pytest.approx(row["logp_random_comask"] - row["logp_ablated"], abs=1e-12)
        if has:
            assert row["planted_residue"] in STANDARD
    doubled = [r for r in residues if r["seq_id"] == "doubled"]
    # The look-up is more than the cost of an extra mask: net inflation stays positive on average.
    assert np.mean([r["net_inflation"] for r in doubled]) > 0.05


def test_cli_triage_screen_report_and_flagged_query(tmp_path):
    """--mode triage end to end: the summary table, the stored mode, and a report over null pppl."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from plmscreen.screening import store as st

    records = read_fasta(REPO / "examples" / "sample.fasta").records
    chosen = [r for r in records if r.seq_id in {"pdb|2QSK|A", "sp|Q2EEQ3|YAHH_ECOLI", "sp|P02358|RS6_ECOLI", "sp|P00894|ILVH_ECOLI"}]
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{r.seq_id}\n{r.sequence}\n" for r in chosen))
    out = tmp_path / "store"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "plmscreen.cli.main", *args], capture_output=True, text=True, timeout=600)

    result = cli("screen", str(fasta), "--out", str(out), "--mode", "triage", "--in-process", "--device", "cpu",
                 "--no-progress", "--no-diagnostics")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["seq_id"]: r for r in st.query(out, "SELECT * FROM sequences").to_pylist()}
    assert {r["mode"] for r in rows.values()} == {"triage"}
    assert rows["pdb|2QSK|A"]["flagged"] and rows["sp|Q2EEQ3|YAHH_ECOLI"]["flagged"]
    assert not rows["sp|P02358|RS6_ECOLI"]["flagged"] and rows["sp|P02358|RS6_ECOLI"]["pppl"] is None
    assert all(r["mean_copy_following"] is None for r in rows.values())  # --no-diagnostics
    table = result.stdout.split("most inflated first:")[1]
    line = next(x for x in table.splitlines() if x.startswith("pdb|2QSK|A"))
    assert line.split()[2:4] == ["-", "-"]  # pppl and pppl_ablated are unknown in triage mode
    flagged = st.query_named(out, "flagged").to_pylist()
    assert sorted(r["seq_id"] for r in flagged) == sorted(k for k, r in rows.items() if r["flagged"])
    report = cli("report", str(out), "--out", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Flagged sequences (2)" in (tmp_path / "report.html").read_text()


def test_triage_shards_hold_more_sequences(records):
    """Triage does ~1/9 of exact mode's work per sequence, so the same budget plans fewer, fuller shards."""
    from plmscreen.screening.run.plan import plan_shards
    from plmscreen.screening.run.settings import ScreenSettings

    exact = ScreenSettings(shard_tokens=40_000)
    triage = ScreenSettings(shard_tokens=40_000, mode="triage")
    exact_plan, triage_plan = plan_shards(records, exact.shard_budget), plan_shards(records, triage.shard_budget)
    assert len(exact_plan) >= 6 and len(triage_plan) < len(exact_plan) / 3
    for plan in (exact_plan, triage_plan):  # both cover every record once, in order
        assert [i for first, last in plan for i in range(first, last + 1)] == list(range(len(records)))


def lrr_like_sequence() -> str:
    """21 copies of a 10-mer whose 6th residue runs through all 20 letters: that residue's
    partners hold every standard letter, as in LRR-, titin- or collagen-like proteins."""
    motif = list("VPMGHACAET")
    copies = []
    for k in range(21):
        motif[5] = STANDARD[k % 20]
        copies.append("".join(motif))
    return "".join(copies)


def test_planted_residue_prefers_letters_absent_from_the_partners():
    from plmscreen.screening.score.diagnostics import planted_residue

    logp = -np.arange(20, dtype=float)  # A most likely ... Y least likely
    assert planted_residue("A", ["A", "C"], logp) == "Y"
    assert planted_residue("A", ["Y", "W"], logp) == "V"
    # Every other letter at some partner: the one at the fewest partners, least likely among ties.
    partners = [aa for aa in STANDARD] + ["Y", "W"]
    assert planted_residue("C", partners, logp) == "V"


@pytest.mark.slow
def test_screen_of_a_residue_whose_partners_hold_every_letter(tmp_path):
    """Used to raise StopIteration in the diagnostics, failing the shard three times."""
    import pyarrow.parquet as pq

    from plmscreen.screening.score.repeats import find_repeats, partner_details
    from plmscreen.screening.run.lifecycle import run_screen
    from plmscreen.screening.run.settings import ScreenSettings

    sequence = lrr_like_sequence()
    details = partner_details(len(sequence), find_repeats(sequence, RepeatParams()))
    crowded = [i for i, d in enumerate(details) if {sequence[i], *(sequence[p - 1] for p, _, _ in d)} >= set(STANDARD)]
    assert crowded, "the construct must give some residue partners holding every letter but its own"
    fasta = tmp_path / "lrr.fasta"
    fasta.write_text(f">lrr_like\n{sequence}\n")
    summary = run_screen(fasta, tmp_path / "store", ScreenSettings(device="cpu"))
    assert [row["seq_id"] for row in summary.flagged] == ["lrr_like"]
    rows = {r["pos"]: r for f in (tmp_path / "store").glob("residues/**/*.parquet") for r in pq.read_table(f).to_pylist()}
    for i in crowded:
        row = rows[i + 1]
        partner_letters = [sequence[p - 1] for p in row["partner_pos"]]
        assert row["planted_residue"] not in (None, row["aa"])
        counts = [partner_letters.count(aa) for aa in STANDARD if aa != row["aa"]]
        assert partner_letters.count(row["planted_residue"]) == min(counts) >= 1
        assert np.isfinite(row["copy_following"]) and np.isfinite(row["logp_random_comask"])


# Batches differ between the modes (triage packs fewer copies). That moves fp32 sums in the 7th
# digit, and bf16 ones by batch noise far inside bf16's own error against fp32 (max |dlogp| 0.134,
# bench/results/precision_*): the same noise exact mode shows at another --batch-tokens.
TOL = {"fp32": {"logp": 1e-5, "factor": 1e-5}, "bf16": {"logp": 0.15, "factor": 5e-3}}


@pytest.mark.slow
@pytest.mark.parametrize("masks_per_copy", [1, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("engine", ["plmscreen", "fair-esm"])
def test_triage_equals_exact_for_every_accepted_option(mini, records, masks_per_copy, precision, engine):
    """Every scoring option a screen accepts (fp16 is CUDA only) gives triage exact mode's numbers
    at the residues it scores, hence the same inflation factors and flags. With masks_per_copy > 1
    triage used to mask one residue per copy while exact mode grouped them (YahH: 1.871 vs 1.921)."""
    chosen = [records[2], records[5], records[-2], records[-1]]  # two real proteins, the two constructs
    scorer = Scorer(mini, ScoringOptions(precision=precision, masks_per_copy=masks_per_copy, engine=engine))
    exact, triage = (score_shard(scorer, chosen, RepeatParams(), FlagRule(), mode=mode) for mode in ("exact", "triage"))
    e_rows, t_rows = exact.sequences.to_pylist(), triage.sequences.to_pylist()
    assert sum(r["effect_flagged"] for r in e_rows) >= 1
    tol = TOL[precision]
    for e, t in zip(e_rows, t_rows):
        if t["inflation_factor"] is not None:
            assert t["inflation_factor"] == pytest.approx(e["inflation_factor"], rel=tol["factor"]), e["seq_id"]
        near_threshold = abs(e["inflation_factor"] / FlagRule().min_inflation_factor - 1) < tol["factor"]
        assert t["effect_flagged"] == e["effect_flagged"] or near_threshold, e["seq_id"]
        if precision == "fp32" and e["partner_pvalue"] is not None:
            assert t["partner_pvalue"] == pytest.approx(e["partner_pvalue"], rel=1e-4), e["seq_id"]
    e_res = {(r["seq_id"], r["pos"]): r for r in exact.residues.to_pylist()}
    scored = [r for r in triage.residues.to_pylist() if r["logp_masked"] is not None]
    assert scored
    for r in scored:
        want = e_res[(r["seq_id"], r["pos"])]
        assert r["logp_masked"] == pytest.approx(want["logp_masked"], abs=tol["logp"])
        assert (r["logp_ablated"] is None) == (want["logp_ablated"] is None)
        if r["logp_ablated"] is not None:
            assert r["logp_ablated"] == pytest.approx(want["logp_ablated"], abs=tol["logp"])
