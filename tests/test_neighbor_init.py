"""The control's constructed first layer (training/neighbor_init.py): after layer 0 of an ordinary
fair-esm ESM-2, every position holds the mean code of its neighbours at offsets -2..+2, checked
through fair-esm's own forward against the neighbours read off the sequence."""

import sys
from pathlib import Path

import esm
import numpy as np
import pytest
import torch
from esm.model.esm2 import ESM2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from neighbor_init import AA20, NEIGHBOUR_CODE, NEIGHBOUR_GAIN, construct_neighbour_layer, offset_kernel  # noqa: E402


@pytest.mark.parametrize("heads", [1, 2])
def test_layer_zero_holds_each_positions_neighbours(heads):
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    torch.manual_seed(0)
    model = ESM2(num_layers=2, embed_dim=128, attention_heads=heads, alphabet=alphabet, token_dropout=True).eval()
    construct_neighbour_layer(model, alphabet, max_offset=700)
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list(AA20), 600))
    tokens = torch.tensor([[alphabet.cls_idx] + [alphabet.get_idx(a) for a in seq] + [alphabet.eos_idx]])
    with torch.no_grad():
        rep = model(tokens, repr_layers=[1])["representations"][1][0].double().numpy()
    scale = NEIGHBOUR_GAIN * np.sqrt(128)
    for p in (2, 57, 300, 597):
        expected = np.zeros(20)
        for d in (-2, -1, 1, 2):
            expected[AA20.index(seq[p + d])] += 0.25
        got = rep[p + 1, NEIGHBOUR_CODE] / scale
        # within 10% of one neighbour's share (0.25), and the neighbours are the largest entries
        np.testing.assert_allclose(got, expected, atol=0.025)
        assert set(np.flatnonzero(expected)) == set(np.argsort(got)[-len(np.flatnonzero(expected)):])


def test_offset_kernel_peaks_only_at_the_targets():
    theta = 10000 ** (-np.arange(0, 128, 2) / 128)
    alpha, margin = offset_kernel(theta, (-2, -1, 1, 2), 1100)
    score = np.cos(np.outer(np.arange(-1100, 1101), theta)) @ alpha
    offsets = np.arange(-1100, 1101)
    targets = np.isin(offsets, (-2, -1, 1, 2))
    np.testing.assert_allclose(score[targets], 1.0, atol=1e-6)
    assert margin > 0.3
    assert score[~targets].max() <= 1.0 - margin + 1e-6
