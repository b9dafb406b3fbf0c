#!/usr/bin/env python3
"""Train "plmscreen-mini": a tiny ESM-2-architecture masked LM that is a POSITIVE CONTROL for the
repeat look-up effect (arXiv 2504.17068). CPU only, one thread, time-budgeted.

Model: fair-esm's own ``esm.model.esm2.ESM2`` (rotary positions, token_dropout=True, alphabet
"ESM-1b"), default 3 layers x 128 dims x 8 heads. AdamW, 15% BERT-style masking (80% <mask>,
10% random amino acid, 10% unchanged) over real residues only (never BOS/EOS/pad).

Data: E. coli K-12 reference proteome (UniProt UP000000625, CC BY 4.0; the FASTA download of
https://www.uniprot.org/proteomes/UP000000625), passed with the required --fasta. Held-out split BY PROTEIN:
a protein is held out iff int(md5(accession).hexdigest(), 16) % 10 == 0 (~10%); held-out proteins
are never used to build training examples (they only feed the small validation probe printed
during training and training/evaluate_plmscreen_mini.py). Non-standard residues (e.g. U) are kept
as their ESM-1b alphabet tokens; synthetic/mutated residues are drawn from the 20 standard ones.

Copy curriculum (fractions of EXAMPLES, sampled independently per example with a fixed seed):
  Phase 1 (until the copy-task loss logged over 100 steps falls below --phase1-until-loss, 2.0
    nats, or at most --phase1-frac of the budget): 100% synthetic copy task, the recipe that taught
    a small ESM2 to copy on CPU (docs/science.md): a uniform random 8-30-mer written twice
    side by side with random flanks of 0-10 residues.
    -> 100% of phase-1 examples carry an internal repeat.
  Phase 2 (rest of the budget): mixture
    --p-copy (25%) of the phase-1 copy task (rehearsal: a harder long-gap variant, --hard-copy,
        made the model forget copying within a few hundred steps),
    --p-doubled (25%) doubled natural crop x||x (x: 20-200 aa, from the protein start with p=0.5;
        second copy exact with p=0.7, else mutated to 50-95% identity),
    --p-insert (20%) natural crop (<= --max-crop, 128 aa) with an inserted copy of one of its own
        segments (10-80 aa) at a random position (exact with p=0.6, else mutated to 50-95%),
    the rest (30%) plain natural crops (<= 128 aa).
    -> 70% of phase-2 examples carry an internal repeat (exact or mutated copy); the overall share
       is printed at the end of the training log.

The recorded model (v1): python training/train_plmscreen_mini.py --threads 2 --minutes 24
    --phase1-frac 0.55 --max-tokens-phase1 4096 --p-copy 0.25 --p-doubled 0.25 --p-insert 0.2
    --fasta UP000000625_83333_ecoli_k12.fasta   (--fasta had a default then; it is now required)
v2 (protein-scale copying) continues from this model: training/train_plmscreen_control.py.

LR: linear warm-up (300 steps) to --lr, then cosine decay to 0.1 x --lr over the wall-clock
budget (the schedule is driven by elapsed time, so the exact step count depends on machine speed;
everything else is seeded and deterministic). Batches: a pool of examples is sorted by length and
cut into batches of at most --max-tokens padded tokens.

Training speed-up: during training only, fair-esm's attention is routed through
torch.nn.functional.scaled_dot_product_attention (same weights, same rotary embedding; checked
against the stock forward at start-up, max |dlogit| printed). The saved checkpoint is a plain
ESM2 state dict and is evaluated with the stock forward.

Output: --out in fair-esm's ESM-2 on-disk format ({"cfg": {"model": Namespace(...)},
"model": {"encoder.sentence_encoder." + k: v}} without contact_head), plus <out>.sha256.
Verified to load with esm.pretrained.load_model_and_alphabet_core and give identical logits.

Default run (what was used for screening/models/esm2_plmscreen_mini.pt):
  python training/train_plmscreen_mini.py --minutes 30 --fasta UP000000625_83333_ecoli_k12.fasta \
      --out screening/models/esm2_plmscreen_mini.pt
"""
import argparse
import hashlib
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import esm
from esm.model.esm2 import ESM2

