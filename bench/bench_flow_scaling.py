"""Scaling and orchestration overhead of the screen-proteome flow: the same input with 1 and 2 workers.

For each worker count the flow runs on a fresh store against one temporary Prefect server; the
script then reads every shard task's start and end from the Prefect API and each shard's
compute time from the catalog (time inside ``process_shard``):
- per-shard overhead = task duration - compute (Prefect task engine, Dask transfer, catalog);
- fixed cost = flow wall time - task makespan (server round trips, cluster start and stop);
- speed-up = wall(1 worker) / wall(N workers), and the same for the task makespan.

    python bench/bench_flow_scaling.py --model plmscreen-mini --fasta examples/sample.fasta
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


async def task_durations(flow_run_id) -> dict[str, float]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out = {}
    for run in runs:
        if run.start_time and run.end_time and "/shard-" in run.name:
            out[run.name] = (run.end_time - run.start_time).total_seconds()
    return out


def run_once(args, workers: int, store: Path) -> dict:
    from prefect import get_client  # noqa: F401  (imported so the server context is ready)

    from flows.clusters import task_runner
    from flows.screen import screen_proteome
    from schema.catalog import Catalog

    flow = screen_proteome.with_options(task_runner=task_runner(workers=workers))
    started = time.perf_counter()
    state = flow(input=str(args.fasta), store=str(store), model=args.model, device="cpu",
                 shard_tokens=args.shard_tokens, torch_threads=1, return_state=True)
    wall = time.perf_counter() - started
    summary = state.result()
    durations = asyncio.run(task_durations(state.state_details.flow_run_id))
    with Catalog.open(None, store) as catalog:
        compute = {f"{summary['run_id']}/shard-{s.index}": s.seconds for s in catalog.shards(summary["run_id"])}
    overheads = [durations[name] - compute[name] for name in durations]
    return {
        "workers": workers,
        "wall_s": wall,
        "n_shards": summary["n_shards"],
        "n_residues": summary["n_residues"],
        "compute_s": sum(compute.values()),
        "task_s": sum(durations.values()),
        "mean_shard_compute_s": sum(compute.values()) / len(compute),
        "mean_shard_overhead_s": sum(overheads) / len(overheads),
        "overhead_pct_of_compute": 100 * sum(overheads) / sum(compute.values()),
        "fixed_s": wall - sum(durations.values()) / workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, default=REPO / "examples" / "sample.fasta")
    parser.add_argument("--model", default="plmscreen-mini")
    parser.add_argument("--shard-tokens", type=int, default=150_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "flow_scaling")
    args = parser.parse_args()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from screening.cli import _prefect_api

    results = []
    work = Path(tempfile.mkdtemp(prefix="plmscreen-scaling-"))
    try:
        with _prefect_api():
            for workers in args.workers:
                results.append(run_once(args, workers, work / f"store-{workers}"))
                print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]
    for r in results:
        r["speedup_wall"] = base["wall_s"] / r["wall_s"]
        r["speedup_tasks"] = (base["task_s"] / base["workers"]) / (r["task_s"] / r["workers"])
    record = {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "fasta": str(args.fasta), "model": args.model,
              "shard_tokens": args.shard_tokens, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"# Flow scaling: {args.fasta.name}, {args.model}", "", f"Machine: {record['machine']}  ",
             f"Date: {record['date']}  ", f"Command: `{record['command']}`", "",
             "| workers | shards | wall s | Σ compute s | mean shard compute s | mean shard overhead s | overhead % of compute | fixed s | speed-up (wall) | speed-up (tasks) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['workers']} | {r['n_shards']} | {r['wall_s']:.1f} | {r['compute_s']:.1f} | {r['mean_shard_compute_s']:.2f} | "
                     f"{r['mean_shard_overhead_s']:.2f} | {r['overhead_pct_of_compute']:.1f} | {r['fixed_s']:.1f} | "
                     f"{r['speedup_wall']:.2f} | {r['speedup_tasks']:.2f} |")
    lines += ["", "Overhead = Prefect task duration − time inside `process_shard` (from the catalog); fixed = wall − task time / workers "
              "(temporary-server round trips, cluster start and stop). Speed-up (tasks) compares task time per worker."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
