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
    model: Annotated[str, typer.Option(help="plmscreen-mini, a fair-esm ESM-2 name or a checkpoint path.")] = "plmscreen-mini",
    fasta: Annotated[Optional[Path], typer.Option(
        help="Real proteins to build the constructs from (default: the 24 held-out, repeat-free E. coli "
             "proteins packaged in screening/data/validation_proteins.fasta).")] = None,
    preset: Annotated[Preset, typer.Option(help="full (the documented run) or quick (6 proteins, short constructs; a smoke test).")] = Preset.full,
    n_proteins: Annotated[Optional[int], typer.Option(help="Use the first N usable proteins (default: the preset's, 24 for full).")] = None,
    crop_length: Annotated[Optional[int], typer.Option(help="Length of the central crop x in x‖x (default: the preset's, 64 for full).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of mutations, shuffles, random co-masks and bootstraps.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    weights_dir: Annotated[Optional[Path], typer.Option(
        "--weights-dir", envvar="PLMSCREEN_WEIGHTS_DIR", help="Directory holding <model>.pt for fair-esm names.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Measure whether a model copies from repeat partners (arXiv 2504.17068): doubling, partner
    masking, partner mutation, imperfect repeats, unit length and spacing, with controls."""
    import torch
    from plmscreen.screening.experiments.settings import PRESETS, ValidationInputError
    from plmscreen.screening.experiments.validate import run_validation
    from plmscreen.screening.model.checkpoints import ModelLoadError

    if threads is not None:
        if threads < 1:
            fail(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    overrides = {k: v for k, v in {"n_proteins": n_proteins, "crop_length": crop_length, "seed": seed}.items() if v is not None}
    # Recorded on the page when run from a shell (not when invoked in-process, e.g. by tests).
    command = "plmscreen " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["validate"] else None
    try:
        settings = dataclasses.replace(PRESETS[preset.value], **overrides)
        report = run_validation(model, fasta, out, settings, device=device, weights_dir=weights_dir,
                                command=command, progress=lambda message: typer.echo(message, err=True))
    except (ValidationInputError, ModelLoadError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"Validated {report.model['model_name']} on {len(report.proteins)} proteins in {report.seconds:.0f} s:")
    for e in report.experiments:
        typer.echo(f"  {'shown    ' if e.shown else 'NOT shown'}  {e.key:<18} {e.observed}")
    typer.echo(f"Page: {Path(out) / 'index.html'}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
