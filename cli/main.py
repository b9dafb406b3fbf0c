"""The ``plmscreen`` command line. Library errors become one clear message and a non-zero exit;
the exit codes are defined with the errors, in ``screening.errors``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from plmscreen import screening
from plmscreen.cli.errors import fail
from plmscreen.screening.errors import EXIT_BAD_INPUT, EXIT_SHARDS_FAILED, PlmscreenError
from plmscreen.screening.score.metrics import FlagRule
from plmscreen.screening.render.table import flagged_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Screen proteins for masked-LM pseudo-likelihoods inflated by internal repeats.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plmscreen {screening.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    pass


def _print_summary(summary: dict) -> None:
    rate = summary["n_residues"] / summary["seconds"] if summary["seconds"] else 0.0
    resumed = f", {summary['n_shards_skipped']} of {summary['n_shards']} shards already done" if summary["n_shards_skipped"] else ""
    typer.echo(
        f"Screened {summary['n_scored']} sequences ({summary['n_residues']} residues) with {summary['model']['model_name']} "
        f"in {summary['seconds']:.1f} s ({rate:.0f} residues/s{resumed}); {summary['n_rejected']} rejected; "
        f"{len(summary['flagged'])} flagged."
    )
    typer.echo(f"Run {summary['run_id']}: {summary['store']}/{{residues,sequences,repeats}}/model=*/run={summary['run_id']}/")
    if summary["rejects_file"]:
        typer.echo(f"Rejected records: {summary['rejects_file']}")
    if summary["failed_shards"]:
        typer.echo(f"FAILED shards {summary['failed_shards']}: their sequences are missing; rerun the same command to retry them.")
    typer.echo("")
    typer.echo("Flagged sequences (repeat-inflated pseudo-likelihoods), most inflated first:")
    typer.echo(flagged_text(summary["flagged"]))


def _quiet_orchestration_logs() -> None:
    """Prefect's own logs stay; Dask's per-connection INFO chatter does not (workers inherit this)."""
    import os

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@contextlib.contextmanager
def _shard_progress(contents, settings, store: Path, catalog_url, enabled: bool):
    """A progress bar of residues in finished shards, read from the catalog while the flow runs."""
    import threading

    from tqdm import tqdm

    from plmscreen.screening.run.catalog import Catalog
    from plmscreen.screening.model.checkpoints import file_sha256, resolve_checkpoint
    from plmscreen.screening.run.plan import run_id_for

    _, checkpoint = resolve_checkpoint(settings.model, settings.weights_dir)
    run_id = run_id_for(contents.sha256, file_sha256(checkpoint), settings)
    stop = threading.Event()

    def residues(first: int, last: int) -> int:
        return sum(len(r.sequence) for r in contents.records[first : last + 1])

    def poll() -> None:
        bar = tqdm(total=sum(len(r.sequence) for r in contents.records), unit="res", unit_scale=True,
                   file=sys.stderr, desc="scoring", dynamic_ncols=True)
        started, seen, sequences = time.perf_counter(), set(), 0
        while not stop.wait(2.0):
            try:  # the run's registered shards: a resumed run keeps its first shard plan
                with Catalog.open(catalog_url, store, upgrade=False) as catalog:
                    done = {s.index: (s.first, s.last) for s in catalog.shards(run_id) if s.status == "done"}
            except Exception:  # noqa: BLE001 - the catalog may not exist yet; the bar only reports
                continue
            for index in done.keys() - seen:
                first, last = done[index]
                bar.update(residues(first, last))
                sequences += last - first + 1
            seen |= done.keys()
            bar.set_postfix(seqs=sequences, seq_per_s=f"{sequences / (time.perf_counter() - started):.2f}")
        bar.close()

    thread = threading.Thread(target=poll, daemon=True) if enabled else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)


@contextlib.contextmanager
def _prefect_api_and_runner(runner):
    with _prefect_api():
        yield runner


@contextlib.contextmanager
def _prefect_api():
    """Use the configured Prefect server, or start a temporary one for this screen.

    The temporary server's URL goes into the environment before the Dask cluster starts, so every
    worker, including one the nanny restarts after a crash, reports to the same server."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        _start_server(server)
        with _temporary_api(server) as url:
            yield url
    finally:
        server.stop()


