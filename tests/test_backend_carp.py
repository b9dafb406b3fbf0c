"""CARP (ByteNet CNN masked LM from sequence-models) on a tiny random checkpoint in the released
carp_*.pt layout: tokens without BOS/EOS, residue normalisation, windows and partner ablation,
against a naive one-mask-per-forward loop over sequence-models' own CARP wrapper and collater."""

import hashlib

import numpy as np
import pytest
import torch

pytest.importorskip("sequence_models", reason="plmscreen[carp] not installed")

from backend_models import RESIDUES, one_torch_thread, write_carp  # noqa: E402, F401
from plmscreen.screening.model.backends.carp import CarpBackend  # noqa: E402
from plmscreen.screening.model.backends.resolve import load_backend, model_window, resolve_model  # noqa: E402
from plmscreen.screening.model.backends.scorer import BackendScorer  # noqa: E402
from plmscreen.screening.model.checkpoints import ModelLoadError  # noqa: E402
from plmscreen.screening.score.scorer import Probe, ScoringOptions, window_start  # noqa: E402

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQ",
    "MXBZUOJKLV",
]
PARTNERS = [[()] * len(s) for s in SEQS]
PARTNERS[1] = [tuple(j for j in (i - 20, i + 20) if 0 <= j < len(SEQS[1])) for i in range(len(SEQS[1]))]
TOL = 1e-4


@pytest.fixture(scope="module")
def carp_path(tmp_path_factory):
    return write_carp(tmp_path_factory.mktemp("carp") / "carp_tiny_test.pt")


@pytest.fixture(scope="module")
def reference(carp_path):
    """sequence-models' own loader, collater and alphabet, independent of plmscreen."""
    from sequence_models.constants import MASK, PROTEIN_ALPHABET
    from sequence_models.pretrained import load_model_and_alphabet

    model, collater = load_model_and_alphabet(str(carp_path))
    columns = sorted(PROTEIN_ALPHABET.index(c) for c in "ACDEFGHIKLMNPQRSTVWYBZXJOU")
    return model.eval(), collater, PROTEIN_ALPHABET.index(MASK), columns


@pytest.fixture(scope="module")
def carp(carp_path):
    return CarpBackend.load(str(carp_path), device="cpu")


def naive(reference, seq, masked, read):
    model, collater, mask, cols = reference
    ids = collater([[seq]])[0]
    true = int(ids[0, read])
    for i in masked:
        ids[0, i] = mask
    with torch.no_grad():
        logits = model(ids, logits=True)["logits"][0, read]
    return torch.log_softmax(logits[cols], -1)[cols.index(true)].item()


@pytest.fixture(scope="module")
def expected(reference):
    out = []
    for seq, mates in zip(SEQS, PARTNERS):
        masked = [naive(reference, seq, [i], i) for i in range(len(seq))]
        unmasked = [naive(reference, seq, [], i) for i in range(len(seq))]
        ablated = [naive(reference, seq, [i, *mates[i]], i) if mates[i] else np.nan for i in range(len(seq))]
        out.append((masked, unmasked, ablated))
    return out


def test_tokens_are_residues_only(carp, reference):
    _, collater, mask, _ = reference
    tokens, positions = carp.tokenize(RESIDUES)
    assert tokens.tolist() == collater([[RESIDUES]])[0][0].tolist()  # no BOS/EOS; J is a real token
    assert positions.tolist() == list(range(len(RESIDUES)))
    assert carp.bos is None and carp.eos is None and carp.mask == mask and carp.vocab[carp.pad] == "-"
    assert len(set(carp.residue_token.values())) == 26 and int(carp.normalised.sum()) == 26
    batch = carp.assemble([tokens[:3], tokens[:5]], [[1], []])
    assert batch.tolist()[0] == [tokens[0], mask, tokens[2], carp.pad, carp.pad]


@pytest.mark.parametrize("engine", ["plmscreen", "fair-esm"])
def test_scores_match_a_naive_loop(carp, expected, engine):
    got = BackendScorer(carp, ScoringOptions(engine=engine, batch_tokens=150)).score(SEQS, PARTNERS)
    for res, (masked, unmasked, ablated) in zip(got, expected):
        np.testing.assert_allclose(res.logp_masked, masked, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.logp_unmasked, unmasked, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.logp_ablated, ablated, atol=TOL, rtol=0)
    assert np.isfinite(got[1].logp_ablated).sum() == 28
    # Padding is masked out of the convolutions: a sequence alone and in a padded batch agree, to
    # float32 rounding (other batch shapes take other convolution kernels: 1.05e-5 at logp -12.2 on
    # an AMD EPYC). Padding leaking into a convolution moves these numbers by far more than 1e-4.
    alone = BackendScorer(carp, ScoringOptions(engine=engine, batch_tokens=1)).score(SEQS[2:])[0]
    np.testing.assert_allclose(alone.logp_masked, got[2].logp_masked, atol=TOL, rtol=0)


