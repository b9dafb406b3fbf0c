"""Scaling and orchestration overhead of the screen-proteome flow: the same input from 1 worker to all cores.

For each worker count the flow runs on a fresh store against one temporary Prefect server; the
script then reads every shard task's start and end from the Prefect API and each shard's
compute time from the catalog (time inside ``process_shard``):
- per-shard overhead = task duration - compute (Prefect task engine, Dask transfer, catalog);
- fixed cost = flow wall time - task makespan (server round trips, cluster start and stop);
- speed-up = wall(1 worker) / wall(N workers), and the same for the task makespan, each also
  as a fraction of linear (N);
- CPU seconds per residue: CPU of this process (flow, Dask scheduler and nannies) and of the
  workers (reaped children), per scored residue; the temporary server's CPU is reported apart.
Every worker count gets the same shards: the size the automatic plan picks for the most workers
(about 4 shards per worker), so only the worker count changes.

The machine's own ceiling, measured side by side: N plain processes (``plmscreen screen
--in-process``, one torch thread each, no Prefect, no Dask) started at once, each on its share of
the proteins (balanced by scoring cost). Their speed-up is what N cores give to N independent
single-threaded scorers on this machine (shared caches, memory bandwidth, a VM's vCPUs); the
flow's speed-up is reported against linear and against that ceiling.

    python bench/bench_flow_scaling.py --model plmscreen-mini --fasta examples/sample.fasta
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from common import machine

REPO = Path(__file__).resolve().parents[1]




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


def server_cpu() -> float:
    """CPU seconds so far of the temporary Prefect server (a uvicorn child of this process)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "uvicorn" in " ".join(child.cmdline()):
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def process_cpu() -> float:
    import resource

    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def run_once(args, workers: int, store: Path) -> dict:
    from prefect import get_client  # noqa: F401  (imported so the server context is ready)

    from plmscreen.flows.clusters import task_runner
    from plmscreen.flows.screen import screen_proteome
    from plmscreen.screening.run.catalog import Catalog

    flow = screen_proteome.with_options(task_runner=task_runner(workers=workers))
    started, cpu_before, server_before = time.perf_counter(), process_cpu(), server_cpu()
    settings = {"model": args.model, "device": "cpu", "shard_tokens": args.shard_tokens}
    state = flow(input=str(args.fasta), store=str(store), settings=settings, torch_threads=1, return_state=True)
    wall = time.perf_counter() - started
    cpu, server = process_cpu() - cpu_before, server_cpu() - server_before
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
        "cpu_s": cpu,
        "server_cpu_s": server,
        "cpu_ms_per_residue": 1000 * cpu / summary["n_residues"],
        "compute_ms_per_residue": 1000 * sum(compute.values()) / summary["n_residues"],
    }