AA20 = "ACDEFGHIKLMNPQRSTVWY"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", required=True, help="UniProt UP000000625 E. coli K-12 proteome FASTA")
    p.add_argument("--out", default="screening/models/esm2_plmscreen_mini.pt")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-tokens", type=int, default=3072, help="padded tokens per batch (phase 2)")
    p.add_argument("--max-tokens-phase1", type=int, default=2048, help="padded tokens per batch (phase 1)")
    p.add_argument("--phase1-frac", type=float, default=0.35, help="fraction of budget on pure copy task (at most)")
    p.add_argument("--phase1-until-loss", type=float, default=2.0,
                   help="leave the copy task early once its logged loss falls below this (nats)")
    p.add_argument("--p-copy", type=float, default=0.25, help="phase 2: synthetic copy task share")
    p.add_argument("--p-doubled", type=float, default=0.20, help="phase 2: doubled natural crop share")
    p.add_argument("--p-insert", type=float, default=0.15, help="phase 2: inserted-copy crop share")
    p.add_argument("--max-crop", type=int, default=128)
    p.add_argument("--hard-copy", action="store_true",
                   help="phase 2 copy examples with long gaps and composition-drawn residues (default: phase-1 task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--probe-every", type=int, default=500)
    p.add_argument("--save-every-min", type=float, default=5.0)
    p.add_argument("--no-sdpa", action="store_true", help="use fair-esm's stock attention")
    return p.parse_args()


# ----------------------------------------------------------------------------- data
def read_fasta(path):
    recs, acc, seq = [], None, []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if acc is not None:
                    recs.append((acc, "".join(seq)))
                acc = line[1:].split("|")[1] if "|" in line else line[1:].split()[0]
                seq = []
            else:
                seq.append(line)
    if acc is not None:
        recs.append((acc, "".join(seq)))
    return recs


def is_heldout(acc):
    """Deterministic ~10% held-out split by UniProt accession."""
    return int(hashlib.md5(acc.encode()).hexdigest(), 16) % 10 == 0


def split_proteins(fasta):
    recs = read_fasta(fasta)
    train = [(a, s) for a, s in recs if not is_heldout(a)]
    held = [(a, s) for a, s in recs if is_heldout(a)]
    return train, held


def aa_composition(seqs):
    counts = np.zeros(20)
    idx = {a: i for i, a in enumerate(AA20)}
    for s in seqs:
        for c in s:
            if c in idx:
                counts[idx[c]] += 1
    return counts / counts.sum()


class ExampleMaker:
    KINDS = ("copy", "doubled", "insert", "plain")

    def __init__(self, seqs, comp, rng, max_crop, easy_copy=True):
        self.easy_copy = easy_copy
        self.seqs = seqs
        self.comp = comp
        self.aa = np.array(list(AA20))
        self.rng = rng
        self.max_crop = max_crop

    def rand_res(self, n, uniform=False):
        if n <= 0:
            return ""
        return "".join(self.rng.choice(self.aa, size=n, p=None if uniform else self.comp))

    def mutate(self, s, identity):
        out = list(s)
        for i in range(len(out)):
            if self.rng.random() > identity:
                choices = [a for a in AA20 if a != out[i]]
                out[i] = choices[self.rng.integers(len(choices))]
        return "".join(out)

    def rand_protein(self, min_len=1):
        while True:
            s = self.seqs[self.rng.integers(len(self.seqs))]
            if len(s) >= min_len:
                return s

    def crop(self, s, n, from_start=False):
        if len(s) <= n:
            return s
        st = 0 if from_start else int(self.rng.integers(0, len(s) - n + 1))
        return s[st:st + n]

    def copy_task(self, seg_max=64, gap_max=60, flank_max=40, uniform=False, p_mutate=0.2):
        L = int(self.rng.integers(8, seg_max + 1))
        seg = self.rand_res(L, uniform)
        seg2 = self.mutate(seg, self.rng.uniform(0.70, 0.95)) if self.rng.random() < p_mutate else seg
        left = self.rand_res(int(self.rng.integers(0, flank_max + 1)), uniform)
        gap = self.rand_res(int(self.rng.integers(0, gap_max + 1)), uniform)
        right = self.rand_res(int(self.rng.integers(0, flank_max + 1)), uniform)
        return left + seg + gap + seg2 + right

    def doubled(self):
        n = int(self.rng.integers(20, 201))
        x = self.crop(self.rand_protein(20), n, from_start=self.rng.random() < 0.5)
        x2 = x if self.rng.random() < 0.7 else self.mutate(x, self.rng.uniform(0.5, 0.95))
        return x + x2

    def insert(self):
        ls = int(self.rng.integers(10, 81))
        c = self.crop(self.rand_protein(ls + 10), int(self.rng.integers(ls + 10, self.max_crop + 1)))
        a = int(self.rng.integers(0, len(c) - ls + 1))
        seg = c[a:a + ls]
        if self.rng.random() >= 0.6:
            seg = self.mutate(seg, self.rng.uniform(0.5, 0.95))
        p = int(self.rng.integers(0, len(c) + 1))
        return c[:p] + seg + c[p:]

    def plain(self):
        return self.crop(self.rand_protein(), self.max_crop)

    def make(self, phase, p_copy, p_doubled, p_insert):
        if phase == 1:
            # The recipe that taught a small ESM2 to copy on CPU (docs/science.md): uniform
            # random 8-30-mers written twice, side by side, with short random flanks.
            return self.copy_task(30, 0, 10, uniform=True, p_mutate=0.0), 0
        r = self.rng.random()
        if r < p_copy:
            # Keep rehearsing the phase-1 task: the harder long-gap variant made the model forget copying.
            if self.easy_copy:
                return self.copy_task(30, 0, 10, uniform=True, p_mutate=0.0), 0
            return self.copy_task(100, 120, 40), 0
        if r < p_copy + p_doubled:
            return self.doubled(), 1
        if r < p_copy + p_doubled + p_insert:
            return self.insert(), 2
        return self.plain(), 3


