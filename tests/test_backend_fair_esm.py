"""The fair-esm backend is today's native path: bit-identical scores through BackendScorer."""

import numpy as np
import pytest
import torch

from backend_models import one_torch_thread  # noqa: F401
from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.backends.fair_esm import FairEsmBackend
from plmscreen.screening.model.backends.resolve import load_backend, resolve_model
from plmscreen.screening.model.backends.scorer import BackendScorer
from plmscreen.screening.score.scorer import Probe, Scorer, ScoringOptions

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQ",
    "MXBZUOJKLV",
]


def partner_maps():
    partners = [[()] * len(s) for s in SEQS]
    partners[1] = [tuple(j for j in (i - 20, i + 20) if 0 <= j < len(SEQS[1])) for i in range(len(SEQS[1]))]
    return partners


def assert_identical(a, b):
    for x, y in zip(a, b):
        for field in ("logp_masked", "logp_unmasked", "logp_ablated"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        assert x.windowed == y.windowed and x.forward_rows == y.forward_rows


@pytest.fixture(scope="module")
def backend(tiny_model):
    return FairEsmBackend(tiny_model)


@pytest.mark.parametrize("options", [ScoringOptions(), ScoringOptions(batch_tokens=150),
                                     ScoringOptions(engine="fair-esm", batch_tokens=300),
                                     ScoringOptions(masks_per_copy=3)])
def test_scores_are_bit_identical_to_todays_scorer(tiny_model, backend, options):
    partners = partner_maps()
    assert_identical(BackendScorer(backend, options).score(SEQS, partners), Scorer(tiny_model, options).score(SEQS, partners))


def test_windowed_scores_and_probes_are_bit_identical(tiny_model, backend):
    partners = [[(i + 15,) if i + 15 < 33 else () for i in range(33)]]
    tiny_model.max_residues = 12
    try:
        assert backend.max_residues == 12  # the window follows the loaded model
        new = BackendScorer(backend, ScoringOptions(batch_tokens=64)).score(SEQS[:1], partners)
        old = Scorer(tiny_model, ScoringOptions(batch_tokens=64)).score(SEQS[:1], partners)
        probes = [Probe(0, (3, 9, 20), (3,)), Probe(0, (), (30,))]
        new_rows = BackendScorer(backend).probe(SEQS[:1], probes)
        old_rows = Scorer(tiny_model).probe(SEQS[:1], probes)
    finally:
        tiny_model.max_residues = 1022
    assert new[0].windowed
    assert_identical(new, old)
    for n, o in zip(new_rows, old_rows):
        np.testing.assert_array_equal(n, o)


def test_residue_token_map_is_fair_esm_alphabet(tiny_model, backend):
    a = tiny_model.alphabet
    tokens, positions = backend.tokenize("MKUX")
    _, _, expected = a.get_batch_converter()([("p", "MKUX")])
    assert tokens.tolist() == expected[0].tolist()
    assert positions.tolist() == [1, 2, 3, 4] and tokens[positions].tolist() == [a.get_idx(c) for c in "MKUX"]
    # J has no ESM token: fair-esm's batch converter raises KeyError, plmscreen scores it as <unk>.
    assert backend.token_index("J") == a.unk_idx == a.get_idx("J")
    assert backend.vocab_size == len(a.all_toks) and bool(backend.normalised.all())
    with pytest.raises(ValueError, match=r"\['1'\]"):
        backend.encode("MK1")


def test_residue_normalisation_renormalises_over_residue_tokens(tiny_model):
    """normalise="residues" equals a log-softmax over the residue tokens' logits of fair-esm's forward."""
    backend = FairEsmBackend(tiny_model, normalise="residues")
    a = tiny_model.alphabet
    seq = SEQS[0]
    got = BackendScorer(backend).score([seq])[0].logp_masked
    cols = sorted({a.get_idx(c) for c in "ACDEFGHIKLMNPQRSTVWYXBZUO"} | {a.unk_idx})
    expected = []
    for i in range(len(seq)):
        tokens = torch.tensor([[a.cls_idx] + [a.get_idx(c) for c in seq] + [a.eos_idx]])
        tokens[0, i + 1] = a.mask_idx
        with torch.no_grad():
            logits = tiny_model.model(tokens)["logits"][0, i + 1]
        expected.append(torch.log_softmax(logits[cols], -1)[cols.index(a.get_idx(seq[i]))].item())
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    full = BackendScorer(FairEsmBackend(tiny_model)).score([seq])[0].logp_masked
    assert np.all(got >= full - 1e-6) and np.max(got - full) > 1e-3  # less mass to share: higher, visibly


def test_resolution_of_fair_esm_models(tiny_checkpoint, monkeypatch):
    assert resolve_model("plmscreen-mini")[0] == "fair-esm"
    assert resolve_model("esm2_t6_8M_UR50D")[0] == "fair-esm"
    assert resolve_model(str(tiny_checkpoint))[0] == "fair-esm"
    loaded = load_backend(str(tiny_checkpoint), device="cpu")
    assert isinstance(loaded, Backend) and loaded.family == "fair-esm"
    described = loaded.describe()
    assert described["model_family"] == "fair-esm" and described["num_layers"] == 2
    assert described["checkpoint_sha256"] == loaded.loaded.checkpoint_sha256
