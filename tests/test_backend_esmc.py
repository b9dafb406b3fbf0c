"""ESM C through transformers' EsmcForMaskedLM, on a tiny random-config checkpoint: tokenisation,
the 64-wide head normalised over real residue tokens, windows and partner ablation, all against a
naive one-mask-per-forward loop over transformers' own forward."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="plmscreen[hf] not installed")
pytest.importorskip("transformers.models.esmc", reason="this transformers has no ESM C")

from backend_models import RESIDUES, one_torch_thread, write_esmc  # noqa: E402, F401
from plmscreen.screening.model.backends.esmc import EsmcBackend  # noqa: E402
from plmscreen.screening.model.backends.resolve import load_backend, model_window, resolve_model  # noqa: E402
from plmscreen.screening.model.backends.scorer import BackendScorer  # noqa: E402
from plmscreen.screening.score.scorer import Probe, ScoringOptions, window_start  # noqa: E402

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQ",
    "MXBZUOJKLV",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def esmc_dir(tmp_path_factory):
    return write_esmc(tmp_path_factory.mktemp("esmc") / "esmc_tiny")


@pytest.fixture(scope="module")
def esmc(esmc_dir):
    return EsmcBackend.load(esmc_dir, device="cpu")


@pytest.fixture(scope="module")
def tokenizer(esmc_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(esmc_dir)


def residue_columns(tokenizer):
    vocab = tokenizer.get_vocab()
    return sorted({vocab.get(c, tokenizer.unk_token_id) for c in "ACDEFGHIKLMNPQRSTVWYXBZUOJ"})


def naive(model, tokenizer, seq, masked, read, columns):
    """log P(x_read | ``masked`` masked), batch 1, stock forward, softmax over ``columns`` only."""
    ids = torch.tensor([tokenizer(seq)["input_ids"]])
    true = int(ids[0, read + 1])
    for i in masked:
        ids[0, i + 1] = tokenizer.mask_token_id
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, read + 1]
    return torch.log_softmax(logits[columns], -1)[columns.index(true)].item()


def test_tokenisation_quirks(esmc, tokenizer):
    tokens, positions = esmc.tokenize(RESIDUES)
    assert tokens.tolist() == tokenizer(RESIDUES)["input_ids"]
    assert tokens[0] == tokenizer.cls_token_id == 0 and tokens[-1] == tokenizer.eos_token_id == 2
    assert positions.tolist() == list(range(1, len(RESIDUES) + 1))
    assert esmc.token_index("J") == tokenizer.unk_token_id == 3  # ESM C has no J
    assert esmc.mask == 32 and esmc.pad == 1
    assert esmc.vocab_size == 64 and len(esmc.vocab) == 33
    # The tokenizer turns lower case and unknown letters into <unk> silently; the backend refuses
    # them (FASTA input is upper-cased and validated before it gets here).
    assert tokenizer("mk")["input_ids"] == [0, 3, 3, 2]
    with pytest.raises(ValueError):
        esmc.encode("mk")
    # "|" (chain break) and "-"/"." (gaps) are tokens, but not residues.
    with pytest.raises(ValueError):
        esmc.encode("MK|LV")
    assert sorted(esmc.describe()["normalised_tokens"]) == sorted(set("ACDEFGHIKLMNPQRSTVWYXBZUO") | {"<unk>"})


PARTNERS = [[()] * len(s) for s in SEQS]
PARTNERS[1] = [tuple(j for j in (i - 20, i + 20) if 0 <= j < len(SEQS[1])) for i in range(len(SEQS[1]))]


@pytest.fixture(scope="module")
def expected(esmc, tokenizer):
    """The naive loop's numbers, computed once for both engines."""
    cols = residue_columns(tokenizer)
    model = esmc.model
    out = []
    for seq, mates in zip(SEQS, PARTNERS):
        ids = torch.tensor([tokenizer(seq)["input_ids"]])
        with torch.no_grad():  # unmasked: every residue from one forward
            logp = torch.log_softmax(model(input_ids=ids).logits[0, 1:-1][:, cols], -1)
        unmasked = [logp[i, cols.index(int(ids[0, i + 1]))].item() for i in range(len(seq))]
        masked = [naive(model, tokenizer, seq, [i], i, cols) for i in range(len(seq))]
        ablated = [naive(model, tokenizer, seq, [i, *mates[i]], i, cols) if mates[i] else np.nan for i in range(len(seq))]
        out.append((masked, unmasked, ablated))
    return out


