#!/usr/bin/env python3
"""Train plmscreen-mini v2/v3: a positive control that copies repeats at PROTEIN scale.

The bundled plmscreen-mini (v1, training/train_plmscreen_mini.py) copies at short offsets but
hardly at the offsets of real repeats: it trained on crops of <= 128 residues. This script
continues training it (warm start, same architecture: fair-esm ESM2, 3 layers x 128, 8 heads,
token_dropout=True, alphabet ESM-1b) on long crops with copies whose offsets cover the whole range
the model screens (crops of 256-1000 tokens; doubled and inserted copies of whole proteins).

Data: the E. coli K-12 reference proteome, UniProt UP000000625 (taxon 83333), CC BY 4.0
(https://www.uniprot.org/proteomes/UP000000625, FASTA download). Passed with the required
--fasta argument. Held-out split BY PROTEIN, the same as v1: a protein is held out iff
int(md5(accession).hexdigest(), 16) % 10 == 0; held-out proteins never enter training examples
(they only feed the small probe printed in the log).

Example mixture (fractions of EXAMPLES; each example drawn independently, seeded):
  --p-easy  (0.15) rehearsal of v1's phase-1 copy task: a uniform random 8-30-mer written twice
            side by side with 0-10-residue random flanks (keeps the look-up alive, see
            docs/science.md: switching tasks abruptly erased copying before).
  --p-randdbl (0.30) the copy task at the current offsets: a uniform random sequence of
            8..copy_len residues (log-uniform, so short offsets are rehearsed throughout) doubled
            (with p=0.3 a natural spacer of up to copy_len residues between the copies). Only
            copying lowers its loss, so it keeps a strong copying signal while offsets widen.
  --p-gap   (0.05) the same task widened: a uniform random 8-64-mer, a gap of natural protein
            sequence of 0..copy_len residues, the copy (exact p=0.7, else 70-95% identity), natural
            flanks.
  --p-doubled (0.20) a WHOLE training protein x (cropped to min(cap/2, max(64, copy_len)) if
            longer) doubled: x||x', or
            x||g||x' with p=0.3 where g is a natural spacer so that offsets span 0..cap; x' exact
            with p=0.6, else mutated to 50-95% identity.
  --p-insert (0.10) a natural crop (whole protein if it fits, else a random window of 256..cap)
            with 1-2 inserted copies of its own segments (10-150 aa) at random positions (offsets
            over the whole crop); exact with p=0.5, else 50-95% identity.
  rest (0.20) plain natural crops (whole protein if <= cap, else a random window of cap).
cap = the current maximum crop (tokens minus BOS/EOS). It widens linearly from --cap-start (256)
to --cap-end (1000) over the first --widen-steps (2000) steps, then stays at --cap-end.
copy_len = the current longest copy unit / offset scale of the synthetic copy tasks; it grows
geometrically from --copy-len-start (24, the offsets v1 copies at) to --copy-len-end (500) over
--copy-len-steps (2500) steps, so offsets widen gradually while short ones are rehearsed.
(Two earlier runs with all offsets up to cap/2 from the start, 300-500 steps each, lost v1's
short-range copying without gaining any at longer range; they were stopped and restarted with
this curriculum. Their logs are kept next to the run.)

v3 additions (issue 11 item 1; a FROM-SCRATCH control whose look-up should be content-based):
  --phase1-steps N: the first N steps train only synthetic copy tasks, masking --mask-prob1:
    "wide"    (--p-wide in phase 2; 1 - --p1-stutter of phase 1) uniform random residues x, L uniform
              in --wide-min..--wide-max (20..300), written x||x; with p --wide-spacer-p a random
              spacer of 0..L residues between the copies, with p --wide-flank-p random flanks of
              0..20 residues each side. Offsets vary 20..600 from step 0, so no fixed-offset
              positional head can solve it and the only way below log(20) is matching content.
    "stutter" (--p1-stutter in phase 1, --p-stutter in phase 2) uniform random residues each
              written twice (AABBCC..., 10..--wide-max letters): a masked residue is predicted from
              its neighbour. It rewards heads that attend to the adjacent tokens (the first layer of
              an induction-like look-up, which on random x||x alone gets gradient only through the
              look-up it enables).
    --wide-follow-copy-len: the wide task's L is drawn log-uniform in --wide-min..copy_len, the
              growing curriculum (--copy-len-start -> --copy-len-end over --copy-len-steps), so the
              copy task starts with short copies (8..16 residues: the partner is one of few
              positions, a strong gradient) and short ones stay rehearsed. With it, a 4 x 128 x 4-head
              model left the visible-token plateau within ~500 steps (run v3b, the attempt card).
  After phase 1 the mixture above (--p-* fractions; "wide"/"stutter" as rehearsal), masking
  --mask-prob, crops of at most --cap2 residues if given. --resume may change the phase-2 arguments
  while still in phase 1 (nothing before phase 2 depends on them).
  The probe also prints a copy probe: masked CE on random x||x at offsets 32..400 (chance 3.00).
  Runs so far (no candidate; commands, logs and the T1-T4 table in
  training/results/plmscreen-mini-v3-attempt-card.md): 4 x 128 x 2 heads from scratch, phase 1 only,
  --p-wide 1 --phase1-steps 6000 --mask-prob1 0.25 --lr 2e-3 --cap-start 700 --cap-end 700 (expA;
  + --p1-stutter 0.3 for expC).

Constructed first step (--construct-neighbours, training/neighbor_init.py): layer 0 head 0 starts as
a head that writes each position's neighbours (offsets -2..+2) into a subspace of the residual
stream, so that a content look-up only has to learn the match. --construct-freeze-steps keeps it
fixed that long (AdamW skips parameters without a gradient, weight decay included); unfreezing it at
lr 2e-3 undid it within 150 steps (run N, training/results/copy_lookup_v4.md), so the runs keep it
fixed throughout. Twelve runs from random weights (A-M) never learnt the look-up's first step.

Optimisation: AdamW (betas 0.9/0.98, wd 0.01), 15% BERT masking (80/10/10) over real residues,
batches of <= --max-tokens padded tokens (a pool of 256 examples sorted by length, cut, shuffled),
grad-norm clip 1.0. LR: linear warm-up over --warmup-steps, constant --lr, then a cosine decay to
--min-lr-frac x --lr over the last --decay-steps steps (warmup-stable-decay). The budget and the
schedule count STEPS, never wall-clock, so SIGSTOP/SIGCONT pauses do not change the result. Nothing
before the decay depends on --steps or --decay-steps, so --resume may change them while the LR is
still constant and the result is identical to a run started with the final values. The log records steps, active CPU time (time.process_time, which does not
advance while the process is stopped) and wall time.

Resumable: every --save-every-min minutes (wall) the full state (model, optimizer, step, numpy /
torch RNG states, the current batch pool, counters, timers) goes to <out-dir>/state.pt, and an
ESM-format snapshot to <out-dir>/snapshots/esm2_step<step>.pt. --resume continues from state.pt
bit-for-bit (same batches, same masks).

Output: <out-dir>/final/esm2_plmscreen_mini.pt in fair-esm's ESM-2 on-disk format
({"cfg": {"model": Namespace(...)}, "model": {"encoder.sentence_encoder.<k>": fp32}}, no contact
head) + .sha256; verified to load with esm.pretrained.load_model_and_alphabet_core.

Training uses torch SDPA attention (same weights; checked against the stock forward at start-up).

Recorded command (plmscreen-mini v2 candidate; OMP_NUM_THREADS=1 MKL_NUM_THREADS=1, one thread):
  python training/train_plmscreen_control.py --fasta UP000000625_83333_ecoli_k12.fasta \
      --init screening/models/esm2_plmscreen_mini.pt --out-dir RUNS --steps 1172 \
      --decay-steps 400 --widen-steps 800 --copy-len-steps 1000 --save-every-min 3 --threads 1
(it ran as --steps 6000, stopped in the constant-LR phase and resumed at step 772 with --steps
1172, which is the same run; 1172 steps, 7.1 min active CPU. Log: training/results/train_log_v2.txt;
draft card: training/results/plmscreen-mini-v2-card.md. It did NOT reach the protein-scale copying
targets; see the card.)
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import esm
from esm.model.esm2 import ESM2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_plmscreen_mini import (AA20, ExampleMaker, aa_composition, bert_mask, patch_sdpa, save_checkpoint,  # noqa: E402
                                  sha256_file, split_proteins, tokenize, train_step, unpatch, verify_checkpoint)

KINDS = ("easy", "randdbl", "gap", "doubled", "insert", "wide", "stutter", "diverged", "scatter", "plain")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", required=True, help="UniProt UP000000625 E. coli K-12 proteome FASTA")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--init", default=None, help="ESM-format checkpoint to warm-start from")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/state.pt")
    p.add_argument("--steps", type=int, required=True,
                   help="training budget in optimizer steps (may be changed on --resume before the decay starts)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--decay-steps", type=int, default=1200,
                   help="cosine decay to --min-lr-frac x --lr over the LAST this many steps (constant before)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--cap-start", type=int, default=256)
    p.add_argument("--cap-end", type=int, default=1000)
    p.add_argument("--widen-steps", type=int, default=2000)
    p.add_argument("--copy-len-start", type=int, default=24)
    p.add_argument("--copy-len-end", type=int, default=500)
    p.add_argument("--copy-len-steps", type=int, default=2500)
    p.add_argument("--p-easy", type=float, default=0.15)
    p.add_argument("--p-randdbl", type=float, default=0.30)
    p.add_argument("--p-gap", type=float, default=0.05)
    p.add_argument("--p-doubled", type=float, default=0.20)
    p.add_argument("--p-insert", type=float, default=0.10)
    p.add_argument("--p-wide", type=float, default=0.0,
                   help="v3: the wide-offset copy task (uniform random x of --wide-min..--wide-max residues, x||x)")
    p.add_argument("--wide-min", type=int, default=20)
    p.add_argument("--wide-max", type=int, default=300)
    p.add_argument("--wide-follow-copy-len", action="store_true",
                   help="draw the wide task's L log-uniform in --wide-min..copy_len (the growing curriculum) "
                        "instead of uniform in --wide-min..--wide-max")
    p.add_argument("--wide-spacer-p", type=float, default=0.3,
                   help="probability of a random spacer (0..L residues) between the two copies")
    p.add_argument("--wide-flank-p", type=float, default=0.5,
                   help="probability of random flanks (0..20 residues each side)")
    p.add_argument("--p-stutter", type=float, default=0.0,
                   help="v3: 'stutter' sequences (uniform random residues, each written twice: AABBCC..., "
                        "20..--wide-max letters): rewards attending to the adjacent tokens, the first layer "
                        "of a content look-up")
    p.add_argument("--p1-stutter", type=float, default=0.0,
                   help="fraction of stutter examples in phase 1 (the rest of phase 1 is the wide copy task)")
    p.add_argument("--p1-diverged", type=float, default=0.0,
                   help="fraction of phase-1 examples of the diverged kind (v6: spacers from the start, "
                        "next to the wide task's adjacent copies that leave the plateau)")
    p.add_argument("--phase1-steps", type=int, default=0,
                   help="v3: the first this many steps train ONLY the wide copy task (masking --mask-prob1)")
    p.add_argument("--wide-mutate-p", type=float, default=0.0,
                   help="v3.1 fine-tune: with this probability the wide task's second copy is mutated to an "
                        "identity uniform in --wide-id-lo..--wide-id-hi (a diverged copy, as in real repeats)")
    p.add_argument("--wide-id-lo", type=float, default=0.6)
    p.add_argument("--wide-id-hi", type=float, default=0.95)
    p.add_argument("--insert-exact-p", type=float, default=0.5,
                   help="insert task: probability that the inserted copy is exact (else --insert-id-lo..hi)")
    p.add_argument("--insert-id-lo", type=float, default=0.5)
    p.add_argument("--insert-id-hi", type=float, default=0.95)
    p.add_argument("--insert-offset-min", type=int, default=0,
                   help="insert task: the copy starts at least this many residues after (or before) its source")
    p.add_argument("--p-diverged", type=float, default=0.0,
                   help="v5: a short diverged copy far from its source (the shape of target T3), see Maker.diverged")
    p.add_argument("--div-len-lo", type=int, default=20)
    p.add_argument("--div-len-hi", type=int, default=100)
    p.add_argument("--div-id-lo", type=float, default=0.55)
    p.add_argument("--div-id-hi", type=float, default=0.9)
    p.add_argument("--div-id-start", type=float, default=None,
                   help="identity curriculum: diverged copies start at identity div_id_start..1 and the range "
                        "moves linearly to div_id_lo..div_id_hi over --div-id-steps steps (as the offset "
                        "curriculum let v3 learn long offsets that it could not learn all at once)")
    p.add_argument("--div-id-steps", type=int, default=2000)
    p.add_argument("--div-off-start", type=int, default=None,
                   help="spacer curriculum: the most residues between diverged copies grows geometrically from "
                        "this to --div-off-hi (and the fewest linearly from 0 to --div-off-lo) over --div-off-steps. "
                        "v4 looks a copy up only across spacers of up to ~50 residues, at any identity "
                        "(training/results/copy_lookup_v4.md)")
    p.add_argument("--div-off-steps", type=int, default=2500)
    p.add_argument("--div-off-lo", type=int, default=60, help="fewest residues between the two copies")
    p.add_argument("--div-off-hi", type=int, default=450, help="most residues between the two copies")
    p.add_argument("--div-random-p", type=float, default=0.5,
                   help="fraction of diverged examples whose unit and spacer are uniform random residues "
                        "(the rest: a natural segment copied inside natural sequence)")
    p.add_argument("--construct-neighbours", action="store_true",
                   help="build layer 0 head 0 as a neighbour-gathering head (training/neighbor_init.py) before training")
    p.add_argument("--construct-freeze-steps", type=int, default=0,
                   help="keep the constructed attention fixed for this many steps")
    p.add_argument("--p-scatter", type=float, default=0.0,
                   help="phase-2 fraction of 'scatter' examples (v7): copies of a short random unit at several random positions")
    p.add_argument("--p1-scatter", type=float, default=0.0, help="phase-1 fraction of 'scatter' examples")
    p.add_argument("--scatter-unit-lo", type=int, default=8)
    p.add_argument("--scatter-unit-hi", type=int, default=30)
    p.add_argument("--scatter-copies-lo", type=int, default=2)
    p.add_argument("--scatter-copies-hi", type=int, default=4)
    p.add_argument("--scatter-len-lo", type=int, default=48,
                   help="shortest scatter sequence; the longest grows with the copy_len curriculum (2 x copy_len, <= cap)")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--cap2", type=int, default=None,
                   help="v3: maximum crop (residues) in phase 2 (default: the --cap-start/--cap-end schedule)")
    p.add_argument("--mask-prob1", type=float, default=0.15, help="masking rate during phase 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--probe-every", type=int, default=500)
    p.add_argument("--save-every-min", type=float, default=4.0)
    p.add_argument("--stop-at", type=int, default=None,
                   help="testing: save the state and exit at this step (continue with --resume)")
    return p.parse_args()


class Maker(ExampleMaker):
    """v1's example maker (random residues, mutation to an identity, crops) with this run's tasks."""

    def __init__(self, seqs, comp, rng):
        super().__init__(seqs, comp, rng, max_crop=None)
        self.copy_len = 24
        self.wide_mutate_p, self.wide_id_lo, self.wide_id_hi = 0.0, 0.6, 0.95
        self.insert_exact_p, self.insert_id_lo, self.insert_id_hi, self.insert_offset_min = 0.5, 0.5, 0.95, 0

    def rand_res(self, n, uniform=True):  # uniform residues by default here (v1: the composition)
        return super().rand_res(n, uniform)

    def protein(self, min_len=1, max_len=None):
        for _ in range(1000):
            s = self.seqs[self.rng.integers(len(self.seqs))]
            if len(s) >= min_len and (max_len is None or len(s) <= max_len):
                return s
        return self.seqs[self.rng.integers(len(self.seqs))]

    def window(self, n):
        """n residues of natural sequence (concatenating proteins if one is too short)."""
        out = ""
        while len(out) < n:
            s = self.protein()
            need = n - len(out)
            if len(s) > need:
                st = int(self.rng.integers(0, len(s) - need + 1))
                s = s[st:st + need]
            out += s
        return out

    def easy(self, cap):
        L = int(self.rng.integers(8, 31))
        seg = self.rand_res(L)
        return self.rand_res(int(self.rng.integers(0, 11))) + seg + seg + self.rand_res(int(self.rng.integers(0, 11)))

    def loguniform_len(self, lo, hi):
        hi = max(lo, hi)
        return int(round(math.exp(self.rng.uniform(math.log(lo), math.log(hi + 0.5)))))

    def randdbl(self, cap):
        L = min(self.loguniform_len(8, self.copy_len), cap // 2)
        x = self.rand_res(L)
        if self.rng.random() < 0.3 and cap - 2 * L > 0:
            return x + self.window(int(self.rng.integers(1, cap - 2 * L + 1))) + x
        return x + x

    def gap(self, cap):
        L = int(self.rng.integers(8, 65))
        seg = self.rand_res(L)
        seg2 = seg if self.rng.random() < 0.7 else self.mutate(seg, self.rng.uniform(0.7, 0.95))
        g = int(self.rng.integers(0, max(1, min(self.copy_len, cap - 2 * L)) + 1))
        rest = max(0, cap - 2 * L - g)
        lf = int(self.rng.integers(0, min(rest, 40) + 1))
        rf = int(self.rng.integers(0, min(rest - lf, 40) + 1))
        return self.window(lf) + seg + self.window(g) + seg2 + self.window(rf)

    def doubled(self, cap):
        x = self.crop(self.protein(20), min(cap // 2, max(64, self.copy_len)))
        x2 = x if self.rng.random() < 0.6 else self.mutate(x, self.rng.uniform(0.5, 0.95))
        if self.rng.random() < 0.3 and cap - 2 * len(x) > 0:
            return x + self.window(int(self.rng.integers(1, cap - 2 * len(x) + 1))) + x2
        return x + x2

    def insert(self, cap):
        n_ins = 1 if self.rng.random() < 0.7 else 2
        s = self.protein(40)
        if len(s) > cap - 20:
            n = int(self.rng.integers(min(256, cap - 20), cap - 20 + 1))
            s = self.crop(s, n)
        for _ in range(n_ins):
            room = cap - len(s)
            lmax = min(150, len(s) // 3, room)
            if lmax < 10:
                break
            ls = int(self.rng.integers(10, lmax + 1))
            a = int(self.rng.integers(0, len(s) - ls + 1))
            seg = s[a:a + ls]
            if self.rng.random() >= self.insert_exact_p:
                seg = self.mutate(seg, self.rng.uniform(self.insert_id_lo, self.insert_id_hi))
            # the copy goes at least insert_offset_min residues from its source, where the crop allows
            off = self.insert_offset_min
            cand = [*range(0, a - off + 1), *range(a + off, len(s) + 1)] if off else []
            p = int(cand[self.rng.integers(len(cand))]) if cand else int(self.rng.integers(0, len(s) + 1))
            s = s[:p] + seg + s[p:]
        return s

    def plain(self, cap):
        return self.crop(self.protein(), cap)

    def wide(self, cap):
        """v3 copy task: uniform random x (L uniform in wide_min..wide_max) written x||x; random
        flanks / a random spacer sometimes, so neither the offset nor the distance to BOS/EOS tells
        where the partner is: only matching content does."""
        hi = max(self.wide_min, min(self.wide_max, cap // 2))
        if self.wide_follow:  # curriculum: log-uniform up to the current copy_len (short copies rehearsed)
            L = min(self.loguniform_len(self.wide_min, min(hi, self.copy_len)), hi)
        else:
            L = int(self.rng.integers(self.wide_min, hi + 1))
        x = self.rand_res(L)
        sp = ""
        if self.rng.random() < self.wide_spacer_p and cap - 2 * L > 0:
            sp = self.rand_res(int(self.rng.integers(0, min(L, cap - 2 * L) + 1)))
        lf = rf = ""
        if self.rng.random() < self.wide_flank_p:
            room = max(0, cap - 2 * L - len(sp))
            lf = self.rand_res(int(self.rng.integers(0, min(20, room) + 1)))
            rf = self.rand_res(int(self.rng.integers(0, min(20, room - len(lf)) + 1)))
        x2 = x
        if self.wide_mutate_p and self.rng.random() < self.wide_mutate_p:
            x2 = self.mutate(x, self.rng.uniform(self.wide_id_lo, self.wide_id_hi))
        return lf + x + sp + x2 + rf

    def diverged(self, cap):
        """v5 (target T3): a unit of div_len_lo..div_len_hi residues and a copy of it at div_id_lo..hi
        identity, div_off_lo..div_off_hi residues apart, with flanks. v4's mixture held diverged copies
        only with spacers shorter than the unit (wide) or inside crops whose offsets were mostly short,
        so a 50-residue copy at 70% identity hundreds of residues away was almost never seen. With
        div_random_p the unit and spacer are uniform random residues (only the look-up lowers the loss);
        otherwise a natural segment is copied inside natural sequence, as in the evaluation."""
        L = int(self.rng.integers(self.div_len_lo, self.div_len_hi + 1))
        gap = int(self.rng.integers(self.div_off_lo, self.div_off_hi + 1))
        gap = max(0, min(gap, cap - 2 * L))
        synthetic = self.rng.random() < self.div_random_p
        fill = self.rand_res if synthetic else self.window
        x = fill(L)
        x2 = self.mutate(x, self.rng.uniform(self.div_id_lo, self.div_id_hi))
        rest = max(0, cap - 2 * L - gap)
        lf = int(self.rng.integers(0, min(rest, 60) + 1))
        rf = int(self.rng.integers(0, min(rest - lf, 60) + 1))
        a, b = (x, x2) if self.rng.random() < 0.5 else (x2, x)  # the mutated copy comes first or second
        return fill(lf) + a + fill(gap) + b + fill(rf)

    def scatter(self, cap):
        """v7 (target T3): k copies (scatter_copies_lo..hi) of one uniform random unit of
        scatter_unit_lo..hi residues at random, non-overlapping positions of a uniform random
        sequence whose length is log-uniform in scatter_len_lo..min(cap, 2 x copy_len). Every
        partner sits at a random offset, so no offset-bound (positional) head lowers the loss, and
        a masked residue has k - 1 partners to find by content: the look-up T3 needs, with a
        stronger signal than one diverged copy behind a spacer."""
        n = self.loguniform_len(self.scatter_len_lo, max(self.scatter_len_lo, min(cap, 2 * self.copy_len)))
        u = int(self.rng.integers(self.scatter_unit_lo, self.scatter_unit_hi + 1))
        k = int(self.rng.integers(self.scatter_copies_lo, self.scatter_copies_hi + 1))
        k = max(2, min(k, n // (2 * u)))
        u = min(u, n // (2 * k))
        unit = self.rand_res(u)
        free = n - k * u
        cuts = np.sort(self.rng.integers(0, free + 1, k))
        gaps = np.diff(np.concatenate([[0], cuts, [free]]))
        return "".join(self.rand_res(int(g)) + (unit if j < k else "") for j, g in enumerate(gaps))

    def stutter(self, cap):
        n = int(self.rng.integers(10, max(10, min(self.wide_max, cap // 2)) + 1))
        return "".join(c + c for c in self.rand_res(n))

    def make(self, cap, probs):
        r = self.rng.random()
        acc = 0.0
        for k, pk in enumerate(probs):
            acc += pk
            if r < acc:
                return getattr(self, KINDS[k])(cap), k
        return self.plain(cap), len(KINDS) - 1


def make_pool(maker, cap, probs, max_tokens, rng):
    exs = [maker.make(cap, probs) for _ in range(256)]
    exs.sort(key=lambda e: len(e[0]))
    batches, cur = [], []
    for e in exs:
        if cur and (len(cur) + 1) * (len(e[0]) + 2) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(e)
    if cur:
        batches.append(cur)
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    os.makedirs(os.path.join(args.out_dir, "snapshots"), exist_ok=True)
    state_path = os.path.join(args.out_dir, "state.pt")

    train, held = split_proteins(args.fasta)
    train_seqs = [s for _, s in train]
    comp = aa_composition(train_seqs)
    unigram_ppl = math.exp(-(comp * np.log(comp)).sum())
    print(f"proteins: train {len(train)} ({sum(map(len, train_seqs))} aa), held-out {len(held)}; "
          f"unigram perplexity (train composition) {unigram_ppl:.3f}", flush=True)
    print("args: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), flush=True)

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    aa_idx = torch.tensor([alphabet.get_idx(a) for a in AA20])
    model = ESM2(num_layers=args.layers, embed_dim=args.embed_dim, attention_heads=args.heads,
                 alphabet=alphabet, token_dropout=True)
    if args.init and not args.resume:
        import hashlib
        with torch.serialization.safe_globals([argparse.Namespace]):
            d = torch.load(args.init, map_location="cpu", weights_only=True)
        c = d["cfg"]["model"]
        assert (c.encoder_layers, c.encoder_embed_dim, c.encoder_attention_heads) == \
            (args.layers, args.embed_dim, args.heads), "warm start needs the same architecture"
        sd = {k[len("encoder.sentence_encoder."):]: v for k, v in d["model"].items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.startswith("contact_head") for k in missing), (missing, unexpected)
        h = hashlib.sha256(open(args.init, "rb").read()).hexdigest()
        print(f"warm start from {args.init} (sha256 {h})", flush=True)
    if args.construct_neighbours and not args.resume:
        from neighbor_init import construct_neighbour_layer, neighbour_code_check
        info = construct_neighbour_layer(model, alphabet)
        print(f"constructed neighbour head (layer 0, head 0): {info}; largest deviation from the exact "
              f"neighbour mean on a 1,000-residue sequence {neighbour_code_check(model, alphabet, 1000):.3f} "
              f"of one neighbour's share", flush=True)
    if args.construct_neighbours:
        from neighbor_init import constructed_parameters
        constructed = constructed_parameters(model)
    else:
        constructed = []
    nparam = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("contact_head"))
    print(f"ESM2 {args.layers} layers x {args.embed_dim} x {args.heads} heads, {nparam} params "
          f"(excl. contact head)", flush=True)

    # probe: held-out proteins of 80-250 aa, fixed 15% masks; single copy vs first copy of x||x
    held_std = [s for _, s in held if set(s) <= set(AA20) and 80 <= len(s) <= 250][:48]
    vgen = torch.Generator().manual_seed(999)
    vtok = tokenize(alphabet, held_std)
    vinp, vsel = bert_mask(vtok, alphabet, vgen, aa_idx)
    dtok = tokenize(alphabet, [s + s for s in held_std])
    dinp = dtok.clone()
    dsel = torch.zeros_like(dtok, dtype=torch.bool)
    for b, s in enumerate(held_std):
        n = len(s)
        dinp[b, 1:n + 1] = vinp[b, 1:n + 1]
        dsel[b, 1:n + 1] = vsel[b, 1:n + 1]

    # copy probe: uniform random x of L residues doubled (x||x), 15% of the FIRST copy masked, CE
    # (chance = log 20 = 3.00 nats); one row set per offset L
    cgen = torch.Generator().manual_seed(998)
    crng = np.random.default_rng(998)
    cprobe = {}
    for L in (32, 64, 128, 256, 400):
        xs = ["".join(AA20[i] for i in crng.integers(0, 20, L)) for _ in range(6)]
        t = tokenize(alphabet, [x + x for x in xs])
        sel = torch.zeros_like(t, dtype=torch.bool)
        sel[:, 1:L + 1] = torch.rand(len(xs), L, generator=cgen) < 0.15
        inp = t.clone()
        inp[sel] = alphabet.mask_idx
        cprobe[L] = (inp, sel, t)

    def spacer_probe(label, n_substituted):
        """Masked rows of a uniform random 50-residue unit (30% of the FIRST copy masked) and its copy
        with ``n_substituted`` of its residues changed, a random spacer between them so that the second
        copy starts ``off`` residues after the first; one row set per offset, keyed ``label + off``."""
        out = {}
        for off in (128, 256, 400):
            rows = []
            for _ in range(6):
                x = "".join(AA20[i] for i in crng.integers(0, 20, 50))
                x2 = list(x)
                if n_substituted:  # (no draw for an exact copy: the rows stay those of the run logs)
                    for i in crng.choice(50, n_substituted, replace=False):
                        x2[i] = AA20[(AA20.index(x[i]) + int(crng.integers(1, 20))) % 20]
                spacer = "".join(AA20[i] for i in crng.integers(0, 20, off - 50))
                rows.append(x + spacer + "".join(x2))
            t = tokenize(alphabet, rows)
            sel = torch.zeros_like(t, dtype=torch.bool)
            sel[:, 1:51] = torch.rand(len(rows), 50, generator=cgen) < 0.3
            inp = t.clone()
            inp[sel] = alphabet.mask_idx
            out[f"{label}{off}"] = (inp, sel, t)
        return out

    # diverged copy probe (v3.1): the second copy at 70% identity (15 of 50 substituted, as
    # evaluate_plmscreen_mini.py's T3); then (v6) the same with the second copy exact, so the log
    # separates the distance (the look-up reaches the partner at all) from the identity (it matches a
    # diverged one). Built in this order: the rows depend on the order of the draws.
    spacer_probes = {**spacer_probe("d", 15), **spacer_probe("s", 0)}

    def probe():
        model.eval()
        with torch.no_grad():
            l1 = F.cross_entropy(model(vinp)["logits"][vsel], vtok[vsel]).item()
            l2 = F.cross_entropy(model(dinp)["logits"][dsel], dtok[dsel]).item()
            cl = {L: F.cross_entropy(model(i)["logits"][m], t[m]).item() for L, (i, m, t) in cprobe.items()}
            cl.update({k: F.cross_entropy(model(i)["logits"][m], t[m]).item() for k, (i, m, t) in spacer_probes.items()})
        model.train()
        return l1, l2, cl

    model.eval()
    with torch.no_grad():
        ref = model(dinp[:8])["logits"]
        patch_sdpa(model)
        new = model(dinp[:8])["logits"]
    print(f"SDPA patch: max |dlogit| vs stock attention = {(ref - new).abs().max().item():.2e}", flush=True)
    model.train()

    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("contact_head")],
                            lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    maker = Maker(train_seqs, comp, rng)
    maker.wide_min, maker.wide_max = args.wide_min, args.wide_max
    maker.wide_spacer_p, maker.wide_flank_p = args.wide_spacer_p, args.wide_flank_p
    maker.wide_follow = args.wide_follow_copy_len
    maker.wide_mutate_p, maker.wide_id_lo, maker.wide_id_hi = args.wide_mutate_p, args.wide_id_lo, args.wide_id_hi
    maker.insert_exact_p, maker.insert_id_lo, maker.insert_id_hi = args.insert_exact_p, args.insert_id_lo, args.insert_id_hi
    maker.insert_offset_min = args.insert_offset_min
    maker.div_len_lo, maker.div_len_hi, maker.div_id_lo, maker.div_id_hi = \
        args.div_len_lo, args.div_len_hi, args.div_id_lo, args.div_id_hi
    maker.div_off_lo, maker.div_off_hi, maker.div_random_p = args.div_off_lo, args.div_off_hi, args.div_random_p
    maker.scatter_unit_lo, maker.scatter_unit_hi = args.scatter_unit_lo, args.scatter_unit_hi
    maker.scatter_copies_lo, maker.scatter_copies_hi = args.scatter_copies_lo, args.scatter_copies_hi
    maker.scatter_len_lo = args.scatter_len_lo
    probs = [args.p_easy, args.p_randdbl, args.p_gap, args.p_doubled, args.p_insert, args.p_wide, args.p_stutter,
             args.p_diverged, args.p_scatter]
    probs1 = [0, 0, 0, 0, 0, 1.0 - args.p1_stutter - args.p1_diverged - args.p1_scatter, args.p1_stutter,
              args.p1_diverged, args.p1_scatter]
    assert sum(probs) <= 1.0

    step, pool = 0, []
    kind_count = np.zeros(len(KINDS), dtype=np.int64)
    tok_count = 0
    active_s, wall_s = 0.0, 0.0
    if args.resume:
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, pool = st["step"], st["pool"]
        rng.bit_generator.state = st["np_rng"]
        gen.set_state(st["torch_gen"])
        torch.set_rng_state(st["torch_rng"])
        kind_count, tok_count = st["kind_count"], st["tok_count"]
        if len(kind_count) < len(KINDS):  # a state from before the "wide"/"stutter" kinds: they count 0
            kind_count = np.concatenate([kind_count[:-1], np.zeros(len(KINDS) - len(kind_count), np.int64),
                                         kind_count[-1:]])
        active_s, wall_s = st["active_s"], st["wall_s"]
        print(f"resumed from {state_path} at step {step} (active {active_s / 60:.1f} min, "
              f"wall {wall_s / 60:.1f} min so far)", flush=True)
        old = st["args"]
        # arguments added after the state was written are compared only if the state has them
        changed = {k: (old.get(k), v) for k, v in vars(args).items()
                   if k in old and old.get(k) != v and k != "resume"}
        if changed:
            print(f"arguments changed on resume: {changed}", flush=True)
            phase2_args = {"phase1_steps", "p_stutter", "p_easy", "p_randdbl", "p_gap", "p_doubled", "p_insert", "p_wide",
                           "mask_prob", "cap2", "copy_len_start", "copy_len_end", "copy_len_steps"}
            assert set(changed) <= {"steps", "decay_steps", "save_every_min", "log_every", "probe_every", "out_dir",
                                    "stop_at"} | phase2_args, changed
            if set(changed) & phase2_args:  # these act only from phase 2 on: still in phase 1 under both
                assert step <= min(old["phase1_steps"], args.phase1_steps), \
                    "phase-2 arguments may only change while still in phase 1 (under the old and new values)"
            if "steps" in changed or "decay_steps" in changed:
                assert step <= min(old["steps"] - old["decay_steps"], args.steps - args.decay_steps), \
                    "--steps/--decay-steps may only change while the LR is still constant under both"

    def save_state():
        tmp = state_path + ".partial"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "pool": pool,
                    "np_rng": rng.bit_generator.state, "torch_gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "kind_count": kind_count, "tok_count": tok_count,
                    "active_s": active_s, "wall_s": wall_s, "args": vars(args)}, tmp)
        os.replace(tmp, state_path)
        save_checkpoint(model, args, os.path.join(args.out_dir, "snapshots", f"esm2_step{step}.pt"))

    acc_loss, acc_n = np.zeros(len(KINDS)), np.zeros(len(KINDS))
    c0, w0 = time.process_time(), time.time()
    last_save = time.time()
    print(f"training to step {args.steps}; cap {args.cap_start}->{args.cap_end} over the first "
          f"{args.widen_steps} steps; LR constant {args.lr:g} after {args.warmup_steps} warm-up steps, cosine "
          f"decay over steps {args.steps - args.decay_steps}-{args.steps}", flush=True)
    while step < args.steps:
        cap = int(args.cap_start + (args.cap_end - args.cap_start) * min(1.0, step / args.widen_steps))
        if args.cap2 is not None and step >= args.phase1_steps:
            cap = args.cap2
        maker.copy_len = int(args.copy_len_start * (args.copy_len_end / args.copy_len_start)
                             ** min(1.0, step / args.copy_len_steps))
        if args.div_off_start is not None:
            t = min(1.0, step / max(1, args.div_off_steps))
            maker.div_off_hi = int(round(args.div_off_start * (args.div_off_hi / args.div_off_start) ** t))
            maker.div_off_lo = min(maker.div_off_hi, int(round(args.div_off_lo * t)))
        if args.div_id_start is not None:
            t = min(1.0, step / max(1, args.div_id_steps))
            maker.div_id_lo = args.div_id_start + (args.div_id_lo - args.div_id_start) * t
            maker.div_id_hi = 1.0 + (args.div_id_hi - 1.0) * t
        phase1 = step < args.phase1_steps
        for prm in constructed:
            prm.requires_grad_(step >= args.construct_freeze_steps)
        if not pool:
            pool = make_pool(maker, cap, probs1 if phase1 else probs, args.max_tokens, rng)
        batch = pool.pop()
        seqs = [e[0] for e in batch]
        kinds = torch.tensor([e[1] for e in batch])
        for k in kinds.tolist():
            kind_count[k] += 1
        if step < args.warmup_steps:
            lr = args.lr * (step + 1) / args.warmup_steps
        elif step < args.steps - args.decay_steps:
            lr = args.lr
        else:
            t = (step - (args.steps - args.decay_steps)) / max(1, args.decay_steps)
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))
        for g in opt.param_groups:
            g["lr"] = lr
        toks = tokenize(alphabet, seqs)
        tok_count += int(toks.numel())
        train_step(model, opt, toks, kinds, alphabet, gen, aa_idx, acc_loss, acc_n,
                   args.mask_prob1 if phase1 else args.mask_prob)
        step += 1
        c1, w1 = time.process_time(), time.time()
        active_s += c1 - c0
        wall_s += w1 - w0
        c0, w0 = c1, w1
        if step % args.log_every == 0:
            ls = " ".join(f"{KINDS[k]}={acc_loss[k] / acc_n[k]:.3f}" if acc_n[k] else f"{KINDS[k]}=-"
                          for k in range(len(KINDS)))
            print(f"step {step} active {active_s / 60:6.1f} min wall {wall_s / 60:6.1f} min cap {cap} "
                  f"copy_len {maker.copy_len} "
                  + (f"div_id {maker.div_id_lo:.2f}-{maker.div_id_hi:.2f} " if args.div_id_start is not None else "")
                  + (f"div_off {maker.div_off_lo}-{maker.div_off_hi} " if args.div_off_start is not None else "")
                  + f"lr {lr:.2e} loss {ls}", flush=True)
            acc_loss[:] = 0
            acc_n[:] = 0
        if step % args.probe_every == 0:
            l1, l2, cl = probe()
            print(f"    probe (48 held-out proteins 80-250 aa, 15% masked): single ppl {math.exp(l1):.2f}, "
                  f"first copy of x||x ppl {math.exp(l2):.2f}; copy probe CE (random x||x, offset L): "
                  + " ".join(f"L{L}={v:.2f}" for L, v in cl.items()), flush=True)
        if time.time() - last_save > args.save_every_min * 60:
            save_state()
            last_save = time.time()
            c0, w0 = time.process_time(), time.time()  # saving time is not training time
        if args.stop_at is not None and step >= args.stop_at:
            save_state()
            print(f"stopped at step {step} (--stop-at); continue with --resume", flush=True)
            return

    save_state()
    unpatch(model)
    model.eval()
    l1, l2, cl = probe()
    n_ex = int(kind_count.sum())
    print(f"done: {step} steps, active (CPU) {active_s / 60:.1f} min, wall {wall_s / 60:.1f} min "
          f"(excluding checkpoint I/O); {tok_count} padded tokens; examples {n_ex}, by kind "
          + ", ".join(f"{KINDS[k]} {kind_count[k]}" for k in range(len(KINDS)))
          + f"; with an internal repeat {(n_ex - kind_count[-1]) / n_ex:.1%}", flush=True)
    print(f"final probe (stock attention): single ppl {math.exp(l1):.2f}, first copy of x||x ppl "
          f"{math.exp(l2):.2f}; copy probe CE " + " ".join(f"L{L}={v:.2f}" for L, v in cl.items()), flush=True)
    out = os.path.join(args.out_dir, "final", "esm2_plmscreen_mini.pt")
    save_checkpoint(model, args, out)
    dlog = verify_checkpoint(model, out, alphabet)
    digest = sha256_file(out)
    with open(out + ".sha256", "w") as fh:
        fh.write(f"{digest}  {os.path.basename(out)}\n")
    print(f"saved {out} ({os.path.getsize(out)} bytes), sha256 {digest}; "
          f"load_model_and_alphabet_core max |dlogit| = {dlog:.3e}", flush=True)


if __name__ == "__main__":
    main()
