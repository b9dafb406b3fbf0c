"""The ``plmscreen`` command line. Library errors become one clear message and a non-zero exit;
the exit codes are defined with the errors, in ``plmscreen.screening.errors``.

The CLI sits on top of the library (``plmscreen.screening``) and the flows (``plmscreen.flows``);
the library never imports either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from plmscreen import screening
from plmscreen.cli.errors import fail
from plmscreen.screening.errors import EXIT_BAD_INPUT

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


@app.command()
def repeats(
    input: Annotated[Path, typer.Argument(help="FASTA file (plain or .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file: one row per aligned region pair.")],
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Write invalid records to <out>.rejects.tsv and go on.")] = False,
) -> None:
    """Run only the repeat detector (no model): aligned region pairs, 1-based inclusive."""
    from plmscreen.screening.input import InvalidFastaError, read_fasta, write_rejects
    from plmscreen.screening.run.tables import repeat_table
    from plmscreen.screening.score.repeats import RepeatParams, find_repeats
    from plmscreen.screening.store.parquet import with_metadata, write_parquet_atomic

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


from plmscreen.cli.calibrate import register as _register_calibrate_command  # noqa: E402
from plmscreen.cli.screen import screen  # noqa: E402
from plmscreen.cli.store import register as _register_store_commands  # noqa: E402
from plmscreen.cli.validate import register as _register_validate_command  # noqa: E402

app.command()(screen)
_register_store_commands(app)
_register_validate_command(app)
_register_calibrate_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