def tokenize(alphabet, seqs):
    """BOS + residues + EOS, right-padded."""
    T = max(len(s) for s in seqs) + 2
    toks = torch.full((len(seqs), T), alphabet.padding_idx, dtype=torch.long)
    for b, s in enumerate(seqs):
        toks[b, 0] = alphabet.cls_idx
        toks[b, 1:len(s) + 1] = torch.tensor([alphabet.get_idx(c) for c in s], dtype=torch.long)
        toks[b, len(s) + 1] = alphabet.eos_idx
    return toks


def bert_mask(toks, alphabet, gen, aa_idx, p=0.15):
    """15% of real residues selected; 80% -> <mask>, 10% -> random AA, 10% unchanged."""
    special = (toks == alphabet.padding_idx) | (toks == alphabet.cls_idx) | (toks == alphabet.eos_idx)
    sel = (torch.rand(toks.shape, generator=gen) < p) & ~special
    # guarantee at least one masked residue per row
    for b in range(toks.shape[0]):
        if not sel[b].any():
            cand = (~special[b]).nonzero().flatten()
            sel[b, cand[torch.randint(len(cand), (1,), generator=gen)]] = True
    r = torch.rand(toks.shape, generator=gen)
    inp = toks.clone()
    inp[sel & (r < 0.8)] = alphabet.mask_idx
    rnd = sel & (r >= 0.8) & (r < 0.9)
    inp[rnd] = aa_idx[torch.randint(len(aa_idx), (int(rnd.sum()),), generator=gen)]
    return inp, sel


# ----------------------------------------------------------------------------- model

def train_step(model, opt, toks, kinds, alphabet, gen, aa_idx, acc_loss, acc_n, p_mask=0.15):
    """One optimizer step of BERT-masked LM loss on ``toks`` (masking rate ``p_mask``); adds each
    example kind's summed token loss and count to ``acc_loss``/``acc_n`` (the per-kind losses the
    logs print)."""
    inp, sel = bert_mask(toks, alphabet, gen, aa_idx, p=p_mask)
    logits = model(inp)["logits"]
    tok_loss = F.cross_entropy(logits[sel], toks[sel], reduction="none")
    opt.zero_grad(set_to_none=True)
    tok_loss.mean().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    row_kind = kinds[:, None].expand_as(sel)[sel]
    losses = tok_loss.detach()
    for k in range(len(acc_loss)):
        chosen = row_kind == k
        if chosen.any():
            acc_loss[k] += losses[chosen].sum().item()
            acc_n[k] += int(chosen.sum())


def sdpa_attention_forward(self, query, key=None, value=None, key_padding_mask=None,
                           need_weights=True, need_head_weights=False, attn_mask=None, **kw):
    """Self-attention of fair-esm's MultiheadAttention via F.scaled_dot_product_attention."""
    T, B, E = query.size()
    H, D = self.num_heads, self.head_dim
    q = (self.q_proj(query) * self.scaling).view(T, B * H, D).transpose(0, 1)
    k = self.k_proj(query).view(T, B * H, D).transpose(0, 1)
    v = self.v_proj(query).view(T, B * H, D).transpose(0, 1)
    q, k = self.rot_emb(q, k)
    q, k, v = (t.reshape(B, H, T, D) for t in (q, k, v))
    m = None
    if key_padding_mask is not None:
        m = (~key_padding_mask.bool())[:, None, None, :]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=1.0)
    o = o.permute(2, 0, 1, 3).reshape(T, B, E)
    return self.out_proj(o), None


