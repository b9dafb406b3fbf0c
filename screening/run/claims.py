"""Shard claims as leases in the catalog: one holder per shard, renewed while it works, taken over when it dies."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from plmscreen.screening.run.catalog import Catalog

# A shard claim is a lease: its holder renews it every third of this, and a claim not renewed for
# this long is taken over (its holder died on another node; on this host a dead holder is seen at
# once). Long enough to ride out a stalled disk or a busy catalog, short enough that a lost node
# delays its shards by about a minute.
CLAIM_LEASE_SECONDS = 60.0
CLAIM_LEASE_ENV = "PLMSCREEN_CLAIM_LEASE_SECONDS"


def claim_lease_seconds() -> float:
    value = os.environ.get(CLAIM_LEASE_ENV)
    if value is None:
        return CLAIM_LEASE_SECONDS
    try:
        lease = float(value)
    except ValueError:
        raise ValueError(f"${CLAIM_LEASE_ENV} must be a number of seconds, got {value!r}") from None
    if lease <= 0:
        raise ValueError(f"${CLAIM_LEASE_ENV} must be positive, got {value!r}")
    return lease


def this_worker() -> str:
    """How a claim names its holder: "host:pid" (plmscreen status shows it; an operator can find it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str | None) -> bool:
    """Only a process on this host can be known dead; a holder elsewhere is judged by its lease."""
    import psutil

    host, _, pid = (holder or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def claim_or_wait(catalog: Catalog, run_id: str, shard: int, lease: float, poll: float | None = None) -> bool:
    """Claim ``shard`` for this process: True once claimed, False if it is (or becomes) done.

    A shard held by a live holder (another flow of the same run, a worker still scoring it) is
    not computed twice: this waits, reading the catalog every ``poll`` seconds, until the holder
    finishes it or its lease runs out. The catalog, not Prefect or Dask, is the only thing every
    flow of a run shares, so the lease lives there."""
    poll = min(5.0, lease / 4) if poll is None else poll
    me = this_worker()
    while True:
        state = catalog.shard(run_id, shard)
        if state.status == "done":
            return False
        if catalog.claim_shard(run_id, shard, stale_after=lease, worker=me):
            return True
        if state.status == "running" and holder_is_dead(state.worker) \
                and catalog.take_over_claim(run_id, shard, state.worker, worker=me):
            return True
        time.sleep(poll)


@contextlib.contextmanager
def lease_heartbeat(catalog: Catalog, run_id: str, shard: int, lease: float):
    """Renew this process's claim on ``shard`` every third of the lease while the block runs."""
    stop = threading.Event()
    me = this_worker()

    def beat() -> None:
        while not stop.wait(lease / 3):
            try:
                catalog.renew_claim(run_id, shard, me)
            except Exception:  # noqa: BLE001 - a missed beat only risks a takeover, never wrong data
                pass

    thread = threading.Thread(target=beat, name=f"lease-{run_id}-{shard}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
