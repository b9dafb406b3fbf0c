"""The automatic cluster plan: workers, torch threads and shards for any machine and input; GPU
nodes simulated by patching torch.cuda; Dask workers started without the nanny's malloc setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from plmscreen.flows.resources import (
    MAX_SHARD_TOKENS,
    SHARDS_PER_SLOT,
    gpu_workers_for,
    plan_cluster,
    visible_gpus,
    worker_memory_bytes,
)
from plmscreen.screening.run.plan import plan_cost_ranges, shard_cost
from plmscreen.screening.run.settings import MAX_SHARDS, TRIAGE_SHARD_SCALE

GiB = 1 << 30
PLENTY = 1 << 40


def costs(lengths):
    return [shard_cost(n) for n in lengths]


def plan(lengths, cores, **kwargs):
    kwargs.setdefault("memory_bytes", PLENTY)
    kwargs.setdefault("worker_bytes", GiB)
    return plan_cluster(costs(lengths), cores=cores, **kwargs)


def test_small_input_is_cut_into_at_least_one_shard_per_core():
    # The case: six ~250-residue proteins on 2 cores made one shard at the old fixed size.
    p = plan([250, 240, 260, 255, 245, 250], cores=2)
    assert (p.workers, p.threads_per_worker, p.gpus) == (2, 1, 0)
    assert p.n_shards == 6 >= p.workers
    assert len(plan_cost_ranges(costs([250, 240, 260, 255, 245, 250]), p.shard_tokens)) == p.n_shards


def test_fewer_sequences_than_cores_gives_the_spare_cores_to_torch_threads():
    one = plan([300], cores=2)
    assert (one.workers, one.threads_per_worker, one.n_shards) == (1, 2, 1)
    three = plan([300, 200, 250], cores=16)
    assert (three.workers, three.threads_per_worker, three.n_shards) == (3, 5, 3)


def test_large_input_gives_every_core_several_shards_of_bounded_size():
    lengths = [100 + (37 * i) % 400 for i in range(600)]
    p = plan(lengths, cores=16)
    assert (p.workers, p.threads_per_worker) == (16, 1)
    assert SHARDS_PER_SLOT * 16 <= p.n_shards <= 2 * SHARDS_PER_SLOT * 16
    huge = plan([1000] * 10_000, cores=2)
    assert huge.shard_tokens == MAX_SHARD_TOKENS and huge.n_shards > 2 * SHARDS_PER_SLOT


def test_inputs_of_tens_of_millions_of_sequences_stay_in_the_thousands_of_shards():
    # UniRef50's scale: 60 M sequences of ~300 residues, represented by 60,000 of 300x the cost
    # (the rule depends on the total cost only; long sequences keep the test fast).
    uniref50_cost = 60_000_000 * shard_cost(300)
    weights = [uniref50_cost // 60_000] * 60_000
    for cores, scale in ((2, 1), (512, 1), (512, TRIAGE_SHARD_SCALE)):
        p = plan_cluster(weights, cores=cores, memory_bytes=PLENTY, worker_bytes=GiB, budget_scale=scale)
        assert p.shard_tokens == -(-uniref50_cost // (MAX_SHARDS * scale)) > MAX_SHARD_TOKENS
        assert MAX_SHARDS * 0.9 <= p.n_shards <= MAX_SHARDS
        assert p.n_shards == len(plan_cost_ranges(weights, p.shard_tokens * scale))
    # Below the cap the per-shard limit holds as before.
    assert plan([1000] * 1000, cores=2).shard_tokens <= MAX_SHARD_TOKENS


def test_workers_are_limited_by_memory_and_the_cores_go_to_threads():
    checkpoint = int(2.6 * GiB)  # esm2_t33_650M
    per_worker = worker_memory_bytes(checkpoint)
    assert per_worker > 2 * checkpoint
    p = plan([300] * 400, cores=16, memory_bytes=int(4.5 * per_worker / 0.8), worker_bytes=per_worker)
    assert (p.workers, p.threads_per_worker) == (4, 4)
    assert "memory" in p.reason
    starved = plan([300] * 400, cores=16, memory_bytes=GiB, worker_bytes=per_worker)
    assert (starved.workers, starved.threads_per_worker) == (1, 16)


def test_explicit_choices_are_kept():
    p = plan([250] * 12, cores=2, workers=1, shard_tokens=10**9)
    assert (p.workers, p.threads_per_worker, p.shard_tokens, p.n_shards) == (1, 2, 10**9, 1)
    p = plan([250] * 12, cores=2, workers=4)
    assert (p.workers, p.threads_per_worker) == (4, 1)


def test_triage_shards_count_the_same_as_exact_ones():
    lengths = [200 + i for i in range(100)]
    exact = plan(lengths, cores=4)
    triage = plan(lengths, cores=4, budget_scale=TRIAGE_SHARD_SCALE)
    assert triage.n_shards == exact.n_shards >= 4
    assert triage.shard_tokens * TRIAGE_SHARD_SCALE >= exact.shard_tokens


def simulate_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_device_auto_on_a_gpu_node_means_one_worker_per_visible_gpu(monkeypatch):
    simulate_gpus(monkeypatch, 4)
    assert visible_gpus() == 4
    gpus = gpu_workers_for("auto", None, None)
    p = plan([300] * 200, cores=64, gpus=gpus)
    assert (p.workers, p.gpus, p.threads_per_worker) == (4, 4, 1)
    assert p.n_shards >= SHARDS_PER_SLOT * 4  # each GPU has shards queued behind the one it runs
    assert gpu_workers_for("cuda", None, None) == 4
    assert gpu_workers_for("cpu", None, None) == 0  # --device cpu keeps CPU workers on a GPU node
    assert gpu_workers_for("auto", 2, None) == 2  # --gpus as given
    assert gpu_workers_for("auto", None, 3) == 0  # --workers means CPU-style workers
    few = plan([300, 300], cores=64, gpus=gpus)
    assert (few.workers, few.gpus) == (2, 2)  # no GPU worker without a shard to run


def test_cpu_node_has_no_gpu_workers(monkeypatch):
    simulate_gpus(monkeypatch, 0)
    assert gpu_workers_for("auto", None, None) == 0


def test_each_gpu_worker_is_pinned_to_its_own_device(monkeypatch):
    from plmscreen.flows.clusters import gpu_worker_specs, plan_task_runner

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    specs = gpu_worker_specs(4)
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["0", "1", "2", "3"]
    assert all(s["options"]["nthreads"] == 1 for s in specs.values())
    # A node whose scheduler hands this job GPUs 2 and 5: the workers get exactly those.
    specs = gpu_worker_specs(2, visible="2,5")
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["2", "5"]
    with pytest.raises(ValueError, match="only 1 devices"):
        gpu_worker_specs(2, visible="3")
    simulate_gpus(monkeypatch, 3)
    runner = plan_task_runner(plan([300] * 50, cores=8, gpus=3))
    assert runner.cluster_kwargs == {"threads_per_worker": 1, "n_workers": 3}


@pytest.mark.slow
def test_simulated_gpu_cluster_starts_one_process_per_device_without_malloc_trim(monkeypatch):
    """A real cluster of pinned nannies (no CUDA needed: each worker reports what it was given)."""
    from distributed import Client

    from plmscreen.flows.clusters import pinned_gpu_cluster

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    with pinned_gpu_cluster(2) as cluster, Client(cluster) as client:
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.getpid()))
    assert sorted(v[0] for v in seen.values()) == ["1", "3"]
    assert all(v[1] is None for v in seen.values())
    assert len({v[2] for v in seen.values()}) == 2


@pytest.mark.slow
def test_local_cpu_workers_start_without_the_nanny_malloc_trim():
    from distributed import Client

    from plmscreen.flows.clusters import local_cpu_cluster

    with local_cpu_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(env.values()) == [None]


PAGE_FAULTS = """
import resource, sys, numpy as np
sys.path.insert(0, {repo!r})
from plmscreen.screening.model.memory import keep_activation_memory
print(keep_activation_memory())
np.ones(10 << 17); np.ones(10 << 17)  # glibc adapts: 10 MiB buffers from the heap, trimmed above 20 MiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # a forward pass's pattern: three 10 MiB activations at once, then all freed
    a, b, c = np.ones(10 << 17), np.ones(10 << 17), np.ones(10 << 17)
    del a, b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