def _start_server(server) -> None:
    import os

    server.start(timeout=int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))


@contextlib.contextmanager
def _temporary_api(server):
    """Point this process (and the workers it starts after this) at a started temporary server, and
    send the flow's queued log records before it stops, a failed flow's too: otherwise the log
    worker retries them after the server is gone and prints 'Error logging to API'."""
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _flush_api_logs()
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def _local_cluster_and_prefect_api(plan):
    """Start the planned local Dask cluster and, when no Prefect API is configured, a temporary
    Prefect server at the same time; yield a task runner on that cluster.

    The server's port is chosen first so that every worker (restarted ones too, through the nanny's
    env) knows its URL from the start; workers import torch and the scoring code while the server
    boots (flows/worker_preload.py). Both used to start one after the other, the imports only
    with the first shard."""
    import socket
    import threading

    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    from plmscreen.flows.clusters import start_planned_cluster

    if PREFECT_API_URL.value():
        with start_planned_cluster(plan) as cluster:
            yield DaskTaskRunner(address=cluster.scheduler_address)
        return
    from prefect.server.api.server import SubprocessASGIServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = SubprocessASGIServer(port=port)
    failure: list[BaseException] = []

    def start_server() -> None:
        try:
            _start_server(server)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            failure.append(exc)

    starting = threading.Thread(target=start_server, name="prefect-server-start", daemon=True)
    starting.start()
    try:
        with start_planned_cluster(plan, env={"PREFECT_API_URL": server.api_url}) as cluster:
            starting.join()
            if failure:
                raise failure[0]
            with _temporary_api(server):
                yield DaskTaskRunner(address=cluster.scheduler_address)
    finally:
        starting.join()
        server.stop()


def _flush_api_logs() -> None:
    """Send the flow's queued log records while the temporary server still runs."""
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=10)
    except Exception:  # a failed flush only loses log lines the terminal already showed
        pass


