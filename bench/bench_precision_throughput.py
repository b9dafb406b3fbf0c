"""Reduced-precision accuracy bounds and throughput per ESM-2 architecture, with proteome projections.

For each model (a real-architecture ESM-2 with random weights, or any name load_model takes) and
each precision (fp32, and bf16/fp16 autocast where the device runs it), on the same real proteins:

- accuracy against fp32 in the same run: max and 99.9th-percentile |Δ logp| over every residue
  (masked and unmasked), and the largest relative pseudo-perplexity error over proteins;
- throughput: residues/s of exact masked scoring (one copy per residue, batch size from free
  memory unless --batch-tokens), and the achieved rate in naive-equivalent FLOP/s (the FLOPs of
  L+1 full forwards per protein, as in bench_scoring.py) against a matmul rate measured in the
  same run in the same dtype;
- projected wall time for the E. coli K-12 proteome (its real length distribution) and for the
  human proteome (20,400 proteins; lengths drawn by scaling E. coli's distribution to the human
  mean of 560 residues, an approximation stated in the output).

Random weights are fine for timing; for accuracy bounds a trained model is the honest reference
(random weights give near-uniform distributions whose rounding errors are unrepresentative), so
the accuracy table names which weights it used.

  python bench/bench_precision_throughput.py --model plmscreen-mini --device cpu --n 8   # CPU, bound only
  python bench/bench_precision_throughput.py --arch esm2_t6_8M esm2_t12_35M esm2_t30_150M esm2_t33_650M --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from common import ARCHS, DEFAULT_FASTA, ECOLI_FASTA, machine_info, matmul_rate, pick_proteins, proteome_flops, read_fasta, require, RESULTS_DIR, sync, write_random_checkpoint

from plmscreen.screening.model.checkpoints import load_model
from plmscreen.screening.score.scorer import Scorer, ScoringOptions

HUMAN_PROTEINS, HUMAN_MEAN_LENGTH = 20_400, 560
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def score_all(scorer: Scorer, sequences: list[str]) -> tuple[float, list]:
    sync(scorer.loaded.device)
    started = time.perf_counter()
    scores = scorer.score(sequences)
    sync(scorer.loaded.device)
    return time.perf_counter() - started, scores


def accuracy(reference: list, scores: list) -> dict:
    diffs = np.concatenate([np.abs(np.concatenate([s.logp_masked - r.logp_masked, s.logp_unmasked - r.logp_unmasked]))
                            for r, s in zip(reference, scores)])
    rel = [abs(np.exp(-s.logp_masked.mean()) / np.exp(-r.logp_masked.mean()) - 1) for r, s in zip(reference, scores)]
    return {"max_abs_dlogp": float(diffs.max()), "p999_abs_dlogp": float(np.quantile(diffs, 0.999)),
            "mean_abs_dlogp": float(diffs.mean()), "max_rel_pppl_error": float(max(rel))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--arch", nargs="+", choices=sorted(ARCHS))
    src.add_argument("--model", nargs="+", help="names load_model accepts (trained weights), e.g. plmscreen-mini")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 fp16 on CUDA, fp32 bf16 on CPU")
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=500)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: sized from free memory (CPU 4096)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions or (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])
    args.fasta = require(args.fasta, "--fasta", ECOLI_FASTA)
    proteins = [s for _, s in pick_proteins(args.fasta, args.n, args.min_len, args.max_len)]
    ecoli_lengths = [len(s) for _, s in read_fasta(args.fasta)]
    human_lengths = [max(1, round(n * HUMAN_MEAN_LENGTH / np.mean(ecoli_lengths))) for n in ecoli_lengths]
    human_scale = HUMAN_PROTEINS / len(human_lengths)
    rates = {p: matmul_rate(device, DTYPES[p], 4096 if device.type == "cuda" else 1024, 5)[0] for p in precisions}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(a, str(write_random_checkpoint(a, Path(tmp), 0, "wide")), "random") for a in (args.arch or [])]
        models += [(m, m, "trained") for m in (args.model or [])]
        if not models:
            models = [("esm2_t6_8M", str(write_random_checkpoint("esm2_t6_8M", Path(tmp), 0, "wide")), "random")]
        for name, source, weights in models:
            loaded = load_model(source, device=str(device))
            layers = len(loaded.model.layers)
            dim = loaded.model.embed_dim
            work = proteome_flops([len(s) for s in proteins], layers, dim)
            reference = None
            for precision in precisions:
                scorer = Scorer(loaded, ScoringOptions(batch_tokens=args.batch_tokens, precision=precision))
                scorer.score(proteins[:1])  # warm-up: kernels, allocator, rotary tables
                seconds, scores = score_all(scorer, proteins)
                if precision == "fp32":
                    reference = scores
                row = {"model": name, "weights": weights, "layers": layers, "dim": dim, "precision": precision,
                       "batch_tokens": scorer.batch_tokens, "seconds": seconds,
                       "residues_per_s": sum(map(len, proteins)) / seconds,
                       "achieved_tflops": work / seconds / 1e12, "matmul_tflops": rates[precision] / 1e12,
                       "ecoli_hours": proteome_flops(ecoli_lengths, layers, dim) / (work / seconds) / 3600,
                       "human_hours": human_scale * proteome_flops(human_lengths, layers, dim) / (work / seconds) / 3600}
                if reference is not None and precision != "fp32":
                    row.update(accuracy(reference, scores))
                rows.append(row)
                print(json.dumps(row), flush=True)
            del loaded
            if device.type == "cuda":
                torch.cuda.empty_cache()
    info = machine_info(device)
    report = {"machine": info, "command": "python bench/bench_precision_throughput.py " + " ".join(sys.argv[1:]),
              "n_proteins": len(proteins), "residues": sum(map(len, proteins)), "rows": rows,
              "human_assumption": f"{HUMAN_PROTEINS} proteins, E. coli's length distribution scaled to mean {HUMAN_MEAN_LENGTH}"}
    where = info.get("gpu", info.get("cpu_model", "cpu")).replace(" ", "-")
    stem = args.out / f"precision_throughput_{device.type}_{where}{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Precision bounds and throughput: {m.get('gpu', m.get('cpu_model'))}", "",
             f"Command: `{r['command']}`; {r['n_proteins']} E. coli proteins, {r['residues']:,} residues. "
             f"Projection for the human proteome: {r['human_assumption']}.", "",
             "| model | weights | precision | batch tokens | residues/s | achieved TFLOP/s | matmul TFLOP/s (same dtype) | "
             "max abs dlogp | p99.9 abs dlogp | max rel PPPL error | E. coli (h) | human (h) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        acc = (f"{x['max_abs_dlogp']:.3g} | {x['p999_abs_dlogp']:.3g} | {x['max_rel_pppl_error']:.2%}"
               if "max_abs_dlogp" in x else "reference | | ")
        lines.append(f"| {x['model']} | {x['weights']} | {x['precision']} | {x['batch_tokens']} | {x['residues_per_s']:.0f} | "
                     f"{x['achieved_tflops']:.3f} | {x['matmul_tflops']:.3f} | {acc} | {x['ecoli_hours']:.2f} | {x['human_hours']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
