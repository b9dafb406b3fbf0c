#!/usr/bin/env python3
"""Where does a control model look a copy up? Masked cross-entropy on the first copy of a unit of U
uniform random residues whose second copy, at identity I, starts O residues after the first (a
random spacer of O - U residues between them); 30% of the first copy masked, 8 rows per cell,
seeded; chance = log 20 = 3.00 nats. Stock fair-esm forward.

    python training/diagnose_copy_lookup.py screening/models/esm2_plmscreen_mini.pt

Result for v4: training/results/copy_lookup_v4.md."""
import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
from esm.pretrained import load_model_and_alphabet_core
ck = sys.argv[1]
with torch.serialization.safe_globals([argparse.Namespace]):
    d = torch.load(ck, map_location="cpu", weights_only=True)
model, alphabet = load_model_and_alphabet_core("esm2_t4", d, None)
model.eval(); torch.set_num_threads(1)
AA = "ACDEFGHIKLMNPQRSTVWY"
rng = np.random.default_rng(0)
def ce(U, O, I, n=8):
    rows = []
    for _ in range(n):
        x = "".join(AA[i] for i in rng.integers(0, 20, U))
        x2 = list(x)
        k = int(round((1 - I) * U))
        for i in rng.choice(U, k, replace=False):
            x2[i] = AA[(AA.index(x[i]) + int(rng.integers(1, 20))) % 20]
        sp = "".join(AA[i] for i in rng.integers(0, 20, max(0, O - U)))
        rows.append(x + sp + "".join(x2))
    bc = alphabet.get_batch_converter()
    _, _, t = bc([(str(i), r) for i, r in enumerate(rows)])
    sel = torch.zeros_like(t, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    sel[:, 1:U + 1] = torch.rand(len(rows), U, generator=g) < 0.3
    inp = t.clone(); inp[sel] = alphabet.mask_idx
    with torch.no_grad():
        return F.cross_entropy(model(inp)["logits"][sel], t[sel]).item()
print("unit offset  id1.0  id0.9  id0.8  id0.7")
for U in (30, 50, 100, 200):
    for O in (U, 128, 256, 400):
        if O < U: continue
        print(f"{U:4d} {O:6d}  " + "  ".join(f"{ce(U, O, I):.2f}" for I in (1.0, 0.9, 0.8, 0.7)), flush=True)