def patch_sdpa(model):
    import types
    for layer in model.layers:
        layer.self_attn.forward = types.MethodType(sdpa_attention_forward, layer.self_attn)


def unpatch(model):
    for layer in model.layers:
        if "forward" in layer.self_attn.__dict__:
            del layer.self_attn.forward


def save_checkpoint(model, args, path):
    state = {"encoder.sentence_encoder." + k: v.detach().clone().float()
             for k, v in model.state_dict().items() if not k.startswith("contact_head")}
    data = {"cfg": {"model": argparse.Namespace(encoder_layers=args.layers,
                                                encoder_embed_dim=args.embed_dim,
                                                encoder_attention_heads=args.heads,
                                                token_dropout=True)},
            "model": state}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".partial"
    torch.save(data, tmp)
    os.replace(tmp, path)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(model, path, alphabet):
    import esm.pretrained
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, map_location="cpu", weights_only=True)
    loaded, alpha2 = esm.pretrained.load_model_and_alphabet_core("esm2_plmscreen_mini", data, None)
    loaded.eval()
    model.eval()
    bc = alphabet.get_batch_converter()
    _, _, toks = bc([("a", "MKTAYIAKQRQISFVKSHFSRQ" * 3), ("b", "MSLLEQ<mask>IAK")])
    with torch.no_grad():
        d = (loaded(toks)["logits"] - model(toks)["logits"]).abs().max().item()
    assert alpha2.all_toks == alphabet.all_toks
    return d


