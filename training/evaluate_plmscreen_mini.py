#!/usr/bin/env python3
"""Evaluate plmscreen-mini on HELD-OUT E. coli proteins (never trained on).

Loads the checkpoint through fair-esm's own loader (esm.pretrained.load_model_and_alphabet_core)
and uses the stock fair-esm forward. Scoring is a plain one-mask-per-row loop: for residue i
(0-based) the row is the tokenised sequence (BOS + residues + EOS) with token i+1 replaced by
<mask> (plus, where stated, the partner token), and we read log_softmax(logits[i+1])[x_i].
Rows of the same sequence are stacked into a batch only for speed (no padding: same length).
PPPL = exp(-mean over the scored residues).

Measures
 (a) masked-LM perplexity on held-out proteins: 15% of residues replaced by <mask> (one draw per
     protein, first 256 residues), perplexity = exp(mean CE over masked residues); compared with
     the unigram baseline = perplexity of the training amino-acid composition (exp of its
     entropy) and its cross-entropy on the held-out residues.
 (b) PPPL single vs doubled x||x (scored over both copies) vs doubled with the partner co-masked
     (mask i and its partner i+-L, read i) vs a null control (mask i and a random non-partner
     position, read i; first copy), for 50-residue prefixes (every residue scored) and for whole
     proteins of 60-200 residues (a fixed random subset of --whole-positions residues per copy, the
     same subset in every condition, to fit the CPU budget: each row is one full forward pass).
 (c) imperfect repeats: x||x' with x' mutated to ~70% and ~50% identity (exact number of
     substitutions round((1-id)L), each to a different random amino acid); PPPL over the first
     (unmutated) copy, partner visible vs co-masked, vs the single-copy PPPL of the same residues.
Writes JSON to --out (default training/results/plmscreen_mini_eval.json).
"""
import argparse
import hashlib
import json
import math
import time

import numpy as np
import torch

import esm
import esm.pretrained

AA20 = "ACDEFGHIKLMNPQRSTVWY"


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="screening/models/esm2_plmscreen_mini.pt")
    p.add_argument("--fasta", default="/work/shared/data/fasta/UP000000625_83333_ecoli_k12.fasta")
    p.add_argument("--out", default="training/results/plmscreen_mini_eval.json")
    p.add_argument("--n-prefix", type=int, default=20)
    p.add_argument("--n-whole", type=int, default=12)
    p.add_argument("--whole-positions", type=int, default=30,
                   help="residues scored per copy for whole proteins (random subset; CPU budget)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-row-tokens", type=int, default=8192)
    return p.parse_args()


def read_fasta(path):
    recs, acc, seq = [], None, []
    for line in open(path):
        line = line.strip()
        if line.startswith(">"):
            if acc is not None:
                recs.append((acc, "".join(seq)))
            acc, seq = line[1:].split("|")[1], []
        elif line:
            seq.append(line)
    recs.append((acc, "".join(seq)))
    return recs


def is_heldout(acc):  # same rule as the training script
    return int(hashlib.md5(acc.encode()).hexdigest(), 16) % 10 == 0


class Scorer:
    def __init__(self, model, alphabet, max_row_tokens):
        self.model, self.alphabet, self.max_row_tokens = model, alphabet, max_row_tokens

    def tokens(self, seq):
        a = self.alphabet
        return torch.tensor([a.cls_idx] + [a.get_idx(c) for c in seq] + [a.eos_idx], dtype=torch.long)

    @torch.no_grad()
    def logp_masked(self, seq, jobs):
        """jobs: list of (i, extra) -> log P(x_i | seq with residue i and residues in extra masked).
        Residue i is token i+1 (BOS first)."""
        toks = self.tokens(seq)
        T = toks.numel()
        per = max(1, self.max_row_tokens // T)
        out = []
        for s in range(0, len(jobs), per):
            chunk = jobs[s:s + per]
            batch = toks.repeat(len(chunk), 1)
            for r, (i, extra) in enumerate(chunk):
                batch[r, i + 1] = self.alphabet.mask_idx
                for j in extra:
                    batch[r, j + 1] = self.alphabet.mask_idx
            lp = torch.log_softmax(self.model(batch)["logits"].float(), dim=-1)
            for r, (i, _) in enumerate(chunk):
                out.append(lp[r, i + 1, toks[i + 1]].item())
        return np.array(out)


def pppl(lps):
    return float(math.exp(-np.mean(lps)))


def summarise(vals):
    v = np.array(vals)
    if v.size == 0:
        return None
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "max": float(v.max()), "n": int(len(v))}