@app.command()
def screen(
    input: Annotated[Path, typer.Argument(help="FASTA file (plain or .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory: residues/, sequences/, repeats/ Parquet, partitioned by model and run.")],
    model: Annotated[str, typer.Option(help="plmscreen-mini, a fair-esm ESM-2 name (esm2_t6_8M_UR50D ...) or a checkpoint path.")] = "plmscreen-mini",
    weights_dir: Annotated[Optional[Path], typer.Option(help="Directory holding <model>.pt (default $PLMSCREEN_WEIGHTS_DIR).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_tokens: Annotated[Optional[int], typer.Option(help="Token budget per forward batch (default: 4096 on CPU, sized from free memory on a GPU).")] = None,
    precision: Annotated[str, typer.Option(help="fp32 (exact), or bf16/fp16 autocast (faster on GPUs, approximate: see bench/results/precision_*; fp16 is CUDA only).")] = "fp32",
    masks_per_copy: Annotated[int, typer.Option(help=">1: approximate, several far-apart positions masked per copy.")] = 1,
    min_inflation_factor: Annotated[float, typer.Option(help="Flag rule: pppl_ablated / pppl at least this (calibrated: bench/results/calibration_*).")] = FlagRule.min_inflation_factor,
    min_repeat_fraction: Annotated[float, typer.Option(help="Flag rule: fraction of residues with partners at least this.")] = FlagRule.min_repeat_fraction,
    shard_tokens: Annotated[Optional[int], typer.Option(help="Shard size as scoring cost, Σ L·min(L, 1022) over its sequences (8x that in triage mode). Default: about 4 shards per worker, at most 4,000,000.")] = None,
    mode: Annotated[str, typer.Option(help="exact: every residue masked; triage: one unmasked pass per protein, masked/ablated scoring only at repeat residues of proteins that could be flagged (same flags, no pll/pppl).")] = "exact",
    diagnostics: Annotated[bool, typer.Option(help="Copy-following index and null-corrected inflation for flagged sequences.")] = True,
    workers: Annotated[Optional[int], typer.Option(help="Local Dask worker processes (default: one per core, fewer if memory cannot hold that many models or the input makes fewer shards; spare cores become torch threads).")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="Local GPUs: one worker per GPU (default with --device auto/cuda: every visible GPU).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler (tcp://host:8786).")] = None,
    catalog: Annotated[Optional[str], typer.Option(help="Catalog URL (default: SQLite in the store), e.g. postgresql+psycopg://user@host/db.")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Score in this process, without Prefect or Dask.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Write invalid records to OUT/runs/<run>/rejects.tsv and go on.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo a run already in OUT (same input, model and parameters).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (residues and sequences per second).")] = True,
) -> None:
    """Score every residue (masked, unmasked, partner-ablated) and flag repeat-inflated sequences.

    By default the screen is a Prefect flow whose shards run on a local Dask cluster; rerunning
    the same command resumes it from the catalog.
    """
    from tqdm import tqdm

    from plmscreen.screening.input import InvalidFastaError, read_fasta
    from plmscreen.screening.score.metrics import FlagRule
    from plmscreen.screening.model.checkpoints import check_checkpoint, resolve_checkpoint
    from plmscreen.screening.score.scorer import ScoringOptions
    from plmscreen.screening.run.lifecycle import run_screen
    from plmscreen.screening.run.plan import shard_cost
    from plmscreen.screening.run.settings import TRIAGE_SHARD_SCALE, ScreenSettings

    try:
        settings = ScreenSettings(
            model=model,
            weights_dir=str(weights_dir) if weights_dir else None,
            device=device,
            scoring=ScoringOptions(batch_tokens=batch_tokens, precision=precision, masks_per_copy=masks_per_copy),
            flag=FlagRule(min_inflation_factor=min_inflation_factor, min_repeat_fraction=min_repeat_fraction),
            shard_tokens=shard_tokens or ScreenSettings.shard_tokens,
            mode=mode,
            diagnostics=diagnostics,
        )
        if not in_process:
            from plmscreen.flows.clusters import check_cluster_choice

            check_cluster_choice(workers, gpus, scheduler)
        # Input and model are checked here, before any cluster starts.
        contents = read_fasta(input)
        if contents.rejects and not skip_invalid:
            raise InvalidFastaError(input, contents.rejects)
        _, checkpoint = resolve_checkpoint(model, settings.weights_dir)
        # The layout is read through a memory map: the CLI never holds the model's weights.
        check_checkpoint(checkpoint)
        torch_threads, cluster = None, None
        if not in_process and scheduler:
            from plmscreen.flows.clusters import task_runner

            runner = task_runner(scheduler=scheduler)  # the flow sizes shards for that cluster's workers
        elif not in_process:
            from plmscreen.flows.resources import available_memory_bytes, cpu_cores, gpu_workers_for, plan_cluster, worker_memory_bytes

            if device.startswith("cuda:"):
                workers = workers or 1  # one named device: one model copy on it
            gpus = gpu_workers_for(device, gpus, workers)
            if device == "cuda" and not gpus and not workers:
                raise ValueError("--device cuda was requested but torch sees no CUDA GPU")
            cluster = plan_cluster(
                [shard_cost(len(r.sequence)) for r in contents.records], cores=cpu_cores(),
                memory_bytes=available_memory_bytes(), worker_bytes=worker_memory_bytes(checkpoint.stat().st_size),
                gpus=gpus or 0, workers=workers, shard_tokens=shard_tokens,
                budget_scale=TRIAGE_SHARD_SCALE if mode == "triage" else 1)
            settings = dataclasses.replace(settings, shard_tokens=cluster.shard_tokens)
            shard_tokens, torch_threads = cluster.shard_tokens, cluster.threads_per_worker
            typer.echo(f"Cluster: {cluster.describe()}", err=True)
    except InvalidFastaError as exc:
        fail(f"{exc}\nNothing was scored. Fix the records or pass --skip-invalid.", exc.exit_code)
    except PlmscreenError as exc:
        fail(str(exc), exc.exit_code)
    except (ValueError, FileNotFoundError) as exc:  # option values checked by the settings objects; a missing file
        fail(str(exc), EXIT_BAD_INPUT)

    if not in_process:
        _quiet_orchestration_logs()
        from plmscreen.flows.screen import screen_proteome

        try:
            orchestration = _prefect_api_and_runner(runner) if cluster is None else _local_cluster_and_prefect_api(cluster)
            with orchestration as task_runner, _shard_progress(contents, settings, out, catalog, progress):
                summary = screen_proteome.with_options(task_runner=task_runner)(
                    input=str(input), store=str(out), model=model, weights_dir=settings.weights_dir, device=device,
                    batch_tokens=batch_tokens, precision=precision, masks_per_copy=masks_per_copy,
                    shard_tokens=shard_tokens, min_inflation_factor=min_inflation_factor,
                    min_repeat_fraction=min_repeat_fraction, skip_invalid=skip_invalid, overwrite=overwrite,
                    catalog_url=catalog, mode=mode, diagnostics=diagnostics, torch_threads=torch_threads,
                )
        except PlmscreenError as exc:  # the catalog, or the cluster lost under the flow
            fail(str(exc), exc.exit_code)
        _print_summary(summary)
        if summary["failed_shards"]:
            raise typer.Exit(EXIT_SHARDS_FAILED)
        return

    bar = None

    def on_start(records):
        nonlocal bar
        total = sum(len(r.sequence) for r in records)
        bar = tqdm(total=total, unit="res", unit_scale=True, disable=not progress, file=sys.stderr,
                   desc=f"scoring {len(records)} sequences", dynamic_ncols=True)
        bar.set_postfix(seqs=0)

    done = 0
    started = time.perf_counter()

    def on_sequence_done(record):
        nonlocal done
        done += 1
        bar.update(len(record.sequence))
        bar.set_postfix(seqs=f"{done}", seq_per_s=f"{done / (time.perf_counter() - started):.2f}")

    try:
        summary = run_screen(input, out, settings, skip_invalid=skip_invalid, overwrite=overwrite,
                             on_start=on_start, on_sequence_done=on_sequence_done, catalog_url=catalog)
    except PlmscreenError as exc:
        fail(str(exc), exc.exit_code)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(summary.as_dict())


@app.command()
def repeats(
    input: Annotated[Path, typer.Argument(help="FASTA file (plain or .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file: one row per aligned region pair.")],
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Write invalid records to <out>.rejects.tsv and go on.")] = False,
) -> None:
    """Run only the repeat detector (no model): aligned region pairs, 1-based inclusive."""
    from plmscreen.screening.input import InvalidFastaError, read_fasta, write_rejects
    from plmscreen.screening.store.parquet import with_metadata, write_parquet_atomic
    from plmscreen.screening.score.repeats import RepeatParams, find_repeats
    from plmscreen.screening.run.tables import repeat_table

    try:
        contents = read_fasta(input)
        if contents.rejects and not skip_invalid:
            raise InvalidFastaError(input, contents.rejects)
    except (InvalidFastaError, FileNotFoundError) as exc:
        fail(f"{exc}\nNothing was written. Fix the records or pass --skip-invalid.", EXIT_BAD_INPUT)
    params = RepeatParams()
    regions = [find_repeats(r.sequence, params) for r in contents.records]
    table = repeat_table(contents.records, regions)
    import dataclasses

    from plmscreen.schema.arrow import SCHEMA_VERSION

    metadata = {"schema_version": SCHEMA_VERSION, "plmscreen_version": screening.__version__,
                "input_sha256": contents.sha256, "parameters": {"repeats": dataclasses.asdict(params)}}
    write_parquet_atomic(with_metadata(table, metadata), out)
    if contents.rejects:
        write_rejects(contents.rejects, f"{out}.rejects.tsv")
    with_repeats = sum(1 for reg in regions if reg)
    typer.echo(f"{len(contents.records)} sequences, {with_repeats} with repeats, {table.num_rows} region pairs -> {out}")


from plmscreen.cli.store import register as _register_store_commands  # noqa: E402
from plmscreen.cli.validate import register as _register_validate_command  # noqa: E402

_register_store_commands(app)
_register_validate_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
