"""The bundled plmscreen-mini loads through the public path and behaves as a positive control."""

import hashlib

import numpy as np

from plmscreen.screening.model.checkpoints import BUNDLED_MODELS, load_model
from plmscreen.screening.score.scorer import Scorer


def test_checksum_file_matches_the_checkpoint():
    path = BUNDLED_MODELS["plmscreen-mini"]
    recorded = (path.parent / (path.name + ".sha256")).read_text().split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded
    assert path.stat().st_size < 10 * 2**20
    loaded = load_model("plmscreen-mini", device="cpu")
    assert loaded.checkpoint_sha256 == recorded and loaded.model.num_layers == 3


def test_doubling_inflates_and_partner_masking_restores():
    """50-residue prefixes of E. coli proteins held out of training (md5(accession) % 10 == 0)."""
    prefixes = [
        "MAGWFELSKSSDNQFRFVLKAGNGETILTSELYTSKTSAEKGIASVRSNS",  # P76402
        "MKKIIETQRAPGAIGPYVQGVDLGSMVFTSGQIPVCPQTGEIPADVQDQA",  # P0AGL2
        "MLYNIPCRIYILSTLSLCISGIVSTATATSSETKISNEETLVVTTNRSAS",  # P76356
    ]
    scorer = Scorer(load_model("plmscreen-mini", device="cpu"))
    for x in prefixes:
        n = len(x)
        partners = [(i + n,) for i in range(n)] + [(i,) for i in range(n)]
        single, doubled = scorer.score([x, x + x], [[()] * n, partners])
        pppl = lambda logp: float(np.exp(-np.mean(logp)))  # noqa: E731
        assert pppl(doubled.logp_masked) < 0.75 * pppl(single.logp_masked), "the look-up inflates a doubled protein"
        assert pppl(doubled.logp_ablated) > pppl(single.logp_masked) * 0.9, "co-masking the partner restores it"