@pytest.mark.parametrize("nanny_variable", [False, True])
def test_scoring_malloc_thresholds_stop_page_faults_on_every_batch(tmp_path, nanny_variable):
    """glibc's defaults (and Dask nanny's MALLOC_TRIM_THRESHOLD_) hand a batch's buffers back to the
    kernel and fault them in again for the next; the Scorer's thresholds keep them."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "faults.py"
    script.write_text(PAGE_FAULTS.format(repo=repo))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if nanny_variable:
        env["MALLOC_TRIM_THRESHOLD_"] = "65536"

    def faults(malloc: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, str(script)], env={**env, "PLMSCREEN_MALLOC": malloc},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    (kept_system, system), (kept, fixed) = faults("system"), faults("")
    assert (kept_system, kept) == ("False", "True")
    # Each round's 30 MiB (7,680 pages) is faulted in afresh; the kernel's fault-around maps a few
    # pages per fault (measured: ~1,500 faults per round on the AMD EPYC guest).
    assert system > 50 * 1000
    assert fixed < system / 20


def makespan(shard_costs, slots):
    """Independent of the plan code: shards in order, each to the worker that frees first."""
    free = [0] * slots
    for cost in shard_costs:
        free[free.index(min(free))] += cost
    return max(free)


@pytest.mark.parametrize("n, low, high, slots", [(60, 80, 120, 2), (60, 80, 120, 4), (600, 30, 120, 2), (200, 50, 500, 16)])
def test_automatic_shards_end_together(n, low, high, slots):
    # The 60-protein benchmark's case: a budget of total/8 made 9 shards, one worker ran the 9th
    # alone and the screen took 15% longer than in one process. Brute force over every budget that
    # makes 4 to 8 shards per slot: the chosen budget's schedule ends within 2% of the best one
    # (it tries the smallest budget for each multiple of the slot count, not every budget).
    lengths = [low + (37 * i) % (high - low + 1) for i in range(n)]
    c = costs(lengths)
    p = plan(lengths, cores=slots)
    assert p.workers == slots
    ranges = plan_cost_ranges(c, p.shard_tokens)
    chosen = makespan([sum(c[a:b + 1]) for a, b in ranges], slots)
    best = None
    budgets = sorted({sum(c[a:b]) for a in range(n) for b in range(a + 1, min(n, a + 60) + 1)})
    for budget in budgets:
        r = plan_cost_ranges(c, budget)
        if SHARDS_PER_SLOT * slots <= len(r) <= 2 * SHARDS_PER_SLOT * slots or len(r) == n:
            m = makespan([sum(c[a:b + 1]) for a, b in r], slots)
            best = m if best is None else min(best, m)
    assert chosen <= 1.02 * best, (chosen, best, len(ranges))
    # ... and never later than the rule before it (a budget of total / (4 per slot)).
    before = plan_cost_ranges(c, -(-sum(c) // (SHARDS_PER_SLOT * slots)))
    assert chosen <= makespan([sum(c[a:b + 1]) for a, b in before], slots)
    if slots == 2:
        assert len(ranges) % 2 == 0 and chosen <= 1.01 * sum(c) / slots  # both workers busy to the end


def test_cost_ranges_pack_greedily_as_a_plain_loop_does():
    # plan_cost_ranges bisects cumulative costs; an independent item-by-item loop must agree on
    # any input and budget (small and large items, zero-cost items, budgets below the largest item).
    import random

    def loop(c, budget):
        ranges, first, total = [], 0, 0
        for i, cost in enumerate(c):
            if i > first and total + cost > budget:
                ranges.append((first, i - 1))
                first, total = i, 0
            total += cost
        return ranges + ([(first, len(c) - 1)] if c else [])

    rng = random.Random(0)
    for _ in range(400):
        c = [rng.choice([0, 1, 7, 50, 400, 3000]) * rng.randint(0, 3) for _ in range(rng.randint(0, 80))]
        for budget in (1, 50, 401, 3000, 10_000, sum(c) + 1):
            assert plan_cost_ranges(c, budget) == loop(c, budget), (c, budget)
