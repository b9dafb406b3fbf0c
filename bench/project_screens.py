"""Hours and machines for E. coli, human and UniRef50 screens with ESM-2 650M, exact and triage,
projected from the FLOP model of bench_precision_throughput.py and this repository's measurements.

Every input is either measured (a results file named below) or an assumption stated in the
output; nothing was run on a GPU for this table (no GPU was available), so the GPU rates are
datasheet peaks times an assumed utilisation.

    python bench/project_screens.py --ecoli $PLMSCREEN_DATA_DIR/fasta/UP000000625_83333_ecoli_k12.fasta
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from common import ARCHS, ECOLI_FASTA, RESULTS_DIR, default_path, proteome_flops, read_fasta, require

# Datasheet dense peaks (TFLOP/s): fp32 without tensor cores (plmscreen's exact mode runs fp32 and
# leaves TF32 off), bf16 with tensor cores (--precision bf16).
GPUS = {"A100-80GB": {"fp32": 19.5, "bf16": 312.0}, "H100-SXM": {"fp32": 67.0, "bf16": 989.0}}
# Assumed achieved share of that peak on 650M forwards of a few hundred tokens (not measured here:
# the CPU run reached 83% of its fp32 matmul rate, bench/results/precision_throughput_cpu_AMD-EPYC.md;
# GPUs lose more to attention, layer norms and padding).
UTILISATION = {"fp32": 0.5, "bf16": 0.35}
TRIAGE_TOKEN_RATIO = 9.43  # bench/results/triage_plmscreen-mini_cpu1t.json: 9.4x fewer tokens on an E. coli sample
# Repeat detection runs on the worker's CPU before scoring, not overlapped with the GPU:
# bench/results/repeat_benchmark.md measured 14 ms per chain of mean length 221 and 22 ms at 380-420
# residues on one core; taken as 0.055 ms per residue.
REPEAT_MS_PER_RESIDUE = 0.055
PROTEOMES = {  # name: (sequences, mean length or None for E. coli's own lengths)
    "E. coli K-12": (None, None),
    "human": (20_400, 560),  # UniProt reference proteome, as bench_precision_throughput.py assumes
    "UniRef50": (60_000_000, 300),  # ~60 M clusters; mean length assumed 300 (E. coli's distribution scaled)
}
NODE_GPUS = 8


def lengths_for(ecoli: list[int], n: int | None, mean: float | None) -> tuple[list[int], float]:
    """A sample of lengths and the factor that scales its totals to the whole proteome."""
    if n is None:
        return ecoli, 1.0
    scaled = [max(1, round(x * mean / np.mean(ecoli))) for x in ecoli]
    return scaled, n / len(scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ecoli", type=Path, default=default_path(ECOLI_FASTA))
    parser.add_argument("--plan", type=Path, default=RESULTS_DIR / "plan_scale.json")
    parser.add_argument("--store", type=Path, default=RESULTS_DIR / "store_scale.json")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "screen_projection.md")
    args = parser.parse_args()
    ecoli = [len(s) for _, s in read_fasta(require(args.ecoli, "--ecoli", ECOLI_FASTA))]
    layers, dim, _ = ARCHS["esm2_t33_650M"]
    plan = json.loads(args.plan.read_text()) if args.plan.exists() else {}
    store = json.loads(args.store.read_text()) if args.store.exists() else {}
    # Planning: the largest measured plan, linear in sequences (one streaming pass + catalog rows).
    biggest = max(plan.get("plan", []), key=lambda r: r["sequences"], default=None)
    plan_s_per_seq = biggest["plan_wall_s"] / biggest["sequences"] if biggest else None
    overhead = plan.get("end_to_end", {}).get("overhead_in_span_share")
    bytes_per_residue = None
    stores = [v["store"] for k, v in store.items() if k not in ("machine", "notes")]
    if stores:  # the largest synthetic store measured
        s = max(stores, key=lambda x: x["residues"])
        bytes_per_residue = sum(s["bytes"].values()) / s["residues"]
    rows = []
    for name, (n, mean) in PROTEOMES.items():
        sample, scale = lengths_for(ecoli, n, mean)
        sequences = round(len(sample) * scale)
        residues = sum(sample) * scale
        exact_flops = proteome_flops(sample, layers, dim) * scale
        detect_h = residues * REPEAT_MS_PER_RESIDUE / 1000 / 3600
        for mode, flops in (("exact", exact_flops), ("triage", exact_flops / TRIAGE_TOKEN_RATIO)):
            for precision in ("fp32", "bf16"):
                for gpu, peaks in GPUS.items():
                    rate = peaks[precision] * 1e12 * UTILISATION[precision]
                    gpu_h = flops / rate / 3600
                    worker_h = (gpu_h + detect_h) * (1 + (overhead or 0))
                    target_h = 24 * 7 if name == "UniRef50" else 24
                    rows.append({"proteome": name, "sequences": sequences, "residues": residues, "mode": mode,
                                 "precision": precision, "gpu": gpu, "gpu_hours": gpu_h, "detect_cpu_hours": detect_h,
                                 "worker_hours": worker_h, "target_h": target_h,
                                 "nodes": math.ceil(worker_h / (NODE_GPUS * target_h)),
                                 "wall_on_one_node_h": worker_h / NODE_GPUS})
    lines = ["# Projected screens with ESM-2 650M: hours and machines", "",
             "Computed by `python bench/project_screens.py` from the FLOP model of `bench_precision_throughput.py` "
             "(naive-equivalent FLOPs: L+1 forwards of min(L, 1022)+2 tokens per protein, "
             f"ESM-2 650M = {layers} layers x {dim}) and the measurements named below. **No GPU was available: "
             "the GPU rates are assumptions, not measurements.**", "",
             "| proteome | sequences | residues | mode | precision | GPU | GPU-hours (model) | + repeat detection (CPU h) | "
             "worker-hours | wall on one 8-GPU node (h) | 8-GPU nodes to finish in |",
             "|---|---:|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['proteome']} | {r['sequences']:,} | {r['residues']:.3g} | {r['mode']} | {r['precision']} | {r['gpu']} | "
                     f"{r['gpu_hours']:,.1f} | {r['detect_cpu_hours']:,.2f} | {r['worker_hours']:,.1f} | "
                     f"{r['wall_on_one_node_h']:,.1f} | {r['nodes']:,} for {r['target_h']} h |")
    smallest = min(plan.get("plan", []), key=lambda r: r["sequences"], default=None)
    rss_per_seq = ((biggest["peak_rss_mib"] - smallest["peak_rss_mib"]) / (biggest["sequences"] - smallest["sequences"])
                   if biggest and smallest and biggest is not smallest else None)
    plan_line = (f"planning (streaming validation, input copy, catalog registration) measured at "
                 f"{biggest['sequences']:,} sequences: {biggest['plan_wall_s']:.0f} s wall, peak RSS "
                 f"{biggest['peak_rss_mib']:.0f} MiB (bench/results/plan_scale.md); linear in sequences that is "
                 f"{plan_s_per_seq * 60e6 / 3600:.1f} h and (at {rss_per_seq * 1024:.2f} KiB a sequence over the start-up RSS) "
                 f"~{rss_per_seq * 60e6 / 1024:.0f} GiB for UniRef50's 60 M, run once before the GPUs start (planning is not "
                 f"in the GPU-hours)" if biggest else "planning not measured")
    lines += ["", "## Assumptions, each of them", "",
              "- GPU peaks (dense, datasheet): " + ", ".join(f"{g} fp32 {p['fp32']} / bf16 {p['bf16']} TFLOP/s" for g, p in GPUS.items()) + ". "
              "Exact mode runs fp32 with TF32 off, so fp32 rows use the non-tensor-core peak; bf16 rows are `--precision bf16` "
              "(approximate: bench/results/precision_*).",
              f"- Achieved share of peak assumed {UTILISATION['fp32']:.0%} (fp32) and {UTILISATION['bf16']:.0%} (bf16). "
              "Measured only on CPU (83% of the fp32 matmul rate, plmscreen-mini). A GPU run of "
              "`bench/bench_precision_throughput.py --arch esm2_t33_650M --device cuda` replaces this assumption.",
              "- The FLOP model counts the full forward for every masked copy; plmscreen runs the last layer and the LM head "
              "only at masked positions, so the model-hours are an upper bound by ~1/33.",
              f"- Triage: {TRIAGE_TOKEN_RATIO}x fewer tokens than exact, measured on a 150-protein E. coli sample "
              "(bench/results/triage_plmscreen-mini_cpu1t.md). Proteomes richer in repeats (human) gain less: every protein whose "
              "repeat fraction reaches 5% is scored at its partnered residues.",
              f"- Repeat detection: {REPEAT_MS_PER_RESIDUE} ms of one CPU core per residue (bench/results/repeat_benchmark.md: "
              "14 ms per 221-residue chain, 22 ms at 380-420), run by each GPU worker before it scores, not overlapped with the GPU, "
              "so it is added to the worker-hours (a quarter of them for UniRef50 in triage bf16 on H100s).",
              f"- Lengths: E. coli K-12's real distribution ({len(ecoli):,} proteins); human = 20,400 proteins, E. coli's distribution "
              "scaled to mean 560; UniRef50 = 60 M sequences, scaled to mean 300 (assumed, not measured).",
              f"- Orchestration: {'measured ' + format(overhead, '.1%') + ' of scoring time in a whole screen (bench/results/plan_scale.md), added to worker-hours' if overhead is not None else 'not measured'}; "
              f"{plan_line}; at most ~4,000 shards per run (MAX_SHARDS), so UniRef50 makes ~4,000 Prefect task runs of ~15,000 sequences.",
              "- Machines: one GPU per worker (plmscreen's GPU plan), 8 GPUs per node, perfect packing of ~4,000 shards over the GPUs "
              "(with 4,000 shards, 64 GPUs have ~60 shards each, so the last shard's tail is < 2% of the wall time).",
              ]
    if bytes_per_residue:
        lines.append(f"- Store: {bytes_per_residue:.1f} bytes per residue row in the largest synthetic store (all three tables, zstd; "
                     f"bench/results/store_scale.md), so UniRef50 exact = {bytes_per_residue * 60e6 * 300 / 1e12:.1f} TB, human "
                     f"{bytes_per_residue * 20400 * 560 / 1e9:.1f} GB.")
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "gpus": GPUS, "utilisation": UTILISATION,
                                                         "triage_token_ratio": TRIAGE_TOKEN_RATIO,
                                                         "repeat_ms_per_residue": REPEAT_MS_PER_RESIDUE}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
