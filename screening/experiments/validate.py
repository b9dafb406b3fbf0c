"""Validation suite: does a model show the in-context look-up of arXiv 2504.17068?

Kantroo, Wagner & Machta found that a masked protein LM fills a masked residue by copying the
partner copy of a repeat (docs: docs/science.md). Each experiment here turns one of
their findings into a directional claim, measures it on real proteins in constructs whose partners
are known by construction, and says whether the model shows it:

- ``doubling``: PPPL of x vs x‖x, and x‖x with every residue's partner (i ± L) co-masked;
- ``partner_masking``: log P(x_i) with the partner visible vs co-masked, in each copy;
- ``copy_following``: the partner set to a residue b the model disfavours at i;
  C_i = P(x_i = b | x_−i, x_j := b) − P(x_i = b | x_−(i∪j));
- ``imperfect_repeats``: second copy mutated to 100% … 30% identity, inflation vs identity;
- ``unit_length``: repeat units of 10 … 300 residues, adjacent or separated by an unrelated spacer;
- ``controls``: a random non-partner position co-masked instead of the partner (extra-mask cost;
  ESM-2's token_dropout rescales by the mask ratio), x next to a composition-matched shuffle of
  itself (x‖s), and a doubled shuffle (s‖s).

Every number is a per-protein value; a claim is *shown* when its mean is at least the minimum
effect in the expected direction, the 95% bootstrap CI of the mean excludes zero and a one-sided
sign test over proteins gives p < alpha (``check_greater``). Proteins are central crops so that
small models trained on short crops are measured where they work; the crop length is a setting.
``plmscreen.screening.render.validation_page`` writes the HTML page, plots and CSV files."""


from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from plmscreen.screening.experiments.experiments import (
    _Context,
    _doubled_panel,
    controls,
    copy_following,
    doubling,
    imperfect_repeats,
    partner_masking,
    unit_length,
)
from plmscreen.screening.experiments.results import ValidationReport
from plmscreen.screening.experiments.settings import (
    DEFAULT_FASTA,
    MIN_PROTEINS,
    ValidationInputError,
    ValidationSettings,
)
from plmscreen.screening.input import standard_proteins
from plmscreen.screening.model.backends.base import Backend
from plmscreen.screening.model.backends.fair_esm import FairEsmBackend
from plmscreen.screening.model.backends.resolve import load_backend
from plmscreen.screening.model.backends.scorer import scorer_for
from plmscreen.screening.model.checkpoints import LoadedModel
from plmscreen.screening.score.scorer import ScoringOptions


def select_proteins(fasta: str | Path, settings: ValidationSettings) -> tuple[list[tuple[str, str]], str]:
    """The first ``n_proteins`` records of the standard 20 residues that fit the crop; (proteins, sha256)."""
    usable, contents = standard_proteins(fasta, settings.crop_length, ValidationInputError)
    if len(usable) < MIN_PROTEINS:
        raise ValidationInputError(
            f"{fasta}: {len(usable)} protein(s) of at least {settings.crop_length} standard residues; "
            f"the validation needs at least {MIN_PROTEINS}")
    return usable[: settings.n_proteins], contents.sha256


def run_validation(
    model: str | LoadedModel | Backend = "plmscreen-mini",
    fasta: str | Path | None = None,
    out_dir: str | Path | None = None,
    settings: ValidationSettings = ValidationSettings(),
    *,
    device: str = "auto",
    weights_dir: str | Path | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
    hub_download: bool = False,
) -> ValidationReport:
    """Run every experiment on ``model`` (any ``--model`` a screen takes, or a loaded model of any
    family); write index.html, plots and tables to ``out_dir`` if given.

    >>> report = run_validation("plmscreen-mini", out_dir="validation-out")  # doctest: +SKIP
    >>> report.verdicts["doubling"]  # doctest: +SKIP
    True
    """
    started = time.perf_counter()
    progress = progress or (lambda message: None)
    fasta = Path(fasta) if fasta is not None else DEFAULT_FASTA
    proteins, fasta_sha256 = select_proteins(fasta, settings)  # before the model: input errors come fast
    if isinstance(model, Backend):
        loaded = model
    elif isinstance(model, LoadedModel):
        loaded = FairEsmBackend(model)
    else:
        loaded = load_backend(model, weights_dir=weights_dir, device=device, hub_download=hub_download)
    if settings.longest_construct > loaded.max_residues:
        raise ValidationInputError(f"the longest construct ({settings.longest_construct} residues) exceeds the "
                                   f"model window ({loaded.max_residues}); shorten the units, spacers or crop")
    scorer = scorer_for(loaded, ScoringOptions(batch_tokens=settings.batch_tokens))
    ctx = _Context(scorer, proteins, settings)

    experiments = []
    progress(f"{len(proteins)} proteins; doubled constructs (doubling, partner masking, controls)")
    panel = _doubled_panel(ctx)
    experiments += [doubling(ctx, panel), partner_masking(ctx, panel)]
    progress("copy-following (partner mutation)")
    experiments.append(copy_following(ctx, panel))
    progress("imperfect repeats")
    experiments.append(imperfect_repeats(ctx))
    progress("unit length and spacing")
    experiments.append(unit_length(ctx))
    experiments.append(controls(ctx, panel))

    report = ValidationReport(
        model=loaded.describe(), settings=settings, fasta=str(fasta), fasta_sha256=fasta_sha256,
        proteins=[{"seq_id": sid, "length": len(seq)} for sid, seq in proteins],
        experiments=experiments, seconds=time.perf_counter() - started, command=command,
    )
    if out_dir is not None:
        from plmscreen.screening.render.validation_page import write_validation_page

        progress(f"writing {out_dir}")
        write_validation_page(report, out_dir)
    return report