def plain_processes(args, n: int, work: Path) -> dict:
    """N independent single-thread in-process screens at once, each on its share of the proteins."""
    import subprocess

    from plmscreen.screening.input import read_fasta
    from plmscreen.screening.run.plan import shard_cost

    parts: list[list] = [[] for _ in range(n)]
    loads = [0] * n
    for record in sorted(read_fasta(args.fasta).records, key=lambda r: -len(r.sequence)):
        k = loads.index(min(loads))
        parts[k].append(record)
        loads[k] += shard_cost(len(record.sequence))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PLMSCREEN_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    procs = []
    started = time.perf_counter()
    for k, part in enumerate(parts):
        fasta = work / f"plain-{n}-{k}.fasta"
        fasta.write_text("".join(f">{r.seq_id}\n{r.sequence}\n" for r in part))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "plmscreen.cli.main", "screen", str(fasta), "--model", args.model, "--device", "cpu",
             "--in-process", "--no-progress", "--no-reuse", "--out", str(work / f"plain-{n}-{k}")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"plain process failed ({proc.returncode}): {err[-2000:]}")
    return {"workers": n, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fasta", type=Path, default=REPO / "examples" / "sample.fasta")
    parser.add_argument("--model", default="plmscreen-mini")
    parser.add_argument("--shard-tokens", type=int, help="default: the automatic plan's size for the most workers")
    parser.add_argument("--workers", type=int, nargs="+", help="default: 1 up to all cores")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "flow_scaling")
    args = parser.parse_args()
    from plmscreen.flows.resources import auto_shard_tokens, cpu_cores
    from plmscreen.screening.input import read_fasta
    from plmscreen.screening.run.plan import shard_cost

    args.workers = args.workers or list(range(1, cpu_cores() + 1))
    if args.shard_tokens is None:
        costs = [shard_cost(len(r.sequence)) for r in read_fasta(args.fasta).records]
        args.shard_tokens = auto_shard_tokens(costs, max(args.workers))
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from plmscreen.flows.orchestration import prefect_api

    results, plain = [], []
    work = Path(tempfile.mkdtemp(prefix="plmscreen-scaling-"))
    try:
        for workers in args.workers:
            plain.append(plain_processes(args, workers, work))
            print(json.dumps({"plain": plain[-1]}), flush=True)
        with prefect_api():
            for workers in args.workers:
                results.append(run_once(args, workers, work / f"store-{workers}"))
                print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results[0]
    for r, p in zip(results, plain):
        r["plain_wall_s"] = p["wall_s"]
        r["plain_speedup"] = plain[0]["wall_s"] / p["wall_s"]
        r["plain_speedup_of_linear"] = r["plain_speedup"] / (r["workers"] / base["workers"])
    for r in results:
        r["speedup_wall"] = base["wall_s"] / r["wall_s"]
        r["speedup_tasks"] = (base["task_s"] / base["workers"]) / (r["task_s"] / r["workers"])
        r["speedup_wall_of_linear"] = r["speedup_wall"] / (r["workers"] / base["workers"])
        r["speedup_tasks_of_linear"] = r["speedup_tasks"] / (r["workers"] / base["workers"])
        r["speedup_wall_of_plain"] = r["speedup_wall"] / r["plain_speedup"]
    record = {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "fasta": str(args.fasta), "model": args.model,
              "shard_tokens": args.shard_tokens, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"# Flow scaling: {args.fasta.name}, {args.model}", "", f"Machine: {record['machine']}  ",
             f"Date: {record['date']}  ", f"Command: `{record['command']}`", "",
             "| workers | shards | wall s | Σ compute s | mean shard compute s | mean shard overhead s | overhead % of compute | fixed s | CPU ms/residue | compute ms/residue | server CPU s | speed-up wall (of linear) | speed-up tasks (of linear) | plain processes: wall s, speed-up (of linear) | flow speed-up / plain speed-up |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['workers']} | {r['n_shards']} | {r['wall_s']:.1f} | {r['compute_s']:.1f} | {r['mean_shard_compute_s']:.2f} | "
                     f"{r['mean_shard_overhead_s']:.2f} | {r['overhead_pct_of_compute']:.1f} | {r['fixed_s']:.1f} | "
                     f"{r['cpu_ms_per_residue']:.1f} | {r['compute_ms_per_residue']:.1f} | {r['server_cpu_s']:.1f} | "
                     f"{r['speedup_wall']:.2f} ({r['speedup_wall_of_linear']:.2f}) | {r['speedup_tasks']:.2f} ({r['speedup_tasks_of_linear']:.2f}) | "
                     f"{r['plain_wall_s']:.1f}, {r['plain_speedup']:.2f} ({r['plain_speedup_of_linear']:.2f}) | {r['speedup_wall_of_plain']:.2f} |")
    lines += ["", "Overhead = Prefect task duration − time inside `process_shard` (from the catalog); fixed = wall − task time / workers "
              "(temporary-server round trips, cluster start and stop). Speed-up (tasks) compares task time per worker. "
              "CPU ms/residue: this process (flow, scheduler, nannies) plus the workers, per scored residue; compute ms/residue: "
              "time inside `process_shard` summed over shards. Plain processes: N `plmscreen screen --in-process` processes with one "
              "torch thread each, started at once on balanced shares of the proteins (interpreter start-up included): what "
              "this machine gives N independent scorers."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
