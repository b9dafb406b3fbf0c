"""Backends side by side (issue 14): each backend's scorer against its own naive loop, and the HF
ESM-2 path against the native fair-esm path, on the same proteins and the same weights.

For every architecture (real ESM-2 sizes, random weights, written in fair-esm's format and
converted to Hugging Face's with ``plmscreen.screening.model.backends.convert``):

  fair-esm naive   fair-esm's stock forward, batch 1, one mask per forward + one unmasked forward
  fair-esm scorer  BackendScorer(FairEsmBackend): today's Scorer numbers and code path
  hf-esm naive     transformers' stock EsmForMaskedLM forward, batch 1, the same loop
  hf-esm scorer    BackendScorer(HfEsmBackend): the HF fast path (SDPA, last layer at the read rows)
  hf-esm stock     BackendScorer(HfEsmBackend, engine="fair-esm"): the same batches through HF's stock forward

Reported: wall seconds (per protein the fastest of the rounds, summed; rounds > proteins > modes
interleaved), speed-up against the backend's own naive loop, max |Δ logp| against its own naive
loop and against fair-esm's naive loop, and the HF / native wall ratio at equal numbers.

  python bench/bench_backends.py                                  # 8M and 35M, 2 proteins, 1 thread
  python bench/bench_backends.py --arch esm2_t6_8M --n 1 --rounds 1 --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from common import ARCHS, forward_only, hf_naive_scores, machine_info, max_delta, naive_scores, read_fasta, write_random_checkpoint

RESULTS_DIR = ROOT / "bench" / "results"
EXACT_TOL = 1e-4
HF_RATIO_LIMIT = 1.2


def run_arch(arch: str, proteins: list[tuple[str, str]], rounds: int, batch_tokens: int, workdir: Path, seed: int,
             forward_reps: int) -> dict:
    from plmscreen.screening.model.backends.convert import convert_checkpoint
    from plmscreen.screening.model.backends.fair_esm import FairEsmBackend
    from plmscreen.screening.model.backends.hf_esm import HfEsmBackend
    from plmscreen.screening.model.backends.scorer import BackendScorer
    from plmscreen.screening.score.scorer import ScoringOptions

    checkpoint = write_random_checkpoint(arch, workdir, seed, "default")
    hf_dir = convert_checkpoint(checkpoint, workdir / f"{arch}_hf")
    fair = FairEsmBackend.load(str(checkpoint), device="cpu")
    hf = HfEsmBackend.load(hf_dir, device="cpu")

    def scorer_mode(backend, **options):
        scorer = BackendScorer(backend, ScoringOptions(batch_tokens=batch_tokens, **options))

        def run(seqs):
            return [{"logp_masked": r.logp_masked, "logp_unmasked": r.logp_unmasked} for r in scorer.score(seqs)]
        return run

    modes = {
        "fair-esm naive": lambda seqs: naive_scores(fair.model, fair.loaded.alphabet, seqs, fair.device),
        "fair-esm scorer": scorer_mode(fair),
        "hf-esm naive": lambda seqs: hf_naive_scores(hf.model, hf.residue_token, hf.bos, hf.eos, hf.mask, seqs),
        "hf-esm scorer": scorer_mode(hf),
        "hf-esm stock": scorer_mode(hf, engine="fair-esm"),
    }
    warm = [proteins[0][1][:40]]
    for run in modes.values():
        run(warm)
    walls = {m: [[0.0] * len(proteins) for _ in range(rounds)] for m in modes}
    scores: dict[str, list[dict]] = {m: [None] * len(proteins) for m in modes}
    for r in range(rounds):
        for p, (_, seq) in enumerate(proteins):
            for m, run in modes.items():
                t0 = time.perf_counter()
                result = run([seq])[0]
                walls[m][r][p] = time.perf_counter() - t0
                scores[m][p] = result
    best = {m: sum(min(walls[m][r][p] for r in range(rounds)) for p in range(len(proteins))) for m in modes}
    own_naive = {"fair-esm": "fair-esm naive", "hf-esm": "hf-esm naive"}
    rows = []
    for m in modes:
        family = m.split()[0]
        naive = own_naive[family]
        rows.append({
            "mode": m,
            "wall_s": best[m],
            "wall_s_per_round": [sum(walls[m][r]) for r in range(rounds)],
            "residues_per_s": sum(len(s) for _, s in proteins) / best[m],
            "speedup_vs_own_naive": best[naive] / best[m],
            "max_abs_delta_vs_own_naive": max_delta(scores[m], scores[naive]),
            "max_abs_delta_vs_fair_esm_naive": max_delta(scores[m], scores["fair-esm naive"]),
        })
    for row in rows:
        row["check"] = "PASS" if row["max_abs_delta_vs_fair_esm_naive"] <= EXACT_TOL else "FAIL"
    return {
        "arch": arch,
        "layers_dim_heads": ARCHS[arch],
        "num_parameters": fair.num_parameters,
        "modes": rows,
        "hf_over_native_scorer": best["hf-esm scorer"] / best["fair-esm scorer"],
        "hf_over_native_naive": best["hf-esm naive"] / best["fair-esm naive"],
        "hf_stock_over_hf_fast": best["hf-esm stock"] / best["hf-esm scorer"],
        "forward_only": forward_only(fair, hf, proteins[0][1], batch_tokens, forward_reps),
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Backends: HF ESM-2 against native fair-esm, each against its own naive loop ({report['device_tag']})",
        "",
        f"- date (UTC): {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch']} with {m['torch_threads']} threads, "
        f"fair-esm {m['fair_esm']}, transformers {report['transformers']}, Python {m['python']}",
        "- load average (1/5/15 min) before: " + " / ".join(f"{x:.2f}" for x in report["load"]["before"])
        + ", after: " + " / ".join(f"{x:.2f}" for x in report["load"]["after"])
        + " (another process holds a core on this machine: ratios are measured side by side, interleaved)",
        f"- proteins: {len(report['proteins'])} from {report['fasta']}: "
        + ", ".join(f"{p['id']} ({p['length']})" for p in report["proteins"]),
        f"- weights: random (fair-esm default init, seed {report['seed']}), converted to HF with "
        f"plmscreen.screening.model.backends.convert; batch_tokens {report['batch_tokens']}; {report['rounds']} rounds",
        "",
        "| arch | mode | wall s | per round s | residues/s | speed-up vs own naive | max abs Δ vs own naive "
        "| max abs Δ vs fair-esm naive | check |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for a in report["archs"]:
        for r in a["modes"]:
            lines.append(
                f"| {a['arch']} | {r['mode']} | {r['wall_s']:.2f} | {' / '.join(f'{w:.2f}' for w in r['wall_s_per_round'])} "
                f"| {r['residues_per_s']:.1f} | {r['speedup_vs_own_naive']:.2f}× | {r['max_abs_delta_vs_own_naive']:.2e} "
                f"| {r['max_abs_delta_vs_fair_esm_naive']:.2e} | {r['check']} |")
    lines += ["", "| arch | HF scorer / native scorer | HF fast path / native, one batch (forward only) "
              "| HF naive / fair-esm naive | HF stock batches / HF fast path | "
              f"HF within {HF_RATIO_LIMIT}× of native |", "|---|---:|---:|---:|---:|---|"]
    for a in report["archs"]:
        f = a["forward_only"]
        worst = max(a["hf_over_native_scorer"], f["hf_over_native"])
        ok = "yes" if worst <= HF_RATIO_LIMIT else "NO"
        lines.append(f"| {a['arch']} | {a['hf_over_native_scorer']:.2f}× "
                     f"| {f['hf_over_native']:.2f}× ({f['native_s']:.2f} s vs {f['hf_s']:.2f} s, {f['tokens'][0]}×{f['tokens'][1]} tokens) "
                     f"| {a['hf_over_native_naive']:.2f}× | {a['hf_stock_over_hf_fast']:.2f}× | {ok} |")
    lines += [
        "",
        "Columns: *wall s* = per protein the fastest round, summed; *per round s* = each round's total; "
        "*speed-up vs own naive* = that backend's naive wall / the mode's wall; *max abs Δ* = largest "
        "|difference| of logp_masked and logp_unmasked over all residues (natural log); *check* = PASS when "
        f"within {EXACT_TOL:g} of fair-esm's naive loop on every residue (the same numbers across backends). "
        "*HF scorer / native scorer* < 1 means the HF path is faster; *forward only* times one batch of "
        f"masked copies of the first protein through each fast path, alternating, fastest of {report['forward_reps']} "
        "(the steadier number on a shared machine).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["esm2_t6_8M", "esm2_t12_35M"], choices=list(ARCHS))
    parser.add_argument("--fasta", type=Path, default=ROOT / "examples" / "sample.fasta")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--forward-reps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)

    import transformers

    torch.set_num_threads(args.threads)
    proteins = [(n, s) for n, s in read_fasta(args.fasta) if args.min_len <= len(s) <= args.max_len][: args.n]
    if not proteins:
        raise SystemExit(f"no protein of length {args.min_len}-{args.max_len} in {args.fasta}")
    load_before = os.getloadavg()
    archs = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            result = run_arch(arch, proteins, args.rounds, args.batch_tokens, Path(tmp), args.seed, args.forward_reps)
            archs.append(result)
            print(f"{arch}: HF/native scorer {result['hf_over_native_scorer']:.2f}x, "
                  f"forward only {result['forward_only']['hf_over_native']:.2f}x; "
                  + "; ".join(f"{r['mode']} {r['wall_s']:.2f}s ({r['speedup_vs_own_naive']:.2f}x own naive, "
                              f"{r['max_abs_delta_vs_fair_esm_naive']:.1e})" for r in result["modes"]), flush=True)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python " + shlex.join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(torch.device("cpu")),
        "transformers": transformers.__version__,
        "device_tag": f"cpu{args.threads}t",
        "load": {"before": load_before, "after": os.getloadavg()},
        "fasta": os.path.relpath(args.fasta, ROOT) if args.fasta.is_relative_to(ROOT) else str(args.fasta),
        "proteins": [{"id": n, "length": len(s)} for n, s in proteins],
        "seed": args.seed, "batch_tokens": args.batch_tokens, "rounds": args.rounds, "forward_reps": args.forward_reps,
        "archs": archs,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"backends_cpu{args.threads}t{args.tag}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(report))
    failed = any(r["check"] == "FAIL" for a in archs for r in a["modes"])
    print(f"wrote {args.out_dir / stem}.md and .json; {'FAIL' if failed else 'all PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
