"""The ``screen-proteome`` flow: one Prefect task per shard on a Dask cluster, the catalog keeping count.

The flow process reads and validates the input (streamed: it keeps byte spans, not records),
registers the run and its shards, submits the shards the catalog does not have as done a window
at a time (``shards_in_flight``), and closes the run. Each task runs on a Dask worker:
it loads the model once per worker process, scores its shard, writes the shard's Parquet
atomically and marks it done, returning a small manifest. A shard whose task is recomputed after
a worker died (prefect#15442) finds itself done in the catalog and is skipped, so nothing is
written twice.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from distributed.client import FutureCancelledError
from distributed.comm.core import CommClosedError
from plmscreen.flows.clusters import task_runner
from plmscreen.flows.resources import auto_shard_tokens
from plmscreen.screening.errors import ClusterError, StoreError
from plmscreen.screening.render.table import flagged_markdown, reuse_line
from plmscreen.screening.run.lifecycle import ScreenSummary, ShardManifest, finalize_run, process_shard
from plmscreen.screening.run.plan import RunPlan, prepare_run
from plmscreen.screening.run.settings import TRIAGE_SHARD_SCALE, ScreenSettings
from plmscreen.screening.run.workers import ScorerCache
from plmscreen.screening.score.scorer import Scorer
from plmscreen.screening.store.runs import run_changes
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import deployment

SHARD_RETRIES = 2
# Shards submitted at a time, per worker thread: one running and one queued behind it keeps every
# worker busy; more only grows what the flow, Prefect and the scheduler hold.
IN_FLIGHT_PER_SLOT = 2
MIN_IN_FLIGHT = 8  # when the cluster's size is not known yet (an adaptive cluster with no worker up)


def shards_in_flight(slots: int) -> int:
    """How many shard tasks the flow keeps submitted on a cluster of ``slots`` worker threads."""
    return max(MIN_IN_FLIGHT, IN_FLIGHT_PER_SLOT * slots)


class ClusterLostError(ClusterError):
    """The Dask cluster went away under the flow (its scheduler died or became unreachable)."""

# The models this worker process holds: tasks of the same run share one; a new checkpoint replaces it.
WORKER_MODELS = ScorerCache(capacity=1)


def worker_scorer(plan: RunPlan, torch_threads: int | None) -> Scorer:
    import torch

    # Dask's nanny starts workers with OMP_NUM_THREADS=1; the plan may give a worker more cores.
    if torch_threads and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return WORKER_MODELS.for_plan(plan)


@task(name="score-shard", retries=SHARD_RETRIES, retry_delay_seconds=2, task_run_name="{plan.run_id}/shard-{shard}")
def score_shard_task(plan: RunPlan, shard: int, torch_threads: int | None = None) -> ShardManifest:
    first, last = plan.shards[shard]
    get_run_logger().info("shard %d: records %d..%d (%d sequences)", shard, first, last, last - first + 1)
    with plan.open_catalog() as catalog:
        # The model is loaded only if the shard has something to score (not all copied from the store).
        return process_shard(functools.partial(worker_scorer, plan, torch_threads), plan, shard, catalog)


def _flagged_markdown(summary: ScreenSummary, report_hint: str) -> str:
    lines = [
        f"# plmscreen run `{summary.run_id}`",
        "",
        f"{summary.n_scored} sequences, {summary.n_residues} residues, {len(summary.flagged)} flagged, "
        f"{summary.n_rejected} rejected; {summary.n_shards} shards ({summary.n_shards_skipped} already done).",
        "",
        f"Scored in this flow run: {summary.n_shards - summary.n_shards_skipped - len(summary.failed_shards)} shards; "
        f"taken as finished from the catalog: {summary.n_shards_skipped} shards.",
        "",
        reuse_line(summary.as_dict()),
        "",
        flagged_markdown(summary.flagged),
    ]
    if summary.failed_shards:
        lines += ["", f"**Failed shards** (rerun the same command to retry): {summary.failed_shards}"]
    lines += ["", report_hint]
    return "\n".join(lines)


def _cluster_slots() -> int:
    """Worker threads of the Dask cluster this flow runs on (0 when not known yet, e.g. an
    adaptive cluster with no worker up)."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if not isinstance(runner, DaskTaskRunner):
        return 0
    try:
        return sum(runner.client.nthreads().values())
    except Exception:  # noqa: BLE001 - without a count the fixed default applies
        return 0


def _settings_of(value) -> ScreenSettings:
    """The flow's settings parameter: a ScreenSettings (CLI, Python) or its JSON object (deployments, UI)."""
    return value if isinstance(value, ScreenSettings) else ScreenSettings.from_dict(value or {})