@pytest.mark.parametrize("engine", ["plmscreen", "fair-esm"])
def test_scores_match_a_naive_loop(esmc, expected, engine):
    got = BackendScorer(esmc, ScoringOptions(engine=engine, batch_tokens=200)).score(SEQS, PARTNERS)
    for res, (masked, unmasked, ablated) in zip(got, expected):
        np.testing.assert_allclose(res.logp_masked, masked, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.logp_unmasked, unmasked, atol=TOL, rtol=0)
        np.testing.assert_allclose(res.logp_ablated, ablated, atol=TOL, rtol=0)  # NaN where no partner, on both
    assert np.isfinite(got[1].logp_ablated).sum() == 28


def test_padding_slots_of_the_64_wide_head_are_not_in_the_normaliser(esmc, tokenizer):
    seq = SEQS[0]
    got = BackendScorer(esmc).score([seq])[0].logp_masked
    all64 = [naive(esmc.model, tokenizer, seq, [i], i, list(range(64))) for i in range(len(seq))]
    assert np.min(got - np.array(all64)) > 0.5  # the biased slots would take most of the mass
    vocabulary = EsmcBackend(esmc.model, tokenizer, name="v", directory=esmc.checkpoint_path, sha256="x",
                             device=esmc.device, normalise="vocabulary")
    got33 = BackendScorer(vocabulary).score([seq])[0].logp_masked
    np.testing.assert_allclose(got33, [naive(esmc.model, tokenizer, seq, [i], i, list(range(33))) for i in range(len(seq))],
                               atol=TOL, rtol=0)
    rows = BackendScorer(esmc).probe([seq], [Probe(0, (4,), (4,))])[0]
    assert rows.shape == (1, 64) and np.isneginf(rows[0, 33:]).all() and np.isneginf(rows[0, [0, 1, 2, 32]]).all()
    assert np.exp(rows[0][np.isfinite(rows[0])]).sum() == pytest.approx(1.0, abs=1e-6)


def test_long_sequences_are_scored_in_centred_windows(esmc, tokenizer):
    window, seq = 12, SEQS[0]
    partners = [(i + 15,) if i + 15 < 30 else () for i in range(len(seq))]
    esmc.max_residues = window
    try:
        res = BackendScorer(esmc, ScoringOptions(batch_tokens=64)).score([seq], [partners])[0]
    finally:
        esmc.max_residues = 254
    cols = residue_columns(tokenizer)
    assert res.windowed
    for i in range(len(seq)):
        start = window_start(i, len(seq), window)
        sub = seq[start : start + window]
        assert res.logp_masked[i] == pytest.approx(naive(esmc.model, tokenizer, sub, [i - start], i - start, cols), abs=TOL)
        if partners[i]:
            in_window = [j - start for j in (i, *partners[i]) if start <= j < start + window]
            assert res.logp_ablated[i] == pytest.approx(naive(esmc.model, tokenizer, sub, in_window, i - start, cols),
                                                        abs=TOL)
        starts = sorted(set(range(0, len(seq) - window, window // 2)) | {len(seq) - window})
        options = [naive(esmc.model, tokenizer, seq[s : s + window], [], i - s, cols) for s in starts if s <= i < s + window]
        assert min(abs(res.logp_unmasked[i] - o) for o in options) < TOL


def test_resolution_and_identity(esmc_dir, esmc):
    import hashlib

    assert resolve_model(str(esmc_dir))[0] == "hf-esmc"
    backend = load_backend(str(esmc_dir), device="cpu")
    assert backend.family == "hf-esmc" and backend.max_residues == 254  # max_position_embeddings - BOS - EOS
    assert model_window(str(esmc_dir)) == 254  # known before any weight is read
    assert backend.checkpoint_sha256 == hashlib.sha256((esmc_dir / "model.safetensors").read_bytes()).hexdigest()
    assert backend.describe()["normalise"] == "residues"
