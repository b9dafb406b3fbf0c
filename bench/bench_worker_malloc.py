"""Why Dask workers scored slower than a plain process: the nanny's MALLOC_TRIM_THRESHOLD_.

Scores the same proteins with the same checkpoint (one torch thread) in five settings and reports
CPU seconds, wall seconds and minor page faults of the scoring call alone (model loaded and warmed
up first):
- plain: this machine's default process environment;
- plain + MALLOC_TRIM_THRESHOLD_=65536: what Dask's nanny puts in every worker's environment;
- dask (stock): a distributed.LocalCluster worker as Dask starts it;
- dask (plmscreen): plmscreen.flows.clusters.local_cpu_cluster, which starts workers without the variable;
- dask (stock) + restore: a stock worker after plmscreen.flows.clusters.restore_malloc_thresholds().
CPU seconds and page faults do not depend much on other load; wall seconds do.

    python bench/bench_worker_malloc.py --fasta ecoli.fasta --n 2 --min-len 200 --max-len 260
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def score(checkpoint: str, sequences: list[str], restore: bool = False) -> dict:
    import resource
    import time

    import torch

    if restore:
        from plmscreen.flows.clusters import restore_malloc_thresholds

        restore_malloc_thresholds()
    from plmscreen.screening.model.checkpoints import load_model
    from plmscreen.screening.score.scorer import Scorer

    torch.set_num_threads(1)
    scorer = Scorer(load_model(checkpoint, device="cpu"))
    scorer.score([sequences[0][:40]])
    before, wall, cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
    scorer.score(sequences)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def in_dask(checkpoint: str, sequences: list[str], plmscreen_cluster: bool, restore: bool) -> dict:
    from distributed import Client, LocalCluster

    from plmscreen.flows.clusters import local_cpu_cluster

    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    cluster = local_cpu_cluster(**kwargs) if plmscreen_cluster else LocalCluster(**kwargs)
    with cluster, Client(cluster) as client:
        return client.submit(score, checkpoint, sequences, restore).result()


def child(mode: str, checkpoint: str, fasta: str) -> None:
    from common import read_fasta

    sequences = [s for _, s in read_fasta(Path(fasta))]
    if mode == "plain":
        result = score(checkpoint, sequences)
    else:
        result = in_dask(checkpoint, sequences, plmscreen_cluster=mode == "dask-plmscreen", restore=mode == "dask-stock-restore")
    print("RESULT " + json.dumps(result))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    from common import DEFAULT_FASTA, cpu_model, pick_proteins
    from common import write_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--min-len", type=int, default=200)
    parser.add_argument("--max-len", type=int, default=260)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "worker_malloc")
    args = parser.parse_args()
    settings = [("plain", "plain", {}), ("plain + MALLOC_TRIM_THRESHOLD_=65536", "plain", {"MALLOC_TRIM_THRESHOLD_": "65536"}),
                ("dask (stock LocalCluster)", "dask-stock", {}), ("dask (plmscreen local_cpu_cluster)", "dask-plmscreen", {}),
                ("dask (stock) + restore_malloc_thresholds", "dask-stock-restore", {})]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proteins = pick_proteins(args.fasta, args.n, args.min_len, args.max_len)
        fasta = Path(tmp) / "proteins.fasta"
        fasta.write_text("".join(f">{n}\n{s}\n" for n, s in proteins))
        checkpoint = write_checkpoint(6, 320, 20, Path(tmp) / "esm2_t6_8M_random_seed0.pt")
        for label, mode, extra in settings:
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"} | extra
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(checkpoint), str(fasta)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.split("RESULT ", 1)[1])
            results.append({"setting": label, **result})
            print(json.dumps(results[-1]), flush=True)
    plain = results[0]["cpu_s"]
    record = {"machine": f"{cpu_model()}, {os.cpu_count()} cores", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "proteins": [n for n, _ in proteins],
              "model": "random-weight ESM-2, 8M architecture (6 x 320)", "results": results}
    lines = ["# Scoring CPU in a Dask worker vs a plain process (MALLOC_TRIM_THRESHOLD_)", "",
             f"Machine: {record['machine']}  ", f"Date: {record['date']}  ", f"Command: `{record['command']}`  ",
             f"Proteins: {len(proteins)} ({sum(len(s) for _, s in proteins)} residues); model: {record['model']}; 1 torch thread.", "",
             "| setting | MALLOC_TRIM_THRESHOLD_ in the scoring process | CPU s | CPU vs plain | wall s | minor page faults |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['setting']} | {r['MALLOC_TRIM_THRESHOLD_'] or '-'} | {r['cpu_s']:.1f} | {r['cpu_s'] / plain:.2f} | "
                     f"{r['wall_s']:.1f} | {r['minor_faults']:,} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
