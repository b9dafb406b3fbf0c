"""``plmscreen calibrate``: choose the flag rule's inflation threshold for a model on the user's own
proteins and measure it on held-out constructs (plmscreen.screening.experiments.calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from plmscreen.cli.errors import fail


def calibrate(
    model: Annotated[str, typer.Option(help="plmscreen-mini, a fair-esm ESM-2 name or a checkpoint path: the model screens will use.")],
    fasta: Annotated[Path, typer.Option(help="Your proteins (plain or .gz FASTA); hundreds for a 1% target.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory: calibration.json, constructs.fasta and the store the constructs are screened into (OUT/store).")],
    max_null_rate: Annotated[float, typer.Option(help="Target: one-sided 95% upper bound of the false-flag rate on the calibration half's nulls.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the constructs and of the split.")] = 0,
    n_proteins: Annotated[Optional[int], typer.Option(help="Use the first N usable proteins (default: all).")] = None,
    nulls_per_protein: Annotated[int, typer.Option(help="Repeat-free nulls per protein, half residue shuffles, half block-shuffled decoys.")] = 4,
    max_length: Annotated[int, typer.Option(help="Proteins are cropped to their central MAX_LENGTH residues.")] = 300,
    weights_dir: Annotated[Optional[Path], typer.Option(envvar="PLMSCREEN_WEIGHTS_DIR", help="Directory holding <model>.pt for fair-esm names.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    catalog: Annotated[Optional[str], typer.Option(help="Register the calibration in this catalog (e.g. the PostgreSQL catalog your screens use) instead of OUT/store's.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="Base flag rule fields kept as given, e.g. --set flag.min_repeat_fraction=0.1 (min_inflation_factor is what is calibrated).")] = None,
    install: Annotated[bool, typer.Option("--install/--no-install", help="Also copy the record into $PLMSCREEN_CALIBRATIONS (default ~/.local/share/plmscreen/calibrations), where every screen with this checkpoint finds it.")] = True,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Calibrate the flag rule for MODEL on your proteins: repeat-free nulls (shuffles, decoys) and
    repeat carriers (doubled proteins, inserted copies at 100 to 30% identity), split by protein;
    the threshold is chosen on one half and its rates are measured on the other."""
    import torch
    from plmscreen.screening.errors import PlmscreenError
    from plmscreen.screening.experiments.calibration import CalibrationSettings, run_calibration
    from plmscreen.screening.run.settings import ScreenSettings

    if threads is not None:
        if threads < 1:
            fail(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        if any(not a.strip().startswith("flag.") for a in assignments or []):
            fail("--set takes flag.<field>=<value> here: the base flag rule")
        base_rule = ScreenSettings().with_overrides(assignments or []).flag
        residue = (nulls_per_protein + 1) // 2
        settings = CalibrationSettings(seed=seed, max_null_rate=max_null_rate, n_proteins=n_proteins,
                                       residue_shuffles=residue, block_shuffles=nulls_per_protein - residue,
                                       max_length=max_length)
        record = run_calibration(model, fasta, out, settings, base_rule,
                                 weights_dir=str(weights_dir) if weights_dir else None, device=device,
                                 catalog_url=catalog, install=install,
                                 progress=lambda message: typer.echo(message, err=True))
    except PlmscreenError as exc:
        fail(str(exc), exc.exit_code)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(render_summary(record))


def render_summary(record: dict) -> str:
    """What the command prints: the chosen rule, the criterion, held-out rates by construct."""
    def fmt(r: dict) -> str:
        if not r["n"]:
            return "n = 0"
        return f"{r['k']}/{r['n']} = {r['rate']:.3f} (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f})"

    crit, held = record["criterion"], record["held_out"]
    rule = ", ".join(f"{k} = {v}" for k, v in record["flag_rule"].items())
    lines = [
        f"Calibration {record['id']} of {record['model']['model_name']} (checkpoint sha256 {record['checkpoint_sha256'][:12]}…), "
        f"{record['fasta']['n_used']} proteins split {len(record['split']['calibration'])} calibration / "
        f"{len(record['split']['held_out'])} held out (seed {record['seed']}).",
        f"Flag rule: {rule}.",
        f"Chosen on the calibration half: {crit['null_flags']} of {crit['n_null']} nulls flagged, one-sided "
        f"{crit['confidence']:.0%} upper bound {crit['null_upper_bound']:.4f} <= {crit['max_null_rate']}.",
        "Held out:",
        f"  false-flag rate on nulls     {fmt(held['null'])}",
        *(f"    {kind:<26} {fmt(r)}" for kind, r in held["null_by_kind"].items()),
        f"  sensitivity on carriers      {fmt(held['carriers'])}",
        *(f"    {name:<26} {fmt(r)}" for name, r in held["carriers_by_construct"].items()),
        f"  your proteins flagged        {fmt(held['natural'])}",
        *(f"Warning: {w}" for w in record.get("warnings", [])),
        f"Record: {Path(record['store']).parent / 'calibration.json'}"
        + (f" (installed: {record['installed']})" if record.get("installed") else ""),
    ]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