def mutate(seq, identity, rng):
    L = len(seq)
    n_sub = int(round((1 - identity) * L))
    pos = rng.choice(L, size=n_sub, replace=False)
    s = list(seq)
    for p in pos:
        s[p] = rng.choice([a for a in AA20 if a != s[p]])
    return "".join(s), 1 - n_sub / L


def repeat_panel(scorer, seqs, rng, label, n_pos=None):
    """n_pos=None: score every residue; else a fixed random subset P of n_pos residue indices of
    the first copy (and their partners in the second copy), the same P for every condition."""
    rows, t0 = [], time.time()
    for acc, x in seqs:
        L = len(x)
        P = np.arange(L) if (n_pos is None or n_pos >= L) else np.sort(rng.choice(L, n_pos, replace=False))
        P = [int(i) for i in P]
        d = x + x
        single = scorer.logp_masked(x, [(i, ()) for i in P])
        both = P + [i + L for i in P]
        dbl = scorer.logp_masked(d, [(i, ()) for i in both])
        partner = lambda i: i + L if i < L else i - L  # noqa: E731
        co = scorer.logp_masked(d, [(i, (partner(i),)) for i in both])
        nulls = []
        for i in P:  # null control on the first copy: co-mask a random non-partner position
            j = int(rng.integers(2 * L - 2))
            lo, hi = i, i + L
            j = j + (j >= lo)
            j = j + (j >= hi)
            nulls.append((i, (j,)))
        null = scorer.logp_masked(d, nulls)
        n = len(P)
        r = {"acc": acc, "len": L, "n_scored_positions_per_copy": n,
             "pppl_single": pppl(single),
             "pppl_doubled": pppl(dbl), "pppl_doubled_copy1": pppl(dbl[:n]), "pppl_doubled_copy2": pppl(dbl[n:]),
             "pppl_doubled_partner_comasked": pppl(co),
             "pppl_doubled_copy1_random_comasked": pppl(null),
             "pppl_doubled_copy1_partner_comasked": pppl(co[:n])}
        for ident in (0.7, 0.5):
            xm, real_id = mutate(x, ident, rng)
            dm = x + xm
            vis = scorer.logp_masked(dm, [(i, ()) for i in P])
            com = scorer.logp_masked(dm, [(i, (i + L,)) for i in P])
            k = f"id{int(ident * 100)}"
            r[f"{k}_identity"] = real_id
            r[f"pppl_{k}_copy1"] = pppl(vis)
            r[f"pppl_{k}_copy1_partner_comasked"] = pppl(com)
            same = np.array([x[i] == xm[i] for i in P])
            r[f"pppl_{k}_copy1_partner_identical"] = pppl(vis[same]) if same.any() else None
            r[f"pppl_{k}_copy1_partner_substituted"] = pppl(vis[~same]) if (~same).any() else None
        rows.append(r)
        print(f"   {acc} L={L} single {r['pppl_single']:.2f} doubled {r['pppl_doubled']:.2f} "
              f"co-masked {r['pppl_doubled_partner_comasked']:.2f} [{time.time() - t0:.0f}s]", flush=True)
    keys = [k for k in rows[0] if k.startswith("pppl_")]
    summ = {k: summarise([r[k] for r in rows if r[k] is not None]) for k in keys}
    summ["mean_len"] = float(np.mean([r["len"] for r in rows]))
    summ["scored_positions"] = "all" if n_pos is None else f"random subset of {n_pos} per copy"
    print(f"{label}: {len(rows)} proteins in {time.time() - t0:.0f}s", flush=True)
    for k in keys:
        if summ[k] is not None:
            print(f"   {k:45s} mean {summ[k]['mean']:8.2f}  median {summ[k]['median']:8.2f}", flush=True)
    return {"summary": summ, "per_protein": rows}


