"""The bundled plmscreen-mini loads through the public path and behaves as a positive control: it
copies from the partner copy of a doubled WHOLE protein, and co-masking the partner, not a random
position, takes that away (issue 11's targets, on proteins held out of its training)."""

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from plmscreen.cli.main import app
from plmscreen.screening.experiments.settings import DEFAULT_FASTA
from plmscreen.screening.input import STANDARD_ALPHABET, read_fasta
from plmscreen.screening.model.checkpoints import BUNDLED_MODELS, load_model
from plmscreen.screening.score.scorer import Scorer


def test_checksum_file_matches_the_checkpoint():
    path = BUNDLED_MODELS["plmscreen-mini"]
    recorded = (path.parent / (path.name + ".sha256")).read_text().split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded
    assert path.stat().st_size < 10 * 2**20
    loaded = load_model("plmscreen-mini", device="cpu")
    assert loaded.checkpoint_sha256 == recorded and loaded.model.num_layers == 4


# Whole E. coli proteins of 110-130 residues held out of training (md5(accession) % 10 == 0).
HELD_OUT = {
    "P76402": "MAGWFELSKSSDNQFRFVLKAGNGETILTSELYTSKTSAEKGIASVRSNSPQEERYEKKTASNGKFYFNLKAANHQIIGSSQMYATAQSRETGIASVKANGTSQTVKDNT",
    "P0AGL2": "MKKIIETQRAPGAIGPYVQGVDLGSMVFTSGQIPVCPQTGEIPADVQDQARLSLENVKAIVVAAGLSVGDIIKMTVFITDLNDFATINEVYKQFFDEHQATYPTRSCVQVARLPKDVKLEIEAIAVRSA",
    "P76356": "MLYNIPCRIYILSTLSLCISGIVSTATATSSETKISNEETLVVTTNRSASNLWESPATIQVIDQQTLQNSTNASIADNLQDIPGVEITDNSLAGRKQIRIRGWICPYISRHLLSLNPLQARCRRYSRGER",
}


def test_doubled_held_out_proteins_collapse_and_only_partner_masking_restores():
    scorer = Scorer(load_model("plmscreen-mini", device="cpu"))

    def pppl(logp) -> float:
        return float(np.exp(-np.mean(logp)))

    ratios, restored, null_cost = [], [], []
    for accession, x in HELD_OUT.items():
        x = x[:130]
        n = len(x)
        partners = [(i + n,) for i in range(n)] + [(i,) for i in range(n)]
        single, doubled = scorer.score([x, x + x], [[()] * n, partners])
        # The same number of extra masks at random non-partner positions, through the same code path.
        rng = np.random.default_rng(0)
        decoys = [(int((i + rng.integers(5, n - 5)) % (2 * n)),) for i in range(2 * n)]
        decoys = [d if d[0] not in (i, (i + n) % (2 * n)) else ((d[0] + 7) % (2 * n),) for i, d in enumerate(decoys)]
        _, random_comasked = scorer.score([x, x + x], [[()] * n, decoys])
        drop = np.log(pppl(single.logp_masked)) - np.log(pppl(doubled.logp_masked))
        ratios.append(pppl(doubled.logp_masked) / pppl(single.logp_masked))
        restored.append((np.log(pppl(doubled.logp_ablated)) - np.log(pppl(doubled.logp_masked))) / drop)
        null_cost.append((np.log(pppl(random_comasked.logp_ablated)) - np.log(pppl(doubled.logp_masked)))
                         / (np.log(pppl(doubled.logp_ablated)) - np.log(pppl(doubled.logp_masked))))
    # Issue 11's targets: PPPL(x||x)/PPPL(x) <= 0.5; partner co-masking restores >= 80% of the
    # log-PPPL drop; as many random co-masks cost < 10% of what the partners cost.
    assert max(ratios) <= 0.5, ratios
    assert min(restored) >= 0.8, restored
    assert max(null_cost) < 0.1, null_cost


def _packaged_held_out_proteins() -> dict[str, str]:
    """seq_id -> sequence of the 24 E. coli proteins packaged for `plmscreen validate`, each
    checked to be held out of the control's training (md5(accession) % 10 == 0)."""
    records = {r.seq_id: r.sequence for r in read_fasta(DEFAULT_FASTA).records}
    assert all(int(hashlib.md5(n.split("|")[1].encode()).hexdigest(), 16) % 10 == 0 for n in records)  # held out
    return records


@pytest.mark.slow
def test_default_rule_flags_doubled_held_out_proteins(tmp_path):
    """Issue 11's done-when: with the default rule, >= 90% of doubled held-out proteins are flagged.
    The 24 E. coli proteins packaged for `plmscreen validate` are all held out of the control's
    training; each one's first 100 residues are written twice and screened the way a user screens
    (the CLI, default flag rule). v5 and v4 flag 24 of 24 (v3 flagged 15: its factors of 1.03-1.09
    did not pass the partner test); a control that stops copying fails here."""
    records = _packaged_held_out_proteins()
    assert len(records) == 24
    fasta = tmp_path / "doubled.fasta"
    fasta.write_text("".join(f">doubled_{n.split('|')[1]}\n{s[:100] * 2}\n" for n, s in records.items()))
    out = tmp_path / "store"
    result = CliRunner().invoke(app, ["screen", str(fasta), "--in-process", "--no-progress", "--out", str(out),
                                      "--model", "plmscreen-mini", "--no-diagnostics"])  # the flag needs no copy-following index
    assert result.exit_code == 0, result.output
    [run_dir] = (out / "runs").iterdir()
    verdicts = pq.read_table(run_dir / "verdicts.parquet").to_pylist()
    assert len(verdicts) == 24
    flagged = [v["seq_id"] for v in verdicts if v["flagged"]]
    assert len(flagged) >= 22, sorted(v["seq_id"] for v in verdicts if not v["flagged"])  # >= 90%


def test_a_70_percent_copy_inserted_far_away_inflates_its_partners():
    """Issue 11's T3, on held-out proteins: a 50-residue segment copied at 70% identity and inserted
    100-400 residues after its start raises its partners' log-probability by >= 0.2 nats per
    residue (masked alone vs masked with its partner; both copies). v4 gave 0.008 here (it copied
    only adjacent repeats); v5's held-out evaluation median is 0.52 (16 proteins)."""
    records = _packaged_held_out_proteins()
    scorer = Scorer(load_model("plmscreen-mini", device="cpu"))
    rng = np.random.default_rng(3)
    inflations = []
    for name in sorted(records)[:8]:
        x = records[name]
        offset = int(rng.integers(100, min(400, len(x) - 50) + 1))  # copy start - segment start
        start = int(rng.integers(0, len(x) - offset + 1))
        segment = list(x[start : start + 50])
        for i in rng.choice(50, size=15, replace=False):  # exactly 70% identity
            segment[i] = rng.choice([a for a in STANDARD_ALPHABET if a != segment[i]])
        insert_at = start + offset
        y = x[:insert_at] + "".join(segment) + x[insert_at:]
        first, second = range(start, start + 50), range(insert_at, insert_at + 50)
        partner = {**dict(zip(first, second)), **dict(zip(second, first))}
        positions = list(first) + list(second)
        [scores] = scorer.score([y], [[(partner[i],) if i in partner else () for i in range(len(y))]],
                                positions=[positions])
        inflation = np.asarray(scores.logp_masked)[positions] - np.asarray(scores.logp_ablated)[positions]
        inflations.append(float(inflation.mean()))
    assert np.median(inflations) >= 0.2, inflations
    assert min(inflations) > 0.05, inflations  # every protein copies, not a few outliers carrying the median
