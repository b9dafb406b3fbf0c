"""One forward of masked copies: this tree's ``logprobs_at`` against another tree's, side by side.

Both forwards score the same batch with the same weights: ``--batch-tokens`` worth of one-mask copies
of a real protein (one copy per residue, as ``Scorer`` packs them), for each random-weight ESM-2
architecture of ``--archs``. Rounds alternate baseline and current; each round times ``--reps``
forwards and the fastest round of each side is reported, with their ratio. Both are checked against
fair-esm's stock forward (max |delta log-prob| over the batch's read positions).

The baseline is a ``forward.py`` file from another checkout, loaded as its own module (it imports
only torch), e.g. ``git worktree add /tmp/base <commit>``:

    python bench/bench_rotary_forward.py --baseline-forward /tmp/base/screening/model/forward.py \\
        --out bench/results/rotary_forward
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from plmscreen.screening.score.options import CPU_BATCH_TOKENS
from common import ARCHS, DEFAULT_FASTA, machine_info, pick_proteins, require, ECOLI_FASTA, write_checkpoint


def load_forward(path: Path):
    spec = importlib.util.spec_from_file_location("baseline_forward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def masked_batch(loaded, sequence: str, batch_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As many one-mask copies of ``sequence`` as fit ``batch_tokens``, residue r masked in copy r."""
    alphabet = loaded.alphabet
    width = len(sequence) + 2
    rows = max(1, min(len(sequence), batch_tokens // width))
    base = torch.tensor([alphabet.cls_idx] + [alphabet.get_idx(a) for a in sequence] + [alphabet.eos_idx])
    tokens = base.repeat(rows, 1)
    query = torch.arange(1, rows + 1).view(rows, 1)
    tokens[torch.arange(rows), query[:, 0]] = alphabet.mask_idx
    return tokens, query


def mean_forward_s(forward, model, tokens, query, reps: int) -> float:
    started = time.perf_counter()
    for _ in range(reps):
        forward(model, tokens, query)
    return (time.perf_counter() - started) / reps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-forward", type=Path, required=True, help="forward.py of the checkout to compare with")
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--archs", nargs="+", default=["esm2_t6_8M", "esm2_t12_35M"], choices=sorted(ARCHS))
    parser.add_argument("--min-len", type=int, default=230)
    parser.add_argument("--max-len", type=int, default=270)
    parser.add_argument("--batch-tokens", type=int, default=CPU_BATCH_TOKENS, help="default: the Scorer's CPU budget")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)

    from plmscreen.screening.model import forward as current
    from plmscreen.screening.model.checkpoints import load_model
    from plmscreen.screening.model.memory import keep_activation_memory

    torch.set_num_threads(args.threads)
    # The malloc thresholds every Scorer sets: without them, glibc hands activation buffers back to
    # the kernel between forwards and the page faults, not the forward, decide the timings.
    keep_activation_memory()
    baseline = load_forward(args.baseline_forward)
    _, sequence = pick_proteins(require(args.fasta, "--fasta", ECOLI_FASTA), 1, args.min_len, args.max_len)[0]
    results = []
    for arch in args.archs:
        with tempfile.TemporaryDirectory(prefix="rotary-bench-") as work:
            loaded = load_model(str(write_checkpoint(*ARCHS[arch], Path(work) / f"{arch}.pt")), device="cpu")
        model = loaded.model
        tokens, query = masked_batch(loaded, sequence, args.batch_tokens)
        with torch.inference_mode():
            stock = torch.log_softmax(model(tokens)["logits"].float(), dim=-1)
            stock = torch.gather(stock, 1, query.unsqueeze(-1).expand(-1, -1, stock.shape[-1]))
            error = {name: float((f.logprobs_at(model, tokens, query) - stock).abs().max())
                     for name, f in (("baseline", baseline), ("current", current))}
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            for name, f in (("baseline", baseline), ("current", current)):  # warm-up: caches, tables
                f.logprobs_at(model, tokens, query)
            for _ in range(args.rounds):
                for name, f in (("baseline", baseline), ("current", current)):
                    times[name].append(mean_forward_s(f.logprobs_at, model, tokens, query, args.reps))
        row = {"arch": arch, "copies": int(tokens.shape[0]), "tokens_per_copy": int(tokens.shape[1]),
               "baseline_s": min(times["baseline"]), "current_s": min(times["current"]),
               "speedup": min(times["baseline"]) / min(times["current"]),
               "max_abs_dlogp_vs_fair_esm": error, "rounds_s": times}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "rounds_s"}), flush=True)
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join([Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)]),
              "machine": machine_info(torch.device("cpu")), "protein_length": len(sequence),
              "batch_tokens": args.batch_tokens, "reps": args.reps, "rounds": args.rounds, "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        m = record["machine"]
        lines = ["# One forward of masked copies: this tree's logprobs_at (current) vs another checkout's (baseline)", "",
                 f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}  ",
                 f"Date: {record['date']}  ", f"Command: `{record['command']}`  ",
                 f"Batch: one-mask copies of one {len(sequence)}-residue E. coli protein, {args.batch_tokens} tokens at most; "
                 f"fastest of {args.rounds} alternating rounds of {args.reps} forwards each.", "",
                 "| architecture | copies x tokens | baseline s / forward | current s / forward | speed-up | max abs. delta log P vs fair-esm (baseline, current) |",
                 "|---|---|---:|---:|---:|---|"]
        for r in results:
            e = r["max_abs_dlogp_vs_fair_esm"]
            lines.append(f"| {r['arch']} | {r['copies']} x {r['tokens_per_copy']} | {r['baseline_s']:.4f} | {r['current_s']:.4f} | "
                         f"{r['speedup']:.3f}x | {e['baseline']:.1e}, {e['current']:.1e} |")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return record


if __name__ == "__main__":
    main()
