"""Planning inputs larger than memory: time and peak RSS of ``plmscreen screen --plan-only`` on
synthetic proteomes of 10^4 .. 10^6 sequences, and the orchestration overhead of a whole screen.

Synthetic inputs: lengths drawn (with replacement, seeded) from the E. coli K-12 proteome's length
distribution, residues drawn from its amino-acid composition, IDs ``syn_0000001``, 60-residue
lines. They are written under ``--workdir`` (default /tmp), never into the repository.

Part 1 (``--sizes``): for each size a fresh store; ``plmscreen screen FASTA --out STORE --plan-only``
in its own process under ``/usr/bin/time``: wall time (planning = streaming validation and sha256
of the input, the copy into the store, shard planning, catalog registration of every sequence)
and the process's peak RSS. The command sizes shards for this machine's local cluster as a real
screen does.

Part 2 (``--e2e N``): a whole default screen (Prefect flow, local Dask cluster) of N short
sequences (lengths from the same distribution, cut to ``--e2e-max-len``) with a tiny random
ESM-2 checkpoint; orchestration overhead = (flow wall time − the slowest worker's scoring time)
/ scoring time, where scoring time is the sum of the shard seconds in the catalog divided by the
workers (the shards' own clocks: claim to files written). Start-up (Prefect server, cluster,
worker imports) is reported separately: it is fixed, not a per-shard cost.

    python bench/bench_plan_scale.py --ecoli $PLMSCREEN_DATA_DIR/fasta/UP000000625_83333_ecoli_k12.fasta
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import ECOLI_FASTA, RESULTS_DIR, default_path, machine, require, write_checkpoint

from plmscreen.screening.input import STANDARD_ALPHABET, read_fasta

PLMSCREEN = Path(sys.executable).with_name("plmscreen")


def ecoli_model(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and standard-residue frequencies of the E. coli proteome."""
    records = read_fasta(path).records
    lengths = np.array([len(r.sequence) for r in records])
    counts = np.zeros(len(STANDARD_ALPHABET))
    for r in records:
        for k, aa in enumerate(STANDARD_ALPHABET):
            counts[k] += r.sequence.count(aa)
    return lengths, counts / counts.sum()


def write_synthetic(path: Path, n: int, lengths: np.ndarray, freqs: np.ndarray, seed: int, max_len: int | None = None) -> dict:
    """N synthetic sequences as FASTA; returns their count and residues."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(STANDARD_ALPHABET.encode(), dtype=np.uint8)
    residues = 0
    with open(path, "wb") as fh:
        for lo in range(0, n, 20_000):
            chunk = rng.choice(lengths, size=min(20_000, n - lo))
            if max_len:
                chunk = np.minimum(chunk, max_len)
            pool = alphabet[rng.choice(len(alphabet), size=int(chunk.sum()), p=freqs)].tobytes()
            out, at = [], 0
            for k, length in enumerate(chunk.tolist()):
                seq = pool[at:at + length]
                at += length
                out.append(b">syn_%07d synthetic E. coli-like length %d\n" % (lo + k + 1, length))
                out += [seq[i:i + 60] + b"\n" for i in range(0, length, 60)]
            fh.write(b"".join(out))
            residues += int(chunk.sum())
    return {"sequences": n, "residues": residues, "bytes": path.stat().st_size}


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS (MiB) of one command, from /usr/bin/time."""
    result = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True, env=env)
    match = re.search(r"TIME ([\d.]+) (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}")
    return {"wall_s": float(match.group(1)), "peak_rss_mib": int(match.group(2)) / 1024, "stdout": result.stdout.strip()}


def plan_sizes(args, lengths, freqs, checkpoint: Path) -> list[dict]:
    rows = []
    for n in args.sizes:
        fasta = args.workdir / f"synthetic_{n}.fasta"
        if not fasta.exists():
            info = write_synthetic(fasta, n, lengths, freqs, seed=n)
        else:
            info = {"sequences": n, "bytes": fasta.stat().st_size}
        store = args.workdir / f"plan_store_{n}"
        shutil.rmtree(store, ignore_errors=True)
        run = timed([str(PLMSCREEN), "screen", str(fasta), "--out", str(store), "--model", str(checkpoint), "--plan-only"])
        shards = re.search(r"in (\d+) shards", run["stdout"])
        registered = re.search(r"registered in the catalog in ([\d.]+) s", run["stdout"])
        resumed = timed([str(PLMSCREEN), "screen", str(fasta), "--out", str(store), "--model", str(checkpoint), "--plan-only"])
        row = {**info, "plan_wall_s": run["wall_s"], "prepare_run_s": float(registered.group(1)),
               "peak_rss_mib": run["peak_rss_mib"], "shards": int(shards.group(1)),
               "replan_wall_s": resumed["wall_s"], "replan_peak_rss_mib": resumed["peak_rss_mib"],
               "store_input_copy_bytes": sum(p.stat().st_size for p in (store / "runs").glob("*/input.fasta"))}
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(store, ignore_errors=True)
    return rows


