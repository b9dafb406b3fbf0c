"""ESM-2 through Hugging Face transformers: a tiny fair-esm checkpoint converted to HF format gives
the same per-residue scores as the native path, windowed and partner-ablated alike."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="plmscreen[hf] not installed")

from backend_models import RESIDUES, one_torch_thread, write_hf_esm  # noqa: E402, F401
from plmscreen.screening.model.backends.hf_esm import HfEsmBackend  # noqa: E402
from plmscreen.screening.model.backends.resolve import load_backend, model_window, resolve_model  # noqa: E402
from plmscreen.screening.model.backends.scorer import BackendScorer  # noqa: E402
from plmscreen.screening.model.checkpoints import ModelLoadError  # noqa: E402
from plmscreen.screening.score.scorer import Probe, Scorer, ScoringOptions  # noqa: E402

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
    "MSTNPKPQRKTKRNTNRRPQDVKFPGG",
    "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQ",
    "MXBZUOJKLV",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_checkpoint):
    return write_hf_esm(tmp_path_factory.mktemp("hf") / "esm2_t2_tiny_hf", tiny_checkpoint)


@pytest.fixture(scope="module")
def hf(hf_dir):
    return HfEsmBackend.load(hf_dir, device="cpu")


def partner_maps(seqs):
    partners = [[()] * len(s) for s in seqs]
    partners[2] = [tuple(j for j in (i - 20, i + 20) if 0 <= j < len(seqs[2])) for i in range(len(seqs[2]))]
    return partners


def assert_close(got, expected, tol=TOL):
    for g, e in zip(got, expected):
        for field in ("logp_masked", "logp_unmasked", "logp_ablated"):
            a, b = getattr(g, field), getattr(e, field)
            assert np.array_equal(np.isnan(a), np.isnan(b)), field
            np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], atol=tol, rtol=0, err_msg=field)
        assert g.windowed == e.windowed


def test_converted_checkpoint_is_a_plain_hf_directory(hf_dir, hf):
    from transformers import AutoModelForMaskedLM

    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.txt"} <= names and not any(n.endswith(".bin") for n in names)
    assert hf.checkpoint_sha256 == hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()
    assert type(AutoModelForMaskedLM.from_pretrained(hf_dir)).__name__ == "EsmForMaskedLM"
    assert hf.model.config.token_dropout and hf.model.config.position_embedding_type == "rotary"
    assert hf.fast and hf.max_residues == 1022 == model_window(str(hf_dir)) and hf.vocab_size == 33


def test_tokenisation_matches_the_hf_tokenizer(hf_dir, hf, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokens, positions = hf.tokenize(RESIDUES)
    assert tokens.tolist() == tokenizer(RESIDUES)["input_ids"]  # <cls> residues <eos>, J -> <unk>
    assert tokens[positions].tolist() == [tiny_model.alphabet.get_idx(c) for c in RESIDUES]
    assert hf.token_index("J") == tokenizer.unk_token_id
    # Same ids as fair-esm's alphabet, so rows are comparable column by column.
    assert list(hf.vocab) == list(tiny_model.alphabet.all_toks)


def test_hf_carries_fair_esms_token_dropout_rescaling(hf, tiny_model):
    """HF's embeddings zero masked tokens and rescale by (1 - 0.12) / (1 - masks/non-padding tokens),
    as fair-esm does; padding only stays out of the ratio when the attention mask is passed."""
    a = tiny_model.alphabet
    model = hf.model
    rows = [[a.cls_idx] + [a.get_idx(c) for c in SEQS[0]] + [a.eos_idx],
            [a.cls_idx] + [a.get_idx(c) for c in SEQS[1]] + [a.eos_idx]]
    tokens = torch.full((2, len(rows[0])), a.padding_idx)
    for r, row in enumerate(rows):
        tokens[r, : len(row)] = torch.tensor(row)
    tokens[0, [3, 7, 8, 20]] = a.mask_idx
    tokens[1, [5]] = a.mask_idx
    attention = tokens.ne(a.padding_idx).long()
    with torch.no_grad():
        emb = model.esm.embeddings(input_ids=tokens, attention_mask=attention)
        raw = model.esm.embeddings.word_embeddings(tokens)
    for r, n_masks in ((0, 4), (1, 1)):
        n_tokens = int(attention[r].sum())
        expected = raw[r] * (1 - 0.15 * 0.8) / (1 - n_masks / n_tokens)
        expected[tokens[r] == a.mask_idx] = 0
        expected[attention[r] == 0] = 0
        torch.testing.assert_close(emb[r], expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        ref = tiny_model.model(tokens)["logits"]
        got = model(input_ids=tokens, attention_mask=attention).logits
        no_attention = model(input_ids=tokens).logits
    keep = attention.bool()
    assert float((ref - got).abs()[keep].max()) < 1e-5
    # Without the attention mask, the padded row's ratio divides by the padded length: other numbers.
    assert float((ref[1] - no_attention[1]).abs()[keep[1]].max()) > 1e-3
    # And the rescaling is real: turning it off moves every position.
    model.config.token_dropout = False
    model.esm.embeddings.token_dropout = False
    try:
        with torch.no_grad():
            off = model(input_ids=tokens, attention_mask=attention).logits
    finally:
        model.config.token_dropout = True
        model.esm.embeddings.token_dropout = True
    assert float((ref[0] - off[0]).abs()[keep[0]].max()) > 1e-3


@pytest.mark.parametrize("engine", ["plmscreen", "fair-esm"])
def test_per_residue_scores_match_the_native_path(hf, tiny_model, engine):
    """Masked, unmasked and partner-ablated scores, batched with padding, through the HF fast path
    and through HF's stock forward, against today's fair-esm scorer."""
    partners = partner_maps(SEQS)
    native = Scorer(tiny_model, ScoringOptions()).score(SEQS, partners)
    got = BackendScorer(hf, ScoringOptions(engine=engine, batch_tokens=200)).score(SEQS, partners)
    assert_close(got, native)
    assert np.isfinite(got[2].logp_ablated).sum() == 28


def test_windowing_past_1022_residues_matches_the_native_path(hf, tiny_model):
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=1100))
    positions = [0, 1, 510, 600, 1021, 1050, 1099]
    partners = [()] * len(seq)
    for i in positions:
        partners[i] = tuple(j for j in (i - 540, i + 540) if 0 <= j < len(seq))
    native = Scorer(tiny_model, ScoringOptions(batch_tokens=4096)).score([seq], [partners], positions=[positions])[0]
    got = BackendScorer(hf, ScoringOptions(batch_tokens=4096)).score([seq], [partners], positions=[positions])[0]
    assert got.windowed and native.windowed
    assert_close([got], [native])
    assert np.isfinite(got.logp_masked).sum() == len(positions) and np.isfinite(got.logp_unmasked).all()
    # Independently: residue 1050 masked in the window [78, 1100), through HF's stock forward.
    model, tok = hf.model, hf.residue_token
    window = seq[78:]
    ids = torch.tensor([[hf.bos] + [tok[c] for c in window] + [hf.eos]])
    ids[0, 1050 - 78 + 1] = hf.mask
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, 1050 - 78 + 1], -1)
    assert got.logp_masked[1050] == pytest.approx(logp[tok[seq[1050]]].item(), abs=TOL)


def test_probe_rows_match_the_native_path(hf, tiny_model):
    probes = [Probe(0, (3, 9, 20), (3, 20)), Probe(2, (0, 20), (0,)), Probe(1, (), (0, 5))]
    native = Scorer(tiny_model).probe(SEQS, probes)
    got = BackendScorer(hf).probe(SEQS, probes)
    for g, n in zip(got, native):
        assert g.shape == n.shape == (g.shape[0], 33)
        np.testing.assert_allclose(g, n, atol=TOL, rtol=0)


def test_hub_id_resolves_from_the_local_cache_only(tmp_path, hf_dir, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--facebook--esm2_t2_tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(hf_dir, snapshot)
    (cache / "models--facebook--esm2_t2_tiny" / "refs").mkdir()
    (cache / "models--facebook--esm2_t2_tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("PLMSCREEN_WEIGHTS_DIR", raising=False)
    family, name, directory = resolve_model("facebook/esm2_t2_tiny")
    assert (family, name, directory) == ("hf-esm", "facebook/esm2_t2_tiny", snapshot)
    backend = load_backend("facebook/esm2_t2_tiny", device="cpu")
    assert backend.name == "facebook/esm2_t2_tiny" and backend.family == "hf-esm"

    def no_network(*args, **kwargs):
        raise AssertionError("the network was reached")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, local_files_only=False, **kw: no_network() if not local_files_only
                        else (_ for _ in ()).throw(FileNotFoundError(repo)))
    weights = tmp_path / "weights"
    weights.mkdir()
    with pytest.raises(ModelLoadError) as err:
        resolve_model("facebook/esm2_t99_missing", weights_dir=weights)
    message = str(err.value)
    assert str(weights / "esm2_t99_missing") in message
    assert str(cache / "models--facebook--esm2_t99_missing") in message and "download not allowed" in message
    # A folder named after the repository in --weights-dir is found first, without the cache.
    shutil.copytree(hf_dir, weights / "esm2_t99_missing")
    assert resolve_model("facebook/esm2_t99_missing", weights_dir=weights)[2] == weights / "esm2_t99_missing"


def test_pickled_weights_and_replaced_files_are_refused(tmp_path, hf_dir, hf):
    pickled = tmp_path / "pickled"
    shutil.copytree(hf_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        HfEsmBackend.load(pickled, device="cpu")
    with pytest.raises(ModelLoadError, match="planned with"):
        HfEsmBackend.load(hf_dir, device="cpu", expected_sha256="0" * 64)
    assert HfEsmBackend.load(hf_dir, device="cpu", expected_sha256=hf.checkpoint_sha256).checkpoint_sha256 == hf.checkpoint_sha256


def mapped_ranges(path):
    ranges = []
    for line in open("/proc/self/maps").read().splitlines():
        if line.endswith(str(path)):
            start, stop = line.split()[0].split("-")
            ranges.append((int(start, 16), int(stop, 16)))
    return ranges


def test_weights_are_held_in_memory_not_mapped_from_the_file(tmp_path, hf_dir):
    """The sha256 a run records must describe the weights it uses. transformers leaves weights as
    views of the memory-mapped safetensors file; the backend copies them out, so a checkpoint
    rewritten in place after loading (same size, zeroed tensor data) changes no number."""
    copy = tmp_path / "copy"
    shutil.copytree(hf_dir, copy)
    weights = copy / "model.safetensors"
    backend = HfEsmBackend.load(copy, device="cpu")
    ranges = mapped_ranges(weights)  # transformers may keep the mapping open; no weight may live in it
    for name, tensor in [*backend.model.named_parameters(), *backend.model.named_buffers()]:
        pointer = tensor.untyped_storage().data_ptr()
        assert not any(a <= pointer < b for a, b in ranges), name
    before = BackendScorer(backend).score(SEQS[:1])[0].logp_masked
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    with open(weights, "r+b") as fh:
        fh.seek(header)
        fh.write(b"\0" * (weights.stat().st_size - header))
    np.testing.assert_array_equal(BackendScorer(backend).score(SEQS[:1])[0].logp_masked, before)
    assert backend.model.lm_head.decoder.weight is backend.model.esm.embeddings.word_embeddings.weight  # still tied