@torch.no_grad()
def mlm_perplexity(model, alphabet, seqs, gen, draws=1, max_len=256, batch_tokens=8192):
    tot, n = 0.0, 0
    ce = torch.nn.CrossEntropyLoss(reduction="sum")
    items = []
    for _, s in seqs:
        s = s[:max_len]
        for _ in range(draws):
            items.append(s)
    items.sort(key=len)
    i = 0
    while i < len(items):
        T = len(items[i]) + 2
        j = i
        while j < len(items) and (j - i + 1) * (len(items[j]) + 2) <= batch_tokens:
            j += 1
        j = max(j, i + 1)
        chunk = items[i:j]
        Tm = max(len(s) for s in chunk) + 2
        toks = torch.full((len(chunk), Tm), alphabet.padding_idx, dtype=torch.long)
        sel = torch.zeros_like(toks, dtype=torch.bool)
        for b, s in enumerate(chunk):
            toks[b, 0] = alphabet.cls_idx
            toks[b, 1:len(s) + 1] = torch.tensor([alphabet.get_idx(c) for c in s])
            toks[b, len(s) + 1] = alphabet.eos_idx
            m = torch.rand(len(s), generator=gen) < 0.15
            if not m.any():
                m[torch.randint(len(s), (1,), generator=gen)] = True
            sel[b, 1:len(s) + 1] = m
        inp = toks.masked_fill(sel, alphabet.mask_idx)
        logits = model(inp)["logits"].float()
        tot += ce(logits[sel], toks[sel]).item()
        n += int(sel.sum())
        i = j
        del T
    return math.exp(tot / n), n


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    with open(args.model, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    import argparse as _ap
    with torch.serialization.safe_globals([_ap.Namespace]):
        data = torch.load(args.model, map_location="cpu", weights_only=True)
    model, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_plmscreen_mini", data, None)
    model.eval()
    cfg = data["cfg"]["model"]
    nparam = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("contact_head"))

    recs = read_fasta(args.fasta)
    train = [s for a, s in recs if not is_heldout(a)]
    held = [(a, s) for a, s in recs if is_heldout(a)]
    held_std = [(a, s) for a, s in held if set(s) <= set(AA20)]

    counts = np.zeros(20)
    for s in train:
        for c in s:
            if c in AA20:
                counts[AA20.index(c)] += 1
    comp = counts / counts.sum()
    unigram_ppl = math.exp(-(comp * np.log(comp)).sum())
    hcounts = np.zeros(20)
    for _, s in held_std:
        for c in s:
            hcounts[AA20.index(c)] += 1
    unigram_xent_ppl = math.exp(-(hcounts / hcounts.sum() * np.log(comp)).sum())

    mlm_ppl, n_masked = mlm_perplexity(model, alphabet, held_std, gen)
    print(f"(a) held-out MLM perplexity (15% <mask>, {n_masked} masked residues over {len(held_std)} "
          f"proteins): {mlm_ppl:.2f}; unigram baseline {unigram_ppl:.2f} (cross-entropy on held-out "
          f"{unigram_xent_ppl:.2f}) [{time.time() - t0:.0f}s]", flush=True)

    order = rng.permutation(len(held_std))
    whole = [held_std[k] for k in order if 60 <= len(held_std[k][1]) <= 200][:args.n_whole]
    used = {a for a, _ in whole}
    prefix = [(a, s[:50]) for a, s in (held_std[k] for k in order)
              if len(s) > 200 and a not in used][:args.n_prefix]

    res_prefix = repeat_panel(Scorer(model, alphabet, args.max_row_tokens), prefix, rng, "(b,c) 50-residue prefixes")
    res_whole = repeat_panel(Scorer(model, alphabet, args.max_row_tokens), whole, rng, "(b,c) whole proteins 60-200",
                             n_pos=args.whole_positions)

    out = {
        "model": args.model, "sha256": sha,
        "architecture": {"class": "esm.model.esm2.ESM2", "layers": cfg.encoder_layers,
                         "embed_dim": cfg.encoder_embed_dim, "heads": cfg.encoder_attention_heads,
                         "token_dropout": cfg.token_dropout, "params_excl_contact_head": nparam},
        "heldout_split": "md5(UniProt accession) % 10 == 0",
        "n_heldout_proteins": len(held), "n_heldout_standard_aa": len(held_std),
        "a_mlm": {"mlm_perplexity_15pct_mask": mlm_ppl, "n_masked_residues": n_masked,
                  "unigram_perplexity_train_composition": unigram_ppl,
                  "unigram_cross_entropy_perplexity_on_heldout": unigram_xent_ppl,
                  "pppl_single_whole_60_200_mean": res_whole["summary"]["pppl_single"]["mean"],
                  "pppl_single_prefix50_mean": res_prefix["summary"]["pppl_single"]["mean"]},
        "b_c_prefix50": res_prefix, "b_c_whole_60_200": res_whole,
        "notes": "PPPL means are arithmetic means of per-protein PPPL. 'doubled' scores all 2L "
                 "residues of x||x; 'partner_comasked' masks i and i+-L and reads i; "
                 "'copy1_random_comasked' masks i (first copy) and one random non-partner position (null "
                 "control). Whole proteins: a random subset of --whole-positions residues per copy. "
                 "idNN: second copy mutated to NN% identity, scored over the first copy.",
        "eval_wall_s": time.time() - t0, "threads": args.threads, "seed": args.seed,
    }
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.out} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