def end_to_end(args, lengths, freqs, checkpoint: Path) -> dict:
    n = args.e2e
    fasta = args.workdir / f"synthetic_e2e_{n}.fasta"
    info = write_synthetic(fasta, n, lengths, freqs, seed=7 + n, max_len=args.e2e_max_len)
    store = args.workdir / f"e2e_store_{n}"
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    started = time.perf_counter()
    extra = ["--shard-tokens", str(args.e2e_shard_tokens)] if args.e2e_shard_tokens else []
    run = timed([str(PLMSCREEN), "screen", str(fasta), "--out", str(store), "--model", str(checkpoint),
                 "--no-progress", "--no-diagnostics", *extra], env=env)
    wall = time.perf_counter() - started
    from plmscreen.screening.run.catalog import Catalog

    with Catalog.open(None, store, upgrade=False) as catalog:
        run_id = catalog.list_runs()[0].run_id
        shards = catalog.shards(run_id)
    workers = len({s.worker for s in shards})
    busy: dict[str, float] = {}
    for s in shards:
        busy[s.worker] = busy.get(s.worker, 0.0) + (s.seconds or 0.0)
    first_start = min(s.started_at for s in shards)
    last_end = max(s.finished_at for s in shards)
    span = (last_end - first_start).total_seconds()
    scoring = max(busy.values())  # the busiest worker's shard time: what the run could not go below
    summary = re.search(r"Screened (\d+) sequences \((\d+) residues\).* in ([\d.]+) s", run["stdout"])
    row = {**info, "max_len": args.e2e_max_len, "shard_tokens": args.e2e_shard_tokens or "auto", "shards": len(shards), "workers": workers,
           "process_wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"],
           "flow_seconds": float(summary.group(3)),
           "shards_span_s": round(span, 2),  # first shard claimed .. last shard done
           "busiest_worker_scoring_s": round(scoring, 2),
           "sum_shard_seconds": round(sum(busy.values()), 2),
           "overhead_in_span_share": round((span - scoring) / scoring, 4),
           "startup_and_close_s": round(run["wall_s"] - span, 2),
           "measured_wall_s": round(wall, 2)}
    print(json.dumps(row), flush=True)
    shutil.rmtree(store, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ecoli", type=Path, default=default_path(ECOLI_FASTA))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/plmscreen-bench-plan"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--e2e", type=int, default=0, help="sequences of the end-to-end screen (0: skip)")
    parser.add_argument("--e2e-max-len", type=int, default=60)
    parser.add_argument("--e2e-shard-tokens", type=int, default=0, help="--shard-tokens of the end-to-end screen (0: automatic)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "plan_scale.json")
    args = parser.parse_args()
    ecoli = require(args.ecoli, "--ecoli", ECOLI_FASTA)
    args.workdir.mkdir(parents=True, exist_ok=True)
    lengths, freqs = ecoli_model(ecoli)
    checkpoint = write_checkpoint(2, 32, 4, args.workdir / "tiny_esm2.pt")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["machine"] = machine()
    results["ecoli_lengths"] = {"n": int(len(lengths)), "mean": float(lengths.mean()), "median": float(np.median(lengths))}
    if args.sizes:
        results["plan"] = plan_sizes(args, lengths, freqs, checkpoint)
    if args.e2e:
        key = "end_to_end" if not args.e2e_shard_tokens else f"end_to_end_shard_tokens_{args.e2e_shard_tokens}"
        results[key] = end_to_end(args, lengths, freqs, checkpoint)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def markdown(r: dict) -> str:
    lines = ["# Planning inputs larger than memory, and orchestration overhead", "",
             f"Machine: {r['machine']} (shared with other jobs while measured: timings are upper bounds). "
             "Script: `bench/bench_plan_scale.py`. Synthetic inputs: lengths drawn from the E. coli K-12 proteome "
             f"({r['ecoli_lengths']['n']} proteins, mean {r['ecoli_lengths']['mean']:.0f}), residues from its composition.", ""]
    if r.get("plan"):
        lines += ["## `plmscreen screen FASTA --out STORE --plan-only` (fresh store, SQLite catalog)", "",
                  "Whole process under `/usr/bin/time` (CLI start-up with torch imports included); `prepare_run` is the "
                  "planning alone as the CLI times it: streamed validation and sha256, the copy into "
                  "`STORE/runs/<run>/input.fasta`, the shard plan, every sequence registered in the catalog. "
                  "'again' reruns the same command on the planned store (a resume: the copy is rewritten, shards are read back).", "",
                  "| sequences | input MB | shards | process wall (s) | prepare_run (s) | peak RSS (MiB) | again: wall (s) | again: peak RSS (MiB) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["plan"]:
            lines.append(f"| {x['sequences']:,} | {x['bytes'] / 1e6:.0f} | {x['shards']:,} | {x['plan_wall_s']:.1f} | "
                         f"{x['prepare_run_s']:.1f} | {x['peak_rss_mib']:.0f} | {x['replan_wall_s']:.1f} | {x['replan_peak_rss_mib']:.0f} |")
    for key in sorted(k for k in r if k.startswith("end_to_end")):
        e = r[key]
        lines += ["", f"## A whole screen: {e['sequences']:,} sequences of at most {e['max_len']} residues ({key})", "",
                  "Default `plmscreen screen` (Prefect flow, local Dask cluster, `--no-diagnostics`), tiny random ESM-2 "
                  f"(2 layers, 32 wide), shard tokens {e['shard_tokens']}: {e['shards']} shards on {e['workers']} workers.", "",
                  f"- whole process: {e['process_wall_s']:.1f} s wall, peak RSS of the CLI/flow process {e['peak_rss_mib']:.0f} MiB;",
                  f"- shards: first claimed to last done {e['shards_span_s']:.1f} s; the busiest worker's shard time (claim to files "
                  f"written, summed) {e['busiest_worker_scoring_s']:.1f} s; all shards {e['sum_shard_seconds']:.1f} s;",
                  f"- **orchestration overhead while shards run: {e['overhead_in_span_share']:.1%} of scoring time** "
                  "((span - busiest worker's shard time) / that time: task submission, Prefect task runs, claims, idle gaps);",
                  f"- fixed start-up and close (Prefect server, cluster, worker imports, planning, finalising): {e['startup_and_close_s']:.1f} s."]
    if r.get("notes"):
        lines += ["", "## What it shows", ""] + [f"- {note}" for note in r["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
