"""``plmscreen screen``: build the ScreenSettings once, prepare the run, then score it through the
Prefect flow on a Dask cluster (or in this process with ``--in-process``, and by default for a
small local screen with no Prefect API configured: ``_small_local_screen``)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from plmscreen.cli.errors import fail
from plmscreen.screening.errors import EXIT_BAD_INPUT, EXIT_SHARDS_FAILED, InputError, PlmscreenError
from plmscreen.screening.render.table import flagged_text, reuse_line
from plmscreen.screening.run.settings import ScreenSettings

_DEFAULTS = ScreenSettings()


def _print_summary(summary: dict) -> None:
    rate = summary["n_residues"] / summary["seconds"] if summary["seconds"] else 0.0
    resumed = f", {summary['n_shards_skipped']} of {summary['n_shards']} shards already done" if summary["n_shards_skipped"] else ""
    typer.echo(
        f"Screened {summary['n_scored']} sequences ({summary['n_residues']} residues) with {summary['model']['model_name']} "
        f"in {summary['seconds']:.1f} s ({rate:.0f} residues/s{resumed}); {summary['n_rejected']} rejected; "
        f"{len(summary['flagged'])} flagged."
    )
    typer.echo(f"Sequences: {reuse_line(summary)}")
    if summary.get("calibration"):
        typer.echo(f"Flag rule: {summary['calibration']['note']}")
    typer.echo(f"Run {summary['run_id']}: {summary['store']}/{{residues,sequences,repeats}}/model=*/run={summary['run_id']}/")
    if summary["rejects_file"]:
        typer.echo(f"Rejected records: {summary['rejects_file']}")
    if summary["failed_shards"]:
        typer.echo(f"FAILED shards {summary['failed_shards']}: their sequences are missing; rerun the same command to retry them.")
    typer.echo("")
    typer.echo("Flagged sequences (repeat-inflated pseudo-likelihoods), most inflated first:")
    typer.echo(flagged_text(summary["flagged"]))


@contextlib.contextmanager
def _shard_progress(plan, enabled: bool):
    """A progress bar of residues in finished shards, read from the catalog while the flow runs.
    It follows the plan prepare_run returned: the same run id and shards the flow works on."""
    import threading

    from plmscreen.screening.run.catalog import Catalog
    from tqdm import tqdm

    stop = threading.Event()

    def poll() -> None:
        residues = {i: plan.shard_residues(i) for i in plan.shards}
        bar = tqdm(total=sum(residues.values()), unit="res", unit_scale=True, file=sys.stderr, desc="scoring",
                   dynamic_ncols=True)
        started, seen, sequences = time.perf_counter(), set(), 0
        while not stop.wait(2.0):
            try:
                with Catalog.open(plan.catalog_url, plan.store, upgrade=False) as catalog:
                    done = {s.index for s in catalog.shards(plan.run_id) if s.status == "done"}
            except Exception:  # noqa: BLE001 - a busy catalog only delays the bar
                continue
            for index in done - seen:
                bar.update(residues[index])
                first, last = plan.shards[index]
                sequences += last - first + 1
            seen |= done
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


def _settings(settings_file: Path | None, assignments: list[str], options: dict) -> ScreenSettings:
    """One ScreenSettings: the file (or the defaults), then --set, then the named options given.

    Flag thresholds given anywhere (the file's "flag", --set flag.…, the threshold options) are
    explicit: no calibration replaces them (calibration "none"); naming a calibration as well is an error."""
    import json

    settings = ScreenSettings.from_file(settings_file) if settings_file else ScreenSettings()
    settings = settings.with_overrides(assignments)
    named = {k: v for k, v in options.items() if v is not None}
    explicit_flag = (any(a.strip().startswith("flag.") for a in assignments)
                     or any(k.startswith("flag.") for k in named)
                     or bool(settings_file and "flag" in json.loads(Path(settings_file).read_text())))
    for section in ("scoring", "flag"):
        group = {k.split(".", 1)[1]: named.pop(k) for k in list(named) if k.startswith(section + ".")}
        if group:
            named[section] = dataclasses.replace(getattr(settings, section), **group)
    settings = dataclasses.replace(settings, **named)
    if explicit_flag:
        if settings.calibration not in ("auto", "none"):
            raise InputError(f"--calibration {settings.calibration} and explicit flag thresholds exclude each other: "
                             f"a calibration sets the flag rule")
        settings = dataclasses.replace(settings, calibration="none")
    return settings


def screen(
    input: Annotated[Path, typer.Argument(help="FASTA file (plain or .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory: residues/, sequences/, repeats/ Parquet, partitioned by model and run.")],
    model: Annotated[Optional[str], typer.Option(help=f"plmscreen-mini, a fair-esm ESM-2 name (esm2_t6_8M_UR50D ...) or .pt file, a CARP name (carp_38M ...) or .pt file, a Hugging Face ESM-2 / ESM C directory (config.json + safetensors) or hub id (org/name, from --weights-dir or the local HF cache) (default: {_DEFAULTS.model}).")] = None,
    weights_dir: Annotated[Optional[Path], typer.Option(help="Directory holding <model>.pt, or a hub id's checkpoint directory named after its repository (default $PLMSCREEN_WEIGHTS_DIR).")] = None,
    hub_download: Annotated[Optional[bool], typer.Option("--hub-download/--no-hub-download", help="Allow downloading a Hugging Face hub id that is not found locally (config, tokenizer and safetensors only). Off by default: screens run offline.")] = None,
    device: Annotated[Optional[str], typer.Option(help=f"auto, cpu or cuda (default: {_DEFAULTS.device}).")] = None,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Token budget per forward batch (default: 4096 on CPU, sized from free memory on a GPU).")] = None,
    precision: Annotated[Optional[str], typer.Option(help=f"fp32 (exact), or bf16/fp16 autocast (faster on GPUs, approximate: see bench/results/precision_*; fp16 is CUDA only) (default: {_DEFAULTS.scoring.precision}).")] = None,
    masks_per_copy: Annotated[Optional[int], typer.Option(help=f">1: approximate, several far-apart positions masked per copy (default: {_DEFAULTS.scoring.masks_per_copy}).")] = None,
    min_inflation_factor: Annotated[Optional[float], typer.Option(help=f"Flag rule: pppl_ablated / pppl at least this (calibrated: bench/results/calibration_*) (default: {_DEFAULTS.flag.min_inflation_factor}).")] = None,
    min_repeat_fraction: Annotated[Optional[float], typer.Option(help=f"Flag rule: fraction of residues with partners at least this (default: {_DEFAULTS.flag.min_repeat_fraction}).")] = None,
    max_qvalue: Annotated[Optional[float], typer.Option(help=f"Flag rule: Benjamini-Hochberg q-value (across the run) of the test that co-masking the partners costs more than co-masking as many random positions, at most this (default: {_DEFAULTS.flag.max_qvalue}).")] = None,
    shard_tokens: Annotated[Optional[int], typer.Option(help="Shard size as scoring cost, Σ L·min(L, 1022) over its sequences (8x that in triage mode). Default: about 4 shards per worker, at most plmscreen.screening.run.settings.MAX_SHARD_TOKENS.")] = None,
    mode: Annotated[Optional[str], typer.Option(help=f"exact: every residue masked; triage: one unmasked pass per protein, masked/ablated scoring only at repeat residues of proteins that could be flagged (same flags, no pll/pppl) (default: {_DEFAULTS.mode}).")] = None,
    diagnostics: Annotated[Optional[bool], typer.Option("--diagnostics/--no-diagnostics", help="Copy-following index and null-corrected inflation for flagged sequences (default: on).")] = None,
    calibration: Annotated[Optional[str], typer.Option(help="Flag calibration (plmscreen calibrate): auto (the newest for the checkpoint in the store's catalog, then $PLMSCREEN_CALIBRATIONS; not when flag thresholds are set), none, a calibration id or a record's path (default: auto).")] = None,
    reuse: Annotated[Optional[bool], typer.Option("--reuse/--no-reuse", help="Copy the rows of sequences already scored in the store with the same checkpoint and scoring parameters, and score identical sequences once (default: on). --no-reuse scores every record; with --overwrite it recomputes a finished run.")] = None,
    settings_file: Annotated[Optional[Path], typer.Option("--settings", help="JSON file of screen settings (ScreenSettings.to_dict(); omitted fields keep their defaults). Options given on the command line win.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="Set any parameter, e.g. --set repeats.min_identity=0.3 --set flag.min_inflation_factor=1.1 (groups: scoring, repeats, flag).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local Dask worker processes (default: one per core, fewer if memory cannot hold that many models or the input makes fewer shards; spare cores become torch threads).")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="Local GPUs: one worker per GPU (default with --device auto/cuda: every visible GPU).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler (tcp://host:8786).")] = None,
    catalog: Annotated[Optional[str], typer.Option(help="Catalog URL (default: SQLite in the store), e.g. postgresql+psycopg://user@host/db.")] = None,
    in_process: Annotated[Optional[bool], typer.Option("--in-process/--flow", help="--in-process: score in this process (all cores as torch threads), without Prefect or Dask. --flow: run the Prefect flow on a Dask cluster. Default: the flow, except for a local CPU screen with no Prefect API configured whose estimated scoring is under 20x the flow's fixed start-up (~25 CPU s): that one runs in this process, and says so.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Write invalid records to OUT/runs/<run>/rejects.tsv and go on.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo a run already in OUT (same input, model and parameters).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (residues and sequences per second).")] = True,
    plan_only: Annotated[bool, typer.Option("--plan-only", help="Validate the input, name the run, plan and register its shards (as a screen does first), print the plan and stop: nothing is scored, no cluster starts. A later screen resumes this plan.")] = False,
) -> None:
    """Score every residue (masked, unmasked, partner-ablated) and flag repeat-inflated sequences.

    By default the screen is a Prefect flow whose shards run on a local Dask cluster; rerunning
    the same command resumes it from the catalog.
    """
    from plmscreen.screening.input import InvalidFastaError

    startup = None
    # Whatever ends the command (a finished flow, bad input, an interrupt), the temporary server stops.
    try:
        try:
            settings = _settings(settings_file, assignments or [], {
                "model": model, "weights_dir": str(weights_dir) if weights_dir else None, "device": device,
                "hub_download": hub_download,
                "scoring.batch_tokens": batch_tokens, "scoring.precision": precision, "scoring.masks_per_copy": masks_per_copy,
                "flag.min_inflation_factor": min_inflation_factor, "flag.min_repeat_fraction": min_repeat_fraction,
                "flag.max_qvalue": max_qvalue,
                "shard_tokens": shard_tokens, "mode": mode, "diagnostics": diagnostics, "reuse": reuse,
                "calibration": calibration,
            })
            if in_process is None and not plan_only:
                in_process = _small_local_screen(input, settings, workers, gpus, scheduler)
            if in_process and not plan_only:
                return _screen_in_process(input, out, settings, skip_invalid, overwrite, catalog, progress)
            from plmscreen.flows.orchestration import check_cluster_choice

            check_cluster_choice(workers, gpus, scheduler)
            if not plan_only:
                # The temporary Prefect server and the workers' forkserver boot while this process reads
                # and plans the input: on a small screen they are most of the start-up.
                from plmscreen.flows.orchestration import ScreenStartup

                startup = ScreenStartup.begin(local_cpu_cluster=scheduler is None and not gpus
                                              and not (settings.device or "").startswith("cuda"))
            # (imported after the start: torch alone is ~2 s)
            from plmscreen.screening.model.backends.resolve import plan_checkpoint
            from plmscreen.screening.model.checkpoints import check_checkpoint
            from plmscreen.screening.run.plan import prepare_run

            # Family, files and digests from config and files only, before any cluster starts (a hub id
            # is downloaded here if --hub-download allows it): the CLI never holds the weights.
            planned = plan_checkpoint(settings.model, settings.weights_dir, settings.hub_download)
            if planned.family == "fair-esm":
                check_checkpoint(planned.path)  # the layout, read through a memory map
            cluster, size_shards = _cluster_for(settings, planned.size_bytes, workers, gpus, scheduler) if not in_process else (None, None)
            # The one reading of the input and naming of the run: the flow resumes this plan.
            planning = time.perf_counter()
            plan = prepare_run(input, out, settings, skip_invalid, overwrite, catalog, size_shards)
            planning = time.perf_counter() - planning
            if cluster is not None:
                typer.echo(f"Cluster: {cluster[0].describe()}", err=True)
            if plan_only:
                residues = sum(plan.shard_residues(i) for i in plan.shards)
                typer.echo(f"Planned run {plan.run_id}: {plan.n_records} sequences ({residues} residues) in "
                           f"{len(plan.shards)} shards of up to {plan.settings.shard_budget} tokens; {len(plan.rejects)} rejected; "
                           f"registered in the catalog in {planning:.1f} s. Nothing was scored: run the same command "
                           f"without --plan-only to screen it.")
                return
        except InvalidFastaError as exc:
            fail(f"{exc}\nNothing was scored. Fix the records or pass --skip-invalid.", exc.exit_code)
        except PlmscreenError as exc:
            fail(str(exc), exc.exit_code)
        except (ValueError, FileNotFoundError) as exc:  # option values checked by the settings objects; a missing file
            fail(str(exc), EXIT_BAD_INPUT)

        from plmscreen.flows import orchestration
        from plmscreen.flows.screen import screen_proteome

        try:
            if cluster is None:
                from plmscreen.flows.clusters import task_runner

                running = orchestration.prefect_api_and_runner(task_runner(scheduler=scheduler), startup)
            else:
                running = orchestration.local_cluster_and_prefect_api(cluster[0], startup)
            with running as runner, _shard_progress(plan, progress):
                summary = screen_proteome.with_options(task_runner=runner)(
                    input=str(input), store=str(out), settings=plan.settings.to_dict(), skip_invalid=skip_invalid,
                    catalog_url=catalog, torch_threads=cluster[0].threads_per_worker if cluster else None,
                )
        except PlmscreenError as exc:  # the catalog, or the cluster lost under the flow
            fail(str(exc), exc.exit_code)
        _print_summary(summary)
        if summary["failed_shards"]:
            raise typer.Exit(EXIT_SHARDS_FAILED)
    finally:
        if startup is not None:
            startup.stop()


def _small_local_screen(input: Path, settings: ScreenSettings, workers, gpus, scheduler) -> bool:
    """Whether a screen given neither --in-process nor --flow runs in this process: a local CPU
    screen (no --workers, --gpus, --scheduler, no GPU) with no Prefect API configured (nobody can
    watch a temporary server's UI after the command ends), whose estimated scoring is too short for
    the flow's fixed cost (``flow_pays_off``). Scores are the same either way, the catalog claims the
    same shards (a killed screen resumes by rerunning it, under either path); the flow adds Prefect's
    record of the run and task retries, which a small screen does not repay."""
    import os

    if workers or gpus or scheduler or os.environ.get("PREFECT_API_URL") or settings.device.startswith("cuda"):
        return False
    lengths = _small_input_lengths(input)
    if lengths is None:
        return False
    from plmscreen.flows.resources import cpu_cores, estimated_scoring_cpu_seconds, flow_pays_off, visible_gpus
    from plmscreen.screening.model.backends.resolve import checkpoint_bytes
    from plmscreen.screening.run.plan import shard_cost

    try:  # the size only: hashing a large checkpoint here would hold up the flow's start for nothing
        size_bytes = checkpoint_bytes(settings.model, settings.weights_dir, settings.hub_download)
    except (PlmscreenError, ValueError, FileNotFoundError):  # the main path reports it with its own message
        return False
    costs = [shard_cost(n) for n in lengths]
    if flow_pays_off(costs, size_bytes) or (settings.device == "auto" and visible_gpus()):
        return False
    from plmscreen.flows.orchestration import configured_api_url

    if configured_api_url():  # a Prefect profile names a server: the user watches runs there
        return False
    cpu_s = estimated_scoring_cpu_seconds(costs, size_bytes)
    typer.echo(f"Small screen (about {cpu_s:.0f} CPU s of scoring, no Prefect API configured): scoring in this "
               f"process on {cpu_cores()} cores, without the Prefect flow's fixed start-up. --flow runs it as a "
               f"Prefect flow on a local Dask cluster.", err=True)
    return True


def _small_input_lengths(path: Path) -> list[int] | None:
    """Sequence lengths of a FASTA file of at most SMALL_INPUT_BYTES (decompressed), or None for a
    larger file or one that cannot be read (the main path reports what is wrong with it). Lengths
    count every sequence character: an estimate, not the validation prepare_run does."""
    import gzip

    from plmscreen.flows.resources import SMALL_INPUT_BYTES
    from plmscreen.screening.input import is_gzipped

    try:
        if not path.is_file():
            return None
        packed = is_gzipped(path)
        if not packed and path.stat().st_size > SMALL_INPUT_BYTES:
            return None
        with (gzip.open(path, "rb") if packed else open(path, "rb")) as handle:
            data = handle.read(SMALL_INPUT_BYTES + 1)
    except OSError:
        return None
    if len(data) > SMALL_INPUT_BYTES:
        return None
    lengths: list[int] = []
    for line in data.splitlines():
        if line.startswith(b">"):
            lengths.append(0)
        elif lengths:
            lengths[-1] += len(line.strip())
    return lengths


def _cluster_for(settings: ScreenSettings, checkpoint_bytes: int, workers, gpus, scheduler):
    """The local cluster to start (as a one-item list, filled once the input's costs are known) and
    the shard-size rule prepare_run applies to those costs; an existing scheduler is sized by the
    worker threads it has now."""
    import functools

    from plmscreen.flows.resources import auto_shard_tokens
    from plmscreen.screening.run.settings import TRIAGE_SHARD_SCALE

    scale = TRIAGE_SHARD_SCALE if settings.mode == "triage" else 1
    if scheduler:
        if settings.shard_tokens is not None:
            return None, None
        from plmscreen.flows.orchestration import scheduler_slots

        slots = scheduler_slots(scheduler)
        return None, functools.partial(auto_shard_tokens, slots=slots, budget_scale=scale) if slots else None
    from plmscreen.flows.resources import (
        available_memory_bytes,
        cpu_cores,
        gpu_workers_for,
        plan_cluster,
        worker_memory_bytes,
    )

    device = settings.device
    if device.startswith("cuda:"):
        workers = workers or 1  # one named device: one model copy on it
    gpus = gpu_workers_for(device, gpus, workers)
    if device == "cuda" and not gpus and not workers:
        raise InputError("--device cuda was requested but torch sees no CUDA GPU")
    cluster: list = []

    def size_shards(costs: list[int]) -> int:
        cluster.append(plan_cluster(
            costs, cores=cpu_cores(), memory_bytes=available_memory_bytes(),
            worker_bytes=worker_memory_bytes(checkpoint_bytes), gpus=gpus or 0, workers=workers,
            shard_tokens=settings.shard_tokens, budget_scale=scale))
        return cluster[0].shard_tokens

    return cluster, size_shards


def _screen_in_process(input: Path, out: Path, settings: ScreenSettings, skip_invalid: bool, overwrite: bool,
                       catalog: str | None, progress: bool) -> None:
    import os

    import torch
    from plmscreen.flows.resources import cpu_cores
    from plmscreen.screening.run.lifecycle import run_screen
    from tqdm import tqdm

    if not os.environ.get("OMP_NUM_THREADS"):
        # torch's default counts the host's cores, not those this process may use (taskset, cpusets)
        torch.set_num_threads(cpu_cores())

    bar = None
    done = 0
    started = time.perf_counter()

    def on_start(records):
        nonlocal bar
        total = sum(len(r.sequence) for r in records)
        bar = tqdm(total=total, unit="res", unit_scale=True, disable=not progress, file=sys.stderr,
                   desc=f"scoring {len(records)} sequences", dynamic_ncols=True)
        bar.set_postfix(seqs=0)

    def on_sequence_done(record):
        nonlocal done
        done += 1
        bar.update(len(record.sequence))
        bar.set_postfix(seqs=f"{done}", seq_per_s=f"{done / (time.perf_counter() - started):.2f}")

    try:
        summary = run_screen(input, out, settings, skip_invalid=skip_invalid, overwrite=overwrite,
                             on_start=on_start, on_sequence_done=on_sequence_done, catalog_url=catalog)
    finally:
        if bar is not None:
            bar.close()
    _print_summary(summary.as_dict())
