"""Why Dask workers (and, with glibc's defaults, plain processes) scored slower: malloc thresholds.

Scores the same proteins with the same checkpoint (one torch thread) in several settings and
reports CPU seconds, wall seconds and minor page faults of the scoring call alone (model loaded and
warmed up first). Each setting runs twice: with glibc's own malloc behaviour (``PLMSCREEN_MALLOC=system``)
and with the thresholds every plmscreen Scorer sets (``screening/model/memory.py``):
- plain: this machine's default process environment;
- plain + MALLOC_TRIM_THRESHOLD_=65536: what Dask's nanny puts in every worker's environment;
- dask (stock): a distributed.LocalCluster worker as Dask starts it (with the variable);
- dask (plmscreen): plmscreen.flows.clusters.local_cpu_cluster, which starts workers without it.
With ``--null`` the scoring call also runs the partner test's null co-masks (as a screen does for
every sequence with repeats), whose many short probe batches are where glibc's trimming cost most.
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


def score(checkpoint: str, sequences: list[str], null: bool = False) -> dict:
    import resource
    import time

    import torch

    from plmscreen.screening.model.checkpoints import load_model
    from plmscreen.screening.model.memory import keep_activation_memory
    from plmscreen.screening.score.repeats import RepeatParams, find_repeats, partner_details
    from plmscreen.screening.score.diagnostics import null_comask
    from plmscreen.screening.score.scorer import Scorer

    torch.set_num_threads(1)
    scorer = Scorer(load_model(checkpoint, device="cpu"))
    partners = [[tuple(p - 1 for p, _, _ in d) for d in partner_details(len(s), find_repeats(s, RepeatParams()))]
                for s in sequences]
    scorer.score([sequences[0][:40]])
    before, wall, cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
    scorer.score(sequences, partners)
    if null:
        null_comask(scorer, sequences, partners, null_draws=4)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "plmscreen_thresholds": keep_activation_memory(),
            "partnered_residues": sum(bool(p) for ps in partners for p in ps)}


def in_dask(checkpoint: str, sequences: list[str], plmscreen_cluster: bool, null: bool) -> dict:
    from distributed import Client, LocalCluster

    from plmscreen.flows.clusters import local_cpu_cluster

    kwargs = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    cluster = local_cpu_cluster(**kwargs) if plmscreen_cluster else LocalCluster(**kwargs)
    with cluster, Client(cluster) as client:
        return client.submit(score, checkpoint, sequences, null).result()


def child(mode: str, checkpoint: str, fasta: str, null: str) -> None:
    from common import read_fasta

    sequences = [s for _, s in read_fasta(Path(fasta))]
    if mode == "plain":
        result = score(checkpoint, sequences, null == "1")
    else:
        result = in_dask(checkpoint, sequences, plmscreen_cluster=mode == "dask-plmscreen", null=null == "1")
    print("RESULT " + json.dumps(result))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    from common import DEFAULT_FASTA, cpu_model, pick_proteins
    from common import write_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--min-len", type=int, default=200)
    parser.add_argument("--max-len", type=int, default=260)
    parser.add_argument("--null", action="store_true", help="also run the partner test's null co-masks")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "worker_malloc")
    args = parser.parse_args()
    glibc, fixed = {"PLMSCREEN_MALLOC": "system"}, {"PLMSCREEN_MALLOC": ""}
    nanny = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    settings = [("plain, glibc defaults", "plain", glibc), ("plain, plmscreen thresholds", "plain", fixed),
                ("plain + MALLOC_TRIM_THRESHOLD_=65536, glibc", "plain", {**nanny, **glibc}),
                ("plain + MALLOC_TRIM_THRESHOLD_=65536, plmscreen thresholds", "plain", {**nanny, **fixed}),
                ("dask (stock LocalCluster), glibc", "dask-stock", glibc),
                ("dask (stock LocalCluster), plmscreen thresholds", "dask-stock", fixed),
                ("dask (plmscreen local_cpu_cluster), plmscreen thresholds", "dask-plmscreen", fixed)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proteins = pick_proteins(args.fasta, args.n, args.min_len, args.max_len)
        fasta = Path(tmp) / "proteins.fasta"
        fasta.write_text("".join(f">{n}\n{s}\n" for n, s in proteins))
        checkpoint = write_checkpoint(6, 320, 20, Path(tmp) / "esm2_t6_8M_random_seed0.pt")
        for label, mode, extra in settings:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(checkpoint), str(fasta), str(int(args.null))], env=env,
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.split("RESULT ", 1)[1])
            results.append({"setting": label, **result})
            print(json.dumps(results[-1]), flush=True)
    plain = results[0]["cpu_s"]
    what = "masked scoring + the partner test's null co-masks (4 draws)" if args.null else "masked scoring"
    record = {"timed": what, "machine": f"{cpu_model()}, {os.cpu_count()} cores", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "proteins": [n for n, _ in proteins],
              "model": "random-weight ESM-2, 8M architecture (6 x 320)", "results": results}
    lines = ["# Scoring CPU under glibc's malloc defaults, Dask's MALLOC_TRIM_THRESHOLD_ and plmscreen's thresholds", "",
             f"Machine: {record['machine']}  ", f"Date: {record['date']}  ", f"Command: `{record['command']}`  ",
             f"Proteins: {len(proteins)} ({sum(len(s) for _, s in proteins)} residues); model: {record['model']}; 1 torch thread; "
             f"timed: {what} ({results[0]['partnered_residues']} partnered residues).", "",
             "| setting | MALLOC_TRIM_THRESHOLD_ in the scoring process | plmscreen thresholds | CPU s | CPU vs first row | wall s | minor page faults |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['setting']} | {r['MALLOC_TRIM_THRESHOLD_'] or '-'} | {r['plmscreen_thresholds']} | {r['cpu_s']:.1f} | "
                     f"{r['cpu_s'] / plain:.2f} | {r['wall_s']:.1f} | {r['minor_faults']:,} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
