"""Exact scoring pinned against an independent one-mask-per-forward loop over fair-esm's own forward."""

import math

import numpy as np
import pytest
import torch

from plmscreen.screening.score.metrics import FlagRule, summarize
from plmscreen.screening.score.scorer import MASKED, Scorer, ScoringOptions, _masked_jobs, window_start

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",  # 33
    "MSTNPKPQRKTKRNTNRRPQDVKFPGG",  # 27
    "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMNPQ",  # 34, a 20-residue unit then a partial copy
    "MXBZUOJKLV",  # rare codes
]


def naive_logp(model, alphabet, sequence, masked, read):
    """log P(x_read | x with ``masked`` masked) from fair-esm's stock forward, batch 1; residue i is token i+1."""
    tokens = torch.tensor([[alphabet.cls_idx] + [alphabet.get_idx(a) for a in sequence] + [alphabet.eos_idx]])
    for i in masked:
        tokens[0, i + 1] = alphabet.mask_idx
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens)["logits"][0], dim=-1)
    return logp[read + 1, alphabet.get_idx(sequence[read])].item()


def tandem_partners(length, unit, copies_end):
    """Residue i partnered with i±unit inside [0, copies_end)."""
    partners = []
    for i in range(length):
        p = [j for j in (i - unit, i + unit) if 0 <= j < copies_end]
        partners.append(tuple(p) if i < copies_end else ())
    return partners


@pytest.fixture(scope="module")
def scored(tiny_model):
    partners = [[()] * len(s) for s in SEQS]
    partners[2] = tandem_partners(len(SEQS[2]), 20, len(SEQS[2]))
    return partners, Scorer(tiny_model, ScoringOptions()).score(SEQS, partners)


def test_masked_and_unmasked_match_one_mask_per_forward_loop(tiny_model, scored):
    _, results = scored
    m, a = tiny_model.model, tiny_model.alphabet
    for seq, res in zip(SEQS, results):
        expected_masked = [naive_logp(m, a, seq, [i], i) for i in range(len(seq))]
        expected_unmasked = [naive_logp(m, a, seq, [], i) for i in range(len(seq))]
        np.testing.assert_allclose(res.logp_masked, expected_masked, atol=1e-4, rtol=0)
        np.testing.assert_allclose(res.logp_unmasked, expected_unmasked, atol=1e-4, rtol=0)
        assert not res.windowed


def test_off_by_one_reading_would_be_caught(tiny_model, scored):
    """The compute_pppl bug (mask token i, read residue i) gives different numbers: the test above can fail."""
    _, results = scored
    m, a = tiny_model.model, tiny_model.alphabet
    seq = SEQS[0]
    buggy = []
    for i in range(1, len(seq)):
        tokens = torch.tensor([[a.cls_idx] + [a.get_idx(c) for c in seq] + [a.eos_idx]])
        tokens[0, i] = a.mask_idx
        with torch.no_grad():
            logp = torch.log_softmax(m(tokens)["logits"][0], -1)
        buggy.append(logp[i, a.get_idx(seq[i])].item())
    assert np.max(np.abs(np.array(buggy) - results[0].logp_masked[1:])) > 1e-2


def test_ablated_masks_residue_and_partners_together(tiny_model, scored):
    partners, results = scored
    m, a = tiny_model.model, tiny_model.alphabet
    seq, res = SEQS[2], results[2]
    for i in range(len(seq)):
        if not partners[2][i]:
            assert np.isnan(res.logp_ablated[i])
            continue
        expected = naive_logp(m, a, seq, [i, *partners[2][i]], i)
        assert res.logp_ablated[i] == pytest.approx(expected, abs=1e-4)
    assert np.isnan(res.logp_ablated).sum() == 6
    # Sequences without partners have no ablated numbers.
    assert np.isnan(results[0].logp_ablated).all()


def test_batched_equals_unbatched(tiny_model, scored):
    partners, batched = scored
    one_row = Scorer(tiny_model, ScoringOptions(batch_tokens=1)).score(SEQS, partners)
    for b, u in zip(batched, one_row):
        np.testing.assert_allclose(b.logp_masked, u.logp_masked, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.logp_unmasked, u.logp_unmasked, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.logp_ablated, u.logp_ablated, atol=1e-5, rtol=0)


def test_stock_fair_esm_engine_agrees(tiny_model, scored):
    partners, fast = scored
    stock = Scorer(tiny_model, ScoringOptions(engine="fair-esm", batch_tokens=300)).score(SEQS, partners)
    for f, s in zip(fast, stock):
        np.testing.assert_allclose(f.logp_masked, s.logp_masked, atol=1e-4, rtol=0)
        np.testing.assert_allclose(f.logp_ablated, s.logp_ablated, atol=1e-4, rtol=0)


