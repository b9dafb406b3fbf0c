"""Tests of plmscreen.screening.score.repeats: internal repeats and the residue partner map.

Real sequences are E. coli K-12 proteins (UniProt UP000000625, CC BY 4.0), hard-coded so the
tests need nothing from shared/.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from Bio.Align import substitution_matrices

from plmscreen.screening.score.repeats import (
    REGION_COLUMNS,
    InvalidSequenceError,
    RegionPair,
    RepeatParams,
    encode,
    find_repeats,
    partner_details,
    partner_map,
    region_records,
    repeat_residues,
)

# P08660 AK3_ECOLI (lysC), P03023 LACI_ECOLI (lacI), P0AA25 THIO_ECOLI (trxA),
# P0A858 TPIS_ECOLI (tpiA), P0ACJ8 CRP_ECOLI (crp), P0ABQ4 DYR_ECOLI (folA)
LYSC = (
    "MSEIVVSKFGGTSVADFDAMNRSADIVLSDANVRLVVLSASAGITNLLVALAEGLEPGERFEKLDAIRNIQFAILERLRYPNVIREEIER"
    "LLENITVLAEAAALATSPALTDELVSHGELMSTLLFVEILRERDVQAQWFDVRKVMRTNDRFGRAEPDIAALAELAALQLLPRLNEGLVI"
    "TQGFIGSENKGRTTTLGRGGSDYTAALLAEALHASRVDIWTDVPGIYTTDPRVVSAAKRIDEIAFAEAAEMATFGAKVLHPATLLPAVRSD"
    "IPVFVGSSKDPRAGGTLVCNKTENPPLFRALALRRNQTLLTLHSLNMLHSRGFLAEVFGILARHNISVDLITTSEVSVALTLDTTGSTSTG"
    "DTLLTQSLLMELSALCRVEVEEGLALVALIGNDLSKACGVGKEVFGVLEPFNIRMICYGASSHNLCFLVPGEDAEQVVQKLHSNLFE"
)
LACI = (
    "MKPVTLYDVAEYAGVSYQTVSRVVNQASHVSAKTREKVEAAMAELNYIPNRVAQQLAGKQSLLIGVATSSLALHAPSQIVAAIKSRADQL"
    "GASVVVSMVERSGVEACKAAVHNLLAQRVSGLIINYPLDDQDAIAVEAACTNVPALFLDVSDQTPINSIIFSHEDGTRLGVEHLVALGHQ"
    "QIALLAGPLSSVSARLRLAGWHKYLTRNQIQPIAEREGDWSAMSGFQQTMQMLNEGIVPTAMLVANDQMALGAMRAITESGLRVGADISVVG"
    "YDDTEDSSCYIPPLTTIKQDFRLLGQTSVDRLLQLSQGQAVKGNQLLPVSLVKRKTTLAPNTQTASPRALADSLMQLARQVSRLESGQ"
)
TRXA = (
    "MSDKIIHLTDDSFDTDVLKADGAILVDFWAEWCGPCKMIAPILDEIADEYQGKLTVAKLNIDQNPGTAPKYGIRGIPTLLLFKNGEVAATK"
    "VGALSKGQLKEFLDANLA"
)
TPIA = (
    "MRHPLVMGNWKLNGSRHMVHELVSNLRKELAGVAGCAVAIAPPEMYIDMAKREAEGSHIMLGAQNVDLNLSGAFTGETSAAMLKDIGAQYI"
    "IIGHSERRTYHKESDELIAKKFAVLKEQGLTPVLCIGETEAENEAGKTEEVCARQIDAVLKTQGAAAFEGAVIAYEPVWAIGTGKSATPAQA"
    "QAVHKFIRDHIAKVDANIAEQVIIQYGGSVNASNAAELFAQPDIDGALVGGASLKADAFAVIVKAAEAAKQA"
)
CRP = (
    "MVLGKPQTDPTLEWFLSHCHIHKYPSKSTLIHQGEKAETLYYIVKGSVAVLIKDEEGKEMILSYLNQGDFIGELGLFEEGQERSAWVRAKT"
    "ACEVAEISYKKFRQLIQVNPDILMRLSAQMARRLQVTSEKVGNLAFLDVTGRIAQTLLNLAKQPDAMTHPDGMQIKITRQEIGQIVGCSRET"
    "VGRILKMLEDQNLISAHGKTIVVYGTR"
)
FOLA = (
    "MISLIAALAVDRVIGMENAMPWNLPADLAWFKRNTLNKPVIMGRHTWESIGRPLPGRKNIILSSQPGTDDRVTWVKSVDEAIAACGDVPEIM"
    "VIGGGRVYEQFLPKAQKLYLTHIDAEVEGDTHFPDYEPDDWESVFSEFHDADAQNSHSYCFEILERR"
)
REAL = {"lysC": LYSC, "lacI": LACI, "trxA": TRXA, "tpiA": TPIA, "crp": CRP, "folA": FOLA}

AA = "ACDEFGHIKLMNPQRSTVWY"


def _blosum_substitution_weights() -> np.ndarray:
    """P(b | a) proportional to exp(lambda * BLOSUM62[a, b]) for b != a (half-bit lambda)."""
    b62 = substitution_matrices.load("BLOSUM62")
    w = np.array([[0.0 if a == b else np.exp(0.347 * b62[a][b]) for b in AA] for a in AA])
    return w / w.sum(axis=1, keepdims=True)


def mutated_copy(unit: str, identity: float, n_indels: int, seed: int) -> tuple[str, list]:
    """An imperfect copy of ``unit``: BLOSUM-like substitutions at rate 1 - identity plus
    ``n_indels`` insertions/deletions of 1-3 residues. Returns the copy and, per copy residue,
    the 0-based unit position it came from (None for inserted residues)."""
    rng = np.random.default_rng(seed)
    weights = _blosum_substitution_weights()
    out, src = [], []
    for k, ch in enumerate(unit):
        if rng.random() < 1.0 - identity:
            ch = AA[rng.choice(20, p=weights[AA.index(ch)])]
        out.append(ch)
        src.append(k)
    for _ in range(n_indels):
        pos, n = int(rng.integers(10, len(out) - 10)), int(rng.integers(1, 4))
        if rng.random() < 0.5:
            del out[pos : pos + n], src[pos : pos + n]
        else:
            out[pos:pos] = [AA[x] for x in rng.integers(0, 20, n)]
            src[pos:pos] = [None] * n
    return "".join(out), src


def shuffled(seq: str, seed: int) -> str:
    return "".join(np.random.default_rng(seed).permutation(list(seq)))


def block_shuffled(seq: str, block: int, seed: int) -> str:
    """A composition-identical shuffle made as the structural benchmark's decoys are: the
    sequence cut into consecutive pieces of ``block`` residues, the pieces permuted."""
    pieces = [seq[k : k + block] for k in range(0, len(seq), block)]
    return "".join(pieces[k] for k in np.random.default_rng(seed).permutation(len(pieces)))


def near_identical_repeat_protein(identity: float, seed: int) -> str:
    """Four tandem copies of a 40-residue unit of lysC, the last three mutated to ``identity``."""
    unit = LYSC[150:190]
    copies = [unit] + [mutated_copy(unit, identity, n_indels=0, seed=seed + k)[0] for k in range(3)]
    return LACI[:30] + "".join(copies) + LACI[200:230]


def low_complexity_repeat_protein(identity: float, seed: int) -> str:
    """Six tandem copies of a 30-residue unit drawn from six letters (GPQSAE), each copy
    mutated within those letters to ``identity``, between two real flanks."""
    rng = np.random.default_rng(seed)
    letters = list("GPQSAE")
    unit = "".join(rng.choice(letters, 30))
    copies = [unit]
    for _ in range(5):
        copies.append("".join(rng.choice(letters) if rng.random() > identity else c for c in unit))
    return TRXA[:30] + "".join(copies) + FOLA[:30]


def all_pairs(regions: list[RegionPair]) -> set[tuple[int, int]]:
    return {p for r in regions for p in r.pairs}


# --------------------------------------------------------------------------------------------
# exact repeats


def test_exact_tandem_duplication_offsets_and_partners():
    unit = LYSC[100:160]  # 60 residues
    seq = LACI[:50] + unit + unit + LACI[200:250]
    regions = find_repeats(seq)
    assert regions, "exact tandem duplication not found"
    top = regions[0]
    assert top.partner_start - top.start == 60
    assert top.identity >= 0.95
    assert top.pvalue < 1e-6
    pmap = partner_map(len(seq), regions)
    for p in range(51, 111):  # first copy, 1-based
        assert p + 60 in pmap[p - 1]
        assert p in pmap[p + 60 - 1]
    # every aligned pair of the top region sits on the duplication diagonal
    assert all(j - i == 60 for i, j in top.pairs)


def test_coordinates_are_one_based_inclusive():
    unit = TRXA[20:70]  # 50 residues
    seq = TPIA[:40] + unit + CRP[:60] + unit + FOLA[:30]
    first, second = 41, 41 + 50 + 60
    regions = find_repeats(seq)
    top = regions[0]
    # the alignment may run on by chance into equal flanking residues, never less than the copy
    assert top.start <= first and top.end >= first + 49
    assert top.partner_start <= second and top.partner_end >= second + 49
    assert top.partner_start - top.start == second - first
    inside = [(i, j) for i, j in top.pairs if first <= i <= first + 49]
    assert inside == [(first + k, second + k) for k in range(50)]
    assert all(seq[i - 1] == seq[j - 1] for i, j in inside)
    assert (first, second) in top.pairs and (first + 49, second + 49) in top.pairs
    rec = region_records("x", regions)[0]
    assert (rec["start"], rec["end"]) == (top.start, top.end)


def test_three_tandem_copies_partner_every_other_copy():
    u = 45
    unit = LACI[120 : 120 + u]
    seq = TRXA[:40] + unit * 3 + FOLA[:40]
    regions = find_repeats(seq)
    pmap = partner_map(len(seq), regions)
    starts = [41, 41 + u, 41 + 2 * u]
    for k in range(u):
        copies = [s + k for s in starts]
        for p in copies:
            others = {q for q in copies if q != p}
            assert others <= set(pmap[p - 1]), (p, pmap[p - 1], others)


def test_interspersed_repeat_found():
    unit = LYSC[300:360]
    spacer = CRP[:150]
    seq = LACI[:60] + unit + spacer + unit + TPIA[:60]
    offset = 60 + 150
    regions = find_repeats(seq)
    assert regions
    pmap = partner_map(len(seq), regions)
    hits = sum(p + offset in pmap[p - 1] for p in range(61, 121))
    assert hits == 60
    # local alignment may run on into the flanks; inside the copies the diagonal is exact
    top = regions[0]
    assert all(j - i == offset for i, j in top.pairs if 61 <= i <= 120)


# --------------------------------------------------------------------------------------------
# imperfect repeats against the known mapping


@pytest.mark.parametrize(
    "identity,length,seed",
    [(0.5, 100, 0), (0.5, 100, 1), (0.35, 120, 0), (0.35, 120, 1), (0.35, 150, 2)],
)
def test_imperfect_copy_found_with_right_partners(identity, length, seed):
    unit = LYSC[150 : 150 + length]
    copy, src = mutated_copy(unit, identity, n_indels=3, seed=seed)
    left, spacer, right = LACI[:80], LACI[100:180], LACI[200:260]
    seq = left + unit + spacer + copy + right
    u0, c0 = len(left), len(left) + len(unit) + len(spacer)
    truth = {u0 + s + 1: c0 + k + 1 for k, s in enumerate(src) if s is not None}
    observed = np.mean([unit[s] == copy[k] for k, s in enumerate(src) if s is not None])
    assert abs(observed - identity) < 0.1  # the generator does what it says

    regions = find_repeats(seq)
    found = [
        (i, j) for i, j in all_pairs(regions) if u0 < i <= u0 + len(unit) and c0 < j <= c0 + len(copy)
    ]
    correct = sum(truth.get(i) == j for i, j in found)
    assert found, "imperfect copy not found"
    assert correct / len(found) >= 0.8
    assert correct / len(truth) >= 0.6


# --------------------------------------------------------------------------------------------
# no calls where there is no repeat


@pytest.mark.parametrize("name", sorted(REAL))
def test_shuffled_real_protein_has_no_call(name):
    for seed in (1, 2):
        assert find_repeats(shuffled(REAL[name], seed)) == []


@pytest.mark.parametrize("name", ["trxA", "tpiA", "crp", "folA"])
def test_repeat_free_real_protein_has_no_call(name):
    assert find_repeats(REAL[name]) == []


CASES = [
    (near_identical_repeat_protein, 0.9, 40),
    (near_identical_repeat_protein, 0.7, 40),
    (low_complexity_repeat_protein, 0.9, 30),
    (low_complexity_repeat_protein, 0.8, 30),
]


def test_piece_shuffles_of_repeat_proteins_are_not_called():
    """Shuffles of 5-residue pieces (made as the benchmark's decoys) of near-identical or
    low-complexity repeat proteins keep their composition and many of their repeated short
    words but no longer hold a repeat. The proteins themselves are found. At the defaults the
    low-complexity decoys get no call and the near-identical ones few (in these 4 x 40-residue
    arrays at 70-90% identity only 8 distinct pieces recur, so pieces at one offset sometimes
    line up without gaps, which only the residue-permutation null judges); the residue-
    permutation null alone (null_block=1, the default before) called most of them."""
    old = RepeatParams(null_block=1)
    n_decoys = called_new = called_old = 0
    for make, identity, unit in CASES:
        for seed in (0, 1):
            seq = make(identity, seed=seed)
            regions = find_repeats(seq)
            assert regions and regions[0].pvalue < 1e-6, (make.__name__, identity, seed)
            assert regions[0].identity >= 0.5  # copies mutated independently: ~identity**2
            assert (regions[0].partner_start - regions[0].start) % unit == 0
            decoys = [block_shuffled(seq, 5, k) for k in range(10)]
            assert all(sorted(d) == sorted(seq) for d in decoys)
            new_calls = sum(bool(find_repeats(d)) for d in decoys)
            if make is low_complexity_repeat_protein:
                assert new_calls == 0, (identity, seed)
            n_decoys += len(decoys)
            called_new += new_calls
            called_old += sum(bool(find_repeats(d, old)) for d in decoys)
    assert called_new <= 0.1 * n_decoys, (called_new, n_decoys)
    assert called_old >= 0.5 * n_decoys, (called_old, n_decoys)


@pytest.mark.parametrize("unit_length", [7, 10])
def test_short_unit_tandem_arrays_keep_their_partners(unit_length):
    """Eight copies of a 7- or 10-residue unit at ~70% identity: most residues of the array get
    partners in at least two other copies. Their alignments are gap-free, so they are judged
    by the residue-permutation null; the piece-shuffle null for every alignment
    (mosaic_gap_rate < 0) keeps fewer of the copy offsets: its 5-residue pieces are half a
    unit, so its shuffles hold the array's repeated words too."""
    for seed in (0, 1, 2):
        unit = LACI[120 : 120 + unit_length]
        copies = [unit] + [
            mutated_copy(unit + LACI[:20], 0.7, n_indels=0, seed=seed * 10 + k)[0][:unit_length]
            for k in range(7)
        ]
        seq = TRXA[:30] + "".join(copies) + FOLA[:30]
        regions = find_repeats(seq)
        assert len(regions) >= 4
        assert regions[0].pvalue < 1e-5
        for r in regions[:3]:  # each region pairs copies: its main diagonal is k units
            diagonals = np.bincount([j - i for i, j in r.pairs])
            assert int(np.argmax(diagonals)) % unit_length == 0
        pmap = partner_map(len(seq), regions)
        array = range(31, 31 + 8 * unit_length)
        assert np.mean([len(pmap[p - 1]) >= 2 for p in array]) >= 0.8
        assert len(find_repeats(seq, RepeatParams(mosaic_gap_rate=-1.0))) < len(regions)


def test_residue_permutations_of_low_complexity_repeats_were_never_the_problem():
    """Low complexity alone does not fool either null: residue permutations of the same
    low-complexity repeat proteins get no call with the old or the new null."""
    for identity in (0.9, 0.8):
        seq = low_complexity_repeat_protein(identity, seed=0)
        for k in range(5):
            decoy = shuffled(seq, k)
            assert find_repeats(decoy) == []
            assert find_repeats(decoy, RepeatParams(null_block=1)) == []


def test_block_null_keeps_moderate_identity_repeats():
    """Copies at 40-50% identity in a real-protein context stay found with the block null and
    get about the same p-value as under the residue-permutation null."""
    unit = LYSC[150:250]
    for identity, seed in ((0.4, 0), (0.45, 1), (0.5, 2)):
        copy, _ = mutated_copy(unit, identity, n_indels=2, seed=seed)
        seq = LACI[:80] + unit + LACI[100:180] + copy + LACI[200:260]
        new = find_repeats(seq)
        old = find_repeats(seq, RepeatParams(null_block=1))
        assert new and old
        assert new[0].pairs == old[0].pairs
        assert new[0].pvalue <= 1e-4


def test_short_or_empty_sequences():
    assert find_repeats("") == []
    assert find_repeats("MKV") == []
    assert partner_map(0, []) == []


# --------------------------------------------------------------------------------------------
# the partner map


def _imperfect_tandem() -> str:
    unit = LYSC[200:260]
    copy2, _ = mutated_copy(unit, 0.6, 2, seed=5)
    copy3, _ = mutated_copy(unit, 0.6, 2, seed=6)
    return TRXA[:30] + unit + copy2 + copy3 + FOLA[:30]


def test_partner_map_symmetric_sorted_unique_no_self():
    seq = _imperfect_tandem()
    regions = find_repeats(seq)
    assert len(regions) >= 2
    pmap = partner_map(len(seq), regions)
    assert len(pmap) == len(seq)
    for p, partners in enumerate(pmap, start=1):
        assert list(partners) == sorted(set(partners))
        assert p not in partners
        for q in partners:
            assert 1 <= q <= len(seq)
            assert p in pmap[q - 1]
            assert abs(p - q) >= RepeatParams().min_offset


def test_regions_well_formed():
    seq = _imperfect_tandem()
    regions = find_repeats(seq)
    ids = [r.region_id for r in regions]
    assert ids == list(range(len(regions)))
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    for r in regions:
        assert r.start < r.partner_start
        assert r.start <= r.end and r.partner_start <= r.partner_end
        i, j = zip(*r.pairs)
        assert (min(i), max(i), min(j), max(j)) == (r.start, r.end, r.partner_start, r.partner_end)
        assert list(i) == sorted(i) and list(j) == sorted(j)  # colinear alignment
        assert len(r.local_identity) == len(r.pairs)
        assert all(0.0 <= v <= 1.0 for v in r.local_identity)
        ident = np.mean([seq[a - 1] == seq[b - 1] for a, b in r.pairs])
        assert r.identity == pytest.approx(ident, abs=1e-6)
        assert r.n_pairs >= RepeatParams().min_length
        assert 0.0 <= r.pvalue <= RepeatParams().max_pvalue
    # no residue pair is aligned twice (Waterman-Eggert)
    pairs = [p for r in regions for p in r.pairs]
    assert len(pairs) == len(set(pairs))


def test_partner_details_parallel_to_partner_map():
    seq = _imperfect_tandem()
    regions = find_repeats(seq)
    details = partner_details(len(seq), regions)
    pmap = partner_map(len(seq), regions)
    by_id = {r.region_id: r for r in regions}
    for p, (entry, partners) in enumerate(zip(details, pmap), start=1):
        assert tuple(q for q, _, _ in entry) == partners
        for q, rid, ident in entry:
            region = by_id[rid]
            pair = (min(p, q), max(p, q))
            k = region.pairs.index(pair)
            assert ident == region.local_identity[k]


def test_local_identity_of_exact_copy_is_one():
    unit = LYSC[100:160]
    seq = LACI[:50] + unit + unit + LACI[200:250]
    top = find_repeats(seq)[0]
    inner = [v for (i, _), v in zip(top.pairs, top.local_identity) if 51 <= i <= 110]
    assert min(inner) == 1.0


def test_partner_details_rejects_out_of_range_pairs():
    region = RegionPair(0, 1, 1, 20, 20, 1.0, 5.0, 0.0, ((1, 20),), (1.0,))
    with pytest.raises(ValueError):
        partner_details(10, [region])


# --------------------------------------------------------------------------------------------
# parameters


def test_min_length_removes_short_repeat():
    motif = LYSC[60:80]  # 20 residues, exact, twice
    seq = LACI[:100] + motif + TPIA[:120] + motif + CRP[:80]
    default = find_repeats(seq)
    assert len(default) == 1
    top = default[0]
    assert top.n_pairs >= 20  # may run on into the flanks
    assert all(j - i == 140 for i, j in top.pairs if 101 <= i <= 120)
    assert find_repeats(seq, RepeatParams(min_length=top.n_pairs + 1)) == []


def test_max_pvalue_and_min_offset_change_outcomes():
    unit = LYSC[150:190]
    copy, _ = mutated_copy(unit, 0.5, 0, seed=3)
    seq = LACI[:80] + unit + copy + LACI[150:230]
    default = find_repeats(seq)
    assert default
    best_p = min(r.pvalue for r in default)
    assert find_repeats(seq, RepeatParams(max_pvalue=best_p / 10)) == []
    # the copies are 40 apart: a minimum offset of 50 forbids every true pair
    far = find_repeats(seq, RepeatParams(min_offset=50))
    assert not any(j - i == 40 for i, j in all_pairs(far))


def test_min_identity_filters():
    unit = LYSC[150:270]
    copy, _ = mutated_copy(unit, 0.4, 2, seed=0)
    seq = LACI[:80] + unit + LACI[100:180] + copy + LACI[200:260]
    found = find_repeats(seq)
    assert found and max(r.identity for r in found) < 0.6
    assert find_repeats(seq, RepeatParams(min_identity=0.6)) == []


def test_deterministic_across_processes():
    """Workers on other nodes must find the same partners: no dependence on hash order or on a
    process's random state. Two interpreters with different hash seeds give identical regions."""
    import json
    import os
    import subprocess
    import sys

    seq = _imperfect_tandem()
    script = ("import json, random, sys; random.seed(int(sys.argv[2]));"
              "from plmscreen.screening.score.repeats import find_repeats;"
              "print(json.dumps([[r.start, r.end, r.partner_start, r.partner_end, r.pairs, r.pvalue]"
              " for r in find_repeats(sys.argv[1])]))")
    outs = [subprocess.run([sys.executable, "-c", script, seq, str(k)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(k)}).stdout for k in (1, 2)]
    assert outs[0] == outs[1]
    here = [[r.start, r.end, r.partner_start, r.partner_end, [list(p) for p in r.pairs], r.pvalue] for r in find_repeats(seq)]
    assert json.loads(outs[0]) == here and here
    # The p-value shuffles are seeded: another seed moves p-values a little, never the alignments.
    other_seed = find_repeats(seq, RepeatParams(seed=7))
    assert [r.pairs for r in other_seed] == [r.pairs for r in find_repeats(seq)]


def test_params_validation():
    with pytest.raises(ValueError, match="min_identity"):
        RepeatParams(min_identity=1.5)
    with pytest.raises(ValueError, match="n_shuffles"):
        RepeatParams(n_shuffles=1)
    with pytest.raises(ValueError, match="null_block"):
        RepeatParams(null_block=0)
    with pytest.raises(ValueError, match="gap_open"):
        RepeatParams(gap_open=5)
    assert RepeatParams().to_dict()["seed"] == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        RepeatParams().seed = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# alphabet, long sequences, output rows


def test_nonstandard_letters():
    unit = LYSC[100:160]
    seq = LACI[:50] + unit + unit + LACI[200:250]
    odd = seq[:10] + "UOJXBZ" + seq[16:]
    assert find_repeats(odd.lower())[0].partner_start - find_repeats(odd)[0].start == 60
    codes = encode("UOJ")
    assert list(codes) == list(encode("CKL"))
    with pytest.raises(InvalidSequenceError, match="position 3"):
        encode("MK-V")
    with pytest.raises(InvalidSequenceError):
        find_repeats("MKV1LL")


def test_long_sequence_windows():
    params = RepeatParams(window=300)
    unit = LYSC[100:160]
    seq = LACI + unit + TPIA[:40] + unit + CRP  # 360 + 60 + 40 + 60 + 210 = 730 > window
    first = len(LACI) + 1
    regions = find_repeats(seq, params)
    pmap = partner_map(len(seq), regions)
    assert all(p + 100 in pmap[p - 1] for p in range(first, first + 60))
    assert sum(r.partner_start - r.start == 100 for r in regions) == 1  # windows deduplicated


def test_work_budget_stops_with_warning(caplog):
    unit = LACI[120:165]
    seq = TRXA[:40] + unit * 6 + FOLA[:40]
    full = find_repeats(seq)
    assert len(full) >= 3
    with caplog.at_level(logging.WARNING, logger="plmscreen.screening.score.repeats"):
        limited = find_repeats(seq, RepeatParams(work_per_residue=1500))
    assert len(limited) < len(full)
    assert "budget" in caplog.text


def test_region_records_and_repeat_residues():
    unit = LYSC[100:160]
    seq = LACI[:50] + unit + unit + LACI[200:250]
    regions = find_repeats(seq)
    rows = region_records("P1", regions)
    assert [tuple(r) for r in rows] == [REGION_COLUMNS] * len(regions)
    assert rows[0]["seq_id"] == "P1" and rows[0]["region_id"] == 0
    mask = repeat_residues(len(seq), regions)
    assert mask[50:170].all() and not mask[:40].any()