def test_off_by_one_token_map_would_be_caught(reference, expected):
    """Reading residue i at token i + 1 (an ESM-style BOS offset) gives other numbers."""
    seq = SEQS[0]
    shifted = [naive(reference, seq, [i], i + 1) for i in range(len(seq) - 1)]
    assert np.max(np.abs(np.array(shifted) - np.array(expected[0][0][1:]))) > 1e-2


def test_maximum_length_uses_the_window_policy(carp, reference):
    assert carp.max_residues == 1024
    window, seq = 12, SEQS[0]
    partners = [(i + 15,) if i + 15 < 30 else () for i in range(len(seq))]
    carp.max_residues = window
    try:
        res = BackendScorer(carp, ScoringOptions(batch_tokens=64)).score([seq], [partners])[0]
        rows = BackendScorer(carp).probe([seq], [Probe(0, (20,), (20,))])
    finally:
        carp.max_residues = 1024
    assert res.windowed
    for i in range(len(seq)):
        start = window_start(i, len(seq), window)
        sub = seq[start : start + window]
        assert res.logp_masked[i] == pytest.approx(naive(reference, sub, [i - start], i - start), abs=TOL)
        if partners[i]:
            in_window = [j - start for j in (i, *partners[i]) if start <= j < start + window]
            assert res.logp_ablated[i] == pytest.approx(naive(reference, sub, in_window, i - start), abs=TOL)
    assert rows[0][0, carp.token_index(seq[20])] == pytest.approx(res.logp_masked[20], abs=1e-5)


def test_resolution_identity_and_errors(tmp_path, carp_path, carp, monkeypatch):
    assert resolve_model(str(carp_path))[0] == "carp"
    assert resolve_model("carp_640M")[0] == "carp"
    assert model_window("carp_640M") == model_window(str(carp_path)) == carp.max_residues == 1024
    backend = load_backend(str(carp_path), device="cpu")
    assert backend.family == "carp"
    assert backend.checkpoint_sha256 == hashlib.sha256(carp_path.read_bytes()).hexdigest()
    monkeypatch.setenv("PLMSCREEN_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_backend("carp_38M", weights_dir=tmp_path, device="cpu")
    assert str(tmp_path / "carp_38M.pt") in str(err.value) and "download disabled" in str(err.value)
    data = torch.load(carp_path, weights_only=True)
    data["d_model"] = 64  # fields no longer match the weights
    torch.save(data, tmp_path / "carp_bad.pt")
    with pytest.raises(ModelLoadError, match="does not match the CARP architecture"):
        CarpBackend.load(str(tmp_path / "carp_bad.pt"), device="cpu")


def test_diagnostics_run_unchanged_on_a_backend_without_bos(carp, reference):
    """residue_diagnostics (probes, token_index) through BackendScorer: the null co-masks and the
    copy-following probability match the naive loop on CARP, whose residue i is token i."""
    from plmscreen.screening.score.diagnostics import residue_diagnostics

    seq, mates = SEQS[1], PARTNERS[1]
    diag = residue_diagnostics(BackendScorer(carp), [seq], [mates], null_draws=2)[0]
    model, collater, mask, cols = reference
    assert np.isfinite(diag.copy_following).sum() == 28
    for i in (0, 5, 21):
        null = [naive(reference, seq, list(masked), i) for masked in diag.null_masks[i]]
        assert diag.logp_random_comask[i] == pytest.approx(np.mean(null), abs=TOL)
        b = diag.substitute[i]
        planted = "".join(b if j in mates[i] else c for j, c in enumerate(seq))

        def p(sequence, masked):
            ids = collater([[sequence]])[0]
            ids[0, list(masked)] = mask
            with torch.no_grad():
                logits = model(ids, logits=True)["logits"][0, i]
            return torch.softmax(logits[cols], -1)[cols.index(carp.token_index(b))].item()

        expected = p(planted, [i]) - p(seq, [i, *mates[i]])
        assert diag.copy_following[i] == pytest.approx(expected, abs=TOL)