def flow_run_name() -> str:
    """What the Prefect UI lists: 'screen sample.fasta · plmscreen-mini · exact'."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    try:
        settings = _settings_of(params.get("settings"))
    except Exception:  # noqa: BLE001 - the flow itself reports bad settings; the name must not fail first
        settings = ScreenSettings()
    model = Path(settings.model).stem if settings.model.endswith(".pt") else settings.model
    return f"screen {Path(str(params['input'])).name} · {model} · {settings.mode}"


# Deployments run the flow with this default: a local Dask cluster, one single-threaded worker per core.
@flow(name="screen-proteome", flow_run_name=flow_run_name, task_runner=task_runner())
def screen_proteome(
    input: str,
    store: str,
    settings: dict | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    catalog_url: str | None = None,
    torch_threads: int | None = None,
) -> dict:
    """Screen ``input`` into ``store``; rerunning the same screen resumes it.

    ``settings`` is one ScreenSettings, or its JSON object (``ScreenSettings.to_dict()``; omitted
    fields keep their defaults). With ``shard_tokens`` null, shards are sized for the cluster the
    flow runs on (about four per worker thread); the CLI passes the size it planned together with
    the cluster."""
    logger = get_run_logger()
    started = time.perf_counter()
    settings = _settings_of(settings)
    slots = _cluster_slots()
    # About four shards per worker thread, sized from the record costs prepare_run reads anyway.
    shard_tokens_for = functools.partial(auto_shard_tokens, slots=slots,
                                         budget_scale=TRIAGE_SHARD_SCALE if settings.mode == "triage" else 1) \
        if slots and settings.shard_tokens is None else None
    plan = prepare_run(input, store, settings, skip_invalid, overwrite, catalog_url, shard_tokens_for)
    if shard_tokens_for is not None:
        logger.info("shard size %d tokens, chosen for %d worker threads", plan.settings.shard_tokens, slots)
    # Runs of one deployment are one screen: `plmscreen changes` compares each with the one before.
    plan.metadata["deployment"] = deployment.name
    with plan.open_catalog() as catalog:
        # Shards "running" too: a dead holder's claim is taken over by its task, a live one's awaited.
        pending = [s.index for s in catalog.unfinished_shards(plan.run_id)]
    done_before = len(plan.shards) - len(pending)
    logger.info(
        "run %s: %d sequences in %d shards, %d to score (%d rejected records)",
        plan.run_id, plan.n_records, len(plan.shards), len(pending), len(plan.rejects),
    )
    progress = create_progress_artifact(
        progress=100.0 * done_before / max(1, len(plan.shards)),
        key=f"shards-{plan.run_id}",
        description=f"Shards done of run {plan.run_id}",
    )
    manifests: list[ShardManifest] = []
    failed: list[int] = []
    skipped = [ShardManifest(i, plan.shards[i][1] - plan.shards[i][0] + 1, plan.shard_residues(i), -1, (), 0.0, True)
               for i in plan.shards if i not in pending]
    # A window of submitted shards, refilled as they finish: the flow holds (and Prefect and the
    # scheduler track) a few tasks per worker thread, not one per shard of a huge input.
    waiting = iter(pending)
    in_flight: dict = {}  # task run id -> (future, shard)

    def submit_more() -> None:
        limit = shards_in_flight(_cluster_slots() or slots)  # workers may have joined or left
        while len(in_flight) < limit and (shard := next(waiting, None)) is not None:
            future = score_shard_task.submit(plan.for_shard(shard), shard, torch_threads)
            in_flight[future.task_run_id] = (future, shard)

    def lost_scheduler(exc: BaseException) -> ClusterLostError:
        return ClusterLostError(
            f"lost the Dask scheduler after {done_before + len(manifests)} of {len(plan.shards)} shards of run "
            f"{plan.run_id} were done ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Finished "
            f"shards are saved in the catalog; rerun the same command against a live scheduler to resume.")

    # Dask cancels every future when the client loses its scheduler (FutureCancelledError); a
    # result fetched while the connection drops fails with CommClosedError instead. Either way no
    # shard can finish.
    try:
        submit_more()
    except (FutureCancelledError, CommClosedError) as exc:
        raise lost_scheduler(exc) from None
    while in_flight:
        try:
            future = next(as_completed([f for f, _ in in_flight.values()]))
            _, shard = in_flight.pop(future.task_run_id)
            outcome = future.result(raise_on_failure=False)
        except (FutureCancelledError, CommClosedError) as exc:
            raise lost_scheduler(exc) from None
        if isinstance(outcome, ShardManifest):
            manifest = outcome
            manifests.append(manifest)
            logger.info("shard %d done: %d sequences in %.1f s", manifest.shard, manifest.n_sequences, manifest.seconds)
        else:
            failed.append(shard)
            logger.error("shard %d failed after %d attempts: %s", shard, SHARD_RETRIES + 1, outcome)
        update_progress_artifact(progress, 100.0 * (done_before + len(manifests)) / max(1, len(plan.shards)))
        try:
            submit_more()
        except (FutureCancelledError, CommClosedError) as exc:
            raise lost_scheduler(exc) from None
    summary = finalize_run(plan, skipped + sorted(manifests, key=lambda m: m.shard), sorted(failed),
                           time.perf_counter() - started, {"model_name": plan.model_name, "checkpoint_sha256": plan.checkpoint_sha256})
    report_hint = f"Report: `plmscreen report {plan.store} --run {plan.run_id} --out report.html`"
    create_markdown_artifact(_flagged_markdown(summary, report_hint), key=f"flagged-{plan.run_id}",
                             description=f"Flagged sequences of run {plan.run_id}")
    try:
        changes = run_changes(plan.store, plan.run_id)
    except StoreError as exc:  # a report of changes must not fail a finished screen
        logger.warning("changes since the previous run not computed: %s", exc)
    else:
        create_markdown_artifact(changes.markdown(), key=f"changes-{plan.run_id}",
                                 description=f"What changed in run {plan.run_id} since the previous screen")
    return summary.as_dict()