def test_long_sequences_are_scored_in_centred_windows(tiny_model):
    window = 12
    seq = SEQS[0]  # 33 residues > window
    partners = tandem_partners(len(seq), 15, 30)
    tiny_model.max_residues = window
    try:
        res = Scorer(tiny_model, ScoringOptions(batch_tokens=64)).score([seq], [partners])[0]
    finally:
        tiny_model.max_residues = 1022
    m, a = tiny_model.model, tiny_model.alphabet
    assert res.windowed
    for i in range(len(seq)):
        start = min(max(i - window // 2, 0), len(seq) - window)
        assert start == window_start(i, len(seq), window)
        sub = seq[start : start + window]
        assert res.logp_masked[i] == pytest.approx(naive_logp(m, a, sub, [i - start], i - start), abs=1e-4)
        in_window = [j - start for j in (i, *partners[i]) if start <= j < start + window]
        if partners[i]:
            assert res.logp_ablated[i] == pytest.approx(naive_logp(m, a, sub, in_window, i - start), abs=1e-4)
        # The unmasked pass comes from a half-overlapping window in which i lies.
        candidates = sorted(set(range(0, len(seq) - window, window // 2)) | {len(seq) - window})
        options = [naive_logp(m, a, seq[s : s + window], [], i - s) for s in candidates if s <= i < s + window]
        assert min(abs(res.logp_unmasked[i] - o) for o in options) < 1e-4


def test_approximate_mode_never_masks_partners_together(tiny_model, scored):
    partners, exact = scored
    jobs = _masked_jobs(2, len(SEQS[2]), 1022, partners[2], per_copy=4)
    covered = sorted(i for j in jobs if j.kind == MASKED for i in j.read)
    assert covered == list(range(len(SEQS[2])))
    assert any(len(j.masked) > 1 for j in jobs)
    for job in jobs:
        for i in job.masked:
            assert not set(partners[2][i]) & set(job.masked)
    # Each value is exactly the log-prob under its copy's mask set; it differs from exact scoring.
    approx = Scorer(tiny_model, ScoringOptions(masks_per_copy=4)).score(SEQS, partners)[2]
    m, a = tiny_model.model, tiny_model.alphabet
    for job in jobs:
        for i in job.read:
            assert approx.logp_masked[i] == pytest.approx(naive_logp(m, a, SEQS[2], job.masked, i), abs=1e-4)
    assert np.abs(approx.logp_masked - exact[2].logp_masked).max() > 1e-3


def test_bf16_is_opt_in_and_close(tiny_model, scored):
    partners, exact = scored
    bf16 = Scorer(tiny_model, ScoringOptions(precision="bf16")).score(SEQS[:1], partners[:1])[0]
    err = np.abs(bf16.logp_masked - exact[0].logp_masked).max()
    assert 0 < err < 0.5
    assert ScoringOptions().exact and not ScoringOptions(precision="bf16").exact


@pytest.mark.parametrize("kwargs", [{"batch_tokens": 0}, {"precision": "fp8"}, {"masks_per_copy": 0}, {"engine": "x"}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        ScoringOptions(**kwargs)


def test_partner_map_length_must_match(tiny_model):
    with pytest.raises(ValueError, match="partner map has 3 entries for 10 residues"):
        Scorer(tiny_model).score(["MKTAYIAKQR"], [[(), (), ()]])


def test_sequence_summary_matches_hand_computation():
    masked = np.array([-1.0, -2.0, -0.5, -0.1])
    unmasked = np.array([-0.5, -1.0, -0.2, -0.1])
    ablated = np.array([np.nan, np.nan, -2.5, -1.1])
    s = summarize(masked, unmasked, ablated, FlagRule(min_inflation_factor=1.5, min_repeat_fraction=0.25))
    assert s.pll == pytest.approx(-3.6)
    assert s.pppl == pytest.approx(math.exp(3.6 / 4))
    assert s.pppl_ablated == pytest.approx(math.exp((1.0 + 2.0 + 2.5 + 1.1) / 4))
    assert s.pppl_unmasked == pytest.approx(math.exp(1.8 / 4))
    assert s.repeat_fraction == 0.5
    assert s.inflation_factor == pytest.approx(s.pppl_ablated / s.pppl)
    assert s.mean_inflation == pytest.approx((2.0 + 1.0) / 2)
    assert s.max_inflation == pytest.approx(2.0)
    assert s.effect_flagged  # factor exp(3/4) = 2.1 >= 1.5 and fraction 0.5 >= 0.25
    assert not FlagRule(min_inflation_factor=2.2).effect_flags(s.inflation_factor, s.repeat_fraction)
    assert not FlagRule(min_repeat_fraction=0.6).effect_flags(s.inflation_factor, s.repeat_fraction)
    none = summarize(masked, unmasked, np.full(4, np.nan))
    assert none.inflation_factor == pytest.approx(1.0) and none.mean_inflation is None and not none.effect_flagged


def test_probe_gives_full_rows_for_arbitrary_mask_sets(tiny_model, scored):
    """Probe rows at the true residue reproduce scoring; other columns match the stock forward."""
    from plmscreen.screening.score.scorer import Probe

    _, results = scored
    m, a = tiny_model.model, tiny_model.alphabet
    seq = SEQS[2]
    probes = [Probe(2, (i,), (i,)) for i in range(len(seq))] + [Probe(0, (3, 9, 20), (3, 20)), Probe(1, (), (0, 5))]
    rows = Scorer(tiny_model, ScoringOptions(batch_tokens=200)).probe(SEQS, probes)
    true_cols = [rows[i][0, a.get_idx(seq[i])] for i in range(len(seq))]
    np.testing.assert_allclose(true_cols, results[2].logp_masked, atol=1e-5, rtol=0)
    # A non-true letter under a three-position mask, against fair-esm's own forward.
    tokens = torch.tensor([[a.cls_idx] + [a.get_idx(c) for c in SEQS[0]] + [a.eos_idx]])
    tokens[0, [4, 10, 21]] = a.mask_idx
    with torch.no_grad():
        ref = torch.log_softmax(m(tokens)["logits"][0], -1)
    assert rows[-2].shape == (2, len(a.all_toks))
    np.testing.assert_allclose(rows[-2][1], ref[21].numpy(), atol=1e-4)
    assert rows[-1][1, a.get_idx(SEQS[1][5])] == pytest.approx(results[1].logp_unmasked[5], abs=1e-5)
    with pytest.raises(ValueError, match="probe 0"):
        Scorer(tiny_model).probe(SEQS, [Probe(1, (), (99,))])


def test_out_of_memory_batches_are_split_and_give_the_same_numbers(tiny_model, scored):
    partners, expected = scored
    scorer = Scorer(tiny_model, ScoringOptions(batch_tokens=4096))
    forward = scorer._forward
    sizes = []

    def small_gpu(tokens, query):
        sizes.append(tokens.shape[0])
        if tokens.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(tokens, query)

    scorer._forward = small_gpu
    got = scorer.score(SEQS, partners)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.logp_masked, e.logp_masked, atol=1e-5, rtol=0)
        np.testing.assert_allclose(g.logp_ablated, e.logp_ablated, atol=1e-5, rtol=0)
    assert max(sizes) > 3 and scorer.batch_tokens < 4096  # it tried, split, and kept the smaller budget
    first_success = next(k for k, n in enumerate(sizes) if n <= 3)
    assert max(sizes[first_success:]) <= 3, "jobs not yet run are packed again at the smaller budget"
    one = Scorer(tiny_model, ScoringOptions(batch_tokens=1))
    one._forward = lambda tokens, query: (_ for _ in ()).throw(torch.OutOfMemoryError("even one row"))
    with pytest.raises(torch.OutOfMemoryError):
        one.score(SEQS[:1])


def test_automatic_batch_size_follows_free_gpu_memory_and_batches_fit_it(tiny_model, monkeypatch):
    """The budget grows with free GPU memory within its bounds, and every batch the scorer packs
    stays inside it. (Whether the memory model holds on a real GPU is tests/test_gpu.py's.)"""
    from types import SimpleNamespace

    from plmscreen.screening.score.scorer import CPU_BATCH_TOKENS, _ablated_jobs, _batches, _masked_jobs, _unmasked_jobs, auto_batch_tokens

    assert Scorer(tiny_model, ScoringOptions(batch_tokens=None)).batch_tokens == CPU_BATCH_TOKENS
    gpu = SimpleNamespace(device=torch.device("cuda"), model=SimpleNamespace(embed_dim=1280))
    budgets = []
    for free_gib in (0.01, 1, 8, 40, 80, 10_000):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free_gib: (int(f * 2**30), 80 * 2**30))
        budgets.append(auto_batch_tokens(gpu))
    assert budgets == sorted(budgets) and budgets[0] == 1024 and budgets[-1] == 1 << 20
    assert len(set(budgets)) == len(budgets)  # more free memory, bigger batches, up to the cap
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1500, size=12)
    for budget in budgets[1:4]:
        jobs = []
        for s, length in enumerate(lengths):
            partners = [[(i + 37) % length] if i % 3 == 0 else [] for i in range(length)]
            jobs += _unmasked_jobs(s, int(length), 1022) + _masked_jobs(s, int(length), 1022, partners, 1)
            jobs += _ablated_jobs(s, int(length), 1022, partners)
        batches = _batches(jobs, budget)
        assert sum(len(b) for b in batches) == len(jobs)
        for batch in batches:
            padded = len(batch) * (max(j.stop - j.start for j in batch) + 2)
            assert padded <= budget or len(batch) == 1, (budget, padded)


def test_fp16_needs_cuda(tiny_model):
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        Scorer(tiny_model, ScoringOptions(precision="fp16"))
