"""``plmscreen validate``: the look-up validation suite (plmscreen.screening.experiments.validate) on any loadable model.

Exit codes as in ``plmscreen.cli.main``: 0 success (whatever the verdicts: a model that does not copy is
a result, not an error); 2 a bad FASTA, model or option; 1 anything unexpected.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from plmscreen.cli.errors import fail


class Preset(str, Enum):
    full = "full"
    quick = "quick"


def validate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for index.html, plots, CSV and report.json.")],
    model: Annotated[Optional[list[str]], typer.Option(help="Any model `plmscreen screen --model` takes (fair-esm, Hugging Face ESM-2 / ESM C directory or hub id, CARP). Repeat it to put several models side by side on the same constructs: OUT/index.html compares them, OUT/<model>/ holds each one's page (default: plmscreen-mini).")] = None,
    fasta: Annotated[Optional[Path], typer.Option(
        help="Real proteins to build the constructs from (default: the 24 held-out, repeat-free E. coli "
             "proteins packaged in screening/data/validation_proteins.fasta).")] = None,
    preset: Annotated[Preset, typer.Option(help="full (the documented run) or quick (6 proteins, short constructs; a smoke test).")] = Preset.full,
    n_proteins: Annotated[Optional[int], typer.Option(help="Use the first N usable proteins (default: the preset's, 24 for full).")] = None,
    crop_length: Annotated[Optional[int], typer.Option(help="Length of the central crop x in x‖x (default: the preset's, 64 for full).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of mutations, shuffles, random co-masks and bootstraps.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    weights_dir: Annotated[Optional[Path], typer.Option(
        "--weights-dir", envvar="PLMSCREEN_WEIGHTS_DIR", help="Directory holding <model>.pt for fair-esm and CARP names, or a hub id's directory.")] = None,
    hub_download: Annotated[bool, typer.Option("--hub-download/--no-hub-download", help="Allow downloading a Hugging Face hub id not found locally (off by default).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Measure whether a model copies from repeat partners (arXiv 2504.17068): doubling, partner
    masking, partner mutation, imperfect repeats, unit length and spacing, with controls."""
    import torch
    from plmscreen.screening.experiments.settings import PRESETS, ValidationInputError
    from plmscreen.screening.experiments.validate import run_validation
    from plmscreen.screening.render.validation_page import write_comparison_page
    from plmscreen.screening.model.checkpoints import ModelLoadError

    if threads is not None:
        if threads < 1:
            fail(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    overrides = {k: v for k, v in {"n_proteins": n_proteins, "crop_length": crop_length, "seed": seed}.items() if v is not None}
    # Recorded on the page when run from a shell (not when invoked in-process, e.g. by tests).
    command = "plmscreen " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["validate"] else None
    models = model or ["plmscreen-mini"]
    reports = []
    try:
        settings = dataclasses.replace(PRESETS[preset.value], **overrides)
        for name in models:
            if len(models) > 1:
                typer.echo(f"model {name}", err=True)
            # One model: its page is OUT/index.html. Several: each page is written with the comparison.
            reports.append(run_validation(name, fasta, out if len(models) == 1 else None, settings, device=device,
                                          weights_dir=weights_dir, command=command, hub_download=hub_download,
                                          progress=lambda message: typer.echo(message, err=True)))
    except (ValidationInputError, ModelLoadError, ValueError) as exc:
        fail(str(exc))
    for report in reports:
        typer.echo(f"Validated {report.model['model_name']} on {len(report.proteins)} proteins in {report.seconds:.0f} s:")
        for e in report.experiments:
            typer.echo(f"  {'shown    ' if e.shown else 'NOT shown'}  {e.key:<18} {e.observed}")
    if len(reports) > 1:
        write_comparison_page(reports, out, _page_dirs(reports))
    typer.echo(f"Page: {Path(out) / 'index.html'}")


def _page_dirs(reports) -> list[str]:
    """A folder name per model page: the model's name made path-safe, numbered if two collide."""
    import re

    names: list[str] = []
    for k, report in enumerate(reports):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", report.model["model_name"]) or "model"
        names.append(name if name not in names else f"{name}-{k + 1}")
    return names


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