# ----------------------------------------------------------------------------- main
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()

    train, held = split_proteins(args.fasta)
    train_seqs = [s for _, s in train]
    comp = aa_composition(train_seqs)
    unigram_ppl = math.exp(-(comp * np.log(comp)).sum())
    print(f"proteins: train {len(train)} ({sum(map(len, train_seqs))} aa), held-out {len(held)}; "
          f"unigram perplexity (train composition) {unigram_ppl:.3f}", flush=True)

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    aa_idx = torch.tensor([alphabet.get_idx(a) for a in AA20])
    model = ESM2(num_layers=args.layers, embed_dim=args.embed_dim, attention_heads=args.heads,
                 alphabet=alphabet, token_dropout=True)
    nparam = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("contact_head"))
    print(f"ESM2 {args.layers} layers x {args.embed_dim} x {args.heads} heads, {nparam} params "
          f"(excl. contact head)", flush=True)

    # validation probe: held-out plain crops and the same crops doubled (fixed masks)
    vrng = np.random.default_rng(12345)
    vseqs = [s[:100] for _, s in held if len(s) >= 60][:64]
    vgen = torch.Generator().manual_seed(999)
    vtok = tokenize(alphabet, vseqs)
    vinp, vsel = bert_mask(vtok, alphabet, vgen, aa_idx)
    dseqs = [s + s for s in vseqs]
    dtok = tokenize(alphabet, dseqs)
    # mask only the first copy at the same positions as vinp; second copy visible
    dinp = dtok.clone()
    dsel = torch.zeros_like(dtok, dtype=torch.bool)
    for b, s in enumerate(vseqs):
        n = len(s)
        dinp[b, 1:n + 1] = vinp[b, 1:n + 1]
        dsel[b, 1:n + 1] = vsel[b, 1:n + 1]
    del vrng

    def probe():
        model.eval()
        with torch.no_grad():
            l1 = F.cross_entropy(model(vinp)["logits"][vsel], vtok[vsel]).item()
            l2 = F.cross_entropy(model(dinp)["logits"][dsel], dtok[dsel]).item()
        model.train()
        return l1, l2

    if not args.no_sdpa:
        model.eval()
        with torch.no_grad():
            ref = model(dinp)["logits"]
            patch_sdpa(model)
            new = model(dinp)["logits"]
        print(f"SDPA patch: max |dlogit| vs stock attention = {(ref - new).abs().max().item():.2e}",
              flush=True)
        model.train()

    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("contact_head")],
                            lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    maker = ExampleMaker(train_seqs, comp, rng, args.max_crop, easy_copy=not args.hard_copy)
    budget = args.minutes * 60.0
    t_train0 = time.time()
    step, pool = 0, []
    kind_count = np.zeros(4, dtype=np.int64)
    ex_count = np.zeros(2, dtype=np.int64)  # [examples, examples with repeat]
    acc_loss = np.zeros(4)
    acc_n = np.zeros(4)
    last_save = time.time()
    phase = 1
    copy_learned = False
    print(f"start training, budget {args.minutes} min; phase 1 (copy task) for "
          f"{args.phase1_frac * args.minutes:.1f} min", flush=True)
    while True:
        el = time.time() - t_train0
        if el >= budget:
            break
        frac = el / budget
        if phase == 1 and (frac >= args.phase1_frac or copy_learned):
            phase = 2
            pool = []
            print(f"[{el / 60:.1f} min] step {step}: switching to phase 2 (mixture)", flush=True)
        if not pool:
            exs = [maker.make(phase, args.p_copy, args.p_doubled, args.p_insert) for _ in range(256)]
            exs.sort(key=lambda e: len(e[0]))
            batches, cur = [], []
            for e in exs:
                mt = args.max_tokens_phase1 if phase == 1 else args.max_tokens
                if cur and (len(cur) + 1) * (len(e[0]) + 2) > mt:
                    batches.append(cur)
                    cur = []
                cur.append(e)
            if cur:
                batches.append(cur)
            order = rng.permutation(len(batches))
            pool = [batches[i] for i in order]
        batch = pool.pop()
        seqs = [e[0] for e in batch]
        kinds = torch.tensor([e[1] for e in batch])
        for k in kinds.tolist():
            kind_count[k] += 1
        ex_count[0] += len(batch)
        ex_count[1] += int((kinds != 3).sum())

        if step < args.warmup_steps:
            lr = args.lr * (step + 1) / args.warmup_steps
        else:
            lr = args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr

        train_step(model, opt, tokenize(alphabet, seqs), kinds, alphabet, gen, aa_idx, acc_loss, acc_n)
        step += 1
        if step % args.log_every == 0:
            ls = " ".join(f"{ExampleMaker.KINDS[k]}={acc_loss[k] / acc_n[k]:.3f}" if acc_n[k] else
                          f"{ExampleMaker.KINDS[k]}=-" for k in range(4))
            print(f"[{(time.time() - t_train0) / 60:5.1f} min] step {step} phase {phase} lr {lr:.2e} "
                  f"loss by kind: {ls}", flush=True)
            if phase == 1 and acc_n[0] and acc_loss[0] / acc_n[0] < args.phase1_until_loss:
                copy_learned = True
            acc_loss[:] = 0
            acc_n[:] = 0
        if step % args.probe_every == 0:
            l1, l2 = probe()
            print(f"    probe (held-out 100-aa prefixes): plain MLM ppl {math.exp(l1):.2f}, "
                  f"first copy of doubled ppl {math.exp(l2):.2f}", flush=True)
        if time.time() - last_save > args.save_every_min * 60:
            save_checkpoint(model, args, args.out)
            last_save = time.time()

    train_min = (time.time() - t_train0) / 60
    unpatch(model)
    model.eval()
    l1, l2 = probe()
    print(f"done: {step} steps in {train_min:.1f} min; examples {ex_count[0]} "
          f"(with internal repeat: {ex_count[1]}, {ex_count[1] / ex_count[0]:.1%}); by kind "
          + ", ".join(f"{ExampleMaker.KINDS[k]} {kind_count[k]}" for k in range(4)), flush=True)
    print(f"final probe (stock attention): plain MLM ppl {math.exp(l1):.2f}, "
          f"first copy of doubled ppl {math.exp(l2):.2f}", flush=True)
    save_checkpoint(model, args, args.out)
    d = verify_checkpoint(model, args.out, alphabet)
    digest = sha256_file(args.out)
    with open(args.out + ".sha256", "w") as fh:
        fh.write(f"{digest}  {os.path.basename(args.out)}\n")
    print(f"saved {args.out} ({os.path.getsize(args.out)} bytes), sha256 {digest}; "
          f"load_model_and_alphabet_core max |dlogit| = {d:.3e}; total wall {(time.time() - t0) / 60:.1f} min",
          flush=True)


if __name__ == "__main__":
    main()
