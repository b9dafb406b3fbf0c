"""How many workers, threads and shards a screen gets on this machine: the whole machine, whatever the input.

The rule (``plan_cluster``):
- GPUs (``--device auto`` with CUDA visible, ``--device cuda`` or ``--gpus N``): one worker per GPU,
  each pinned to its own device, one shard at a time.
- CPU: one single-threaded worker per core, fewer when memory cannot hold that many copies of the
  model (``worker_memory_bytes``: each worker process holds its own model and activations).
- Shards: the input is cut into ``SHARDS_PER_SLOT`` to twice that many shards per worker, the
  count whose shards, run in order on the workers, end first (``auto_shard_tokens``), so every
  worker stays busy to the end, but never above ``MAX_SHARD_TOKENS`` (a shard is also the unit of resume)
  unless that makes more than ``MAX_SHARDS`` shards (then about ``MAX_SHARDS``).
- When the input cannot make as many shards as there are workers (fewer sequences than cores), the
  cluster starts only as many workers as there are shards and gives each the cores left over as
  torch threads, so cores do not idle.

Pure functions of (sequence costs, cores, memory, GPUs): tests check the plan for any machine.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from plmscreen.screening.run.plan import cost_ranges, min_shard_tokens, plan_cost_ranges
from plmscreen.screening.run.settings import MAX_SHARD_TOKENS

# Enough shards per worker that the last ones are short next to the whole (Dask hands the next
# shard to whichever worker frees first), few enough that per-shard work (Prefect task run,
# Parquet files, catalog) stays small.
SHARDS_PER_SLOT = 4
# One worker process without its model: Python, torch, Prefect and Dask imported (~0.5 GiB RSS
# measured), plus batch activations at the default 4096-token batch budget.
WORKER_BASE_BYTES = 1 << 30
# The share of available memory the workers may take together.
MEMORY_FRACTION = 0.8

# When a plain local screen (no Prefect API configured, no --workers/--gpus/--scheduler) runs in
# the CLI's own process instead of as a flow (``flow_pays_off``). A flow with its temporary Prefect
# server costs a fixed ~25 CPU s on a 2-core machine whatever the input (Prefect server 6-10 CPU s,
# flow process with the Dask scheduler and nannies 11-16 CPU s, worker forkserver 3-5 CPU s) and
# 10-16 s of wall time. Its scoring phase is no faster than one process running every core as torch
# threads (60 and 600 proteins on 2 cores, best of 2 rounds: 75.4 vs 75.1 s and 107.1 vs 107.4 s;
# single rounds ranged from 10% slower to 17% faster; bench/results/whole_process.md, AMD EPYC,
# 2026-12-02), so nothing repays the fixed cost but its being small: the flow starts when that cost
# is at most 5% of the screen's CPU (issue 15's bound on orchestration).
FLOW_FIXED_CPU_SECONDS = 25.0
MAX_ORCHESTRATION_SHARE = 0.05
# CPU seconds of exact fp32 scoring per (cost token x checkpoint byte) on one core of the slower
# machine measured (AMD EPYC, 2026-12-01): 6 E. coli proteins of 230-270 residues (Σ L·min(L, 1022)
# = 375,000) with a 31 MB ESM-2 8M checkpoint took 92.3 s x 2 cores in one process. Shorter proteins
# cost less per token (60 of 80-120 residues: 0.65x this), faster CPUs less (Intel Xeon: 0.58x; a
# later AMD EPYC guest: 0.8x), so the estimate errs towards starting the flow.
CPU_SECONDS_PER_TOKEN_BYTE = 1.6e-11
# Inputs above this many (decompressed) bytes always run as a flow without reading their lengths
# first: at the rate above even a 100 kB checkpoint scores 4 MB of 100-residue proteins for
# > 2,000 CPU s.
SMALL_INPUT_BYTES = 4 << 20


@dataclass(frozen=True)
class ClusterPlan:
    workers: int
    threads_per_worker: int  # torch threads in each worker
    shard_tokens: int  # shard cost budget (exact-mode Σ L·min(L, 1022)) passed to the screen
    n_shards: int
    gpus: int = 0  # 0: CPU workers; else one worker per GPU, CUDA_VISIBLE_DEVICES = its index
    reason: str = ""

    def describe(self) -> str:
        kind = f"{self.workers} GPU worker{'s' if self.workers != 1 else ''}" if self.gpus else \
            f"{self.workers} worker{'s' if self.workers != 1 else ''} x {self.threads_per_worker} thread{'s' if self.threads_per_worker != 1 else ''}"
        return f"{kind}, {self.n_shards} shard{'s' if self.n_shards != 1 else ''} ({self.reason})"


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. under taskset or a cgroup cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def visible_gpus() -> int:
    """CUDA devices torch sees, without creating a CUDA context in this (the flow's) process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_memory_bytes(checkpoint_bytes: int) -> int:
    """What one CPU worker needs: the checkpoint is read in full and then copied into the model (2x)."""
    return WORKER_BASE_BYTES + 2 * checkpoint_bytes


def estimated_scoring_cpu_seconds(costs: Sequence[int], checkpoint_bytes: int) -> float:
    """CPU seconds exact scoring of sequences of these costs takes (see CPU_SECONDS_PER_TOKEN_BYTE)."""
    return float(sum(costs)) * checkpoint_bytes * CPU_SECONDS_PER_TOKEN_BYTE


def flow_pays_off(costs: Sequence[int], checkpoint_bytes: int) -> bool:
    """Whether a local flow's fixed cost stays within MAX_ORCHESTRATION_SHARE of the screen's CPU."""
    return FLOW_FIXED_CPU_SECONDS <= MAX_ORCHESTRATION_SHARE * estimated_scoring_cpu_seconds(costs, checkpoint_bytes)


def list_schedule_makespan(shard_costs: Sequence[int], slots: int) -> int:
    """When the last worker finishes if each shard, in order, goes to the first free worker (what
    the flow does: Dask runs the next submitted shard on whichever worker frees first)."""
    free = [0] * slots
    for cost in shard_costs:
        heapq.heapreplace(free, free[0] + cost)
    return max(free)


def auto_shard_tokens(costs: Sequence[int], slots: int, budget_scale: int = 1) -> int:
    """The shard budget whose shards keep every worker slot busy to the end.

    Shards are consecutive runs of sequences packed up to the budget. A budget of total/k makes k
    shards and a small leftover, k + 1 in all, and on 2 workers an odd count leaves one worker
    alone with the last full shard (measured: 9 shards of 60 proteins on 2 workers, screen 15%
    longer than the same work in one process). So for each shard count from ``SHARDS_PER_SLOT`` to
    twice that per slot, the smallest budget that packs into at most that many shards is found
    (the largest shard is then as small as it can be), the order of shards is scheduled as the flow
    runs them, and the budget whose schedule ends first wins (fewer shards unless more end 1% sooner).
    ``budget_scale`` is the factor the screen multiplies the budget by (8 in triage mode), divided
    out here so the shard count does not depend on the mode."""
    total = int(sum(costs))
    if total == 0:
        return MAX_SHARD_TOKENS
    slots = max(1, slots)
    floor = min_shard_tokens(total, budget_scale)
    cumulative = np.concatenate(([0], np.cumsum(np.asarray(costs, dtype=np.int64))))
    even = math.ceil(total / (SHARDS_PER_SLOT * slots * budget_scale))
    if even >= MAX_SHARD_TOKENS or floor >= even:
        # Inputs so large that the shard-size or shard-count cap decides: shards are many per slot.
        return max(1, min(MAX_SHARD_TOKENS, even), floor)

    def smallest_budget_for(shards: int) -> int:  # in units of budget_scale tokens
        low, high = max(1, math.ceil(total / (shards * budget_scale))), math.ceil(total / budget_scale)
        while low < high:
            middle = (low + high) // 2
            if len(cost_ranges(cumulative, middle * budget_scale)) <= shards:
                high = middle
            else:
                low = middle + 1
        return max(1, min(MAX_SHARD_TOKENS, low), floor)

    best = None
    for per_slot in range(SHARDS_PER_SLOT, 2 * SHARDS_PER_SLOT + 1):
        budget = smallest_budget_for(per_slot * slots)
        ranges = cost_ranges(cumulative, budget * budget_scale)
        makespan = list_schedule_makespan([int(cumulative[b + 1] - cumulative[a]) for a, b in ranges], slots)
        if best is None or makespan < 0.99 * best[0]:
            best = (makespan, budget)
    return best[1]


def plan_cluster(
    costs: Sequence[int],
    *,
    cores: int,
    memory_bytes: int,
    worker_bytes: int,
    gpus: int = 0,
    workers: int | None = None,
    shard_tokens: int | None = None,
    budget_scale: int = 1,
) -> ClusterPlan:
    """Workers, threads per worker and shard size for sequences of these scoring ``costs``.

    ``workers`` / ``shard_tokens`` are the user's explicit choices and are kept as given."""
    cores = max(1, cores)
    if gpus:
        most, why = gpus, f"one worker per GPU, {gpus} GPU{'s' if gpus != 1 else ''}"
    elif workers:
        most, why = workers, f"--workers {workers}"
    else:
        fit = max(1, int(memory_bytes * MEMORY_FRACTION) // max(1, worker_bytes))
        most = min(cores, fit)
        why = f"{cores} cores" if most == cores else \
            f"{cores} cores, memory for {fit} model copies of {worker_bytes / 2**30:.1f} GiB"
    chosen_tokens = shard_tokens or auto_shard_tokens(costs, most, budget_scale)
    n_shards = len(plan_cost_ranges(costs, chosen_tokens * budget_scale))
    used = max(1, min(most, n_shards))
    if used < most:
        why += f"; {n_shards} shard{'s' if n_shards != 1 else ''} possible"
    if gpus:
        threads = 1
    else:
        threads = max(1, cores // used) if not workers else max(1, cores // workers)
    return ClusterPlan(workers=used, threads_per_worker=threads, shard_tokens=chosen_tokens, n_shards=n_shards,
                       gpus=used if gpus else 0, reason=why)


def gpu_workers_for(device: str, gpus: int | None, workers: int | None) -> int:
    """How many GPU workers a local screen starts: ``--gpus N`` as given; with ``--device auto`` or
    ``cuda`` and no ``--workers``, every visible GPU; otherwise none (CPU workers)."""
    if gpus:
        return gpus
    if workers or device == "cpu" or device.startswith("cuda:"):
        return 0
    return visible_gpus()
